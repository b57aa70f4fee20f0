"""UNINEXT's SOT and VOS sessions: the target is a template (the annotated region cropped with
context and encoded by the template branch), which stands in for the text prompt.

- SOT (``uninext_vid.py:478-542``, ``ONLINE_UPDATE`` on as evaluated): the first template and
  the latest updated one, concatenated; every ``update_interval`` (200) frames a frame whose
  top-1 score is above 0.7 gives a new latest template from its box. One box per frame.
- VOS (``inference_ytbvos_3f``, ``uninext_vid.py:798-960``): per object, the first template and
  the previous one; every object's top-1 mask probability goes to the original size and all
  objects are merged into one label map by soft aggregation; an object scoring >= 0.7 gets a new
  previous template from its region of the label map.

Templates are kept as plain (hidden, mask) tensor pairs, so a session snapshot holds them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unipercept.modeling.uninext.model import Uninext
from unipercept.modeling.uninext.postprocess import mask_probabilities, select_detections
from unipercept.modeling.uninext.postprocess_video import (
    probabilities_to_original,
    soft_aggregate,
    track_box,
    unscale_box,
    vos_template_update,
)
from unipercept.modeling.uninext.preprocess import UninextPreprocessor
from unipercept.modeling.uninext.template import TemplateTokens, concat_templates
from unipercept.structures import (
    AnnotationPrompt,
    ImageBatch,
    Instances,
    clip_boxes,
    masks_to_boxes,
)
from unipercept.tasks.session import VideoSession
from unipercept.tasks.uninext.common import box_to_input, prompt_mask_to_input, run_model


def _encode(model: Uninext, batch: ImageBatch, box: Tensor, prior: str | Tensor):
    """A template from the batch's first image: (hidden (1, T, Ct), mask (1, T) bool)."""
    tokens = model.encode_template(batch.tensor[0], box, prior=prior, image_padding=~batch.valid[0])
    return tokens.hidden, tokens.masks


def _mask_box(mask: Tensor) -> Tensor | None:
    """(4,) float32 xyxy around a mask's pixels, ``x2``/``y2`` one past the last (detectron2's
    ``BitMasks.get_bounding_boxes``, which gives a VOS annotation its box at input size), or
    None for an empty mask."""
    return masks_to_boxes(mask[None].bool())[0] if mask.any() else None


def _joined(first: tuple[Tensor, Tensor], latest: tuple[Tensor, Tensor]) -> TemplateTokens:
    return concat_templates(TemplateTokens(*first), TemplateTokens(*latest))


class UninextSotSession(VideoSession):
    """SOT: the box of one target, annotated in the first frame, in every frame.

    The first frame stepped is the annotated one (its box is returned as given).

    Args:
        prompt: the target's box in the first frame (a mask prompt gives its box).
        score_threshold: below this the target is reported absent (UNINEXT always reports
            its top-1 box: 0.0).
        online_update: concatenate the latest updated template with the first (UNINEXT's
            ``SOT.ONLINE_UPDATE``, on in its evaluation); off, the first template alone.
        update_interval, update_threshold: the latest template is replaced on frames whose
            index is a multiple of ``update_interval`` when the score is above
            ``update_threshold``.
    """

    def __init__(
        self,
        *,
        model: Uninext,
        preprocess: UninextPreprocessor,
        prompt: AnnotationPrompt,
        score_threshold: float,
        online_update: bool,
        update_interval: int,
        update_threshold: float,
    ) -> None:
        super().__init__(model=model, preprocess=preprocess)
        # Every frame stepped, the first too, must have the annotated frame's size.
        self.frame_size = prompt.image_size
        self.box = prompt.box  # (4,) xyxy in the first frame's pixels
        self.score_threshold = score_threshold
        self.online_update = online_update
        self.update_interval = update_interval
        self.update_threshold = update_threshold
        with torch.no_grad():
            batch = preprocess([prompt.frame], self.device)
            box = box_to_input(
                prompt.box.to(self.device),
                orig_size=prompt.image_size,
                image_size=batch.image_sizes[0],
            )
            self.first = _encode(model, batch, box, "box")
        self.latest = self.first

    def _step(self, frame: Tensor) -> Instances:
        size = (int(frame.shape[1]), int(frame.shape[2]))
        if self.frames_seen == 0:
            return Instances(
                size,
                boxes=clip_boxes(self.box[None].float().cpu(), size),
                scores=torch.ones(1),
                labels=torch.zeros(1, dtype=torch.int64),
                track_ids=torch.ones(1, dtype=torch.int64),
            )
        batch = self.preprocess([frame], self.device)
        image_size = batch.image_sizes[0]
        template = (
            _joined(self.first, self.latest) if self.online_update else TemplateTokens(*self.first)
        )
        output = run_model(
            self.model, batch, template.hidden, template.masks, pooled=True, with_masks=False
        )
        detections = select_detections(
            output.logits[0], output.iou_logits[0], output.boxes[0], image_size=image_size, top_k=1
        )
        tracked = track_box(detections, orig_size=size)
        if (
            self.online_update
            and self.frames_seen % self.update_interval == 0
            and tracked.score > self.update_threshold
        ):
            box = unscale_box(tracked.box_xyxy, image_size=image_size, orig_size=size)
            self.latest = _encode(self.model, batch, box, "box")
        found = tracked.score >= self.score_threshold
        count = int(found)
        return Instances(
            size,
            boxes=tracked.box_xyxy[None].cpu()[:count],
            scores=torch.tensor([tracked.score])[:count],
            labels=torch.zeros(count, dtype=torch.int64),
            track_ids=torch.ones(count, dtype=torch.int64),
        )


class UninextVosSession(VideoSession):
    """VOS: the masks of the objects annotated in the first frame, merged per frame into one
    label map (object k is track id k + 1, in the order of the prompts).

    Returns the objects present in each frame's label map (disjoint masks), each with its
    top-1 box (from the detection, in original pixels) and score. The first frame stepped is the
    annotated one; its result is UNINEXT's: the prompt masks at input resolution, bilinearly
    resized back and merged.

    Args:
        prompts: one mask (or box, read as its rectangle) per object in the first frame.
        score_threshold: an object scoring below this gets zero probability before the merge
            (UNINEXT does so on YouTube-VOS 2018 only, with 0.5: ``SOT.INST_THR_VOS``).
        update_threshold: an object scoring at least this gets a new previous template from
            its label-map region (UNINEXT: 0.7); a region too thin for a crop (one pixel wide or
            high) keeps the old one, as UNINEXT's ``try``/``except`` does.
        update_padded_frames: also update on frames the preprocessor padded (ConvNeXt and ViT
            pad to multiples of 32). UNINEXT builds the update's mask at the unpadded size,
            its template branch pads the frame and asserts that both sizes agree, and its bare
            ``except`` skips the update: with those backbones it never updates a template on a
            frame whose resized size is not a multiple of 32 (e.g. 480x854). False (the
            default) reproduces that; with ResNet-50 nothing is padded and it changes nothing.
    """

    def __init__(
        self,
        *,
        model: Uninext,
        preprocess: UninextPreprocessor,
        prompts: list[AnnotationPrompt],
        score_threshold: float,
        update_threshold: float,
        update_padded_frames: bool = False,
    ) -> None:
        super().__init__(model=model, preprocess=preprocess)
        if not prompts:
            raise ValueError("prompts is empty: give one AnnotationPrompt per object")
        for index, prompt in enumerate(prompts[1:], start=1):
            if prompt.image_size != prompts[0].image_size:
                raise ValueError(
                    f"prompts[{index}] annotates a {prompt.image_size[1]}x"
                    f"{prompt.image_size[0]} frame, prompts[0] a {prompts[0].image_size[1]}x"
                    f"{prompts[0].image_size[0]} one: all objects are annotated in the first frame"
                )
        # Every frame stepped, the first too, must have the annotated frame's size.
        self.frame_size = prompts[0].image_size
        self.boxes = torch.stack([p.box for p in prompts])  # (K, 4) first-frame pixels
        self.score_threshold = score_threshold
        self.update_threshold = update_threshold
        self.update_padded_frames = update_padded_frames
        self.first: list[tuple[Tensor, Tensor]] = []
        masks = []
        with torch.no_grad():
            batch = preprocess([prompts[0].frame], self.device)
            image_size = batch.image_sizes[0]
            padded = (int(batch.tensor.shape[-2]), int(batch.tensor.shape[-1]))
            for prompt in prompts:
                prior = prompt_mask_to_input(prompt, image_size=image_size, padded_size=padded)
                box = _mask_box(prior)
                if box is None:  # the object vanished in the resize: its box, scaled
                    box = box_to_input(
                        prompt.box, orig_size=prompt.image_size, image_size=image_size
                    )
                self.first.append(_encode(model, batch, box.to(self.device), prior.to(self.device)))
                masks.append(prior[: image_size[0], : image_size[1]])
        self.previous = list(self.first)
        # (K, h, w) the prompt masks at input size: the first frame's answer.
        self.first_masks = torch.stack(masks)

    def _result(
        self, label_map: Tensor, boxes: Tensor, scores: Tensor, size: tuple[int, int]
    ) -> Instances:
        count = boxes.shape[0]
        labels = torch.arange(1, count + 1, device=label_map.device)  # (K,)
        masks = label_map[None] == labels[:, None, None]  # (K, H, W)
        present = masks.flatten(1).any(1)  # (K,)
        return Instances(
            size,
            boxes=boxes[present].float().cpu(),
            scores=scores[present].cpu(),
            labels=torch.zeros(int(present.sum()), dtype=torch.int64),
            masks=masks[present].cpu(),
            track_ids=torch.nonzero(present).flatten().cpu() + 1,
        )

    def _step(self, frame: Tensor) -> Instances:
        size = (int(frame.shape[1]), int(frame.shape[2]))
        count = len(self.first)
        if self.frames_seen == 0:
            probs = probabilities_to_original(self.first_masks, orig_size=size)  # (K, H, W)
            return self._result(
                soft_aggregate(probs), clip_boxes(self.boxes.float(), size), torch.ones(count), size
            )
        single = self.preprocess([frame], self.device)
        image_size = single.image_sizes[0]
        # One search per object (each with its own templates), on the same frame.
        batch = ImageBatch(
            tensor=single.tensor.expand(count, -1, -1, -1),
            valid=single.valid.expand(count, -1, -1),
            image_sizes=single.image_sizes * count,
            original_sizes=single.original_sizes * count,
        )
        templates = [_joined(f, p) for f, p in zip(self.first, self.previous, strict=True)]
        output = run_model(
            self.model,
            batch,
            torch.cat([t.hidden for t in templates]),  # (K, 2T, Ct)
            torch.cat([t.masks for t in templates]),  # (K, 2T)
            pooled=True,
            with_masks=False,  # the kept query's mask only: model.query_mask_logits
        )
        boxes, scores, probs = [], [], []
        for k in range(count):
            detections = select_detections(
                output.logits[k],
                output.iou_logits[k],
                output.boxes[k],
                image_size=image_size,
                top_k=1,
            )
            tracked = track_box(detections, orig_size=size)
            boxes.append(tracked.box_xyxy)
            scores.append(tracked.score)
            logits = self.model.query_mask_logits(
                output, k, detections.query_index
            )  # (1, 1, H/4, W/4)
            prob = probabilities_to_original(
                mask_probabilities(logits, image_size=image_size), orig_size=size
            )[0]  # (H, W)
            probs.append(prob if tracked.score >= self.score_threshold else torch.zeros_like(prob))
        label_map = soft_aggregate(torch.stack(probs))  # (H, W)
        padded = (int(batch.tensor.shape[-2]), int(batch.tensor.shape[-1]))
        updates = self.update_padded_frames or padded == tuple(image_size)
        for k in range(count if updates else 0):
            if scores[k] < self.update_threshold:
                continue
            update = vos_template_update(
                label_map, k + 1, image_size=image_size, orig_size=size, padded_size=padded
            )
            if update is None:
                continue
            width, height = (update.box_xyxy[0, 2:] - update.box_xyxy[0, :2]).tolist()
            if width * height <= 0:  # no crop: UNINEXT's bare except skips the update
                continue
            self.previous[k] = _encode(self.model, batch, update.box_xyxy[0], update.prior_mask[0])
        return self._result(label_map, torch.stack(boxes), torch.tensor(scores), size)
