"""The prompt-driven model: every image task trains on CPU, prompts dispatch by kind, open
vocabulary, frozen-detector mode, the prior channel."""

from __future__ import annotations

import pytest
import torch

from unipercept.criterion import HungarianMatcher, UniPerceptCriterion, total_loss
from unipercept.modeling.backbone import MobileNetV2
from unipercept.modeling.prompt import PriorConv2d, add_prior_channel
from unipercept.structures import (
    AnnotationPrompt,
    CategoryPrompt,
    ExpressionPrompt,
    ImageBatch,
    Instances,
    boxes_to_masks,
)
from unipercept.tasks import TASKS

from .tiny import tiny_unipercept


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny_unipercept()


def images() -> ImageBatch:
    generator = torch.Generator().manual_seed(0)
    return ImageBatch.from_images(
        [torch.randn(3, 96, 128, generator=generator), torch.randn(3, 80, 100, generator=generator)]
    )


def targets(with_masks: bool, single: bool = False) -> list[Instances]:
    specs = [
        ((96, 128), [[10.0, 10.0, 50.0, 60.0], [60.0, 20.0, 120.0, 90.0]], [0, 1]),
        ((80, 100), [[5.0, 5.0, 40.0, 30.0]], [0]),
    ]
    result = []
    for size, boxes, labels in specs:
        if single:
            boxes, labels = boxes[:1], [0]
        box_tensor = torch.tensor(boxes)
        masks = boxes_to_masks(box_tensor, size) if with_masks else None
        result.append(
            Instances(
                size,
                boxes=box_tensor,
                labels=torch.tensor(labels),
                masks=masks,
                track_ids=torch.arange(len(labels)),
            )
        )
    return result


PROMPTS = {
    "det": lambda: [CategoryPrompt(("cat", "dog")), CategoryPrompt(("cat",))],
    "insseg": lambda: [CategoryPrompt(("cat", "dog")), CategoryPrompt(("cat",))],
    "rec": lambda: [ExpressionPrompt("the cat on the left"), ExpressionPrompt("a small cat")],
    "res": lambda: [ExpressionPrompt("the cat on the left"), ExpressionPrompt("a small cat")],
}


@pytest.mark.parametrize("task_name", ["det", "insseg", "rec", "res"])
def test_each_image_task_forward_loss_backward_and_postprocess(model, task_name):
    single = TASKS[task_name].prompt_kind == "expression"
    task = TASKS[task_name](**({} if single else {"score_threshold": 0.0}))
    model.train()
    model.zero_grad()
    batch = images()
    output = model(batch, PROMPTS[task_name]())
    truth = targets(with_masks=task.with_masks, single=single)
    criterion = UniPerceptCriterion(matcher=HungarianMatcher())
    losses = criterion(output, truth, batch)
    expected = {
        "loss_class",
        "loss_bbox",
        "loss_giou",
        "loss_iou",
        "loss_class.aux0",
        "loss_class.enc",
    }
    expected |= {"loss_mask", "loss_dice"} if task.with_masks else {"loss_proj", "loss_pairwise"}
    assert expected <= set(losses)
    loss = total_loss(losses, criterion.weight_dict)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.heads.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        results = task.postprocess(model(batch, PROMPTS[task_name]()), batch)
    assert [r.image_size for r in results] == [(96, 128), (80, 100)]
    for result in results:
        assert (result.masks is not None) == task.with_masks
        if single:
            assert len(result) == 1
        if task.with_masks and len(result):
            assert result.masks.shape[1:] == result.image_size


def test_names_never_seen_in_training_are_scored(model):
    model.eval()
    batch = images()
    with torch.no_grad():
        output = model(
            batch,
            [
                CategoryPrompt(("zebra", "teapot", "red double-decker bus")),
                CategoryPrompt(("teapot",)),
            ],
        )
    assert output.logits.shape[-1] == 3
    assert output.class_valid.tolist() == [[True, True, True], [True, False, False]]
    assert torch.isfinite(output.logits[:, 0]).all()
    assert bool((output.logits[:, 1, :, 1:] < -1e30).all())  # padded rows never score
    results = TASKS["det"](score_threshold=0.0, top_k=5).postprocess(output, batch)
    assert results[0].labels.max() < 3 and results[1].labels.max() == 0


def test_prompts_dispatch_by_kind_and_bad_batches_are_refused(model):
    batch = images()
    frame = torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8)
    annotation = AnnotationPrompt(frame, box=torch.tensor([10.0, 10.0, 50.0, 60.0]))
    with torch.no_grad():
        assert model(batch, [annotation, annotation]).logits.shape[-1] == 1
    with pytest.raises(ValueError, match="one kind of prompt"):
        model(batch, [CategoryPrompt(("cat",)), ExpressionPrompt("a cat")])
    with pytest.raises(ValueError, match="prompts is empty"):
        model(batch, [])
    with pytest.raises(ValueError, match="1 prompts for 2 images"):
        model(batch, [CategoryPrompt(("cat",))])
    text_only = tiny_unipercept(annotation=False)
    with pytest.raises(ValueError, match="no encoder for 'annotation' prompts"):
        text_only(batch, [annotation, annotation])


def test_precomputed_prompt_embedding_gives_the_same_output(model):
    model.eval()
    batch = images()
    prompts = PROMPTS["det"]()
    with torch.no_grad():
        direct = model(batch, prompts)
        reused = model(batch, model.encode_prompts(prompts))
    torch.testing.assert_close(direct.logits, reused.logits)


def test_frozen_detector_mode_trains_only_the_mask_branch():
    torch.manual_seed(0)
    model = tiny_unipercept()
    model.freeze_detector()
    model.train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert 0 < len(trainable) < len(before)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    batch = images()
    criterion = UniPerceptCriterion(matcher=HungarianMatcher())
    losses = criterion(model(batch, PROMPTS["insseg"]()), targets(with_masks=True), batch)
    total_loss(losses, criterion.weight_dict).backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed, "the mask branch did not train"
    assert all(
        name.startswith(("heads.mask_branch.", "heads.controller.", "heads.quality."))
        for name in changed
    ), sorted(changed)
    assert any(name.startswith("heads.mask_branch.") for name in changed)
    assert any(name.startswith("heads.controller.") for name in changed)


def test_prompt_conditioned_queries_change_the_predictions():
    torch.manual_seed(0)
    model = tiny_unipercept(prompt_conditioned_queries=True, two_stage=False).eval()
    batch = images()
    with torch.no_grad():
        cat = model(batch, [CategoryPrompt(("cat",))] * 2).hidden_states
        bus = model(batch, [CategoryPrompt(("bus",))] * 2).hidden_states
    assert not torch.allclose(cat, bus)


def test_stride4_masks_come_from_the_stride4_backbone_map():
    torch.manual_seed(0)
    model = tiny_unipercept(stride4=True).eval()
    batch = images()
    with torch.no_grad():
        output = model(batch, PROMPTS["insseg"]())
    assert output.mask_stride == 4 and output.mask_features.shape[-2:] == (24, 32)


def test_prior_channel_loads_three_channel_checkpoints_unconverted():
    rgb = MobileNetV2(out_strides=(8,))
    state = rgb.state_dict()
    four = add_prior_channel(MobileNetV2(out_strides=(8,)))
    four.load_state_dict(state, strict=True)  # no conversion of the 3-channel checkpoint
    conv = four.features[0][0]
    assert isinstance(conv, PriorConv2d) and conv.in_channels == 4
    original = state["features.0.0.weight"]
    torch.testing.assert_close(conv.weight[:, :3], original)
    torch.testing.assert_close(conv.weight[:, 3:], original.mean(1, keepdim=True))
    # A grey image with a uniform prior sees what an RGB-only model would with one more grey
    # channel folded in: the prior channel behaves as the RGB mean.
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        four.eval()
        rgb.eval()
        assert four(torch.cat([x, x.mean(1, keepdim=True)], 1))[0].shape == rgb(x)[0].shape
    with pytest.raises(ValueError, match="no Conv2d over 3 input channels"):
        add_prior_channel(torch.nn.Linear(3, 3))


def test_embedding_loss_between_two_frames(model):
    model.train()
    batch = images()
    criterion = UniPerceptCriterion(matcher=HungarianMatcher())
    key = model(batch, PROMPTS["det"]())
    reference = model(batch, PROMPTS["det"]())
    losses = criterion.embedding_loss(key, targets(False), reference, targets(False))
    assert set(losses) == {"loss_embed"} and torch.isfinite(losses["loss_embed"])
    losses["loss_embed"].backward()
    assert model.heads.embedding.layers[0].weight.grad is not None
    without_ids = [t.replace(track_ids=None) for t in targets(False)]
    with pytest.raises(ValueError, match="has no track_ids"):
        criterion.embedding_loss(key, without_ids, reference, targets(False))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = tiny_unipercept().train()
    batch = images()
    criterion = UniPerceptCriterion(matcher=HungarianMatcher())

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        torch.manual_seed(1)
        losses = criterion(model(batch, PROMPTS["det"]()), targets(False), batch)
        total_loss(losses, criterion.weight_dict).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.enable_gradient_checkpointing()
    assert model.encoder.gradient_checkpointing and model.decoder.gradient_checkpointing
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)
