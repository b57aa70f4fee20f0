"""UNINEXT's two associations, as its evaluation runs them (``models/tracker.py``).

- :class:`UninextQuasiDenseTracker`: ``QuasiDenseEmbedTracker`` for MOT/MOTS (BDD100K), with
  the settings of ``uninext_vid.py:324-336`` and the score thresholds of
  ``tools_bin/grid_search_bdd.py`` (start 0.4, continue 0.3).
- :class:`UninextIdolTracker`: ``IDOL_Tracker`` for VIS with the settings of
  ``uninext_vid.py:338-350`` (memory of 3, temporal and frame weights on).

Both compare re-id embeddings by QDTrack's bi-softmax and match greedily, detection by detection
in decreasing score. They differ from the project's :mod:`unipercept.tracking` trackers in the
details UNINEXT's numbers depend on (backdrops as negatives, label gating after the softmaxes,
IDOL's score- and age-weighted memory, greedy instead of Hungarian matching), so they are kept
apart. Bookkeeping UNINEXT keeps but never reads (box velocities, IDOL's backdrops and momentum
embedding, IDOL's ``-2``/``-1`` distinction of unreported detections) is left out.

Track ids are UNINEXT's plus one (the project's ids start at 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from unipercept.structures import Instances
from unipercept.tracking.base import Tracker
from unipercept.tracking.matching import bisoftmax_similarity, check_detections


def box_overlaps(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """mmdet's ``bbox_overlaps`` (IoU, no +1 offset): (N, 4) x (M, 4) xyxy -> (N, M)."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])  # (N,)
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])  # (M,)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]  # (N, M)
    union = (area1[:, None] + area2[None, :] - overlap).clamp(min=eps)
    return overlap / union


def mask_overlaps(masks1: Tensor, masks2: Tensor) -> Tensor:
    """IDOL's ``mask_iou``: (N, h, w) x (M, h, w) bool -> (N, M), ``(inter + 1e-6) / (union +
    1e-6)``."""
    # float32 counts are exact below 2^24 pixels, and CUDA has no int64 matrix product.
    a = masks1.flatten(1).to(torch.float32)  # (N, hw)
    b = masks2.flatten(1).to(torch.float32)  # (M, hw)
    intersection = a @ b.T  # (N, M)
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - intersection
    return (intersection + 1e-6) / (union + 1e-6)


class UninextQuasiDenseTracker(Tracker):
    """UNINEXT's MOT association (``QuasiDenseEmbedTracker``).

    Per frame, by decreasing score: a detection overlapping an earlier one by IoU above
    ``nms_class_iou`` (``nms_backdrop_iou`` when it scores below ``obj_score_threshold``) is
    dropped; the rest take, in turn, the memory entry of the same label with the highest
    bi-softmax similarity above ``match_threshold`` (entries: the tracks, then the previous
    frame's unmatched detections as negatives, the "backdrops"); a detection scoring above
    ``obj_score_threshold`` continues the track it matched, a weaker one is reported nowhere;
    unmatched detections above ``init_score_threshold`` start tracks. A track unmatched for
    ``memory_frames`` frames is forgotten.

    Args:
        init_score_threshold: to start a track (UNINEXT's ``TRACK.INIT_SCORE_THR``, 0.4 as
            tuned for BDD100K; the config's default is 0.5).
        obj_score_threshold: to continue one (``TRACK.OBJ_SCORE_THR``).
        match_threshold: similarity a match needs (strictly above).
        memory_frames: frames a track is kept without a match.
        backdrop_frames: frames of unmatched detections kept as negatives.
        memory_momentum: weight of a match's embedding in its track's (1: the latest).
        nms_conf_threshold, nms_backdrop_iou, nms_class_iou: duplicate removal, as above.
        with_cats: only same-label entries match.
    """

    def __init__(
        self,
        *,
        init_score_threshold: float = 0.4,
        obj_score_threshold: float = 0.3,
        match_threshold: float = 0.5,
        memory_frames: int = 10,
        backdrop_frames: int = 1,
        memory_momentum: float = 1.0,
        nms_conf_threshold: float = 0.5,
        nms_backdrop_iou: float = 0.3,
        nms_class_iou: float = 0.7,
        with_cats: bool = True,
    ) -> None:
        if not 0 <= memory_momentum <= 1:
            raise ValueError(f"memory_momentum must be in [0, 1], got {memory_momentum}")
        self.init_score_threshold = init_score_threshold
        self.obj_score_threshold = obj_score_threshold
        self.match_threshold = match_threshold
        self.memory_frames = memory_frames
        self.backdrop_frames = backdrop_frames
        self.memory_momentum = memory_momentum
        self.nms_conf_threshold = nms_conf_threshold
        self.nms_backdrop_iou = nms_backdrop_iou
        self.nms_class_iou = nms_class_iou
        self.with_cats = with_cats
        self.reset()

    def reset(self) -> None:
        self.frame = 0
        self.next_id = 0
        # UNINEXT's id -> {"embed": (D,), "label": () int64, "last_frame": int}, oldest first.
        self.tracklets: dict[int, dict] = {}
        # Newest first: {"embeds": (n, D), "labels": (n,)} of unmatched detections.
        self.backdrops: list[dict[str, Tensor]] = []

    @property
    def num_tracks(self) -> int:
        return len(self.tracklets)

    def _memory(self) -> tuple[Tensor, Tensor, Tensor]:
        """(T + b, D) embeddings, (T + b,) ids (-1 for backdrops), (T + b,) labels."""
        embeds = [v["embed"][None] for v in self.tracklets.values()]
        labels = [v["label"].view(1) for v in self.tracklets.values()]
        ids = [torch.tensor(list(self.tracklets), dtype=torch.int64)]
        for backdrop in self.backdrops:
            embeds.append(backdrop["embeds"])
            labels.append(backdrop["labels"])
            ids.append(torch.full((len(backdrop["labels"]),), -1, dtype=torch.int64))
        return torch.cat(embeds), torch.cat(ids), torch.cat(labels)

    def match(
        self, boxes: Tensor, scores: Tensor, labels: Tensor, embeddings: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One frame (``QuasiDenseEmbedTracker.match``).

        Args:
            boxes: (N, 4) xyxy in original pixels.
            scores: (N,) detection scores.
            labels: (N,) int64 labels.
            embeddings: (N, D) re-id embeddings.

        Returns:
            ``(positions, ids)``, each (M,): the detections kept by the duplicate removal (as
            positions into the inputs, by decreasing score) and their UNINEXT track ids
            (>= 0 tracked, < 0 not reported).
        """
        order = torch.argsort(scores, descending=True, stable=True)  # (N,)
        boxes, scores = boxes[order], scores[order]
        labels, embeddings = labels[order], embeddings[order].detach()
        # The loops below go detection by detection; they run on the CPU copies.
        ious = box_overlaps(boxes, boxes).cpu()  # (N, N)
        weak = (scores < self.obj_score_threshold).cpu()  # (N,)
        valid = torch.ones(len(order), dtype=torch.bool)
        for i in range(1, len(order)):
            threshold = self.nms_backdrop_iou if weak[i] else self.nms_class_iou
            if bool((ious[i, :i] > threshold).any()):
                valid[i] = False
        valid = valid.to(order.device)
        order, boxes, scores = order[valid], boxes[valid], scores[valid]
        labels, embeddings = labels[valid], embeddings[valid]

        ids = torch.full((len(order),), -1, dtype=torch.int64)
        if len(order) and self.tracklets:
            memo_embeds, memo_ids, memo_labels = self._memory()
            similarity = bisoftmax_similarity(embeddings, memo_embeds.to(embeddings))  # (N, T + b)
            if self.with_cats:
                same = labels[:, None] == memo_labels[None, :].to(labels.device)
                similarity = similarity * same.to(similarity.dtype)
            similarity = similarity.cpu()
            strong = (scores > self.obj_score_threshold).cpu()  # (N,)
            # One detection at a time: a confident detection claims its track first.
            for i in range(len(order)):
                conf, column = torch.max(similarity[i], dim=0)
                track = int(memo_ids[column])
                if not (conf > self.match_threshold and track > -1):
                    continue
                if strong[i]:
                    ids[i] = track
                    similarity[:i, column] = 0
                    similarity[i + 1 :, column] = 0
                elif conf > self.nms_conf_threshold:
                    ids[i] = -2
        new = (ids == -1) & (scores.cpu() > self.init_score_threshold)
        count = int(new.sum())
        ids[new] = torch.arange(self.next_id, self.next_id + count, dtype=torch.int64)
        self.next_id += count
        self._update(ids, boxes, embeddings, labels)
        self.frame += 1
        return order, ids.to(order.device)

    def _update(self, ids: Tensor, boxes: Tensor, embeddings: Tensor, labels: Tensor) -> None:
        """``QuasiDenseEmbedTracker.update_memo``."""
        m = self.memory_momentum
        for i in torch.nonzero(ids > -1).flatten().tolist():
            track = int(ids[i])
            entry = self.tracklets.get(track)
            if entry is None:
                self.tracklets[track] = {
                    "embed": embeddings[i],
                    "label": labels[i],
                    "last_frame": self.frame,
                }
            else:
                entry["embed"] = (1 - m) * entry["embed"] + m * embeddings[i]
                entry["label"] = labels[i]
                entry["last_frame"] = self.frame
        backdrops = torch.nonzero(ids == -1).flatten()  # (n,)
        ious = box_overlaps(boxes[backdrops.to(boxes.device)], boxes)  # (n, N)
        # An unmatched detection overlapping a higher-scoring one is not a useful negative.
        kept = [
            int(index)
            for row, index in enumerate(backdrops.tolist())
            if not bool((ious[row, :index] > self.nms_backdrop_iou).any())
        ]
        kept_index = torch.tensor(kept, dtype=torch.int64, device=embeddings.device)
        self.backdrops.insert(0, {"embeds": embeddings[kept_index], "labels": labels[kept_index]})
        for track in list(self.tracklets):
            if self.frame - self.tracklets[track]["last_frame"] >= self.memory_frames:
                del self.tracklets[track]
        if len(self.backdrops) > self.backdrop_frames:
            self.backdrops.pop()

    def update(self, detections: Instances, image: Tensor | None = None) -> Instances:
        """The tracked detections of one frame (boxes in original pixels, scores, labels,
        embeddings), in the matching order, with ``track_ids``."""
        check_detections(detections, ("boxes", "scores", "labels", "embeddings"), "UNINEXT MOT")
        # An empty frame still advances the tracker (tracks age out as in UNINEXT).
        positions, ids = self.match(
            detections.boxes, detections.scores, detections.labels, detections.embeddings
        )
        reported = ids > -1
        return detections[positions[reported]].replace(track_ids=ids[reported] + 1)


class UninextIdolTracker(Tracker):
    """UNINEXT's VIS association (``IDOL_Tracker`` with ``long_match``, temporal and frame
    weights, as ``INFERENCE_TW``/``INFERENCE_FW`` are on).

    Per frame, in the given order (decreasing score): a detection whose mask overlaps a kept
    earlier one by IoU above ``nms_pre_iou`` is dropped; each track's memory embedding is the
    mean of its last ``memory_length`` embeddings weighted by their scores plus 1/n, 2/n, ...,
    1 (newer weigh more); a detection takes the track of the highest bi-softmax similarity above
    ``match_threshold`` (where several tracks are above 0.5, similarities are weighted by the
    number of frames each track was seen, favouring long tracks); unmatched detections scoring
    above ``new_score_threshold`` start tracks. A track unmatched for ``memory_frames`` frames
    is forgotten.

    Args:
        new_score_threshold: to start a track (``init_score_thr`` / ``addnew_score_thr``, 0.2).
        match_threshold: similarity a match needs (strictly above).
        nms_pre_iou: mask-IoU duplicate removal.
        memory_frames: frames a track is kept without a match.
        memory_length: embeddings remembered per track (``MEMORY_LEN``).
        temporal_weight, frame_weight: UNINEXT's ``INFERENCE_TW`` and ``INFERENCE_FW``.
    """

    def __init__(
        self,
        *,
        new_score_threshold: float = 0.2,
        match_threshold: float = 0.5,
        nms_pre_iou: float = 0.5,
        memory_frames: int = 10,
        memory_length: int = 3,
        temporal_weight: bool = True,
        frame_weight: bool = True,
    ) -> None:
        if memory_length < 1:
            raise ValueError(f"memory_length must be >= 1, got {memory_length}")
        self.new_score_threshold = new_score_threshold
        self.match_threshold = match_threshold
        self.nms_pre_iou = nms_pre_iou
        self.memory_frames = memory_frames
        self.memory_length = memory_length
        self.temporal_weight = temporal_weight
        self.frame_weight = frame_weight
        self.reset()

    def reset(self) -> None:
        self.frame = 0
        self.next_id = 0
        # UNINEXT's id -> {"embeds": [(D,)], "scores": [()], "last_frame": int, "frames": int}.
        self.tracklets: dict[int, dict] = {}

    @property
    def num_tracks(self) -> int:
        return len(self.tracklets)

    def _memory(self) -> tuple[Tensor, Tensor, Tensor]:
        """(T, D) weighted memory embeddings, (T,) ids, (T,) float frames seen per track."""
        embeds = []
        for entry in self.tracklets.values():
            weights = torch.stack(entry["scores"])  # (L,)
            if self.temporal_weight:
                # torch.range(0, 1, 1/L)[1:] as UNINEXT writes it: 1/L, 2/L, ..., 1.
                length = len(weights)
                steps = torch.arange(1, length + 1, dtype=torch.float64) / length
                weights = weights + steps.to(weights)
            stacked = torch.stack(entry["embeds"])  # (L, D)
            embeds.append((stacked * weights[:, None]).sum(0) / weights.sum())
        ids = torch.tensor(list(self.tracklets), dtype=torch.int64)
        frames = torch.tensor([float(v["frames"]) for v in self.tracklets.values()])
        return torch.stack(embeds), ids, frames

    def match(self, scores: Tensor, masks: Tensor, embeddings: Tensor) -> tuple[Tensor, Tensor]:
        """One frame (``IDOL_Tracker.match``).

        Args:
            scores: (N,) detection scores, decreasing.
            masks: (N, h, w) bool masks (UNINEXT: the stride-4 logits > 0 of the padded input).
            embeddings: (N, D) re-id embeddings.

        Returns:
            ``(positions, ids)``, each (M,): the detections kept by the mask NMS (positions
            into the inputs) and their UNINEXT track ids (>= 0 tracked, -1 not reported).
        """
        ious = mask_overlaps(masks, masks).cpu()  # (N, N)
        keep = torch.ones(len(scores), dtype=torch.bool)
        for i in range(len(scores)):
            if keep[i]:
                keep[i + 1 :] &= ious[i, i + 1 :] <= self.nms_pre_iou
        positions = torch.nonzero(keep).flatten().to(scores.device)  # (M,)
        scores, embeddings = scores[positions], embeddings[positions].detach()

        ids = torch.full((len(positions),), -1, dtype=torch.int64)
        if len(positions) and self.tracklets:
            memo_embeds, memo_ids, memo_frames = self._memory()
            similarity = bisoftmax_similarity(
                embeddings, memo_embeds.to(embeddings)
            ).cpu()  # (M, T)
            memo_frames = memo_frames.to(similarity)
            for i in range(len(positions)):
                row = similarity[i]
                above = row > 0.5  # (T,)
                if self.frame_weight and int(above.sum()) > 1:
                    weight = memo_frames[above]
                    row = torch.where(above, row * memo_frames, row * weight.mean())
                conf, column = torch.max(row, dim=0)
                if conf > self.match_threshold:
                    ids[i] = int(memo_ids[column])
                    similarity[:i, column] = 0
                    similarity[i + 1 :, column] = 0
        new = (ids == -1) & (scores.cpu() > self.new_score_threshold)
        count = int(new.sum())
        ids[new] = torch.arange(self.next_id, self.next_id + count, dtype=torch.int64)
        self.next_id += count
        self._update(ids, scores, embeddings)
        self.frame += 1
        return positions, ids.to(positions.device)

    def _update(self, ids: Tensor, scores: Tensor, embeddings: Tensor) -> None:
        """``IDOL_Tracker.update_memo``."""
        for i in torch.nonzero(ids > -1).flatten().tolist():
            track = int(ids[i])
            entry = self.tracklets.get(track)
            if entry is None:
                self.tracklets[track] = {
                    "embeds": [embeddings[i]],
                    "scores": [scores[i]],
                    "last_frame": self.frame,
                    "frames": 1,
                }
            else:
                entry["embeds"].append(embeddings[i])
                entry["scores"].append(scores[i])
                entry["last_frame"] = self.frame
                entry["frames"] += 1
        for track in list(self.tracklets):
            entry = self.tracklets[track]
            if self.frame - entry["last_frame"] >= self.memory_frames:
                del self.tracklets[track]
                continue
            # One frame is added per match, so dropping the oldest keeps memory_length.
            if len(entry["embeds"]) > self.memory_length:
                entry["embeds"].pop(0)
                entry["scores"].pop(0)

    def update(self, detections: Instances, image: Tensor | None = None) -> Instances:
        """The tracked detections of one frame (scores decreasing, masks, embeddings), with
        ``track_ids``; the masks of ``detections`` stand in for UNINEXT's stride-4 masks."""
        check_detections(detections, ("scores", "masks", "embeddings"), "UNINEXT VIS")
        # An empty frame still advances the tracker (tracks age out as in UNINEXT).
        positions, ids = self.match(detections.scores, detections.masks, detections.embeddings)
        reported = ids > -1
        return detections[positions[reported]].replace(track_ids=ids[reported] + 1)
