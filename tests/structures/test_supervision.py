"""Instances.to_supervision: the fields as a supervision.Detections (supervision is optional)."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import torch

from unipercept.structures import Instances, RLEMasks


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


needs_supervision = pytest.mark.skipif(
    not _importable("supervision"),
    reason="supervision is optional: pip install supervision",
)


def _instances(**extra) -> Instances:
    masks = torch.zeros(3, 40, 60, dtype=torch.bool)
    masks[0, 5:15, 10:30] = True
    masks[1, 20:40, 0:10] = True
    masks[2, 0:2, 58:60] = True
    fields = dict(
        boxes=torch.tensor([[10.0, 5, 30, 15], [0, 20, 10, 40], [58, 0, 60, 2]]),
        scores=torch.tensor([0.9, 0.5, 0.2]),
        labels=torch.tensor([2, 0, 1]),
        masks=masks,
    )
    fields.update(extra)
    return Instances((40, 60), **fields)


def test_a_missing_package_is_an_import_error_naming_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "supervision", None)  # what an absent package does to import
    with pytest.raises(ImportError, match="pip install supervision"):
        _instances().to_supervision()


@needs_supervision
def test_every_field_is_carried_over():
    instances = _instances(track_ids=torch.tensor([7, 3, 11]))
    detections = instances.to_supervision()
    assert isinstance(detections, importlib.import_module("supervision").Detections)
    assert len(detections) == 3
    np.testing.assert_array_equal(detections.xyxy, instances.boxes.numpy())
    np.testing.assert_array_equal(detections.confidence, instances.scores.numpy())
    assert detections.class_id.tolist() == [2, 0, 1]
    assert detections.tracker_id.tolist() == [7, 3, 11]
    assert detections.mask.dtype == bool and detections.mask.shape == (3, 40, 60)
    np.testing.assert_array_equal(detections.mask, instances.masks.numpy())
    # supervision's own computations see the same objects: areas from the masks, filtering.
    assert detections.area.tolist() == [200, 200, 4]
    confident = detections[detections.confidence > 0.4]
    assert confident.tracker_id.tolist() == [7, 3]


@needs_supervision
def test_unset_fields_stay_unset():
    detections = Instances((40, 60), boxes=torch.tensor([[0.0, 0, 5, 5]])).to_supervision()
    assert detections.xyxy.dtype == np.float32
    assert detections.confidence is None and detections.class_id is None
    assert detections.mask is None and detections.tracker_id is None


@needs_supervision
def test_rle_masks_are_decoded_and_give_boxes_when_there_are_none():
    dense = _instances()
    instances = dense.replace(boxes=None, masks=RLEMasks.from_dense(dense.masks))
    detections = instances.to_supervision()
    np.testing.assert_array_equal(detections.mask, dense.masks.numpy())
    np.testing.assert_array_equal(detections.xyxy, dense.boxes.numpy())


@needs_supervision
def test_reduced_precision_tensors_come_out_as_float32():
    instances = _instances(scores=torch.tensor([0.9, 0.5, 0.2], dtype=torch.bfloat16))
    instances = instances.replace(boxes=instances.boxes.half())
    detections = instances.to_supervision()
    assert detections.xyxy.dtype == detections.confidence.dtype == np.float32


@needs_supervision
def test_empty_and_box_less_instances():
    assert len(Instances((40, 60)).to_supervision()) == 0
    with pytest.raises(ValueError, match="needs boxes or masks.*scores"):
        Instances((40, 60), scores=torch.tensor([0.5])).to_supervision()
