"""FROC, lesion hits and per-subset AP on hand-made cases whose answers can be counted by hand."""
import numpy as np
import pytest

from cxrfx.metrics import ap50, froc, lesion_hits, restrict_to_lesions, sensitivity_at


def P(boxes, scores, labels=None):
    return {"boxes": np.array(boxes, float).reshape(-1, 4), "scores": np.array(scores, float),
            "labels": np.zeros(len(scores), int) if labels is None else np.array(labels)}


def G(boxes, labels=None):
    return {"boxes": np.array(boxes, float).reshape(-1, 4),
            "labels": np.zeros(len(boxes), int) if labels is None else np.array(labels)}


L1, L2, L3 = [0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]
FAR = [[100, 100, 110, 110], [120, 120, 130, 130], [140, 140, 150, 150]]


def two_images():
    # image 0: lesions L1, L2. Detections: 0.9 on L1 (hit), 0.8 on L1 again (repeat: ignored), 0.7 far (FP),
    # 0.4 on L2 (hit). Image 1: lesion L3; 0.6 far (FP), 0.5 far (FP), 0.3 on L3 but a different class (hit).
    preds = [P([L1, [1, 1, 10, 10], FAR[0], L2], [0.9, 0.8, 0.7, 0.4]),
             P([FAR[1], FAR[2], L3], [0.6, 0.5, 0.3], [0, 0, 1])]
    return preds, [G([L1, L2]), G([L3])]


def test_lesion_hits_counts_true_false_and_repeat_detections():
    hits = lesion_hits(*two_images())
    assert hits["n_lesions"] == 3 and hits["n_images"] == 2
    assert hits["kind"].tolist() == [1, -1, 0, 1, 0, 0, 1]
    assert [s.tolist() for s in hits["lesion_scores"]] == [[0.9, 0.4], [0.3]]


def test_froc_reads_sensitivity_at_each_false_positive_rate():
    r = froc(*two_images(), fp_rates=(0.5, 1.0, 1.5, 8.0))
    # by score: .9 TP, .7 FP (0.5 FP/img), .6 FP (1.0), .5 FP (1.5), .4 TP, .3 TP
    assert r["sensitivity"] == pytest.approx([1 / 3, 1 / 3, 1.0, 1.0])
    assert r["thresholds"] == pytest.approx([0.7, 0.6, 0.3, 0.3])  # the lowest score still within the rate
    assert r["cpm"] == pytest.approx(np.mean([1 / 3, 1 / 3, 1, 1]))


def test_froc_perfect_detector_and_no_lesions():
    gts = [G([L1]), G([L2])]
    assert froc([P([L1], [0.9]), P([L2], [0.8])], gts)["sensitivity"] == [1.0] * 7
    assert froc([P([], []), P([], [])], gts)["cpm"] == 0.0
    with pytest.raises(ValueError, match="at least one lesion"):
        froc([P([], [])], [G([])])
    with pytest.raises(ValueError, match="one per image"):
        froc([P([], [])], gts)


def test_iou_threshold_decides_a_hit():
    half = [[0, 0, 10, 5]]  # IoU 0.5 with L1
    assert froc([P(half, [0.9])], [G([L1])], iou=0.5)["sensitivity"][0] == 1.0
    assert froc([P(half, [0.9])], [G([L1])], iou=0.6)["sensitivity"][0] == 0.0


def test_sensitivity_at_threshold_and_subset():
    scores = lesion_hits(*two_images())["lesion_scores"]
    assert sensitivity_at(scores, 0.35) == pytest.approx(2 / 3)
    assert sensitivity_at(scores, 0.35, [np.array([False, True]), np.array([True])]) == pytest.approx(0.5)
    assert np.isnan(sensitivity_at(scores, 0.1, [np.array([False, False]), np.array([False])]))


def test_restrict_to_lesions_ignores_hits_on_other_lesions():
    preds, gts = two_images()
    select = [np.array([False, True]), np.array([False])]  # only L2
    p, g = restrict_to_lesions(preds, gts, select)
    # the two detections on L1 are dropped (neither TP nor FP for L2's AP); far ones stay as false positives
    assert len(p[0]["boxes"]) == 2 and g[0]["boxes"].tolist() == [L2] and len(g[1]["boxes"]) == 0
    assert len(p[1]["boxes"]) == 2  # the detection on L3 goes, the two far ones stay
    # pooled by score: 0.7 FP, 0.6 FP, 0.5 FP, 0.4 TP -> precision 1/4 at recall 1
    assert ap50(p, g) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="selection"):
        restrict_to_lesions(preds, gts, [np.array([True]), np.array([True])])
