"""Percentile bootstrap confidence intervals over images: how far a score on a small test split can be trusted."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["bootstrap_ci"]


def bootstrap_ci(statistic: Callable[..., float], *arrays, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``statistic(*arrays)`` over ``n_boot`` resamples of the rows (images), drawn
    with replacement, the same rows for every array. Resamples where the statistic is undefined (NaN, e.g. an
    AUC without positives) are dropped; (NaN, NaN) when fewer than half remain. Seeded: same input, same
    interval."""
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("bootstrap_ci: arrays differ in length")
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        v = statistic(*(a[idx] for a in arrays))
        if v == v:
            values.append(v)
    if len(values) < n_boot / 2:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)
