"""Fine-tuning on data of one's own (``python -m unipercept.train finetune=...``): an untrained
tiny model learns a generated COCO dataset and its held-out AP rises (scored again with
``python -m unipercept.evaluate``'s code), the best checkpoint is kept and never pruned and
survives a resume, the held-out split is fixed and never trained on, every format composes
and runs on the generated world, and bad input stops with one line and exit code 2 before
anything is built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from unipercept import config
from unipercept.data.synthetic import generate
from unipercept.modeling.pretrained import save_pretrained
from unipercept.train import main

# The tiny model runs at 128/192 (the world's images are 128x160); a step's cost stays small.
QUIET = ["trainer.progress=false", "trainer.log_every=1000", "trainer.device=cpu"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world") / "synthetic"
    generate(root, seed=0, size="small")
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained model/unipercept_tiny as a model folder (its ImageNet backbone and MiniLM,
    a random transformer): whatever it scores, training has to earn."""
    cfg = config.compose_group_option("model", "unipercept_tiny")
    torch.manual_seed(0)
    model = config.instantiate(cfg)
    folder = tmp_path_factory.mktemp("init") / "tiny"
    return save_pretrained(
        model, folder, config=cfg, preprocess={"short_size": 128, "max_size": 192}
    )


def rewrite(source: Path, target: Path, change) -> Path:
    content = json.loads(source.read_text())
    change(content)
    target.write_text(json.dumps(content))
    return target


def one_category(content: dict) -> None:
    """Every object a "shape": a task a random transformer learns in a hundred CPU steps."""
    content["categories"] = [{"id": 1, "name": "shape"}]
    for annotation in content["annotations"]:
        annotation["category_id"] = 1


def finetune_args(output: Path, init: Path, *extra: str) -> list[str]:
    return [*QUIET, f"init={init}", f"output_dir={output}", *extra]


def shapes_finetune(world: Path, tmp_path: Path, init: Path) -> tuple[list[str], Path, Path]:
    """The arguments of a 120-step fine-tune on the world's COCO shapes as one category (held
    out: its val split), the run folder, and the held-out json."""
    coco = world / "coco"
    train = rewrite(
        coco / "annotations/instances_train.json", tmp_path / "train.json", one_category
    )
    val = rewrite(coco / "annotations/instances_val.json", tmp_path / "val.json", one_category)
    output = tmp_path / "run"
    args = finetune_args(
        output,
        init,
        "finetune=coco",
        f"data.json={train}",
        f"data.images={coco / 'train'}",
        f"data.val_json={val}",
        f"data.val_images={coco / 'val'}",
        "stage.max_steps=120",
        "stage.lr=1e-3",
        "trainer.clip_grad_norm=1.0",
        "finetune.eval_every=40",
        "trainer.checkpoint_every=40",
        "trainer.keep_last=1",
    )
    return args, output, val


def test_finetune_raises_held_out_ap_and_keeps_the_best(world, tiny_model, tmp_path):
    from unipercept.evaluate import evaluate_files, predict_coco
    from unipercept.export import find_checkpoint

    coco = world / "coco"
    args, output, val = shapes_finetune(world, tmp_path, tiny_model)
    assert main(args) == 0
    checkpoints = output / "checkpoints"
    best = json.loads((checkpoints / "best.json").read_text())
    assert best["metric"] == "mask_ap"  # every annotation has a segmentation
    # The untrained model finds nothing (no score reaches the 0.05 a result needs: AP 0); the
    # fine-tuned one finds shapes it never saw (AP 0.08 to 0.2 here, by the run's seed).
    assert best["value"] >= best["initial"] + 0.04, best

    # The same numbers from python -m unipercept.evaluate's code: the starting model folder, and
    # the best checkpoint's weights in the architecture it was built from.
    scores = {}
    for name, model, weights in (
        ("initial", str(tiny_model), None),
        ("best", "unipercept_tiny", checkpoints / "best" / "model.safetensors"),
    ):
        results = tmp_path / f"{name}_results.json"
        options = {"model_name": model, "weights": weights, "short_size": 128, "max_size": 192}
        predict_coco(val, coco / "val", results, with_masks=True, **options)
        scores[name] = evaluate_files("insseg", val, results)["segm"]["ap"]
    assert scores["initial"] == pytest.approx(best["initial"], abs=1e-9)
    assert scores["best"] == pytest.approx(best["value"], abs=1e-9)

    # keep_last=1 pruned every step folder but the last; the best one stays, whole, and says
    # which step it is.
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_00000120"]
    folder = checkpoints / "best"
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.yaml",
        "model.safetensors",
        "trainer_state.pt",
    ]
    state = torch.load(folder / "trainer_state.pt", weights_only=True)
    assert state["extra"]["step"] == best["step"] and best["step"] in (40, 80, 120)
    assert state["extra"]["evaluation"]["best"]["value"] == best["value"]
    # Its config records the model it holds (the init folder's, not the model group's) and the
    # resolution it ran at; the export takes this checkpoint.
    recorded = yaml.safe_load((folder / "config.yaml").read_text())
    assert recorded["model"] == yaml.safe_load((tiny_model / "config.yaml").read_text())
    assert max(recorded["trainer"]["short_sizes"]) == 128 and recorded["trainer"]["max_size"] == 192
    assert find_checkpoint(output) == folder


def test_best_is_kept_through_a_resume(world, tiny_model, tmp_path, monkeypatch):
    """A scripted score: the best step is the highest-scoring one (the starting model's score
    is recorded but is not a checkpoint), a resumed run compares with the best so far, and a
    new fine-tune from the run starts from its best checkpoint."""
    from torch.nn.utils import parameters_to_vector

    from unipercept import load_model
    from unipercept.finetune import job

    # start, step 2, step 4, (resumed) step 6, (new run from the first) start, step 2
    scores = iter([0.2, 0.1, 0.5, 0.45, 0.3, 0.35])
    calls, weights = [], []

    def score(model):
        calls.append(model.training)
        weights.append(parameters_to_vector(model.parameters()).detach().clone())
        return next(scores)

    def scripted(self):
        return score

    monkeypatch.setattr(job.Finetune, "scorer", scripted)
    coco = world / "coco"
    output = tmp_path / "run"
    settings = [
        "finetune=coco",
        f"data.json={coco / 'annotations/instances_train.json'}",
        f"data.images={coco / 'train'}",
        "finetune.eval_every=2",
        "trainer.checkpoint_every=2",
        "trainer.keep_last=1",
    ]
    common = finetune_args(output, tiny_model, *settings)
    assert main([*common, "stage.max_steps=4"]) == 0
    checkpoints = output / "checkpoints"
    assert json.loads((checkpoints / "best.json").read_text()) == {
        "step": 4,
        "metric": "mask_ap",
        "value": 0.5,
        "initial": 0.2,
    }
    kept = load_file(str(checkpoints / "best" / "model.safetensors"))
    step4 = load_file(str(checkpoints / "step_00000004" / "model.safetensors"))
    assert all(torch.equal(kept[k], step4[k]) for k in step4)

    assert main([*common, "stage.max_steps=6", "resume=true"]) == 0
    assert calls == [False, False, False, False]  # scored in eval mode; no new start score
    assert json.loads((checkpoints / "best.json").read_text())["step"] == 4
    after = load_file(str(checkpoints / "best" / "model.safetensors"))
    assert all(torch.equal(after[k], kept[k]) for k in kept)
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_00000006"]

    # init=<the run>: its best checkpoint, with the architecture its config records.
    again = finetune_args(tmp_path / "again", output, *settings)
    assert main([*again, "stage.max_steps=2"]) == 0
    best = parameters_to_vector(load_model(output).parameters())
    assert torch.equal(weights[4], best) and not torch.equal(weights[4], weights[0])
    recorded = yaml.safe_load((tmp_path / "again/checkpoints/best/config.yaml").read_text())
    assert recorded["model"] == yaml.safe_load((tiny_model / "config.yaml").read_text())


def test_best_checkpoint_replaces_only_its_own_files(tmp_path):
    from unipercept.engine.best import BestScore, save_best
    from unipercept.engine.checkpoint import load_checkpoint

    model = torch.nn.Linear(2, 2)
    first = save_best(tmp_path, BestScore(2, "box_ap", 0.1), model=model, extra={"step": 2})
    with torch.no_grad():
        model.weight.add_(1.0)
    second = save_best(
        tmp_path, BestScore(4, "box_ap", 0.3), model=model, extra={"step": 4}, initial=0.05
    )
    assert first == second == tmp_path / "best"
    # Nothing left behind: the folder was staged beside it and renamed into place.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "best.json"]
    loaded = torch.nn.Linear(2, 2)
    assert load_checkpoint(second, model=loaded)["step"] == 4
    assert torch.equal(loaded.weight, model.weight)
    assert json.loads((tmp_path / "best.json").read_text()) == {
        "step": 4,
        "metric": "box_ap",
        "value": 0.3,
        "initial": 0.05,
    }
    # A file of the user's in it makes it not ours: it is never replaced.
    (second / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        save_best(tmp_path, BestScore(6, "box_ap", 0.5), model=model, extra={"step": 6})
    assert (second / "notes.txt").read_text() == "mine"
    assert json.loads((tmp_path / "best.json").read_text())["step"] == 4


def test_held_out_images_are_fixed_and_never_trained_on(world, tmp_path):
    from omegaconf import OmegaConf

    from unipercept.finetune.formats import CocoFormat
    from unipercept.finetune.scoring import Resolution
    from unipercept.finetune.split import held_out

    ids = [str(i) for i in range(1, 11)]
    chosen = held_out(ids, 0.2, what="images", source="test")
    assert len(chosen) == 2 and chosen <= set(ids)
    # The draw depends on the ids alone: not on their order, not on the run's seed.
    assert held_out(list(reversed(ids)), 0.2, what="images", source="test") == chosen
    torch.manual_seed(123)
    assert held_out(ids, 0.2, what="images", source="test") == chosen
    assert len(held_out(ids[:2], 0.9, what="images", source="test")) == 1  # one left to train

    coco = world / "coco"
    boxes = rewrite(
        coco / "annotations/instances_train.json",
        tmp_path / "boxes.json",
        lambda c: [a.pop("segmentation") for a in c["annotations"]],
    )
    data = OmegaConf.create(
        {"json": str(boxes), "images": str(coco / "train"), "masks": None}
        | {"val_json": None, "val_images": None, "val_fraction": 0.2}
    )
    found = CocoFormat(data, tmp_path / "out")
    assert found.metric == "box_ap" and not found.masks  # no segmentation: boxes only
    trained = {sample.sample_id for sample in found.dataset().read()}
    assert trained == set(ids) - chosen
    assert {str(image["id"]) for image in found.val["images"]} == chosen
    found.scorer(Resolution(128, 192))
    record = json.loads((tmp_path / "out" / "finetune" / "split.json").read_text())
    assert set(record["val"]) == chosen and set(record["train"]) == trained


def test_a_sweep_can_check_a_fine_tune_before_it_runs(world, tmp_path):
    from unipercept.finetune import check
    from unipercept.train import ConfigurationError

    coco = world / "coco"
    args = ["finetune=coco", f"data.json={coco / 'annotations/instances_train.json'}"]
    args += ["init=unipercept-tiny", f"output_dir={tmp_path / 'out'}"]
    check(config.compose("train", [*args, f"data.images={coco / 'train'}"]))
    with pytest.raises(ConfigurationError, match="data.images=.*: no such folder"):
        check(config.compose("train", [*args, f"data.images={tmp_path / 'none'}"]))
    assert not (tmp_path / "out").exists()  # checking writes nothing


@pytest.mark.parametrize(
    ("option", "data", "metric"),
    [
        (
            "refcoco",
            lambda w: [
                f"data.refs='{w / 'refcoco/refs(unc).p'}'",  # quoted: Hydra parses ( and )
                f"data.json={w / 'refcoco/instances.json'}",
                f"data.images={w / 'refcoco/images'}",
            ],
            "P@0.5",
        ),
        (
            "ytvis",
            lambda w: [
                f"data.json={w / 'ytvis/train.json'}",
                f"data.images={w / 'ytvis/train/JPEGImages'}",
            ],
            "vis_ap",
        ),
        ("mot", lambda w: [f"data.root={w / 'mot/MOTSynth-train'}"], "hota"),
        (
            "coco",
            lambda w: [
                f"data.json={w / 'coco/annotations/instances_train.json'}",
                f"data.images={w / 'coco/train'}",
            ],
            "mask_ap",
        ),
    ],
)
def test_every_format_fine_tunes_on_the_generated_world(
    world, tiny_model, tmp_path, option, data, metric
):
    output = tmp_path / "run"
    args = finetune_args(output, tiny_model, f"finetune={option}", *data(world))
    assert main([*args, "stage.max_steps=2", "finetune.eval_every=2"]) == 0
    best = json.loads((output / "checkpoints" / "best.json").read_text())
    assert best["metric"] == metric and best["step"] == 2
    assert 0.0 <= best["value"] <= 1.0 and 0.0 <= best["initial"] <= 1.0
    split = json.loads((output / "finetune" / "split.json").read_text())
    assert split["val"] and not set(split["val"]) & set(split["train"])


def test_held_out_scores_are_what_python_m_unipercept_evaluate_gives(world, tmp_path, monkeypatch):
    """The referring, tracking and VIS scorers against the evaluate package's own runs, with the
    bundled model (trained on this world, so the scores are not all zero)."""
    from unipercept import load_model
    from unipercept.data.datasets import RefCocoReader
    from unipercept.evaluate import (
        build_predictor,
        evaluate_files,
        evaluate_referring,
        predict_mot,
        predict_vis,
    )
    from unipercept.finetune.scoring import MotScore, ReferringScore, Resolution, VisScore
    from unipercept.finetune.split import ytvis_subset

    model = load_model("unipercept-tiny")
    resolution = Resolution(**model.preprocess_settings)
    ours, theirs = {}, {}

    refcoco = world / "refcoco"
    val = RefCocoReader(
        refs=refcoco / "refs(unc).p",
        instances=refcoco / "instances.json",
        images=refcoco / "images",
        split="val",
    )
    ours["rec"] = ReferringScore(list(val), resolution=resolution)(model)
    monkeypatch.setenv("UNIPERCEPT_DATA", str(world.parent))
    predictor = build_predictor("unipercept-tiny", None, None, None)
    referring = evaluate_referring("rec", "synthetic_refcoco", predictor, ["reader.split=val"])
    theirs["rec"] = referring["precision"]

    sequences = world / "mot" / "MOTSynth-val"
    folders = {p.name: p for p in sequences.iterdir() if (p / "img1").is_dir()}
    ours["mot"] = MotScore(folders, ["pedestrian"], resolution=resolution)(model)
    predict_mot(sequences, tmp_path / "mot", predictor, ["pedestrian"])
    theirs["mot"] = evaluate_files("mot", sequences, tmp_path / "mot")["hota"]

    frames = world / "ytvis" / "valid" / "JPEGImages"
    videos = rewrite(  # one held-out video is enough to compare
        world / "ytvis" / "valid.json",
        tmp_path / "vis_gt.json",
        lambda c: c.update(ytvis_subset(c, [c["videos"][0]["id"]])),
    )
    ours["vis"] = VisScore(videos, frames, resolution=resolution)(model)
    predict_vis(videos, frames, tmp_path / "vis.json", predictor)
    theirs["vis"] = evaluate_files("vis", videos, tmp_path / "vis.json")["ap"]

    assert ours == pytest.approx(theirs, abs=1e-9)
    assert all(value > 0 for value in ours.values()), ours


@pytest.mark.parametrize(
    "case",
    [
        "no_json",
        "not_coco",
        "no_images",
        "init_missing",
        "init_not_a_model",
        "init_uninext",
        "one_image",
        "init_without_finetune",
        "best_is_a_file",
    ],
)
def test_bad_input_stops_with_one_line(world, tiny_model, tmp_path, monkeypatch, caplog, case):
    from unipercept import modeling

    coco = world / "coco"
    output = tmp_path / "out"
    train = coco / "annotations/instances_train.json"
    data = {"json": train, "images": coco / "train"}
    init = tiny_model
    head = ["finetune=coco"]
    if case == "no_json":
        del data["json"]
        message = "data.json: not given"
    elif case == "not_coco":
        data["json"] = world / "ytvis/train.json"
        message = "not a COCO json (no 'images' list)"
    elif case == "no_images":
        data["images"] = tmp_path / "none"
        message = f"data.images={tmp_path / 'none'}: no such folder"
    elif case == "init_missing":
        init = tmp_path / "nothing"
        message = f"init={init}: no such file or folder"
    elif case == "init_not_a_model":
        init = coco
        message = f"init={init}:"
    elif case == "init_uninext":
        init = tmp_path / "uninext_r50.pth"
        init.write_bytes(b"")
        message = "not a readable checkpoint (truncated or damaged download?)"
    elif case == "one_image":
        data["json"] = rewrite(
            train, tmp_path / "one.json", lambda c: c.update(images=c["images"][:1])
        )
        message = "1 images: too few to hold some out"
    elif case == "init_without_finetune":
        head, data = ["stage=2_image_joint", "stage.init_from=null"], {}
        message = "init: only a fine-tune"
    else:
        (output / "checkpoints").mkdir(parents=True)
        (output / "checkpoints" / "best").write_text("the user's file")
        message = "best is a file"
    built = []
    build = modeling.build_unipercept
    monkeypatch.setattr(modeling, "build_unipercept", lambda **kw: built.append(1) or build(**kw))
    args = [*head, *QUIET, f"init={init}", f"output_dir={output}"]
    args += [f"data.{key}={value}" for key, value in data.items()]
    with caplog.at_level("ERROR", logger="unipercept.train"):
        assert main(args) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0], errors
    assert built == []  # stopped before any model was built
    if case == "best_is_a_file":
        assert (output / "checkpoints" / "best").read_text() == "the user's file"
    else:
        assert not output.exists()


@pytest.fixture(scope="module")
def uninext_init(fixtures_dir, tmp_path_factory) -> Path:
    """A UNINEXT model folder of the fixture's tiny architecture (R50 layout), freshly
    initialised as UNINEXT builds it, at 128/192: whatever it scores, training has to earn.
    (The fixture's own weights are seeded noise with a deliberately huge encoder objectness
    weight, a poor start for training.)"""
    from unipercept.modeling.uninext.build import architecture_from_shapes, build_uninext
    from unipercept.modeling.uninext.convert import BUILDER

    folder = fixtures_dir / "uninext_r50_tiny"
    if not folder.is_dir():
        pytest.skip(f"UNINEXT reference fixture not found at {folder}")
    weights = load_file(str(folder / "weights.safetensors"))
    architecture = architecture_from_shapes(
        {key: tuple(value.shape) for key, value in weights.items()}, template_size=64
    )
    torch.manual_seed(0)
    model = build_uninext(**architecture)
    config = {"_target_": BUILDER, **architecture}
    return save_pretrained(
        model,
        tmp_path_factory.mktemp("uninext") / "uninext-tiny",
        config=config,
        preprocess={"short_size": 128, "max_size": 192, "video_size": 128},
    )


def test_a_uninext_model_fine_tunes_with_its_own_losses(world, uninext_init, tmp_path):
    """``init`` a UNINEXT folder: UNINEXT's criterion and module names are taken, the held-out
    mask AP rises, and the export answers as the run's best checkpoint, scored as ``python -m
    unipercept.evaluate`` scores it."""
    from unipercept import load_model
    from unipercept.evaluate import evaluate_files, predict_coco
    from unipercept.export.cli import main as export_main
    from unipercept.modeling.uninext import Uninext

    coco = world / "coco"
    args, output, val = shapes_finetune(world, tmp_path, uninext_init)
    assert main(args) == 0
    checkpoints = output / "checkpoints"
    best = json.loads((checkpoints / "best.json").read_text())
    # From nothing (AP 0) to 0.19-0.28 over three seeds of this run.
    assert best["metric"] == "mask_ap" and best["value"] >= best["initial"] + 0.05, best
    recorded = yaml.safe_load((checkpoints / "best" / "config.yaml").read_text())
    assert recorded["criterion"]["_target_"] == "unipercept.criterion.UninextCriterion"
    assert recorded["stage"]["frozen"] == ["text_encoder.", "backbone."]
    assert recorded["model"]["_target_"].endswith("build_uninext")

    exported = tmp_path / "exported"
    assert export_main([str(output), str(exported)]) == 0
    model = load_model(str(exported))
    assert isinstance(model, Uninext)
    # Images and videos at the resolution it was trained and scored at (128, not 480).
    assert model.preprocess_settings == {"short_size": 128, "max_size": 192, "video_size": 128}
    run = load_model(str(output))  # predict --checkpoint RUN: the best checkpoint, as exported
    assert isinstance(run, Uninext) and run.checkpoint_step == best["step"]
    results = tmp_path / "results.json"
    predict_coco(val, coco / "val", results, with_masks=True, model_name=str(exported))
    assert evaluate_files("insseg", val, results)["segm"]["ap"] == pytest.approx(
        best["value"], abs=1e-9
    )


@pytest.mark.parametrize("case", ["image_model_on_pairs", "uninext_criterion_for_unipercept"])
def test_uninext_fine_tune_errors_are_one_line(
    world, uninext_init, tiny_model, tmp_path, caplog, case
):
    output = tmp_path / "out"
    if case == "image_model_on_pairs":
        # An image-stage UNINEXT (no re-id head, no template encoder) cannot learn association.
        config = yaml.safe_load((uninext_init / "config.yaml").read_text())
        config.update(reid_layers=0, reid_points=0, template_backbone=None)
        image_model = build_uninext_from_config(config)
        folder = save_pretrained(
            image_model, tmp_path / "image-model", config=config, preprocess={"short_size": 128}
        )
        args = finetune_args(
            output,
            folder,
            "finetune=ytvis",
            "stage.video_frames=2",
            f"data.json={world / 'ytvis/train.json'}",
            f"data.images={world / 'ytvis/train/JPEGImages'}",
        )
        message = "is a UNINEXT image model (no re-id head) and cannot train association"
    else:
        coco = world / "coco"
        args = finetune_args(
            output,
            tiny_model,
            "finetune=coco",
            "criterion=uninext",
            f"data.json={coco / 'annotations/instances_train.json'}",
            f"data.images={coco / 'train'}",
        )
        message = "criterion=uninext: UNINEXT's losses train UNINEXT models"
    with caplog.at_level("ERROR", logger="unipercept.train"):
        assert main(args) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0], errors
    assert not output.exists()


def build_uninext_from_config(model_config: dict):
    from unipercept.modeling.uninext.build import build_uninext

    return build_uninext(**{k: v for k, v in model_config.items() if k != "_target_"})


@pytest.mark.parametrize("frames", [1, 2])
def test_a_uninext_model_trains_its_re_id_head_on_pairs_of_frames(
    world, uninext_init, tmp_path, frames
):
    """YouTube-VIS data: key frames train the detector; with ``stage.video_frames=2`` a second
    frame of each clip trains the re-id head with UNINEXT's losses (alone: it reads detached
    inputs), and without one the head is left as it was."""
    output = tmp_path / "run"
    args = finetune_args(
        output,
        uninext_init,
        "finetune=ytvis",
        f"stage.video_frames={frames}",
        f"data.json={world / 'ytvis/train.json'}",
        f"data.images={world / 'ytvis/train/JPEGImages'}",
    )
    assert main([*args, "stage.max_steps=2", "finetune.eval_every=2"]) == 0
    best = json.loads((output / "checkpoints" / "best.json").read_text())
    assert best["metric"] == "vis_ap" and best["step"] == 2
    before = load_file(str(uninext_init / "model.safetensors"))
    after = load_file(str(output / "checkpoints" / "best" / "model.safetensors"))
    changed = {key.split(".")[0] for key in before if not torch.equal(before[key], after[key])}
    assert "transformer" in changed and "class_embed" in changed
    assert ("reid_head" in changed) == (frames == 2), changed
    assert not changed & {"text_encoder", "backbone", "template"}  # frozen, or not trained


def test_a_uninext_model_fine_tunes_on_referring_expressions(world, uninext_init, tmp_path):
    """RefCOCO-style data: expressions are pooled into one token, as UNINEXT grounds them."""
    output = tmp_path / "run"
    args = finetune_args(
        output,
        uninext_init,
        "finetune=refcoco",
        f"data.refs='{world / 'refcoco/refs(unc).p'}'",
        f"data.json={world / 'refcoco/instances.json'}",
        f"data.images={world / 'refcoco/images'}",
    )
    assert main([*args, "stage.max_steps=2", "finetune.eval_every=2"]) == 0
    best = json.loads((output / "checkpoints" / "best.json").read_text())
    assert best["metric"] == "P@0.5" and best["step"] == 2
    assert 0.0 <= best["value"] <= 1.0


def test_a_released_uninext_checkpoint_is_an_init(world, uninext_init, fixtures_dir, tmp_path):
    """A ``.pth`` as UNINEXT releases it is converted on load (here the fixture's, in the
    released layout), and the run records the converted architecture."""
    checkpoint = fixtures_dir / "uninext_r50_tiny" / "checkpoint.pth"
    coco = world / "coco"
    output = tmp_path / "run"
    args = finetune_args(
        output,
        checkpoint,
        "finetune=coco",
        f"data.json={coco / 'annotations/instances_train.json'}",
        f"data.images={coco / 'train'}",
        "trainer.short_sizes=[128]",
        "trainer.max_size=192",
    )
    assert main([*args, "stage.max_steps=1", "finetune.eval_every=1"]) == 0
    recorded = yaml.safe_load((output / "checkpoints" / "best" / "config.yaml").read_text())
    expected = yaml.safe_load((uninext_init / "config.yaml").read_text())
    assert recorded["model"] == {**expected, "template_size": 256}  # UNINEXT's default side


def test_a_uninext_model_fine_tunes_on_boxes_alone(world, uninext_init, tmp_path):
    """``data.masks=false``: no mask losses (BoxInst is not ported), scored by box AP."""
    coco = world / "coco"
    output = tmp_path / "run"
    args = finetune_args(
        output,
        uninext_init,
        "finetune=coco",
        "data.masks=false",
        f"data.json={coco / 'annotations/instances_train.json'}",
        f"data.images={coco / 'train'}",
    )
    assert main([*args, "stage.max_steps=2", "finetune.eval_every=2"]) == 0
    best = json.loads((output / "checkpoints" / "best.json").read_text())
    assert best["metric"] == "box_ap" and best["step"] == 2
    before = load_file(str(uninext_init / "model.safetensors"))
    after = load_file(str(output / "checkpoints" / "best" / "model.safetensors"))
    mask_branch = [key for key in before if key.startswith("mask_branch.")]
    assert mask_branch and all(torch.equal(before[k], after[k]) for k in mask_branch)
