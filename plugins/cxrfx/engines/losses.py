"""Losses of the multi-task training: masked BCE, Dice + BCE, feature consistency."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

__all__ = ["MaskedBCEWithLogitsLoss", "DiceBCELoss", "consistency_loss"]


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


def consistency_loss(student: torch.Tensor | list[torch.Tensor], teacher: torch.Tensor | list[torch.Tensor],
                     normalize: bool = True) -> torch.Tensor:
    """MSE between student and teacher features (teacher detached); maps are L2-normalised over channels
    first (``normalize``), as Foundation X does for segmentation. Lists (detection levels) are averaged."""
    if isinstance(student, (list, tuple)):
        return torch.stack([consistency_loss(s, t, normalize) for s, t in zip(student, teacher)]).mean()
    teacher = teacher.detach()
    if normalize and student.ndim > 2:
        student, teacher = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
    return F.mse_loss(student, teacher)
