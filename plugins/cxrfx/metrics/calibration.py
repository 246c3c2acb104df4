"""Decision thresholds per label, calibrated on a validation split (Youden's J), stored with the bundle.

Criterion: for every label, the threshold ``t`` that maximises Youden's J = sensitivity + specificity - 1
(= TPR - FPR) on the validation scores, with the rule **positive if probability >= t**. Candidate thresholds
are the distinct scores (as ``sklearn.metrics.roc_curve`` uses them). Ties (several thresholds reach the
same J) are resolved towards the **highest** threshold, i.e. the most specific operating point, and the
number of tied thresholds is reported.

Labels that cannot be calibrated keep the default threshold (0.5) and say why in ``status``:
``single_class`` (only positives or only negatives among the known labels), ``no_labels`` (every label
unknown, ``-1``), ``no_separation`` (best J is 0: the scores do not separate the classes).

Files: ``models/thresholds.json`` in the bundle (see :func:`save_thresholds`), read by ``predict`` through
:func:`load_thresholds`. ``cxrfx.predict.calibrate_bundle`` (``python -m cxrfx calibrate``) computes it from a
bundle's network and validation split; this module stays pure numpy.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from cxrfx.errors import ConfigError

__all__ = ["ThresholdResult", "youden_threshold", "calibrate_scores", "save_thresholds", "load_thresholds",
           "threshold_for", "DEFAULT_THRESHOLD", "CRITERION"]

DEFAULT_THRESHOLD = 0.5
CRITERION = "youden_j"
RULE = "positive if probability >= threshold"


@dataclass
class ThresholdResult:
    """One label's operating point. ``j``, ``sensitivity``, ``specificity`` are on the calibration data
    (None when the label could not be calibrated); ``ties``: thresholds reaching the best J."""

    threshold: float
    status: str
    j: float | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    n_positive: int = 0
    n_negative: int = 0
    ties: int = 0


def youden_threshold(scores, labels, default: float = DEFAULT_THRESHOLD) -> ThresholdResult:
    """The Youden-J threshold of one label (see the module docstring for the rule and the tie policy).

    Args:
        scores: (N,) probabilities (or any score where higher means more likely positive).
        labels: (N,) 1 / 0, and -1 (or NaN) for unknown, which is left out.
        default: threshold kept when the label cannot be calibrated.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if s.shape != y.shape:
        raise ConfigError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    known = np.isfinite(y) & (y >= 0)
    if not np.isfinite(s[known]).all():
        raise ConfigError("scores contain NaN or infinite values")
    s, y = s[known], y[known] > 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos + n_neg == 0:
        return ThresholdResult(default, "no_labels")
    if n_pos == 0 or n_neg == 0:
        return ThresholdResult(default, "single_class", n_positive=n_pos, n_negative=n_neg)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # one candidate per distinct score: cumulative counts at the last position of each run of equal scores
    last_of_run = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    tpr = np.cumsum(y_sorted)[last_of_run] / n_pos
    fpr = np.cumsum(~y_sorted)[last_of_run] / n_neg
    j = tpr - fpr
    best = float(j.max())
    if best <= 0:
        return ThresholdResult(default, "no_separation", j=0.0, n_positive=n_pos, n_negative=n_neg)
    tied = np.nonzero(np.isclose(j, best, rtol=0, atol=1e-12))[0]
    k = int(tied[0])  # candidates run from the highest score down: the first tie is the most specific
    return ThresholdResult(float(s_sorted[last_of_run[k]]), "ok", j=round(best, 6), sensitivity=round(float(tpr[k]), 6),
                           specificity=round(float(1 - fpr[k]), 6), n_positive=n_pos, n_negative=n_neg,
                           ties=int(tied.size))


def calibrate_scores(scores, labels, label_names: Sequence[str] | None = None,
                     default: float = DEFAULT_THRESHOLD) -> dict[str, ThresholdResult]:
    """:func:`youden_threshold` for every column of (N, C) ``scores`` / ``labels``; keys are ``label_names``."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if s.ndim != 2 or s.shape != y.shape:
        raise ConfigError(f"scores and labels must both be (N, C), got {s.shape} and {y.shape}")
    names = list(label_names) if label_names is not None else [str(i) for i in range(s.shape[1])]
    if len(names) != s.shape[1]:
        raise ConfigError(f"{len(names)} label names for {s.shape[1]} score columns")
    return {name: youden_threshold(s[:, i], y[:, i], default) for i, name in enumerate(names)}


def save_thresholds(path: str | os.PathLike, heads: Mapping[str, Mapping[str, ThresholdResult]],
                    split: str = "validation", source: str = "") -> str:
    """Write ``{"criterion", "rule", "split", "created", "source", "heads": {head: {label: {...}}}}``."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data = {
        "criterion": CRITERION, "rule": RULE, "split": split, "source": source,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "heads": {head: {label: asdict(r) for label, r in labels.items()} for head, labels in heads.items()},
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    return path


def load_thresholds(path: str | os.PathLike) -> dict[str, dict[str, dict]]:
    """``{head: {label: {"threshold": t, "status": ..., ...}}}`` from :func:`save_thresholds`' file."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        heads = data["heads"]
        for head, labels in heads.items():
            for label, entry in labels.items():
                t = float(entry["threshold"])
                if not 0.0 <= t <= 1.0:
                    raise ValueError(f"{head}/{label}: threshold {t} outside [0, 1]")
    except FileNotFoundError:
        raise ConfigError(f"{path}: thresholds file not found") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: not a thresholds file ({type(exc).__name__}: {exc})") from None
    if data.get("criterion") != CRITERION:
        raise ConfigError(f"{path}: unknown criterion {data.get('criterion')!r} (expected {CRITERION!r})")
    return heads


def threshold_for(thresholds: Mapping[str, Mapping[str, Mapping]] | None, head: str, label: str,
                  default: float = DEFAULT_THRESHOLD) -> tuple[float, str]:
    """(threshold, where it comes from): ``"youden_j"`` when calibrated, else ``"default"`` (with the
    reason when calibration was attempted, e.g. ``"default (single_class)"``)."""
    entry = (thresholds or {}).get(head, {}).get(label)
    if entry is None:
        return default, "default"
    if entry.get("status", "ok") != "ok":
        return float(entry["threshold"]), f"default ({entry['status']})"
    return float(entry["threshold"]), CRITERION
