"""Hungarian matching of queries to ground-truth boxes (DETR / DINO), solved with scipy."""

from __future__ import annotations

import torch
from monai.data.box_utils import box_giou, convert_box_mode
from scipy.optimize import linear_sum_assignment

__all__ = ["HungarianMatcher", "cxcywh_to_xyxy"]


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) (cx, cy, w, h) -> (x1, y1, x2, y2) (MONAI's ``ccwh`` -> ``xyxy``)."""
    return convert_box_mode(boxes.reshape(-1, 4), src_mode="ccwh", dst_mode="xyxy").reshape(boxes.shape)


class HungarianMatcher:
    """One-to-one assignment minimising ``cost_class * focal cost + cost_bbox * L1 + cost_giou * (-GIoU)``
    (DINO's costs: 2 / 5 / 2, focal alpha 0.25, gamma 2).

    Called with outputs ``{"pred_logits" (B, Q, K), "pred_boxes" (B, Q, 4) cxcywh}`` and targets
    ``[{"labels" (N,), "boxes" (N, 4) cxcywh}]``; returns per image (query indices, target indices).
    """

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 alpha: float = 0.25, gamma: float = 2.0):
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.alpha, self.gamma = alpha, gamma

    @torch.no_grad()
    def __call__(self, outputs: dict, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # one cost matrix for the whole batch (queries of every image x every target) and one copy to the host:
        # per-image matrices cost a device synchronisation each, which dominated a GPU training step
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        b, q = logits.shape[:2]
        sizes = [len(t["labels"]) for t in targets]
        empty = torch.zeros(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in targets]
        labels = torch.cat([t["labels"] for t in targets]).to(logits.device)
        gt = torch.cat([t["boxes"] for t in targets]).to(logits.device).float()
        boxes = boxes.flatten(0, 1).float()
        prob = logits.flatten(0, 1).float().sigmoid()[:, labels]
        neg = (1 - self.alpha) * prob**self.gamma * -(1 - prob + 1e-8).log()
        pos = self.alpha * (1 - prob) ** self.gamma * -(prob + 1e-8).log()
        cost = (self.cost_class * (pos - neg) + self.cost_bbox * torch.cdist(boxes, gt, p=1)
                - self.cost_giou * box_giou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(gt)))
        cost = cost.view(b, q, -1).cpu()
        out = []
        for i, c in enumerate(cost.split(sizes, -1)):
            if sizes[i] == 0:
                out.append((empty, empty))
                continue
            rows, cols = linear_sum_assignment(c[i].numpy())
            out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return out
