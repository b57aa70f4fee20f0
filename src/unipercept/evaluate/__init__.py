"""``python -m unipercept.evaluate TASK --gt PATH --results PATH``: scores result files.

Scores existing prediction files, in the formats the benchmarks' servers take, against ground
truth, with the metrics of :mod:`unipercept.evaluation`:

| task | --gt | --results |
|---|---|---|
| det, insseg | COCO annotation json | COCO results json (insseg: masks; boxes optional) |
| sot | LaSOT folder (sequence folders holding groundtruth.txt) | folder of <sequence>.txt |
| vos | DAVIS / YouTube-VOS Annotations folder | folder of palette PNG folders |
| rvos | Ref-YouTube-VOS layout (Annotations/<video>/<exp>/) | the same layout |
| mot | MOTChallenge folder (<seq>/gt/gt.txt) | folder of <seq>.txt |
| mots | MOTS txt folder | folder of <seq>.txt |
| vis | YouTube-VIS annotation json | YouTube-VIS results json |

With ``--images DIR`` (det, insseg, vos, sot, mot, mots, vis) a model is run first. For det and
insseg every image of the ground-truth json is read from DIR, the model (``--model``, a
``conf/model`` name, with ``--weights``) is prompted with all the json's category names, and its
detections are written to ``--results`` as a COCO results json (atomically) before being scored.
For vos, DIR holds ``<seq>/`` frame folders, the first ground-truth PNG of each sequence gives
the objects, and the masks are written as palette PNG folders under ``--results``. For sot, mot
and mots, DIR is the dataset folder itself (LaSOT: ``<seq>/img/`` beside ``groundtruth.txt``;
MOTChallenge: ``<seq>/img1/``) and the result files go under ``--results``. Frame folders are
read as :func:`unipercept.data.video.image_files` lists them: any image suffix, natural order
(``2.jpg`` before ``10.jpg``). For vis, DIR holds the json's ``file_names`` and ``--results`` is
the results json.

rvos with ``--data NAME`` runs the model on an annotated referring video dataset and scores
J&F per expression (``--results DIR`` also writes the submission layout). rec and res have no
official results file: ``--data NAME`` (a ``conf/data`` referring dataset,
``--data-override reader.split=val``) runs the model on every expression and reports P@0.5, or
overall and mean IoU.

Prints the scores; ``--json PATH`` also writes them (atomically). Bad input exits with status 2
and one line naming the file and entry.

sot and vos with ``--images`` also report ``score_separation``: how well the answer's score
separates hits (IoU >= 0.5 with a visible target) from misses on the frames after the first:
precision and recall at the task's ``score_threshold`` and along a curve of thresholds, the
average precision of the score as a hit detector, the best-F1 threshold, the fraction of
target-absent frames, and the headline metric at the threshold beside the one reporting every
answer (:mod:`unipercept.evaluation.score_separation` defines them).

The package, by concern: :mod:`~unipercept.evaluate.cli` (the command line),
:mod:`~unipercept.evaluate.files` (scoring result files), :mod:`~unipercept.evaluate.predictor`
(the model that ``--images`` and ``--data`` run), :mod:`~unipercept.evaluate.image_tasks` (det
and insseg ``--images``), :mod:`~unipercept.evaluate.video_tasks` (vos, sot, mot, mots and vis
``--images``), :mod:`~unipercept.evaluate.answers` (the sot and vos answers kept with their
scores) and :mod:`~unipercept.evaluate.referring` (rec, res and rvos ``--data``).
Importing it loads no torch, Hydra or metric library: each function imports what it needs when
called, so ``--help`` and argument errors answer at once.
"""

from unipercept.evaluate.cli import main
from unipercept.evaluate.files import TASKS, evaluate_files
from unipercept.evaluate.image_tasks import predict_coco
from unipercept.evaluate.predictor import build_predictor
from unipercept.evaluate.referring import evaluate_referring, evaluate_rvos_model
from unipercept.evaluate.video_tasks import predict_mot, predict_sot, predict_vis, predict_vos

__all__ = [
    "TASKS",
    "build_predictor",
    "evaluate_files",
    "evaluate_referring",
    "evaluate_rvos_model",
    "main",
    "predict_coco",
    "predict_mot",
    "predict_sot",
    "predict_vis",
    "predict_vos",
]
