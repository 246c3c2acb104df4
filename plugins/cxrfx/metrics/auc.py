"""ROC-AUC for single and multi-label classification, in pure numpy.

Conventions (REFERENCE §3):

- ``roc_auc`` is the Mann-Whitney U statistic with average ranks for tied scores, which is exactly the area under
  the ROC curve with ties as diagonal segments — the value ``sklearn.metrics.roc_auc_score`` returns.
- Labels are 1 (positive), 0 (negative) or -1 / NaN (unknown, the datalist convention): unknown entries are dropped
  per label, so each label is scored on the images where it is known.
- A label whose known entries hold only one class has no AUC: NaN (sklearn raises instead).
- ``auc_all`` (standard): mean over every label with both classes present. ``auc_fx`` (Foundation X parity): plain
  mean over a fixed subset of labels, e.g. CheXpert / MIMIC on :data:`CHEXPERT_COMPETITION_LABELS`; NaN when any
  label of the subset has no AUC, where the reference code would have raised.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["roc_auc", "multilabel_auc", "auc_fx", "CHEXPERT_COMPETITION_LABELS"]

#: The 5 CheXpert competition labels on which Foundation X (and Ark) report CheXpert and MIMIC AUC.
CHEXPERT_COMPETITION_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, possibly on GPU or requiring grad
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``; tied values share the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    new_group = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[np.cumsum(new_group) - 1]
    return ranks


def roc_auc(scores, labels) -> float:
    """ROC-AUC of one label.

    Args:
        scores: (N,) scores, higher = more likely positive (probabilities, logits: any monotone score).
        labels: (N,) 1 = positive, 0 = negative, -1 or NaN = unknown (dropped).

    Returns:
        The AUC, identical to ``sklearn.metrics.roc_auc_score`` (ties count 1/2), or NaN when the known labels
        hold only one class (or none).

    Raises:
        ValueError: shapes differ, a known entry has a NaN score, or a label is not in {1, 0, -1, NaN}.
    """
    s, y = _as_numpy(scores).ravel(), _as_numpy(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in size: {s.shape} vs {y.shape}")
    known = ~(np.isnan(y) | (y == -1))
    s, y = s[known], y[known]
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"labels must be 1, 0, -1 (unknown) or NaN; got {np.unique(y)[:10]}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN where the label is known")
    n_pos = int((y == 1).sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = _average_ranks(s)[y == 1].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def multilabel_auc(scores, labels) -> dict:
    """Per-label AUC and their mean over the labels that have one (``auc_all``).

    Args:
        scores: (N, C) scores.
        labels: (N, C) 1 / 0 / -1 or NaN (unknown, masked out per label).

    Returns:
        ``{"per_label": [C floats, NaN where a label lacks a class], "auc_all": mean over the non-NaN labels
        (NaN when none), "n_valid": how many labels entered the mean}``.
    """
    s, y = _as_numpy(scores), _as_numpy(labels)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"scores and labels must both be (N, C); got {s.shape} and {y.shape}")
    per_label = [roc_auc(s[:, c], y[:, c]) for c in range(s.shape[1])]
    valid = [a for a in per_label if not np.isnan(a)]
    return {"per_label": per_label, "auc_all": float(np.mean(valid)) if valid else float("nan"),
            "n_valid": len(valid)}


def auc_fx(scores, labels, label_indices: Sequence[int] | None = None) -> float:
    """Foundation X AUC: the plain mean of per-label AUC over ``label_indices`` (all labels when None).

    Reference usage: CheXpert and MIMIC on the 5 :data:`CHEXPERT_COMPETITION_LABELS` (pass their indices);
    RSNA Pneumonia with softmax scores over its 3 classes; datasets trained with ``numClasses`` = 1 (TBX11K, NODE21,
    CANDID-PTX, ChestX-Det, SIIM) on label 0 only — so the in-training ChestX-Det "AUC" is ``label_indices=[0]``.

    Returns NaN when a selected label has no AUC (one class only): the reference would have raised there.
    """
    per_label = multilabel_auc(scores, labels)["per_label"]
    indices = range(len(per_label)) if label_indices is None else list(label_indices)
    chosen = [per_label[i] for i in indices]
    if not chosen:
        raise ValueError("auc_fx needs at least one label index")
    return float(np.mean(chosen))
