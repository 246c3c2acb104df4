"""``make demo``'s pieces at tiny size: figures, bootstrap intervals, the learning curve, the test tables, the
baseline lines, and the demo end to end (4 images per dataset, 64 px, one cycle)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cxrfx.demo_report import baseline_lines, dice, read_learning_curve, score_tables, write_figures
from cxrfx.metrics.auc import roc_auc
from cxrfx.metrics.bootstrap import bootstrap_ci
from cxrfx.outputs.figures import render_comparison, roc_curve, save_line_chart, save_roc_figure


def test_roc_curve_area_is_the_auc():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60).astype(float)
    scores = np.round(labels * 0.4 + rng.random(60), 1)  # ties on purpose
    labels[:3] = -1  # unknown: dropped
    fpr, tpr = roc_curve(scores, labels)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(scores, labels))
    assert roc_curve([0.1, 0.2], [1, 1])[0].size == 0  # one class: no curve


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    x = np.random.default_rng(1).normal(size=50)
    lo, hi = bootstrap_ci(np.mean, x, n_boot=300)
    assert lo < x.mean() < hi and (lo, hi) == bootstrap_ci(np.mean, x, n_boot=300)
    assert np.isnan(bootstrap_ci(roc_auc, np.linspace(0, 1, 50), np.zeros(50), n_boot=200)[0])  # no positives
    y = np.r_[np.ones(1), np.zeros(49)]  # one positive: the resamples without it are dropped, not counted
    assert not np.isnan(bootstrap_ci(roc_auc, np.linspace(0, 1, 50), y, n_boot=200)[0])
    with pytest.raises(ValueError):
        bootstrap_ci(roc_auc, np.zeros(3), np.zeros(4))


def test_charts_and_comparison_panels(tmp_path):
    path = save_line_chart(str(tmp_path / "lc.png"), {"a": ([1, 2, 3], [0.2, float("nan"), 0.8]), "b": ([1], [0.5])},
                           title="t", xlabel="cycle", ylabel="score", ylim=(0, 1), markers=True)
    assert Image.open(path).size[0] > 300
    path = save_roc_figure(str(tmp_path / "roc.png"), {"x": ([0.1, 0.9, 0.4], [0, 1, 0]), "y": ([0.2], [1])})
    assert Image.open(path).mode == "RGB"
    image = np.zeros((16, 16), np.float32)
    truth = {"heart": np.pad(np.ones((6, 6), bool), 5)}
    panel = render_comparison(image, truth, {"heart": np.zeros((16, 16), bool)}, truth_boxes=[[1, 1, 4, 4]],
                              pred_boxes=[[2, 2, 5, 5]], class_order=["heart"], caption="one\ntwo", scale=2)
    assert panel.shape[1] == 2 * 32 + 6 and panel.shape[2] == 3
    left = panel[14:46, :32]
    assert (left == (230, 25, 75)).all(axis=2).any()  # the heart's contour on the truth side (first in class_order)
    assert not (panel[14:46, 38:] == (230, 25, 75)).all(axis=2).any()  # predicted nothing: no contour


def _fake_predictions(n=12):
    rng = np.random.default_rng(0)
    names = ["nodule", "mass", "pneumothorax", "effusion", "cardiomegaly"]
    labels = rng.integers(0, 2, (n, 5)).astype(np.float32)
    cls = {"ids": [f"i{k}" for k in range(n)], "scores": labels * 0.6 + 0.4 * rng.random((n, 5)), "labels": labels,
           "names": names}
    truth = rng.random((n, 3, 16, 16)) > 0.5
    seg = {"ids": cls["ids"], "images": list(rng.random((n, 16, 16))), "truth": list(truth), "pred": list(truth.copy()),
           "names": ["lung_left", "heart", "ribs"]}
    boxes = {"boxes": np.array([[2.0, 2, 8, 8]], np.float32), "labels": np.array([0])}
    det = {"ids": cls["ids"], "images": seg["images"], "names": ["nodule", "mass"],
           "truth": [boxes] * n, "pred": [dict(boxes, scores=np.array([0.9], np.float32))] * n}
    return {"cls/a": cls, "cls/b": dict(cls), "seg/b": seg, "det/a": det}


def test_score_tables_and_figures(tmp_path):
    preds = _fake_predictions()
    md, scores = score_tables(preds, n_boot=50)
    assert scores["cls"]["effusion"]["pooled"]["auc"] == pytest.approx(1.0)
    assert scores["seg"]["heart"]["dice"] == 1.0 and scores["det"]["a"]["ap50"] == pytest.approx(1.0)
    assert "| label | a (n=12) | b (n=12) | pooled (n=24) | positives |" in md
    assert "| heart | **1.000 [1.00, 1.00]** |" in md
    curve = {1: {"teacher/cls/a/auc": 0.6, "teacher/seg/b/dice_fx": 0.5, "student/mean": 0.1},
             2: {"teacher/cls/a/auc": 0.8}}
    paths = write_figures(preds, curve, str(tmp_path), panels=2)
    assert set(paths) == {"predictions", "roc", "roc_a", "roc_b", "learning_curve"}
    assert Image.open(paths["predictions"]).size[0] > 0
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_learning_curve_from_the_training_log(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("noise\n2026 - INFO - Epoch[1] Metrics -- teacher/cls/a/auc: 0.5000 teacher/mean: nan \n"
                   "2026 - INFO - Epoch[2] Metrics -- teacher/cls/a/auc: 0.7500 val_mean_teacher: 1e-05 \n")
    curve = read_learning_curve(str(log))
    assert curve[2]["teacher/cls/a/auc"] == 0.75 and curve[2]["val_mean_teacher"] == 1e-05
    assert np.isnan(curve[1]["teacher/mean"])


def test_baseline_lines_read_stored_results(tmp_path):
    assert all("no stored" in line for line in baseline_lines(str(tmp_path)))
    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    (results / "demo_quality.json").write_text(json.dumps({
        "foundation_x_cls": {"visible_mean": 0.9, "nodule": 0.6},
        "baseline_cls": {"visible_mean": 0.8, "nodule": 0.5}}))
    (results / "quality_det.json").write_text(json.dumps({"meta": {"size": 256}, "runs": {
        "a": {"arm": "cxrfx", "budget": "time", "ap50": 0.03, "cpm": 0.16},
        "b": {"arm": "monai", "budget": "time", "ap50": 0.0, "cpm": 0.04}}}))
    def seg_run(arm, dice, variant=""):
        return {"arm": arm, "iterations_budget": 400, "variant": variant,
                "test": {"dice_fx": dice, "per_class": {c: {"dice_fx": dice} for c in ("lung_left", "heart")}}}

    (results / "quality_seg.json").write_text(json.dumps({"meta": {"size": 224}, "runs": {
        "u0": seg_run("upernet", 0.9), "m0": seg_run("monai_unet", 0.93), "x": seg_run("upernet", 0.1, "lr3x")}}))
    lines = baseline_lines(str(tmp_path))
    assert "0.900 over" in lines[0] and "DenseNet-121 0.800" in lines[0]
    assert "UperNet test dice_fx 0.900 vs MONAI UNet 0.930 (lungs and heart 0.900 vs 0.930)" in lines[1]
    assert "AP50 0.030 vs MONAI RetinaNet-ResNet-18 0.000" in lines[2]


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "cxrfx", "demo", "--out", str(out), "--count", "4", "--size", "64",
                           "--epochs", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = (out / "summary.md").read_text()
    assert "| phantom_det | DICOM 12-bit | 2 / 1 / 1 |" in summary
    assert "All datalists and files validated." in summary and "Nothing here is clinical" in summary
    assert "| cardiomegaly |" in summary and "| lung_left |" in summary and "AP50 [95% CI]" in summary
    for name in ("predictions_vs_truth.png", "roc.png", "learning_curve.png", "predictions.png", "overlays.png"):
        assert (out / name).stat().st_size > 0 and f"({name})" in summary
    assert (out / "foundation_x" / "models" / "model.pt").exists()
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores) == {"student", "teacher", "learning_curve"}
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == ["phantom_cls_0003.png", "phantom_det_0003.png", "phantom_seg_0003.png"]
    assert "Wall" in summary and "CPU" in summary
