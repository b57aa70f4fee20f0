"""Every reader reads the generated world: the generator writes the real formats, and the
readers (written from those formats' specifications) agree with it."""

from __future__ import annotations

import json

import pytest
import torch

from unipercept.data.datasets import (
    CocoReader,
    DavisReader,
    LasotReader,
    MotChallengeReader,
    RefCocoReader,
    RefYouTubeVosReader,
    YouTubeVisReader,
)
from unipercept.data.io import load_image
from unipercept.data.sampling import clip_from_frames
from unipercept.data.synthetic import generate

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "ring")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("world") / "small", seed=3, size="small")


def check_frames(sample) -> None:
    """Every frame's file exists and decodes to the size its annotations claim; masks agree
    with boxes."""
    for frame in sample.frames[:3]:
        image = load_image(frame.image)
        assert tuple(image.shape[1:]) == frame.image_size
        instances = frame.instances
        if instances.masks is not None and len(instances):
            masks = instances.masks.decode()
            assert masks.shape[1:] == frame.image_size
            assert bool(masks.flatten(1).any(1).all()), "an annotated object has an empty mask"


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco(world, split):
    reader = CocoReader(
        annotations=world.coco / "annotations" / f"instances_{split}.json",
        images=world.coco / split,
    )
    samples = reader.samples()
    assert len(samples) == world.images[split]
    assert set(reader.categories) <= set(SHAPES)
    crowd = sum(int(s.frames[0].ignore.sum()) for s in samples)
    assert sum(len(s.frames[0].instances) for s in samples) > crowd > 0 or split == "val"
    for sample in samples:
        check_frames(sample)


def test_refcoco(world):
    reader = RefCocoReader(
        refs=world.refcoco / "refs(unc).p",
        instances=world.refcoco / "instances.json",
        images=world.refcoco / "images",
    )
    samples = reader.samples()
    sentences = sum(len(s.expressions) for s in samples)
    assert sentences >= world.refs > 0
    for sample in samples:
        ids = set(sample.frames[0].instances.track_ids.tolist())
        assert all(set(e.target_ids) <= ids for e in sample.expressions)
        check_frames(sample)
    train = RefCocoReader(
        refs=world.refcoco / "refs(unc).p",
        instances=world.refcoco / "instances.json",
        images=world.refcoco / "images",
        split="train",
    ).samples()
    assert 0 < len(train) < len(samples)


@pytest.mark.parametrize(("split", "file"), [("train", "train.json"), ("val", "valid.json")])
def test_ytvis(world, split, file):
    folder = "train" if split == "train" else "valid"
    reader = YouTubeVisReader(
        annotations=world.ytvis / file, videos=world.ytvis / folder / "JPEGImages"
    )
    samples = reader.samples()
    assert len(samples) == world.videos[split]
    for sample in samples:
        assert sample.is_video and all(f.annotated for f in sample.frames)
        tracks = {int(i) for f in sample.frames for i in f.instances.track_ids.tolist()}
        assert tracks, "a generated video has objects"
        check_frames(sample)


@pytest.mark.parametrize("split", ["train", "val"])
def test_davis(world, split):
    samples = DavisReader(root=world.davis, year="2017", split=split).samples()
    assert len(samples) == world.videos[split]
    for sample in samples:
        assert sample.categories == ()
        check_frames(sample)
        clip = clip_from_frames(sample, [0, 1])
        assert clip.images[0].shape[1:] == clip.targets[0].image_size


@pytest.mark.parametrize(("split", "key"), [("train", "train"), ("test", "val")])
def test_lasot(world, split, key):
    samples = LasotReader(root=world.lasot, split=split).samples()
    assert len(samples) == world.lasot_sequences[key]
    for sample in samples:
        assert sample.frames[0].instances.track_ids.tolist() == [1]  # visible in the first frame
        assert len(sample.expressions) == 1  # nlp.txt
        check_frames(sample)


@pytest.mark.parametrize("split", ["train", "val"])
def test_mot(world, split):
    root = world.mot / f"MOTSynth-{split}"
    reader = MotChallengeReader(root=root)
    samples = reader.samples()
    assert len(samples) == world.mot_sequences[split]
    for sample in samples:
        assert reader.categories == ("pedestrian",)
        assert any(len(f.instances) for f in sample.frames)
        check_frames(sample)
        detections = reader.read_detections(sample.sample_id)
        assert set(detections) == set(range(1, len(sample.frames) + 1))


@pytest.mark.parametrize(("split", "folder"), [("train", "train"), ("val", "valid")])
def test_ref_youtube_vos(world, split, folder):
    samples = RefYouTubeVosReader(root=world.refytvos, split=folder).samples()
    assert len(samples) == world.videos[split]
    meta = json.loads(
        (world.refytvos / "meta_expressions" / folder / "meta_expressions.json").read_text()
    )
    assert sum(len(s.expressions) for s in samples) == sum(
        len(v["expressions"]) for v in meta["videos"].values()
    )
    for sample in samples:
        for expression in sample.expressions:
            (target,) = expression.target_ids
            assert any(target in f.instances.track_ids.tolist() for f in sample.frames)
        check_frames(sample)


def test_one_world_serves_every_prompt_kind(world):
    """The generated training data covers categories, expressions and annotations."""
    coco = CocoReader(
        annotations=world.coco / "annotations" / "instances_train.json", images=world.coco / "train"
    ).samples()
    labels = torch.cat([s.frames[0].instances.labels for s in coco])
    assert len(labels.unique()) >= 3


def test_the_synthetic_data_configs_read_the_generated_world(world, monkeypatch):
    from unipercept import config
    from unipercept.data import DatasetSpec

    monkeypatch.setenv("UNIPERCEPT_DATA", str(world.root.parent))
    world.root.rename(world.root.parent / "synthetic")
    try:
        names = [n.split("/")[1] for n in config.list_configs() if n.startswith("data/synthetic_")]
        assert len(names) == 9
        kinds = set()
        for name in names:
            spec = config.instantiate(config.compose_group_option("data", name))
            assert isinstance(spec, DatasetSpec) and spec.name == name
            assert spec.read(), f"{name} read no samples"
            kinds.add(spec.prompt_kind)
        assert kinds == {"category", "expression", "annotation"}
    finally:
        (world.root.parent / "synthetic").rename(world.root)
