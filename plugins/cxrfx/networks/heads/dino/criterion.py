"""DINO's set loss: Hungarian matching, then sigmoid focal loss on the classes and L1 + GIoU on the matched boxes,
for the last decoder layer, every earlier layer (auxiliary), the query selection (intermediate) and the
denoising queries; weights as published (REFERENCE §1.7: focal 1, L1 5, GIoU 2; matching costs 2 / 5 / 2).

The intermediate (query-selection) loss has DINO's weight 1 by default. Foundation X trained with 0 (and never
optimised the selection layers, REFERENCE §1.10 item 1), which leaves the two-stage selection untrained: a tiny head
trained from scratch on two images found its boxes after 120 steps with weight 1 and not after 200 with weight 0.
``loss={"interm_weight": 0.0}`` reproduces the reference's recipe."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from monai.data.box_utils import box_pair_giou
from monai.losses.focal_loss import sigmoid_focal_loss

from cxrfx.networks.heads.dino.matcher import HungarianMatcher, cxcywh_to_xyxy

__all__ = ["SetCriterion", "LOSS_DEFAULTS", "to_normalized_cxcywh"]

LOSS_DEFAULTS = {"cls_weight": 1.0, "bbox_weight": 5.0, "giou_weight": 2.0, "interm_weight": 1.0,
                 "cost_class": 2.0, "cost_bbox": 5.0, "cost_giou": 2.0, "focal_alpha": 0.25, "focal_gamma": 2.0}


def to_normalized_cxcywh(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[r1, c1, r2, c2] pixels (cxrfx's prediction form) -> (cx, cy, w, h) / image size (x: columns)."""
    r1, c1, r2, c2 = boxes.float().unbind(-1)
    return torch.stack(((c1 + c2) / 2 / width, (r1 + r2) / 2 / height, (c2 - c1) / width, (r2 - r1) / height), -1)


class SetCriterion:
    """Loss of one DINO head's raw output against targets in normalised cxcywh (see :class:`HungarianMatcher`).

    ``__call__(outputs, targets, dn=None)`` returns ``{name: weighted loss}``; ``dn`` = (denoising outputs as
    ``{"pred_logits", "pred_boxes", "aux_outputs"}``, their fixed indices, groups).
    """

    def __init__(self, settings: Mapping | None = None):
        self.cfg = {**LOSS_DEFAULTS, **dict(settings or {})}
        c = self.cfg
        self.matcher = HungarianMatcher(c["cost_class"], c["cost_bbox"], c["cost_giou"], c["focal_alpha"],
                                        c["focal_gamma"])

    def set_losses(self, out: Mapping, targets: list[dict], indices, num_boxes: float) -> dict[str, torch.Tensor]:
        logits = out["pred_logits"].float()  # the loss in fp32 also under bf16 autocast
        onehot = torch.zeros_like(logits)
        # every image's (query, target) pairs as one index set (a handful of copies, not a few per image)
        starts = torch.tensor([0] + [len(t["labels"]) for t in targets[:-1]]).cumsum(0)
        batch = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)]).to(logits.device)
        query = torch.cat([q for q, _ in indices]).to(logits.device)
        target = torch.cat([j + starts[i] for i, (_, j) in enumerate(indices)]).to(logits.device)
        labels = torch.cat([t["labels"] for t in targets]).to(logits.device)[target]
        onehot[batch, query, labels] = 1.0
        focal = sigmoid_focal_loss(logits, onehot, gamma=self.cfg["focal_gamma"], alpha=self.cfg["focal_alpha"])
        losses = {"loss_ce": focal.sum() / num_boxes}
        pred = out["pred_boxes"][batch, query].float()
        gt = torch.cat([t["boxes"] for t in targets]).to(pred)[target]
        if len(gt):
            losses["loss_bbox"] = F.l1_loss(pred, gt, reduction="sum") / num_boxes
            giou = box_pair_giou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(gt))
            losses["loss_giou"] = (1 - giou).sum() / num_boxes
        else:  # keep the graph connected (every parameter gets a gradient, as DDP expects)
            losses["loss_bbox"] = losses["loss_giou"] = out["pred_boxes"].sum() * 0.0
        return losses

    def weighted(self, losses: dict[str, torch.Tensor], scale: float = 1.0) -> dict[str, torch.Tensor]:
        w = {"loss_ce": self.cfg["cls_weight"], "loss_bbox": self.cfg["bbox_weight"],
             "loss_giou": self.cfg["giou_weight"]}
        return {k: v * w[k] * scale for k, v in losses.items()}

    def __call__(self, outputs: Mapping, targets: list[dict], dn=None) -> dict[str, torch.Tensor]:
        num_boxes = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
        losses = {}
        layers = [outputs] + list(outputs.get("aux_outputs", []))
        for i, out in enumerate(layers):
            tag = "" if i == 0 else f"_{i - 1}"
            found = self.set_losses(out, targets, self.matcher(out, targets), num_boxes)
            losses.update({k + tag: v for k, v in self.weighted(found).items()})
        if self.cfg["interm_weight"] and "interm_outputs" in outputs:
            interm = outputs["interm_outputs"]
            found = self.set_losses(interm, targets, self.matcher(interm, targets), num_boxes)
            losses.update({k + "_interm": v for k, v in self.weighted(found, self.cfg["interm_weight"]).items()})
        if dn is not None:
            dn_out, indices, groups = dn
            for i, out in enumerate([dn_out] + list(dn_out.get("aux_outputs", []))):
                tag = "_dn" if i == 0 else f"_dn_{i - 1}"
                found = self.set_losses(out, targets, indices, num_boxes * groups)
                losses.update({k + tag: v for k, v in self.weighted(found).items()})
        return losses
