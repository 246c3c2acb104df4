"""Losses of the multi-task training: the task losses (defined beside the heads), feature consistency."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cxrfx.networks.heads.losses import DiceBCELoss, MaskedBCEWithLogitsLoss

__all__ = ["MaskedBCEWithLogitsLoss", "DiceBCELoss", "consistency_loss"]


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
