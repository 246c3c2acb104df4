"""MoCo's key encoder: a momentum copy of the student's backbone and projector, and the queue of its keys.

Shared by the SSL recipes (DiRA's discriminative branch, Adam-v2's localizability). Not the Foundation X EMA
teacher: MoCo's momentum (0.999 after every SSL iteration) and the teacher's (0.8 after every Lock-Release step)
answer different needs, and the teacher has no projector.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from cxrfx.engines.teacher import ema_update

__all__ = ["KeyEncoder"]


class KeyEncoder(nn.Module):
    """Starts as a copy of ``backbone`` + ``projector`` (MoCo), never receives a gradient, always in eval mode
    (no shuffle-BN on one process: it reads the running statistics it copies from the student; Swin's LayerNorms
    are unaffected, only a conv stem has BatchNorm).

    Args:
        backbone, projector: the student's (a Swin with ``pooled``; an MLP ending in a Linear).
        queue_size: keys kept as negatives; seeded random unit vectors at first (``seed``).
        momentum: key <- m * key + (1 - m) * student in :meth:`update`.
    """

    def __init__(self, backbone: nn.Module, projector: nn.Sequential, queue_size: int = 4096,
                 momentum: float = 0.999, seed: int = 0):
        super().__init__()
        self.backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.projector = copy.deepcopy(projector).requires_grad_(False)
        self.momentum = float(momentum)
        dim = projector[-1].out_features
        queue = torch.randn(int(queue_size), dim, generator=torch.Generator().manual_seed(int(seed)))
        self.register_buffer("queue", F.normalize(queue, dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def forward(self, standardised: torch.Tensor) -> torch.Tensor:
        """Unit-length keys (B, dim) of an already standardised input."""
        return F.normalize(self.projector(self.backbone.pooled(self.backbone(standardised)[-1])), dim=1)

    @torch.no_grad()
    def update(self, backbone: nn.Module, projector: nn.Module) -> None:
        ema_update(self.backbone, backbone, self.momentum, buffers="copy")
        ema_update(self.projector, projector, self.momentum, buffers="copy")

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` at the pointer, wrapping around (any batch size fits any queue)."""
        size, n = len(self.queue), min(len(keys), len(self.queue))
        index = (int(self.queue_ptr) + torch.arange(n)) % size
        self.queue[index.to(self.queue.device)] = keys[:n].to(self.queue.dtype)
        self.queue_ptr.fill_((int(self.queue_ptr) + n) % size)
