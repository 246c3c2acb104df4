"""Adam-v2 (Taher et al., CVPR 2024): learning localizability, composability and decomposability from anatomy.

The anatomy-aware recipe of the line, on our Swin backbone. Each sample is a *whole* anatomical crop (two
intensity-jittered views) and its two *parts* (``RandAnatomyCropsd``: halves at the next granularity level). A
student (the network's backbone + a projector) and a momentum *key encoder* (as in DiRA; not the Foundation X
teacher) embed every crop; three terms:

- **localizability**: InfoNCE between student and key embeddings of the same crop, against a queue of earlier
  crops' keys (other anatomy at any granularity), so each anatomical structure gets a distinct embedding;
- **composability**: a composer (MLP on the two part embeddings) must predict the key embedding of the whole;
- **decomposability**: a decomposer (MLP on the whole's embedding) must predict the key embeddings of the parts.

Composability and decomposability use ``2 - 2 cos`` (squared distance of unit vectors). Weights default to 1 each
(uncertain: the paper was not at hand; its exact losses and the negatives' pruning of Adam-v1 are not reproduced).

Why Adam-v2 rather than CAiD for a Swin backbone (our reasoning): Adam-v2's terms are defined on crop *embeddings*
(Swin's final norm + global pooling, what the classification heads read), so they need no CNN-specific parts, and
Swin's windowed attention with relative position bias encodes a resized part as well as the whole; its part-whole
hierarchy matches Swin's own hierarchy of merging stages. CAiD's addition over instance discrimination is a
context-restoration decoder, which DiRA's restorative branch already provides here through the UperNet decoder;
Adam-v2 adds what DiRA lacks: anatomy-aware, multi-granularity structure.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from cxrfx.ssl.dira import projection_mlp
from cxrfx.ssl.losses import info_nce
from cxrfx.ssl.momentum import KeyEncoder

__all__ = ["AdamV2", "unit_distance"]

DEFAULT_WEIGHTS = {"loc": 1.0, "comp": 1.0, "dec": 1.0}


def unit_distance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch (and parts) of ``|pred/|pred| - target/|target||^2`` (= 2 - 2 cos); the target
    carries no gradient."""
    return (F.normalize(pred, dim=-1) - F.normalize(target.detach(), dim=-1)).pow(2).sum(dim=-1).mean()


class AdamV2(nn.Module):
    """The Adam-v2 recipe around a :class:`~cxrfx.networks.FoundationX` (see the module docstring); used by
    :class:`~cxrfx.ssl.step.SSLStep` like :class:`~cxrfx.ssl.dira.DiRA`.

    Args:
        network: the model being pretrained (referenced, not owned).
        proj_dim, proj_hidden, queue_size, temperature, key_momentum: as DiRA's discriminative branch (the same
            :class:`~cxrfx.ssl.momentum.KeyEncoder`).
        weights: ``{"loc", "comp", "dec"}`` loss weights.
        seed: seeds the initial queue.
    """

    input_keys = ("whole1", "whole2", "part_a", "part_b")
    adversarial = False

    def __init__(self, network: nn.Module, proj_dim: int = 128, proj_hidden: int | None = None,
                 queue_size: int = 4096, temperature: float = 0.2, key_momentum: float = 0.999,
                 weights: Mapping[str, float] | None = None, seed: int = 0):
        super().__init__()
        net = network.module if hasattr(network, "module") else network
        object.__setattr__(self, "network", net)  # a reference, not a submodule: its weights are the student's
        self.temperature, self.key_momentum = float(temperature), float(key_momentum)
        self.weights = {**DEFAULT_WEIGHTS, **dict(weights or {})}
        width = net.backbone.num_features[-1]
        hidden = int(proj_hidden or width)
        self.projector = projection_mlp(width, hidden, proj_dim)
        self.composer = projection_mlp(2 * proj_dim, hidden, proj_dim)
        self.decomposer = projection_mlp(proj_dim, hidden, 2 * proj_dim)
        self.key_encoder = KeyEncoder(net.backbone, self.projector, queue_size, key_momentum, seed)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("key_encoder.")]

    def forward(self, whole1: torch.Tensor, whole2: torch.Tensor, part_a: torch.Tensor,
                part_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses of one batch (each input (B, 1, H, W)): ``loc``, ``comp``, ``dec``, weighted ``loss``; ``keys``
        (the key embeddings of every crop) for :meth:`after_step`."""
        net, batch = self.network, len(whole1)
        # one student pass over whole and parts, one key pass over the other view of the whole and the parts
        student = self.projector(net.pooled_feature(net.forward_features(torch.cat([whole1, part_a, part_b]))))
        keys = self.key_encoder((torch.cat([whole2, part_a, part_b]) - net.input_mean) / net.input_std)
        z_whole, z_a, z_b = student.split(batch)
        k_whole, k_a, k_b = keys.split(batch)
        out = {"loc": info_nce(F.normalize(student, dim=1), keys, self.key_encoder.queue.clone(), self.temperature),
               "comp": unit_distance(self.composer(torch.cat([z_a, z_b], dim=1)), k_whole),
               "dec": unit_distance(self.decomposer(z_whole).reshape(batch, 2, -1), torch.stack([k_a, k_b], 1))}
        out["loss"] = sum(self.weights[k] * out[k] for k in ("loc", "comp", "dec"))
        out["keys"] = keys
        return out

    @torch.no_grad()
    def after_step(self, keys: torch.Tensor | None) -> None:
        """Momentum-update the key encoder, then enqueue the keys."""
        self.key_encoder.update(self.network.backbone, self.projector)
        if keys is not None:
            self.key_encoder.enqueue(keys)
