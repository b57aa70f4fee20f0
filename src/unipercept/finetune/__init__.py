"""Fine-tuning a trained model on data of your own, in one command:

    python -m unipercept.train finetune=coco data.json=ann.json data.images=DIR init=MODEL

``finetune=coco|refcoco|ytvis|mot`` (``conf/finetune/``) picks the data format, the stage
``conf/stage/finetune.yaml`` (a short schedule with warmup and one drop, the text encoder and
the backbone frozen) and the held-out score; ``init`` names the starting model, whose own
config decides the architecture. Part of the data is held out (``data.val_*``, or a fixed
fraction split off by id), scored every ``finetune.eval_every`` steps with the task's metric,
and the best-scoring step is kept in ``<output_dir>/checkpoints/best`` (with ``best.json``),
which ``python -m unipercept.export <output_dir> <model folder>`` then exports. A UNINEXT
``init`` trains with UNINEXT's losses (``criterion=uninext``, set by :func:`prepare`).

By concern: :mod:`~unipercept.finetune.job` (the checks, the starting model),
:mod:`~unipercept.finetune.formats` (the data formats), :mod:`~unipercept.finetune.split`
(the held-out part) and :mod:`~unipercept.finetune.scoring` (the held-out scores).
"""

from unipercept.finetune.job import Finetune, check, load_initial_model, prepare

__all__ = ["Finetune", "check", "load_initial_model", "prepare"]
