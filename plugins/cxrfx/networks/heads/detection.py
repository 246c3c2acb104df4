"""Localization: a multi-scale neck shared by all datasets, one RetinaNet head per dataset, and the detector.

Built from ``monai.apps.detection`` parts without torchvision: MONAI's ``FeaturePyramidNetwork`` (+ max-pool
level), ``RetinaNetClassificationHead`` / ``RetinaNetRegressionHead``, ``AnchorGenerator``, and a subclass of
``RetinaNetDetector`` whose anchor matching uses MONAI's ATSS matcher only (the stock method tests
``isinstance(matcher, torchvision Matcher)`` first, which fails where torchvision cannot be imported).

:class:`RetinaNetHeads` is the ``"retinanet"`` entry of the head registry (``registry.py``): a head maps the neck's
list of level maps to ``{"classification": [...], "box_regression": [...]}``, and ``build_detector`` turns the model
+ head into the loss (ATSS matching, focal + GIoU) and the box decoding (anchors, score threshold, NMS) that the
type's ``criterion`` and ``decoder`` run on already-computed head maps (so one backbone pass serves every head).
Boxes inside the detector follow MONAI: ``[r1, c1, r2, c2]`` on (C, H, W) images (convert datalist boxes with
``BoxesToArrayAxesd``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNetClassificationHead, RetinaNetRegressionHead
from monai.apps.detection.utils.ATSS_matcher import ATSSMatcher
from monai.apps.detection.utils.detector_utils import check_training_targets, preprocess_images
from monai.losses import FocalLoss
from monai.losses.focal_loss import sigmoid_focal_loss
from monai.losses.giou_loss import BoxGIoULoss
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from torch import nn

from cxrfx.networks.heads.anchors import DetectionAnchors, ModelAnchorGenerator
from cxrfx.networks.heads.registry import DetectionHeadType, register_head

__all__ = ["DetectionNeck", "RetinaHead", "RetinaDetector", "RetinaNetHeads", "build_detector", "detection_loss",
           "decode_detections", "BACKBONE_STRIDES", "CLS_KEY", "BOX_KEY", "DETECTOR_DEFAULTS"]

CLS_KEY, BOX_KEY = "classification", "box_regression"


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of a (B, C, H, W) map (Foundation X's per-level ``Locnorm``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return out.permute(0, 3, 1, 2)


BACKBONE_STRIDES = (4, 8, 16, 32)  # Swin stages 0-3


class DetectionNeck(nn.Module):
    """LayerNorm per used backbone stage, then an FPN over them, plus a max-pooled stride-64 level if asked.

    Args:
        stage_channels: channels of the four backbone stages (strides 4/8/16/32).
        out_channels: FPN width.
        strides: output level strides, from {4, 8, 16, 32} (backbone stages) and 64 (max-pool of the last);
            consecutive. (8, 16, 32, 64) is RetinaNet's P3-P6; (4, 8, 16, 32) adds the stride-4 level small chest
            lesions need (a 6 px nodule covers under one stride-8 cell).
    """

    def __init__(self, stage_channels: Sequence[int], out_channels: int = 256,
                 strides: Sequence[int] = (8, 16, 32, 64)):
        super().__init__()
        strides = tuple(int(s) for s in strides)
        stages = [BACKBONE_STRIDES.index(s) for s in strides if s in BACKBONE_STRIDES]
        extra = [s for s in strides if s not in BACKBONE_STRIDES]
        if (not stages or extra not in ([], [64]) or stages != list(range(stages[0], stages[0] + len(stages)))
                or (extra and stages[-1] != 3)):
            raise ValueError(f"detection strides must be consecutive powers of two from 4 to 64, got {strides}")
        self.strides, self.stages = strides, stages
        in_channels = [stage_channels[i] for i in stages]
        self.norms = nn.ModuleList([LayerNorm2d(c) for c in in_channels])
        self.fpn = FeaturePyramidNetwork(2, in_channels, out_channels, LastLevelMaxPool(2) if extra else None)
        self.out_channels = out_channels

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The four backbone stage maps -> one map per level of ``strides``."""
        levels: dict[str, torch.Tensor] = {}
        for i, norm in enumerate(self.norms):
            levels[str(i)] = norm(feats[self.stages[i]])
        return list(self.fpn(levels).values())


class RetinaHead(nn.Module):
    """One dataset's RetinaNet head: class logits and box deltas per anchor, for every neck level."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.num_classes, self.num_anchors = num_classes, num_anchors
        self.dropout = nn.Dropout2d(dropout)
        self.cls = RetinaNetClassificationHead(in_channels, num_anchors, num_classes, spatial_dims=2)
        self.box = RetinaNetRegressionHead(in_channels, num_anchors, spatial_dims=2)

    def forward(self, levels: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        levels = [self.dropout(x) for x in levels]
        return {"classification": self.cls(levels), "box_regression": self.box(levels)}  # CLS_KEY, BOX_KEY


class RetinaDetector(RetinaNetDetector):
    """MONAI's RetinaNetDetector with ATSS matching that never touches torchvision, and anchors regenerated
    whenever the model's anchor shapes change (a checkpoint loaded after the detector was built)."""

    def generate_anchors(self, images, head_outputs):
        shapes = getattr(self.anchor_generator, "shapes", None)  # a ModelAnchorGenerator's current shapes
        if shapes is not None and (self.anchors is None or not torch.equal(shapes, self._anchor_shapes)):
            self.anchors = None  # MONAI regenerates (and caches) on None
            self._anchor_shapes = shapes.detach().clone()
        super().generate_anchors(images, head_outputs)

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


class PositiveNormalizedFocalLoss(nn.Module):
    """RetinaNet's classification loss: sigmoid focal loss summed over every anchor and class, divided by the
    number of positive anchors (at least 1). MONAI's ``FocalLoss(reduction="mean")`` divides by anchors x classes
    instead: over all anchors of a stride-4 level (~50 000 at 512 px) that shrinks the gradient of the few lesion
    anchors by four orders of magnitude, which is why it is paired with a sampler of 64 anchors per image."""

    def __init__(self, gamma: float = 2.0, alpha: float | None = 0.25):
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = sigmoid_focal_loss(logits.float(), target.float(), gamma=self.gamma, alpha=self.alpha)
        return loss.sum() / target.sum().clamp(min=1.0)


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


# Detector settings for chest lesions (1-10 per image, 5-50 px): see DETECTOR_DEFAULTS' use in build_detector.
DETECTOR_DEFAULTS = {
    "atss_candidates": 4, "center_in_gt": False,  # small boxes: a centre-in-box rule leaves too few positives
    # "hard_negative": MONAI's sampler (sampler_batch anchors per image) with a mean focal loss; "none": every
    # anchor with the focal loss normalised by the positives (RetinaNet's own recipe)
    "sampler": "hard_negative", "sampler_batch": 64, "positive_fraction": 0.3, "pool_size": 20, "min_neg": 16,
    "focal_alpha": 0.25, "focal_gamma": 2.0,
    "score_thresh": 0.05, "nms_thresh": 0.5, "detections_per_img": 100, "topk_candidates_per_level": 1000,
}


def build_detector(model: nn.Module, head: str, **settings) -> RetinaDetector:
    """Loss and box prediction for one detection head of a :class:`FoundationX` model.

    Training mode: ``detector(images, [{"boxes": (N, 4), "labels": (N,)}, ...])`` returns
    ``{"classification": focal loss, "box_regression": GIoU loss}``. Eval mode: ``detector(images)`` returns
    per image ``{"boxes", "labels", "labels_scores"}`` after NMS. Boxes are ``[r1, c1, r2, c2]`` pixels.
    Anchors are the model's own (``model.det_anchors``). ``settings`` override :data:`DETECTOR_DEFAULTS`
    (the model's ``detector_settings`` attribute, if any, comes in between).
    """
    cfg = {**DETECTOR_DEFAULTS, **dict(getattr(model, "detector_settings", None) or {}), **settings}
    unknown = set(cfg) - set(DETECTOR_DEFAULTS)  # the model's settings too: a config typo must not pass silently
    if unknown:
        raise ValueError(f"unknown detector settings {sorted(unknown)}; known: {sorted(DETECTOR_DEFAULTS)}")
    detector = RetinaDetector(_HeadNetwork(model, head), ModelAnchorGenerator(model.det_anchors))
    detector.set_target_keys(box_key="boxes", label_key="labels")
    detector.set_atss_matcher(num_candidates=cfg["atss_candidates"], center_in_gt=cfg["center_in_gt"])
    if cfg["sampler"] == "hard_negative":
        detector.set_hard_negative_sampler(batch_size_per_image=cfg["sampler_batch"],
                                           positive_fraction=cfg["positive_fraction"], pool_size=cfg["pool_size"],
                                           min_neg=cfg["min_neg"])
        detector.set_cls_loss(FocalLoss(gamma=cfg["focal_gamma"], alpha=cfg["focal_alpha"], reduction="mean"))
    elif cfg["sampler"] == "none":  # no sampler set: MONAI trains on every anchor not between thresholds
        detector.set_cls_loss(PositiveNormalizedFocalLoss(cfg["focal_gamma"], cfg["focal_alpha"]))
    else:
        raise ValueError(f"sampler must be 'hard_negative' or 'none', got {cfg['sampler']!r}")
    detector.set_box_regression_loss(BoxGIoULoss(reduction="mean"), encode_gt=False, decode_pred=True)
    detector.set_box_selector_parameters(score_thresh=cfg["score_thresh"],
                                         topk_candidates_per_level=cfg["topk_candidates_per_level"],
                                         nms_thresh=cfg["nms_thresh"], detections_per_img=cfg["detections_per_img"])
    return detector


def detection_loss(detector: RetinaDetector, images: torch.Tensor, head_outputs: dict,
                   targets: list[dict]) -> dict[str, torch.Tensor]:
    """RetinaNet losses from already-computed head maps (the detector's own forward would rerun the network)."""
    targets = check_training_targets(images, targets, detector.spatial_dims, detector.target_label_key,
                                     detector.target_box_key)
    detector.generate_anchors(images, head_outputs)
    num_locs = [x.shape[2:].numel() for x in head_outputs[detector.cls_key]]
    maps = {k: detector._reshape_maps(head_outputs[k]) for k in (detector.cls_key, detector.box_reg_key)}
    return detector.compute_loss(maps, targets, detector.anchors, num_locs)


def decode_detections(detector: RetinaDetector, images: torch.Tensor, head_outputs: dict) -> list[dict]:
    """Boxes after score threshold and NMS from already-computed head maps, as ``RetinaNetDetector.forward`` in
    eval mode decodes them (anchors on the image padded to the network's multiple, boxes clipped to the image):
    one ``{"boxes", "labels", "scores"}`` per image. Equal to the detector's forward for images whose sides are
    multiples of the network's stride (what every cxrfx pipeline feeds); otherwise the maps come from the
    model's own padding instead of the detector's zero padding of the [0, 1] image."""
    padded, image_sizes = preprocess_images(images, detector.spatial_dims, detector.size_divisible)
    detector.generate_anchors(padded, head_outputs)
    num_locs = [x.shape[2:].numel() for x in head_outputs[detector.cls_key]]
    maps = {k: detector._reshape_maps(list(head_outputs[k])) for k in (detector.cls_key, detector.box_reg_key)}
    found = detector.postprocess_detections(maps, detector.anchors, image_sizes, num_locs)
    return [{"boxes": d["boxes"], "labels": d["labels"], "scores": d[detector.pred_score_key]} for d in found]


class _RetinaCriterion:
    def __init__(self, head_type: DetectionHeadType, detector: RetinaDetector):
        self.head_type, self.detector = head_type, detector

    def __call__(self, out: dict, images: torch.Tensor, batch) -> torch.Tensor:
        targets = self.head_type.targets(batch, images.device)
        return sum(detection_loss(self.detector, images, out, targets).values())


class _RetinaDecoder:
    def __init__(self, detector: RetinaDetector):
        self.detector = detector

    def __call__(self, out: dict, images: torch.Tensor) -> list[dict]:
        return decode_detections(self.detector, images, out)


@register_head("retinanet")
class RetinaNetHeads(DetectionHeadType):
    """The localization branch as RetinaNet: a :class:`DetectionNeck` (``det_neck``) and the model's anchor shapes
    (``det_anchors``) shared by every dataset, a :class:`RetinaHead` per dataset.

    Options: neck ``channels``, level ``strides``, anchor ``shapes`` (None: RetinaNet-style defaults with
    ``num_anchors`` per location). The detector settings (:data:`DETECTOR_DEFAULTS` keys) are the model's
    ``detector_settings``.
    """

    shared_attributes = ("det_neck", "det_anchors")
    defaults = {"channels": 256, "strides": (8, 16, 32, 64), "shapes": None, "num_anchors": 6}

    def build_shared(self, stage_channels, options):
        return {"det_neck": DetectionNeck(stage_channels, options["channels"], options["strides"]),
                "det_anchors": DetectionAnchors(options["strides"], options["shapes"], options["num_anchors"])}

    def build_head(self, model, num_classes, dropout, options):
        return RetinaHead(model.det_neck.out_channels, model.det_anchors.num_anchors, num_classes, dropout)

    def shared_forward(self, model, feats):
        return model.det_neck(feats)

    def criterion(self, model, head, loss=None):
        if loss is not None:
            raise ValueError("the retinanet head's loss is set by the detector settings (focal_alpha, focal_gamma, "
                             "sampler...), not by a loss module")
        return _RetinaCriterion(self, build_detector(model, head))

    def decoder(self, model, head, **settings):
        return _RetinaDecoder(build_detector(model, head, **settings))

    def probabilities(self, out):
        return [torch.sigmoid(m.float()) for m in out[CLS_KEY]]
