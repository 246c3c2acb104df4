"""Losses of the self-supervised recipes: contrastive (MoCo-v2 InfoNCE against a queue), restoration (MSE) and
adversarial (least-squares patch GAN, MONAI's ``PatchAdversarialLoss``).

MONAI's ``ContrastiveLoss`` is SimCLR's in-batch NT-Xent (no key encoder, no queue of earlier keys), so the MoCo
form is written here; the adversarial terms are MONAI's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss

__all__ = ["info_nce", "restoration_loss", "generator_loss", "discriminator_loss"]

# least squares without MONAI's default leaky-ReLU on the logits: the plain LSGAN of DiRA's patch discriminator
_LSGAN = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)


def info_nce(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo's InfoNCE: each query (B, D) must pick its own key (B, D) among the key and the queue's (K, D)
    negatives. All three L2-normalised by the caller; the key and queue carry no gradient.

    loss = mean_i -log( exp(q_i.k_i / t) / (exp(q_i.k_i / t) + sum_j exp(q_i.n_j / t)) ).
    """
    positive = (query * key.detach()).sum(dim=1, keepdim=True)
    negative = query @ queue.detach().t()
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(query), dtype=torch.long, device=query.device))


def restoration_loss(restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the restored and the original image (Models Genesis, DiRA)."""
    return F.mse_loss(restored, target)


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The restorer's adversarial term: mean (D(restored) - 1)^2, restorations scored as real."""
    return _LSGAN(fake_logits, target_is_real=True, for_discriminator=False)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's: (mean (D(original) - 1)^2 + mean D(restored)^2) / 2."""
    return 0.5 * (_LSGAN(real_logits, target_is_real=True, for_discriminator=True)
                  + _LSGAN(fake_logits, target_is_real=False, for_discriminator=True))
