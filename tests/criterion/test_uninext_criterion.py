"""UNINEXT's training losses (``unipercept.criterion.UninextCriterion``): SimOTA's assignment,
the token-level class cost and loss, the mask targets at stride 4, and with the fixture's tiny
UNINEXT, that a training step reaches every part it should and fits a batch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from unipercept.criterion import UninextCriterion, total_loss
from unipercept.criterion.uninext_criterion import pair_loss, token_focal_loss
from unipercept.criterion.uninext_matching import (
    best_queries,
    class_cost,
    hungarian_match,
    simota_assign,
)
from unipercept.structures import CategoryPrompt, ExpressionPrompt, ImageBatch, Instances


def focal(p: torch.Tensor, target: float, alpha=0.25, gamma=2.0) -> torch.Tensor:
    """The focal loss of probabilities ``p`` for one target value, written out."""
    if target == 1.0:
        return -alpha * (1 - p) ** gamma * torch.log(p)
    return -(1 - alpha) * p**gamma * torch.log(1 - p)


def test_class_cost_averages_the_focal_cost_over_each_objects_tokens():
    torch.manual_seed(0)
    probability = torch.rand(7, 12).clamp(0.01, 0.99)
    positive = torch.zeros(3, 12, dtype=torch.bool)
    positive[0, [2]] = True
    positive[1, [4, 5, 6]] = True
    positive[2, [0, 11]] = True
    cost = class_cost(probability, positive, 0.25, 2.0)
    for t in range(3):
        tokens = positive[t].nonzero()[:, 0]
        expected = (focal(probability[:, tokens], 1.0) - focal(probability[:, tokens], 0.0)).mean(1)
        torch.testing.assert_close(cost[:, t], expected, rtol=1e-4, atol=1e-5)


def test_token_focal_loss_counts_only_the_prompts_tokens():
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 8)
    targets = (torch.rand(2, 5, 8) > 0.7).float()
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, :3] = True
    mask[1, :6] = True
    loss = token_focal_loss(logits, targets, mask, 0.25, 2.0)
    changed = logits.clone()
    changed[0, :, 3:] = 50.0  # padding tokens: whatever they score costs nothing
    changed[1, :, 6:] = -50.0
    assert token_focal_loss(changed, targets, mask, 0.25, 2.0) == pytest.approx(float(loss))
    p = logits.sigmoid()
    expected = sum(
        float(
            torch.where(
                targets[b, :, : int(mask[b].sum())] > 0,
                focal(p[b, :, : int(mask[b].sum())], 1.0),
                focal(p[b, :, : int(mask[b].sum())], 0.0),
            ).sum()
        )
        for b in range(2)
    )
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def boxes_around(centre: tuple[float, float], count: int, generator) -> torch.Tensor:
    """``count`` cxcywh boxes jittered around a 0.2-wide box at ``centre``."""
    base = torch.tensor([*centre, 0.2, 0.2])
    return base + (torch.rand(count, 4, generator=generator) - 0.5) * torch.tensor(
        [0.04, 0.04, 0.06, 0.06]
    )


def test_simota_gives_each_object_its_dynamic_k_best_queries():
    generator = torch.Generator().manual_seed(0)
    targets = torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.75, 0.7, 0.2, 0.2]])
    queries = torch.cat(
        [
            boxes_around((0.25, 0.25), 12, generator),
            boxes_around((0.75, 0.7), 12, generator),
            torch.tensor([[0.5, 0.95, 0.05, 0.05]]).expand(6, 4),  # near no object
        ]
    )
    probability = torch.full((len(queries), 4), 0.3)
    positive = torch.tensor([[True, False, False, False], [False, True, True, False]])
    query_index, target_index, _ = simota_assign(probability, queries, positive, targets)
    assert query_index.tolist() == sorted(set(query_index.tolist()))  # each query once
    for target in range(2):
        mine = query_index[target_index == target]
        ious = _iou(queries, targets[target])
        k = max(1, int(ious.topk(10).values.sum()))
        assert len(mine) == k  # the sum of its 10 best IoUs, each near it
        cost = class_cost(probability, positive[target : target + 1], 0.25, 2.0)[:, 0] - 3 * _giou(
            queries, targets[target]
        )
        candidates = torch.arange(12) + 12 * target
        best = candidates[cost[candidates].argsort()[:k]]
        assert sorted(mine.tolist()) == sorted(best.tolist())
    assert not set(query_index.tolist()) & set(range(24, 30))


def test_simota_gives_every_object_a_query_when_they_compete():
    """Two objects at the same place with one candidate query each: the claimed query keeps
    its cheapest object and the other object takes the next cheapest query."""
    targets = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.21, 0.21]])
    queries = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.9, 0.9, 0.05, 0.05], [0.1, 0.1, 0.05, 0.05]])
    probability = torch.full((3, 1), 0.5)
    positive = torch.ones(2, 1, dtype=torch.bool)
    query_index, target_index, _ = simota_assign(probability, queries, positive, targets)
    assert sorted(target_index.tolist()) == [0, 1]
    assert len(set(query_index.tolist())) == 2
    assert target_index[query_index == 0].tolist() == [0]  # query 0 fits object 0 exactly


def test_simota_and_hungarian_with_no_objects():
    probability = torch.rand(5, 3)
    boxes = torch.rand(5, 4)
    empty = torch.zeros(0, 3, dtype=torch.bool)
    q, t, _ = simota_assign(probability, boxes, empty, torch.zeros(0, 4))
    assert len(q) == len(t) == 0
    matches = hungarian_match(
        torch.randn(1, 5, 3), boxes[None], [empty], [torch.zeros(0, 4)], cost_class=2.0
    )
    assert [len(q) for q, _ in matches] == [0]


def _iou(boxes: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from unipercept.structures import box_convert, box_iou

    return box_iou(
        box_convert(boxes, "cxcywh", "xyxy"), box_convert(target[None], "cxcywh", "xyxy")
    )[:, 0]


def _giou(boxes: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from unipercept.structures import box_convert, generalized_box_iou

    return generalized_box_iou(
        box_convert(boxes, "cxcywh", "xyxy"), box_convert(target[None], "cxcywh", "xyxy")
    )[:, 0]


class FakeOutputs(SimpleNamespace):
    """What the criterion reads of :class:`TrainingOutputs`, with masks given per query."""

    def mask_logits(self, layer, image, queries):
        return self.masks[image][queries]

    @property
    def num_layers(self):
        return self.logits.shape[0]


def perfect_outputs(target: Instances, grid: tuple[int, int], offset: int) -> FakeOutputs:
    """One image, one layer, 6 queries; query 2 predicts the object exactly, its mask logits
    +-20 on the target sampled every 4th pixel from ``offset``."""
    height, width = target.image_size
    box = target.boxes[0] / torch.tensor([width, height, width, height])
    cxcywh = torch.stack(
        [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]]
    )
    boxes = torch.tensor([[0.9, 0.9, 0.05, 0.05]]).repeat(6, 1)
    boxes[2] = cxcywh
    logits = torch.full((1, 1, 6, 1), -20.0)
    logits[0, 0, 2] = 20.0
    dense = F.pad(
        target.masks.float(), (0, grid[1] * 4 - width, 0, grid[0] * 4 - height)
    )  # (1, 4h, 4w)
    sampled = dense[:, offset::4, offset::4]
    masks = torch.full((6, *grid), -20.0)
    masks[2] = sampled[0] * 40 - 20
    return FakeOutputs(
        logits=logits,
        boxes=boxes[None, None],
        iou_logits=torch.full((1, 1, 6, 1), 20.0),
        enc_logits=logits[0],
        enc_boxes=boxes[None],
        token_mask=torch.ones(1, 1, dtype=torch.bool),
        masks=[masks],
    )


def test_a_perfect_answer_costs_nothing_and_masks_are_read_from_offset_two():
    masks = torch.zeros(1, 30, 40, dtype=torch.bool)
    masks[0, 5:23, 9:31] = True  # odd edges: sampling from offset 0 reads other pixels
    target = Instances(
        image_size=(30, 40),
        boxes=torch.tensor([[9.0, 5.0, 31.0, 23.0]]),
        labels=torch.tensor([0]),
        masks=masks,
    )
    criterion = UninextCriterion(ota=False)
    positive = [torch.ones(1, 1, dtype=torch.bool)]
    losses = criterion(perfect_outputs(target, (8, 10), offset=2), [target], positive)
    assert set(losses) == {
        "loss_ce",
        "loss_bbox",
        "loss_giou",
        "loss_boxiou",
        "loss_mask",
        "loss_dice",
        "loss_ce.enc",
        "loss_bbox.enc",
        "loss_giou.enc",
    }
    for name in ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice"):
        assert float(losses[name]) < 1e-3, (name, losses)
    # The IoU head is trained towards the box's IoU (1 here): a logit of 20 is right.
    assert float(losses["loss_boxiou"]) < 1e-3
    shifted = criterion(perfect_outputs(target, (8, 10), offset=0), [target], positive)
    assert float(shifted["loss_dice"]) > 0.05


def test_objects_the_caption_cannot_name_are_left_out():
    """A category beyond the 256-token caption has no token: its objects are not asked for."""
    target = Instances(
        image_size=(30, 40),
        boxes=torch.tensor([[9.0, 5.0, 31.0, 23.0], [0.0, 0.0, 10.0, 10.0]]),
        labels=torch.tensor([0, 1]),
    )
    outputs = perfect_outputs(
        target.replace(masks=torch.zeros(2, 30, 40, dtype=torch.bool)), (8, 10), 2
    )
    outputs.masks = None
    positive = [torch.tensor([[True], [False]])]
    only_first = UninextCriterion(ota=False)(outputs, [target], positive)
    alone = UninextCriterion(ota=False)(outputs, [target[[0]]], [positive[0][:1]])
    for name, value in alone.items():
        assert float(only_first[name]) == pytest.approx(float(value)), name
    assert "loss_mask" not in alone  # boxes only: no mask loss


@pytest.fixture(scope="module")
def uninext_train_model(fixtures_dir):
    from safetensors.torch import load_file

    from unipercept.modeling.uninext.build import architecture_from_shapes, build_uninext
    from unipercept.modeling.uninext.checkpoint import to_our_names

    folder = fixtures_dir / "uninext_r50_tiny"
    if not folder.is_dir():
        pytest.skip(f"UNINEXT reference fixture not found at {folder}")
    weights = load_file(str(folder / "weights.safetensors"))
    shapes = {key: tuple(value.shape) for key, value in weights.items()}
    model = build_uninext(**architecture_from_shapes(shapes, template_size=64))
    model.load_state_dict(to_our_names(weights), strict=True)
    return model


def batch_of_two():
    torch.manual_seed(0)
    images = ImageBatch.from_images([torch.randn(3, 96, 128), torch.randn(3, 80, 112)])
    first = torch.zeros(2, 96, 128, dtype=torch.bool)
    first[0, 10:40, 20:60] = True
    first[1, 50:90, 70:120] = True
    second = torch.zeros(1, 80, 112, dtype=torch.bool)
    second[0, 5:50, 5:50] = True
    targets = [
        Instances(
            image_size=(96, 128),
            boxes=torch.tensor([[20.0, 10, 60, 40], [70, 50, 120, 90]]),
            labels=torch.tensor([0, 2]),
            masks=first,
        ),
        Instances(
            image_size=(80, 112),
            boxes=torch.tensor([[5.0, 5, 50, 50]]),
            labels=torch.tensor([1]),
            masks=second,
        ),
    ]
    return images, targets


@pytest.mark.parametrize("kind", ["category", "expression"])
def test_a_step_reaches_every_part_but_the_video_heads(uninext_train_model, kind):
    from unipercept.modeling.uninext.training import encode_training_prompts, training_outputs

    model = uninext_train_model.train()
    images, targets = batch_of_two()
    if kind == "category":
        prompts = [CategoryPrompt(("person", "traffic light", "dog"))] * 2
    else:
        prompts = [ExpressionPrompt("the man on the left"), ExpressionPrompt("a small dog")]
        targets = [t[[0]].replace(labels=torch.zeros(1, dtype=torch.int64)) for t in targets]
    encoded = encode_training_prompts(model, prompts)
    if kind == "category":  # "traffic light" is two tokens of the caption
        assert encoded.positive[0].sum(1).tolist() == [1, 2, 1]
    criterion = UninextCriterion()
    losses = criterion(training_outputs(model, images, encoded), targets, encoded.positive)
    assert any(key.endswith(".aux0") for key in losses) and "loss_ce.enc" in losses
    model.zero_grad()
    total_loss(losses, criterion.weight_dict).backward()
    untouched = [
        name
        for name, parameter in model.named_parameters()
        if parameter.grad is None or not bool(parameter.grad.abs().sum() > 0)
    ]
    # The re-id head and the template encoder are the video heads; the resizer only feeds
    # denoising queries (not ported) and mixed selection (times 0).
    video = ("reid_head.", "template.", "resizer.", "transformer.resizer.")
    assert all(name.startswith(video) for name in untouched), untouched
    assert any(name.startswith("reid_head.") for name in untouched)


def test_training_steps_fit_a_batch(uninext_train_model):
    """Forty steps on one batch bring the weighted loss well down (bounded by steps)."""
    from unipercept.modeling.uninext.training import encode_training_prompts, training_outputs

    model = uninext_train_model.train()
    images, targets = batch_of_two()
    prompts = [CategoryPrompt(("person", "traffic light", "dog"))] * 2
    criterion = UninextCriterion()
    parameters = [p for n, p in model.named_parameters() if not n.startswith("text_encoder.")]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(parameters, lr=2e-4)
    history = []
    try:
        for _ in range(40):
            encoded = encode_training_prompts(model, prompts)
            losses = criterion(training_outputs(model, images, encoded), targets, encoded.positive)
            loss = total_loss(losses, criterion.weight_dict)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            history.append(float(loss.detach()))
    finally:
        with torch.no_grad():  # the module-scoped model goes back as it was
            for name, parameter in model.named_parameters():
                parameter.copy_(before[name])
    assert sum(history[-5:]) / 5 < 0.5 * sum(history[:5]) / 5, history


def test_pair_loss_is_the_log_of_one_plus_every_negative_over_every_positive():
    positive = torch.tensor([2.0, 0.5])
    negative = torch.tensor([1.0, -1.0, 0.0])
    expected = torch.log(1 + sum(torch.exp(n - p) for p in positive for n in negative))
    assert float(pair_loss(positive, negative)) == pytest.approx(float(expected), rel=1e-6)
    assert float(pair_loss(positive, negative[:0])) == 0.0  # nothing to push away
    assert float(pair_loss(positive[:0], negative)) == 0.0


def test_best_query_is_each_objects_cheapest_assigned_one():
    matching = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    cost = torch.tensor([[3.0, 0.0], [1.0, 0.0], [5.0, 2.0], [0.0, 0.0]])
    assert best_queries(matching, cost).tolist() == [1, 2]  # query 3 is cheaper but unassigned


def test_re_id_losses_follow_objects_across_the_two_frames():
    """The key object's embedding against the reference frame: the loss is low when the
    reference queries on the same object share its embedding, high when a query elsewhere
    does; objects absent from the reference frame are left out."""
    key_target = Instances(
        image_size=(40, 40),
        boxes=torch.tensor([[4.0, 4, 16, 16], [24.0, 24, 36, 36]]),
        labels=torch.tensor([0, 0]),
        track_ids=torch.tensor([7, 9]),
    )
    ref_target = Instances(
        image_size=(40, 40),
        boxes=torch.tensor([[6.0, 6, 18, 18]]),  # object 7 moved a little; 9 is gone
        labels=torch.tensor([0]),
        track_ids=torch.tensor([7]),
    )
    boxes = torch.tensor(
        [[0.3, 0.3, 0.3, 0.3], [0.31, 0.3, 0.3, 0.3], [0.75, 0.75, 0.3, 0.3], [0.5, 0.9, 0.1, 0.1]]
    )
    logits = torch.full((1, 1, 4, 1), 2.0)

    def outputs(embeddings):
        return FakeOutputs(
            logits=logits,
            boxes=boxes[None, None],
            iou_logits=torch.zeros(1, 1, 4, 1),
            enc_logits=logits[0],
            enc_boxes=boxes[None],
            token_mask=torch.ones(1, 1, dtype=torch.bool),
            embeddings=embeddings[None],
        )

    key_boxes = torch.tensor(
        [
            [0.25, 0.25, 0.3, 0.3],
            [0.5, 0.5, 0.05, 0.05],
            [0.75, 0.75, 0.3, 0.3],
            [0.1, 0.9, 0.1, 0.1],
        ]
    )
    key = outputs(torch.eye(4) * 3)
    key.boxes = key_boxes[None, None]
    criterion = UninextCriterion(ota=True)
    positive = [torch.ones(1, 1, dtype=torch.bool)]
    # SimOTA gives object 7 one positive in the reference frame (query 0: k is the sum of its
    # IoUs, 1.94, rounded down); query 1 overlaps it but is not chosen, so it is a negative.
    follows = torch.eye(4) * 3  # query 0 looks like the key query, the others do not
    swapped = follows[[3, 1, 2, 0]]  # a query far from it does instead
    torch.manual_seed(0)
    good = criterion(key, [key_target], positive, outputs(follows), [ref_target])
    bad = criterion(key, [key_target], positive, outputs(swapped), [ref_target])
    assert float(good["loss_reid"]) < 0.01 < 1.0 < float(bad["loss_reid"])
    assert float(good["loss_reid_aux"]) < float(bad["loss_reid_aux"])
    gone = ref_target[torch.zeros(1, dtype=torch.bool)]
    none = criterion(key, [key_target], positive, outputs(follows), [gone])
    assert float(none["loss_reid"]) == 0.0 and float(none["loss_reid_aux"]) == 0.0


def test_gradient_checkpointing_gives_the_same_losses_and_gradients(uninext_train_model):
    from unipercept.modeling.uninext.training import encode_training_prompts, training_outputs

    model = uninext_train_model.train()
    images, targets = batch_of_two()
    prompts = [CategoryPrompt(("person", "traffic light", "dog"))] * 2
    criterion = UninextCriterion()
    results = []
    try:
        for enabled in (False, True):
            model.enable_gradient_checkpointing(enabled)
            model.zero_grad()
            torch.manual_seed(0)  # the text encoder's dropout (UNINEXT trains with BERT's 0.1)
            encoded = encode_training_prompts(model, prompts)
            losses = criterion(training_outputs(model, images, encoded), targets, encoded.positive)
            total_loss(losses, criterion.weight_dict).backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            results.append((losses, grads))
    finally:
        model.enable_gradient_checkpointing(False)
    (plain, plain_grads), (checkpointed, checkpointed_grads) = results
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name])
    assert plain_grads.keys() == checkpointed_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(checkpointed_grads[name], plain_grads[name])
