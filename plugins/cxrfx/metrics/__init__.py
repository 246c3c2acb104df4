"""Evaluation metrics of Foundation X, each under its own name (REFERENCE §3).

Classification: ``roc_auc``, ``multilabel_auc`` (per label + ``auc_all``), ``auc_fx``.
Localization: ``coco_ap`` (COCOeval bbox in numpy), ``ap50``, ``coco_map``, ``map40_fx``; lesion level: ``froc``
(LUNA16 / NODE21 FROC and CPM), ``lesion_hits``, ``sensitivity_at``, ``restrict_to_lesions``.
Segmentation: ``dice_fx``, ``dice_global``, ``dice_pos`` (and ``dice_per_image``).

Pure numpy (torch tensors accepted); sklearn and pycocotools serve only as references in the tests.
"""

from .auc import CHEXPERT_COMPETITION_LABELS, auc_fx, multilabel_auc, roc_auc
from .detection import (
    COCO_IOU_THRESHOLDS, FX_IOU_THRESHOLDS, RECALL_THRESHOLDS, ap50, box_iou_coco, coco_ap, coco_map, map40_fx,
)
from .froc import FROC_FP_RATES, froc, lesion_hits, restrict_to_lesions, sensitivity_at
from .dice import dice_fx, dice_global, dice_per_image, dice_pos

__all__ = [
    "roc_auc", "multilabel_auc", "auc_fx", "CHEXPERT_COMPETITION_LABELS",
    "coco_ap", "ap50", "coco_map", "map40_fx", "box_iou_coco",
    "COCO_IOU_THRESHOLDS", "FX_IOU_THRESHOLDS", "RECALL_THRESHOLDS",
    "froc", "lesion_hits", "sensitivity_at", "restrict_to_lesions", "FROC_FP_RATES",
    "dice_per_image", "dice_fx", "dice_global", "dice_pos",
]
