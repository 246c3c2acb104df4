"""ACFT scoring (Zhou et al., "Fine-tuning Convolutional Neural Networks for Biomedical Image Analysis: Actively
and Incrementally", CVPR 2017; "Active, Continual Fine Tuning of CNNs for Reducing Annotation Efforts", MedIA
2021): which unlabelled image is worth annotating next, judged from the predictions on augmented copies of it.

For the copies ``j = 1..m`` of one image the model predicts per-location probabilities ``p_j`` (a pixel of a
segmentation map, a label of a classification head, an anchor of a detection head; every output is a sigmoid,
i.e. a two-class distribution ``(p, 1 - p)``). Per location:

- **entropy** ``e = mean_j H(p_j)``, ``H(p) = -p log p - (1 - p) log(1 - p)``: each copy's own uncertainty;
- **diversity** ``d = mean_{i<j} (p_i - p_j) (logit p_i - logit p_j)``: the symmetric KL divergence between two
  copies' predictions (the paper's ``sum_k (p_i^k - p_j^k) log(p_i^k / p_j^k)`` for two classes): how much the
  prediction changes under augmentations that should not change it;
- ``r = lambda_e * e + lambda_d * d``.

The paper keeps the ``alpha`` fraction of an image's patches on which the copies' mean prediction is most
certain of its dominant class ("majority selection") before averaging; dense outputs here have no patches, so
the image score is the mean of ``r`` over the ``alpha`` fraction of locations with the highest ``r`` (``alpha =
1``: all of them): an image with a small uncertain region is not drowned by its confident background.

Plain uncertainty (the entropy of a single un-augmented prediction) ranks an image whose prediction is confident
but flips under a small shift or contrast change as certain; ACFT ranks it high through the diversity term. This
module is torch only (no MONAI Label import), so it is tested in the project's own environment.
"""

from __future__ import annotations

import torch

__all__ = ["acft_score", "augmented_copies", "location_scores", "network_outputs"]

EPS = 1e-6


def location_scores(probs: torch.Tensor, lambda_entropy: float = 1.0, lambda_diversity: float = 1.0) -> torch.Tensor:
    """``probs``: (m copies, n locations) sigmoid outputs -> (n,) ``lambda_e * entropy + lambda_d * diversity``."""
    p = probs.double().clamp(EPS, 1 - EPS)
    entropy = -(p * p.log() + (1 - p) * (1 - p).log()).mean(0)
    m = p.shape[0]
    if m < 2:
        return lambda_entropy * entropy
    logit = p.log() - (1 - p).log()
    i, j = torch.triu_indices(m, m, offset=1)
    diversity = ((p[i] - p[j]) * (logit[i] - logit[j])).mean(0)
    return lambda_entropy * entropy + lambda_diversity * diversity


def acft_score(probs, alpha: float = 0.25, lambda_entropy: float = 1.0, lambda_diversity: float = 1.0) -> float:
    """The image's ACFT score: the mean of :func:`location_scores` over its top ``alpha`` fraction.

    ``probs``: (m copies, ...) sigmoid outputs, or a list of such tensors (one per output; each may have its own
    number of copies, e.g. spatial shifts only where the output can be shifted back)."""
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], not {alpha}")
    parts = [probs] if isinstance(probs, torch.Tensor) else list(probs)
    r = torch.cat([location_scores(p.reshape(p.shape[0], -1), lambda_entropy, lambda_diversity) for p in parts])
    k = max(1, int(round(alpha * r.numel())))
    return float(torch.topk(r, k).values.mean())


def augmented_copies(x: torch.Tensor, shift: int = 4) -> list[tuple[torch.Tensor, object, bool]]:
    """Label-preserving copies of ``x`` (B, C, H, W) in [0, 1]: ``(copy, back, shifted)`` where ``back`` brings a
    dense output of the copy back onto the original pixels. The identity, two gamma changes, a contrast change,
    and two shifts by ``shift`` pixels (undone on the output; the wrapped border is a radiograph's edge)."""
    def unshift(dy, dx):
        return lambda y: torch.roll(y, shifts=(-dy, -dx), dims=(-2, -1))

    def same(y):
        return y

    mean = x.mean(dim=(-2, -1), keepdim=True)
    return [
        (x, same, False),
        (x.clamp(0, 1) ** 0.8, same, False),
        (x.clamp(0, 1) ** 1.25, same, False),
        (((x - mean) * 1.15 + mean).clamp(0, 1), same, False),
        (torch.roll(x, shifts=(shift, shift), dims=(-2, -1)), unshift(shift, shift), True),
        (torch.roll(x, shifts=(-shift, shift), dims=(-2, -1)), unshift(-shift, shift), True),
    ]


def network_outputs(network: torch.nn.Module, x: torch.Tensor, shift: int = 4) -> list[torch.Tensor]:
    """Every head's sigmoid outputs of a FoundationX ``network`` on the :func:`augmented_copies` of ``x`` (1, 1,
    H, W), as (m, n) tensors: segmentation maps shifted back onto the original pixels (all copies),
    classification labels (all copies), detection anchor scores (the copies without a shift: anchors sit on
    stride-8+ grids that a 4-pixel shift does not map onto)."""
    found: dict[str, list[torch.Tensor]] = {"seg": [], "cls": [], "det": []}
    for xa, back, shifted in augmented_copies(x, shift):
        parts: dict[str, list[torch.Tensor]] = {}
        for key, out in network.forward_all(xa, tasks=("cls", "seg") if shifted else ("cls", "seg", "det")).items():
            task = key.split("/")[0]
            parts.setdefault(task, []).extend((back(p) if task == "seg" else p).flatten()
                                              for p in network.head_type(task).probabilities(out))
        for task, p in parts.items():
            found[task].append(torch.cat(p))
    return [torch.stack(p) for p in found.values() if p]
