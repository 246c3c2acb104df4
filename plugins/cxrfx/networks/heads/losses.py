"""The task losses the head types train with: masked BCE (image labels), Dice + BCE (masks).

They live beside the heads because a head type knows its loss (``registry.HeadType.criterion``);
``cxrfx.engines.losses`` re-exports them with the consistency loss of the training method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

__all__ = ["MaskedBCEWithLogitsLoss", "DiceBCELoss"]


class MaskedBCEWithLogitsLoss(nn.Module):
    """BCE with logits averaged over the labelled entries only: targets of -1 (unknown / uncertain) are masked.

    A batch without any labelled entry gives 0 (still connected to the graph, so DDP sees every parameter).
    """

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.to(logits.dtype)
        valid = targets >= 0
        if not bool(valid.any()):
            return logits.sum() * 0.0
        loss = F.binary_cross_entropy_with_logits(logits, targets.clamp(min=0), reduction="none")
        return loss[valid].mean()


class DiceBCELoss(DiceCELoss):
    """Soft Dice + BCE on sigmoid outputs (channels may overlap), MONAI's DiceCELoss with ``sigmoid=True``."""

    def __init__(self, lambda_dice: float = 1.0, lambda_bce: float = 1.0, smooth: float = 1.0):
        super().__init__(sigmoid=True, lambda_dice=lambda_dice, lambda_ce=lambda_bce, smooth_nr=smooth,
                         smooth_dr=smooth, batch=True)
