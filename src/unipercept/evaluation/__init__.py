"""Evaluation: each task's metric and result files, agreeing with the benchmarks' official code.

| task | module | metric |
|---|---|---|
| det, insseg | :mod:`~unipercept.evaluation.coco` | COCO box / mask AP (pycocotools) |
| rec, res | :mod:`~unipercept.evaluation.referring` | P@0.5; overall and mean IoU |
| sot | :mod:`~unipercept.evaluation.sot` | LaSOT one-pass: success AUC, P@20, normalised P |
| vos | :mod:`~unipercept.evaluation.davis` | J, F (DAVIS boundary tolerance), J&F |
| rvos | :mod:`~unipercept.evaluation.rvos` | J&F per expression |
| mot, mots | :mod:`~unipercept.evaluation.mot` | HOTA, MOTA, IDF1, sMOTSA (TrackEval) |
| vis | :mod:`~unipercept.evaluation.vis` | YouTube-VIS AP, spatio-temporal mask IoU |

:mod:`~unipercept.evaluation.score_separation` measures, for sot and vos, how well the answer's
score separates hits from misses (precision and recall at a threshold, AP, best-F1 threshold).
"""

from unipercept.evaluation.coco import CocoResult, coco_results, evaluate_coco, write_coco_results
from unipercept.evaluation.davis import VosResult, evaluate_vos, write_index_folder
from unipercept.evaluation.mot import MotResult, evaluate_mot, evaluate_mots, write_mot_txt
from unipercept.evaluation.referring import (
    ReferringBoxResult,
    ReferringMaskResult,
    referring_box_precision,
    referring_mask_iou,
)
from unipercept.evaluation.rvos import RefYouTubeVosSubmission, evaluate_rvos
from unipercept.evaluation.score_separation import ScoreSeparation, score_separation
from unipercept.evaluation.sot import SotResult, evaluate_sot, write_boxes_txt
from unipercept.evaluation.vis import VisResult, evaluate_vis, write_vis_results

__all__ = [
    "CocoResult",
    "MotResult",
    "RefYouTubeVosSubmission",
    "ReferringBoxResult",
    "ReferringMaskResult",
    "ScoreSeparation",
    "SotResult",
    "VisResult",
    "VosResult",
    "coco_results",
    "evaluate_coco",
    "evaluate_mot",
    "evaluate_mots",
    "evaluate_rvos",
    "evaluate_sot",
    "evaluate_vis",
    "evaluate_vos",
    "referring_box_precision",
    "referring_mask_iou",
    "score_separation",
    "write_boxes_txt",
    "write_coco_results",
    "write_index_folder",
    "write_mot_txt",
    "write_vis_results",
]
