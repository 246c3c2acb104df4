"""Localization: a multi-scale neck shared by all datasets, one RetinaNet head per dataset, and the detector.

Built from ``monai.apps.detection`` parts without torchvision: MONAI's ``FeaturePyramidNetwork`` (+ max-pool
level), ``RetinaNetClassificationHead`` / ``RetinaNetRegressionHead``, ``AnchorGenerator``, and a subclass of
``RetinaNetDetector`` whose anchor matching uses MONAI's ATSS matcher only (the stock method tests
``isinstance(matcher, torchvision Matcher)`` first, which fails where torchvision cannot be imported).

The head interface is small so a DETR-family head can be added later: a head maps the neck's list of
level maps to ``{"classification": [...], "box_regression": [...]}`` and ``build_detector`` turns the model +
head into a loss / box-prediction module. Boxes inside the detector follow MONAI: ``[r1, c1, r2, c2]`` on
(C, H, W) images (convert datalist boxes with ``BoxesToArrayAxesd``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNetClassificationHead, RetinaNetRegressionHead
from monai.apps.detection.utils.anchor_utils import AnchorGenerator
from monai.apps.detection.utils.ATSS_matcher import ATSSMatcher
from monai.losses import FocalLoss
from monai.losses.giou_loss import BoxGIoULoss
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from torch import nn

__all__ = ["DetectionNeck", "RetinaHead", "RetinaDetector", "default_anchor_generator", "build_detector",
           "CLS_KEY", "BOX_KEY"]

CLS_KEY, BOX_KEY = "classification", "box_regression"


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of a (B, C, H, W) map (Foundation X's per-level ``Locnorm``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class DetectionNeck(nn.Module):
    """LayerNorm per stage, then an FPN over stages 1-3 (strides 8/16/32) plus a stride-64 level."""

    def __init__(self, in_channels: Sequence[int] = (256, 512, 1024), out_channels: int = 256):
        super().__init__()
        self.norms = nn.ModuleList([LayerNorm2d(c) for c in in_channels])
        self.fpn = FeaturePyramidNetwork(2, list(in_channels), out_channels, LastLevelMaxPool(2))
        self.out_channels = out_channels

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        levels = OrderedDict((str(i), norm(f)) for i, (norm, f) in enumerate(zip(self.norms, feats)))
        return list(self.fpn(levels).values())


class RetinaHead(nn.Module):
    """One dataset's RetinaNet head: class logits and box deltas per anchor, for every neck level."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.num_classes, self.num_anchors = num_classes, num_anchors
        self.dropout = nn.Dropout2d(dropout)
        self.cls = RetinaNetClassificationHead(in_channels, num_anchors, num_classes, spatial_dims=2)
        self.box = RetinaNetRegressionHead(in_channels, num_anchors, spatial_dims=2)

    def forward(self, levels: Sequence[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        levels = [self.dropout(x) for x in levels]
        return {CLS_KEY: self.cls(levels), BOX_KEY: self.box(levels)}


def default_anchor_generator() -> AnchorGenerator:
    """Two sizes x three aspect ratios per level, for strides 8/16/32/64 (boxes of ~11-270 px)."""
    sizes = ((16, 24), (32, 48), (64, 96), (128, 192))
    return AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * len(sizes))


class RetinaDetector(RetinaNetDetector):
    """MONAI's RetinaNetDetector with ATSS matching that never touches torchvision."""

    def compute_anchor_matched_idxs(self, anchors, targets, num_anchor_locs_per_level):
        if not isinstance(self.proposal_matcher, ATSSMatcher):
            raise NotImplementedError("RetinaDetector supports MONAI's ATSSMatcher only (set_atss_matcher)")
        matched = []
        for anchors_i, target in zip(anchors, targets):
            boxes = target[self.target_box_key].to(anchors_i.device)
            if boxes.numel() == 0:
                matched.append(torch.full((anchors_i.shape[0],), -1, dtype=torch.int64, device=anchors_i.device))
                continue
            _, idx = self.proposal_matcher(boxes, anchors_i, num_anchor_locs_per_level, self.num_anchors_per_loc)
            matched.append(idx)
        return matched


class _HeadNetwork(nn.Module):
    """Adapter giving RetinaNetDetector the network interface it reads (attributes + dict output)."""

    spatial_dims, cls_key, box_reg_key = 2, CLS_KEY, BOX_KEY

    def __init__(self, model: nn.Module, head: str):
        super().__init__()
        self.model, self.head = model, head
        det_head = model.det_heads[head]
        self.num_classes, self.num_anchors = det_head.num_classes, det_head.num_anchors
        self.size_divisible = model.size_divisible

    def forward(self, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        return self.model(images, task="det", head=self.head)


def build_detector(model: nn.Module, head: str, anchor_generator: AnchorGenerator | None = None,
                   score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
                   focal_alpha: float | None = 0.25, focal_gamma: float = 2.0) -> RetinaDetector:
    """Loss and box prediction for one detection head of a :class:`FoundationX` model.

    Training mode: ``detector(images, [{"boxes": (N, 4), "labels": (N,)}, ...])`` returns
    ``{"classification": focal loss, "box_regression": GIoU loss}``. Eval mode: ``detector(images)`` returns
    per image ``{"boxes", "labels", "labels_scores"}`` after NMS. Boxes are ``[r1, c1, r2, c2]`` pixels.
    The model's anchors must match the generator (``model.num_anchors``).
    """
    detector = RetinaDetector(_HeadNetwork(model, head), anchor_generator or default_anchor_generator())
    detector.set_target_keys(box_key="boxes", label_key="labels")
    detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
    detector.set_hard_negative_sampler(batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16)
    detector.set_cls_loss(FocalLoss(gamma=focal_gamma, alpha=focal_alpha, reduction="mean"))
    detector.set_box_regression_loss(BoxGIoULoss(reduction="mean"), encode_gt=False, decode_pred=True)
    detector.set_box_selector_parameters(score_thresh=score_thresh, topk_candidates_per_level=1000,
                                         nms_thresh=nms_thresh, detections_per_img=detections_per_img)
    return detector
