"""Dice for binary segmentation masks, in three conventions (REFERENCE §3).

Inputs everywhere: ``probs`` (N, C, *spatial) probabilities in [0, 1] (apply the sigmoid to logits first; values
outside [0, 1] raise, so that logits are not silently thresholded at 0.5) or booleans, and ``targets`` of the same
shape, binary (0/1, bool; anything > 0.5 counts as foreground). Both are binarised with ``> threshold`` (strict,
as the Foundation X code does: a probability of exactly 0.5 is background). numpy arrays or torch tensors.

- ``dice_fx`` (Foundation X parity): one Dice per image and channel, averaged over images and channels;
  empty prediction on empty mask = 1, empty mask with any prediction = 0. Same values as MONAI
  ``DiceMetric(ignore_empty=False)`` on the thresholded masks.
- ``dice_global``: one Dice per channel over all pixels of the set, then the mean over channels.
- ``dice_pos``: per image and channel, pairs with an empty ground truth excluded — MONAI's default
  ``DiceMetric(ignore_empty=True)`` with its default reduction "mean" (channels within an image, then images).
"""

from __future__ import annotations

import numpy as np

__all__ = ["dice_per_image", "dice_fx", "dice_global", "dice_pos"]


def _binarise(probs, targets, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    p, t = (x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x) for x in (probs, targets))
    if p.shape != t.shape:
        raise ValueError(f"probs and targets differ in shape: {p.shape} vs {t.shape}")
    if p.ndim < 3:
        raise ValueError(f"expected (N, C, *spatial) arrays, got shape {p.shape}")
    if p.dtype != bool and p.size and not (np.min(p) >= 0 and np.max(p) <= 1):  # NaN fails too
        raise ValueError("probs must lie in [0, 1] without NaN (probabilities, not logits: apply a sigmoid first)")
    n, c = p.shape[:2]
    return (p > threshold).reshape(n, c, -1), (t > 0.5).reshape(n, c, -1)


def dice_per_image(probs, targets, threshold: float = 0.5, empty: float = 1.0) -> np.ndarray:
    """(N, C) Dice of each image and channel after thresholding.

    ``empty`` is the value where both the prediction and the ground truth are empty: 1.0 (the Foundation X / MONAI
    ``ignore_empty=False`` convention) or NaN. An empty ground truth with any predicted pixel scores 0.
    """
    p, t = _binarise(probs, targets, threshold)
    inter = np.logical_and(p, t).sum(-1, dtype=np.float64)
    denom = p.sum(-1, dtype=np.float64) + t.sum(-1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, 2.0 * inter / denom, empty)


def dice_fx(probs, targets, threshold: float = 0.5, pool_channels: bool = False) -> float:
    """``dice_fx``: per-image Dice (empty/empty = 1, empty GT with a prediction = 0), mean over images and channels.

    The reference computes one Dice per image over *all* channels together (``mean_dice_coef``) except on
    ChestX-Det, where it does that per channel and averages the 13 channel means. The default here is per channel
    (the ChestX-Det path; the same number as the pooled path whenever C = 1); ``pool_channels=True`` pools the
    channels of an image into one Dice, as the other path does for a multi-channel head.
    """
    if pool_channels:
        p, t = _binarise(probs, targets, threshold)
        n = p.shape[0]
        return float(dice_per_image(p.reshape(n, 1, -1), t.reshape(n, 1, -1), 0.5).mean())
    return float(dice_per_image(probs, targets, threshold).mean())


def dice_global(probs, targets, threshold: float = 0.5, empty: float = 1.0) -> float:
    """``dice_global``: per channel, one Dice over every pixel of every image; then the mean over channels.

    A channel with no foreground in either the predictions or the ground truth of the whole set scores ``empty``.
    Per channel this is the reference's ``dice_score`` (its logged "Dice"; also the number its VinDr-CXR organ
    evaluation writes per organ).
    """
    p, t = _binarise(probs, targets, threshold)
    inter = np.logical_and(p, t).sum((0, 2), dtype=np.float64)
    denom = p.sum((0, 2), dtype=np.float64) + t.sum((0, 2), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.where(denom > 0, 2.0 * inter / denom, empty).mean())


def dice_pos(probs, targets, threshold: float = 0.5) -> float:
    """``dice_pos``: per-image Dice over the image-channel pairs whose ground truth is not empty.

    Reduced as ``monai.metrics.DiceMetric(ignore_empty=True)`` with its default reduction "mean" does: each image's
    Dice is the mean over its channels with non-empty ground truth, then the mean over the images that have at
    least one such channel (so an image weighs the same whatever its number of non-empty channels). NaN when every
    ground truth is empty, where MONAI returns 0.
    """
    p, t = _binarise(probs, targets, threshold)
    scores = dice_per_image(p, t, 0.5)
    valid = t.any(-1)
    n_valid = valid.sum(1)
    if not n_valid.any():
        return float("nan")
    per_image = np.where(valid, scores, 0.0).sum(1)[n_valid > 0] / n_valid[n_valid > 0]
    return float(per_image.mean())
