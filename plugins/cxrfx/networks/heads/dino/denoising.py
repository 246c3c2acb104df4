"""Contrastive denoising queries (DINO, Zhang et al. 2023): noised copies of the ground-truth boxes that the
decoder must reconstruct (positives, small noise) or reject (negatives, noise between 1 and 2 half-sizes).

Layout as DINO's ``prepare_for_cdn``: ``groups`` groups of ``2 * pad`` queries (``pad`` = most boxes in an image of
the batch); in group g, image i's box j is the positive query ``2 g pad + j`` and the negative ``2 g pad + pad + j``;
queries of images with fewer boxes are zero padding. Groups cannot see each other in self-attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cxrfx.networks.heads.dino.position import inverse_sigmoid

__all__ = ["DenoisingQueries", "denoising_queries"]


@dataclass
class DenoisingQueries:
    tgt: torch.Tensor  # (B, P, C) label embeddings
    refpoints: torch.Tensor  # (B, P, 4) unsigmoided noised boxes
    attn_mask: torch.Tensor  # (P, P) True = may not attend
    groups: int
    pad: int

    def positive_indices(self, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(query indices, target indices) of the positive queries, per image (the fixed 'matching')."""
        out = []
        for t in targets:
            n = len(t["labels"])
            j = torch.arange(n, dtype=torch.int64).repeat(self.groups)
            q = (torch.arange(self.groups, dtype=torch.int64) * 2 * self.pad).repeat_interleave(n) + j
            out.append((q, j))
        return out


def denoising_queries(targets: list[dict], label_enc: nn.Embedding, num_classes: int, dn_number: int = 100,
                      label_noise: float = 0.5, box_noise: float = 1.0, generator=None) -> DenoisingQueries | None:
    """Denoising queries for targets ``[{"labels", "boxes" (N, 4) cxcywh in [0, 1]}]``; None without any box."""
    counts = [len(t["labels"]) for t in targets]
    pad = max(counts, default=0)
    if pad == 0 or dn_number <= 0:
        return None
    device = label_enc.weight.device
    groups = max(1, (2 * dn_number) // (2 * pad)) if 2 * dn_number >= 100 else max(1, 2 * dn_number)
    labels = torch.cat([t["labels"] for t in targets]).to(device)
    boxes = torch.cat([t["boxes"] for t in targets]).to(device).float()
    image = torch.cat([torch.full((n,), i, dtype=torch.int64) for i, n in enumerate(counts)]).to(device)
    slot = torch.cat([torch.arange(n) for n in counts]).to(device)
    total = len(labels)

    # every box appears 2 * groups times: group g positives, then group g negatives
    labels = labels.repeat(2 * groups)
    boxes = boxes.repeat(2 * groups, 1)
    negative = torch.arange(2 * groups, device=device).repeat_interleave(total) % 2 == 1
    if label_noise > 0:
        flip = torch.rand(labels.shape, device=device, generator=generator) < label_noise * 0.5
        labels = torch.where(flip, torch.randint(0, num_classes, labels.shape, device=device, generator=generator),
                             labels)
    if box_noise > 0:
        xyxy = torch.cat((boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2), 1)
        half = torch.cat((boxes[:, 2:] / 2, boxes[:, 2:] / 2), 1)
        sign = torch.randint(0, 2, boxes.shape, device=device, generator=generator).float() * 2 - 1
        part = torch.rand(boxes.shape, device=device, generator=generator) + negative[:, None].float()
        xyxy = (xyxy + part * sign * half * box_noise).clamp(0.0, 1.0)
        boxes = torch.cat(((xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]), 1)

    size = 2 * groups * pad
    b = len(targets)
    tgt = torch.zeros(b, size, label_enc.embedding_dim, device=device)
    refs = torch.zeros(b, size, 4, device=device)
    copy = torch.arange(2 * groups, device=device).repeat_interleave(total)  # 2g (positive) or 2g + 1 (negative)
    position = copy * pad + slot.repeat(2 * groups)
    tgt[image.repeat(2 * groups), position] = label_enc(labels)
    refs[image.repeat(2 * groups), position] = inverse_sigmoid(boxes)
    group_of = torch.arange(size, device=device) // (2 * pad)
    mask = group_of[:, None] != group_of[None, :]
    return DenoisingQueries(tgt, refs, mask, groups, pad)
