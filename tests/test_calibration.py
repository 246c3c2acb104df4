"""Youden-J threshold calibration: known optima, sklearn's ROC curve as reference, ties, degenerate labels, files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from cxrfx.errors import ConfigError
from cxrfx.metrics.calibration import (
    calibrate_scores, load_thresholds, save_thresholds, threshold_for, youden_threshold,
)


def sklearn_youden(scores, labels):
    """Reference: argmax of TPR - FPR over sklearn's thresholds (descending, so ties go to the highest)."""
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    k = int(np.argmax(tpr - fpr))
    return float(thr[k]), float(tpr[k] - fpr[k])


def test_known_optimum_separable_by_construction():
    # negatives uniform in [0, 0.4], positives in [0.6, 1] except two negatives above: optimum = lowest positive
    rng = np.random.default_rng(0)
    neg = np.r_[rng.uniform(0, 0.4, 50), 0.7, 0.8]
    pos = rng.uniform(0.6, 1.0, 30)
    scores, labels = np.r_[neg, pos], np.r_[np.zeros(52), np.ones(30)]
    r = youden_threshold(scores, labels)
    assert r.status == "ok"
    assert r.threshold == pytest.approx(pos.min())
    assert r.sensitivity == 1.0 and r.specificity == pytest.approx(50 / 52, abs=1e-6)
    assert r.j == pytest.approx(1 - 2 / 52, abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn_roc_curve_on_overlapping_gaussians(seed):
    rng = np.random.default_rng(seed)
    n = 400
    labels = rng.random(n) < 0.3
    scores = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 1.2 * labels)))
    scores = np.round(scores, 2)  # rounding makes many equal scores, which both must treat as one threshold
    r = youden_threshold(scores, labels)
    t_ref, j_ref = sklearn_youden(scores, labels)
    assert r.threshold == pytest.approx(t_ref) and r.j == pytest.approx(j_ref, abs=1e-6)
    predicted = scores >= r.threshold  # the stored rule reproduces the reported operating point
    assert r.sensitivity == pytest.approx(predicted[labels].mean(), abs=1e-6)
    assert r.specificity == pytest.approx(1 - predicted[~labels].mean(), abs=1e-6)


def test_ties_go_to_the_most_specific_threshold_and_are_counted():
    # J = 0.5 at t = 0.9 (1 of 2 positives, no negative) and at t = 0.6 (both positives, 1 of 2 negatives)
    scores = [0.9, 0.7, 0.6, 0.2]
    labels = [1, 0, 1, 0]
    r = youden_threshold(scores, labels)
    assert (r.ties, r.threshold, r.j, r.sensitivity, r.specificity) == (2, 0.9, 0.5, 0.5, 1.0)
    t_ref, j_ref = sklearn_youden(scores, labels)
    assert (r.threshold, r.j) == (pytest.approx(t_ref), pytest.approx(j_ref))


def test_unknown_labels_are_left_out():
    scores = np.array([0.9, 0.8, 0.2, 0.1, 0.95, 0.05])
    labels = np.array([1, 1, 0, 0, -1, -1])
    r = youden_threshold(scores, labels)
    assert (r.n_positive, r.n_negative, r.threshold, r.j) == (2, 2, 0.8, 1.0)


@pytest.mark.parametrize("labels,status", [([1, 1, 1], "single_class"), ([0, 0, 0], "single_class"),
                                           ([-1, -1, -1], "no_labels")])
def test_degenerate_labels_keep_the_default_and_say_why(labels, status):
    r = youden_threshold([0.2, 0.6, 0.9], labels, default=0.5)
    assert (r.threshold, r.status, r.j) == (0.5, status, None)


def test_no_separation_reported():
    r = youden_threshold([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0])
    assert r.status == "no_separation" and r.threshold == 0.5


def test_bad_input_named():
    with pytest.raises(ConfigError, match="differ in length"):
        youden_threshold([0.1, 0.2], [1])
    with pytest.raises(ConfigError, match="NaN"):
        youden_threshold([np.nan, 0.2], [1, 0])


def test_calibrate_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.stack([rng.random(60) < 0.5, np.ones(60)], axis=1).astype(float)
    scores = np.clip(labels * 0.3 + rng.random((60, 2)) * 0.7, 0, 1)
    results = calibrate_scores(scores, labels, ["nodule", "mass"])
    assert results["nodule"].status == "ok" and results["mass"].status == "single_class"
    path = save_thresholds(tmp_path / "models" / "thresholds.json", {"phantom_cls": results}, source="test")
    data = json.loads(open(path).read())
    assert data["criterion"] == "youden_j" and data["rule"].startswith("positive if probability >=")
    loaded = load_thresholds(path)
    assert loaded["phantom_cls"]["nodule"]["threshold"] == pytest.approx(results["nodule"].threshold)
    assert threshold_for(loaded, "phantom_cls", "nodule") == (pytest.approx(results["nodule"].threshold), "youden_j")
    assert threshold_for(loaded, "phantom_cls", "mass") == (0.5, "default (single_class)")
    assert threshold_for(loaded, "other", "x") == (0.5, "default")


def test_load_thresholds_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_thresholds(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"criterion": "youden_j", "heads": {"h": {"a": {"threshold": 3}}}}')
    with pytest.raises(ConfigError, match=r"bad\.json.*outside"):
        load_thresholds(bad)
