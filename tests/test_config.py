"""Every shipped config composes and instantiates; configs resolve from the installed package."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from functools import partial

import pytest
import torch

from unipercept import config

from .conftest import REPO_ROOT


def test_config_dir_is_the_installed_package_data():
    directory = config.config_dir()
    assert (directory / "train.yaml").is_file()
    assert "train" in config.list_configs()
    assert "optim/adamw" in config.list_configs()
    # Every yaml file in the repository's conf/ is visible through the package.
    on_disk = sorted(
        str(p.relative_to(REPO_ROOT / "conf").with_suffix(""))
        for p in (REPO_ROOT / "conf").rglob("*.yaml")
    )
    assert config.list_configs() == on_disk


@pytest.mark.parametrize("name", config.list_configs())
def test_every_config_composes_and_instantiates(name):
    if name.startswith("finetune/"):
        # A fine-tune option overrides train.yaml's stage, so it composes inside train.yaml.
        composed = config.compose("train", [f"finetune={name.split('/', 1)[1]}"]).finetune
    elif "/" in name:
        group, option = name.rsplit("/", 1)
        composed = config.compose_group_option(group, option)
    else:
        # train.yaml needs a stage (its default is ???); any stage composes.
        composed = config.compose(name, ["stage=2_image_joint"] if name == "train" else [])
    # UNINEXT's full-size models (0.2-1.4 G parameters) are built weight-free: the structure is
    # what a config decides; tests/modeling/uninext/test_full_size.py maps their checkpoints.
    device = torch.device("meta") if name.startswith("model/uninext_") else torch.device("cpu")
    with device:
        built = config.instantiate(composed)
    assert built is not None


def test_optimizer_config_builds_a_working_optimizer():
    factory = config.instantiate(config.compose("train", ["stage=2_image_joint"]).optim)[
        "optimizer"
    ]
    assert isinstance(factory, partial)
    parameter = torch.nn.Parameter(torch.ones(3))
    optimizer = factory([{"params": [parameter], "lr": 0.1}])
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["lr"] == 0.1
    parameter.sum().backward()
    optimizer.step()
    assert not torch.equal(parameter.detach(), torch.ones(3))


def test_training_stages_compose_and_fail_early():
    from hydra.errors import ConfigCompositionException, MissingConfigException

    with pytest.raises(ConfigCompositionException, match="You must specify 'stage'"):
        config.compose("train")
    third = config.compose("train", ["stage=3_video_joint"])
    assert third.stage.video_frames == 2 and third.stage.annotation_from_backbone
    assert third.stage.frozen == ["prompt_encoders.category.text.model."]
    assert set(third.stage.mixture.datasets) == set(third.stage.mixture.ratios)
    synthetic = config.compose("train", ["stage=1_pretrain", "stage/mixture=synthetic_stage1"])
    assert list(synthetic.stage.mixture.datasets) == ["synthetic_coco_boxes"]
    with pytest.raises((ConfigCompositionException, MissingConfigException)):
        config.compose("train", ["stage=4_nonexistent"])


def test_overrides_apply_and_unknown_keys_fail():
    composed = config.compose("train", ["stage=2_image_joint", "optim.optimizer.lr=0.5", "seed=3"])
    assert composed.optim.optimizer.lr == 0.5 and composed.seed == 3
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        config.compose("train", ["stage=2_image_joint", "optim.optimizer.no_such_key=1"])


def test_unknown_config_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown config 'nope'"):
        config.compose("nope")
    with pytest.raises(ValueError, match=r"no config optim/nope\.yaml"):
        config.compose_group_option("optim", "nope")


def test_wheel_ships_the_configs(tmp_path):
    """Configs resolve from an installed wheel, not only from a checkout."""
    # The compiled op is not what this test is about; skipping it keeps the build quick.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO_ROOT),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "UNIPERCEPT_NO_EXTENSION": "1"},
    )
    (wheel,) = tmp_path.glob("unipercept-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for option in config.list_configs():
        assert f"unipercept/conf/{option}.yaml" in names
    # So do the bundled model and the samples.
    assets = REPO_ROOT / "src" / "unipercept" / "assets"
    for path in (*assets.glob("unipercept-tiny/*"), *assets.glob("samples/*")):
        assert f"unipercept/assets/{path.relative_to(assets)}" in names
    # Installed from the wheel (not the checkout), the package composes from its own copy.
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    code = (
        "from unipercept import config;"
        "print(config.config_dir()); "
        "print(config.compose('train', ['stage=2_image_joint']).optim.optimizer._target_)"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    location, target = out.stdout.split()
    assert location == str(site / "unipercept" / "conf")
    assert target == "torch.optim.AdamW"


def test_model_part_configs_build_real_modules():
    from unipercept.modeling import DeformableDETR
    from unipercept.modeling.backbone import HFBackbone, MobileNetV2

    backbone = config.instantiate(config.compose_group_option("model/backbone", "resnet50"))
    assert isinstance(backbone, HFBackbone) and backbone.out_strides == (8, 16, 32)
    maps = backbone(torch.zeros(1, 3, 64, 96))
    assert [tuple(m.shape[2:]) for m in maps] == [(8, 12), (4, 6), (2, 3)]
    mobilenet = config.instantiate(config.compose_group_option("model/backbone", "mobilenet_v2"))
    assert isinstance(mobilenet, MobileNetV2) and mobilenet.out_channels == (32, 96, 1280)
    detector = config.instantiate(config.compose_group_option("model", "deformable_detr"))
    assert isinstance(detector, DeformableDETR) and detector.box_refine
    assert len(detector.decoder.layers) == 6
    from unipercept.modeling.prompt import TextEncoder

    encoder = config.instantiate(config.compose_group_option("model/text_encoder", "minilm"))
    assert isinstance(encoder, TextEncoder)
    assert encoder.model.config.hidden_size == 384 and encoder.model.config.model_type == "bert"


def test_unipercept_configs_build_the_model_tasks_and_criterion():
    from unipercept.criterion import UniPerceptCriterion
    from unipercept.modeling import UniPercept
    from unipercept.tasks import BoxNMS, InstanceSegmentationTask, MatrixNMS

    model = config.instantiate(config.compose_group_option("model", "unipercept"))
    assert isinstance(model, UniPercept)
    assert set(model.prompt_encoders) == {"category", "expression", "annotation"}
    assert model.prompt_encoders["category"].text.projection[0].out_features == 256
    assert all(p.requires_grad for p in model.heads.parameters())  # backbone stem: freeze_at
    frozen = config.instantiate(config.compose_group_option("model", "unipercept_frozen_detector"))
    trainable = {n.split(".")[1] for n, p in frozen.named_parameters() if p.requires_grad}
    assert trainable == {"mask_branch", "controller", "quality"}
    with_nms = config.compose(
        "train", ["stage=2_image_joint", "+task=insseg", "task/suppression=matrix_nms"]
    ).task
    task = config.instantiate(with_nms)
    assert isinstance(task, InstanceSegmentationTask) and isinstance(task.suppression, MatrixNMS)
    default = config.instantiate(config.compose_group_option("task", "det")).suppression
    assert isinstance(default, BoxNMS) and default.across_labels and default.iou_threshold == 0.9
    criterion = config.instantiate(config.compose_group_option("criterion", "unipercept"))
    assert isinstance(criterion, UniPerceptCriterion) and criterion.weight_dict["loss_dice"] == 5.0


def test_video_task_configs_pick_a_tracker_per_video():
    from unipercept.tasks import MultiObjectTrackingTask, VideoInstanceSegmentationTask
    from unipercept.tracking import FlowTracker, IdolTracker, QDTrack

    mot = config.instantiate(config.compose_group_option("task", "mot"))
    assert isinstance(mot, MultiObjectTrackingTask)
    first, second = mot.tracker(), mot.tracker()
    assert isinstance(first, QDTrack) and first is not second  # a fresh tracker per video
    assert isinstance(
        config.instantiate(config.compose_group_option("task", "vis")).tracker(), IdolTracker
    )
    overridden = config.compose(
        "train",
        [
            "stage=2_image_joint",
            "+task=vis",
            "tracker@task.tracker=flow",
            "task.tracker.max_unmatched=2",
        ],
    ).task
    vis = config.instantiate(overridden)
    assert isinstance(vis, VideoInstanceSegmentationTask)
    tracker = vis.tracker()
    assert isinstance(tracker, FlowTracker) and tracker.max_unmatched == 2


@pytest.mark.parametrize("name", ["mot", "mots", "vis"])
def test_tracking_task_configs_match_the_task_defaults(name):
    """The command line builds tasks from their classes' defaults (``TASKS[name]()``), training
    and Hydra users from conf/task: both answer each object once per frame, and vis's IDOL
    tracker has the class's thresholds."""
    from unipercept.tasks import TASKS, BoxNMS

    configured = config.instantiate(config.compose_group_option("task", name))
    default = TASKS[name]()
    for task in (configured, default):
        suppression = task.detector.suppression
        assert isinstance(suppression, BoxNMS) and suppression.across_labels
        assert suppression.iou_threshold == 0.9
    ours, theirs = configured.tracker(), default.tracker()
    assert type(ours) is type(theirs)

    def settings(tracker) -> dict:
        return {key: value for key, value in vars(tracker).items() if not key.startswith("_")}

    assert settings(ours) == settings(theirs)
