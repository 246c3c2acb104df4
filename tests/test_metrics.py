"""Metrics against their references: sklearn's roc_auc_score, pycocotools' COCOeval, MONAI's DiceMetric."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from cxrfx.metrics import (
    COCO_IOU_THRESHOLDS, FX_IOU_THRESHOLDS, ap50, auc_fx, coco_ap, coco_map, dice_fx, dice_global, dice_per_image,
    dice_pos, map40_fx, multilabel_auc, roc_auc,
)

# ---------------------------------------------------------------- AUC


def test_roc_auc_matches_sklearn_with_ties_and_masks():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    n, c = 300, 6
    scores = np.round(rng.uniform(size=(n, c)), 1)  # 11 distinct values: many ties
    labels = (rng.uniform(size=(n, c)) < scores * 0.8).astype(np.float64)
    labels[rng.uniform(size=(n, c)) < 0.2] = -1
    labels[:, 4] = np.where(labels[:, 4] == -1, -1, 0)  # known entries of label 4 all negative
    result = multilabel_auc(scores, labels)
    for j in range(c):
        known = labels[:, j] != -1
        if j == 4:
            assert np.isnan(result["per_label"][j])
            continue
        expected = sk.roc_auc_score(labels[known, j], scores[known, j])
        assert result["per_label"][j] == pytest.approx(expected, abs=1e-12)
        assert roc_auc(torch.tensor(scores[:, j]), torch.tensor(labels[:, j])) == pytest.approx(expected, abs=1e-12)
    valid = [a for a in result["per_label"] if not np.isnan(a)]
    assert result["n_valid"] == 5 and result["auc_all"] == pytest.approx(np.mean(valid))
    assert auc_fx(scores, labels, [0, 2, 3]) == pytest.approx(np.mean([result["per_label"][i] for i in (0, 2, 3)]))
    assert np.isnan(auc_fx(scores, labels))  # the reference averages every label; label 4 has no AUC


def test_roc_auc_small_cases():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    assert roc_auc([0.2, 0.9, 0.3], [0, 1, -1]) == 1.0
    assert roc_auc([0.2, 0.9, 0.3], [0, 1, np.nan]) == 1.0
    assert np.isnan(roc_auc([0.2, 0.9], [1, 1]))
    with pytest.raises(ValueError, match="labels must be"):
        roc_auc([0.2, 0.9], [0, 2])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([np.nan, 0.9], [0, 1])


# ---------------------------------------------------------------- detection


def _random_scene(seed: int, n_images: int = 14, n_cat: int = 3):
    """Per-image predictions and ground truths: jittered true positives, duplicates, wrong labels, false
    positives, images without ground truth, an image over the 100-detection cap, coarse scores (ties)."""
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for i in range(n_images):
        n_gt = 0 if i % 5 == 0 else int(rng.integers(1, 6))
        size = rng.choice([6.0, 20.0, 60.0, 180.0], n_gt)[:, None] * rng.uniform(0.6, 1.6, (n_gt, 2))
        xy = rng.uniform(0, 400, (n_gt, 2))
        g = np.c_[xy, xy + size]
        g_lab = rng.integers(0, n_cat, n_gt)
        copies = rng.integers(0, 3, n_gt)  # 0, 1 or 2 detections per object
        p = np.repeat(g, copies, axis=0)
        p_lab = np.repeat(g_lab, copies)
        p = p + rng.normal(0, 0.12, p.shape) * np.repeat(size, copies, axis=0)[:, [0, 1, 0, 1]]
        p_lab = np.where(rng.uniform(size=len(p_lab)) < 0.1, rng.integers(0, n_cat + 1, len(p_lab)), p_lab)
        n_fp = int(rng.integers(0, 4))
        fp_xy = rng.uniform(0, 400, (n_fp, 2))
        p = np.r_[p, np.c_[fp_xy, fp_xy + rng.uniform(5, 150, (n_fp, 2))]]
        p_lab = np.r_[p_lab, rng.integers(0, n_cat + 1, n_fp)]  # category n_cat never has ground truth
        p[:, 2:] = np.maximum(p[:, 2:], p[:, :2] + 0.5)
        scores = np.round(rng.uniform(0.05, 1, len(p)), 1)
        preds.append({"boxes": p, "scores": scores, "labels": p_lab})
        gts.append({"boxes": g, "labels": g_lab})
    # Over the cap: 120 low-IoU detections outscore the one good detection of this object.
    g = np.array([[100.0, 100.0, 150.0, 160.0]])
    fp_xy = rng.uniform(0, 300, (120, 2))
    p = np.r_[np.c_[fp_xy, fp_xy + 30], g + 1]
    preds.append({"boxes": p, "scores": np.r_[rng.uniform(0.5, 1, 120), 0.3], "labels": np.zeros(121, int)})
    gts.append({"boxes": g, "labels": np.zeros(1, int)})
    preds.append(_tie_case()[0][0])
    gts.append(_tie_case()[1][0])
    return preds, gts


def _tie_case():
    """The first detection has IoU 2/3 with both objects; COCO gives it the later one, so the second detection
    (IoU 0.82 with the first object, 1/3 with the second) matches too. Plus an IoU of exactly 0.5."""
    gt = {"boxes": np.array([[2.0, 0, 12, 10], [-2.0, 0, 8, 10], [0.0, 50, 10, 70]]), "labels": np.zeros(3, int)}
    pred = {"boxes": np.array([[0.0, 0, 10, 10], [3.0, 0, 13, 10], [0.0, 50, 10, 60]]),
            "scores": np.array([0.9, 0.8, 0.7]), "labels": np.zeros(3, int)}
    return [pred], [gt]


def _cocoeval(preds, gts, n_cat, iou_thrs=None):
    """COCOeval (bbox) on the same data; returns the evaluator after summarize()."""
    coco_mod = pytest.importorskip("pycocotools.coco")
    cocoeval = pytest.importorskip("pycocotools.cocoeval")

    def xywh(b):
        b = np.asarray(b, np.float64)
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    anns, results = [], []
    for i, (p, g) in enumerate(zip(preds, gts)):
        for box, lab in zip(g["boxes"], g["labels"]):
            w = xywh(box)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(lab) + 1, "bbox": w,
                         "area": w[2] * w[3], "iscrowd": 0})
        for box, s, lab in zip(p["boxes"], p["scores"], p["labels"]):
            results.append({"image_id": i + 1, "category_id": int(lab) + 1, "bbox": xywh(box), "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = coco_mod.COCO()
        gt.dataset = {"images": [{"id": i + 1} for i in range(len(gts))], "annotations": anns,
                      "categories": [{"id": c + 1, "name": str(c)} for c in range(n_cat + 1)]}
        gt.createIndex()
        evaluator = cocoeval.COCOeval(gt, gt.loadRes(results), "bbox")
        if iou_thrs is not None:
            evaluator.params.iouThrs = iou_thrs
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _assert_same_precision(ours, evaluator):
    """Our (T, 101, K) precision equals COCOeval's at area "all", maxDets 100, category by category."""
    theirs = evaluator.eval["precision"][:, :, :, 0, -1]
    cat_ids = list(evaluator.params.catIds)
    for k, cat in enumerate(ours["categories"]):
        np.testing.assert_allclose(ours["precision"][:, :, k], theirs[:, :, cat_ids.index(int(cat) + 1)], atol=1e-12)
    without_gt = [cat_ids.index(c) for c in cat_ids if c - 1 not in set(ours["categories"].tolist())]
    assert (theirs[:, :, without_gt] == -1).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_map_and_ap50_match_cocoeval(seed):
    preds, gts = _random_scene(seed)
    evaluator = _cocoeval(preds, gts, n_cat=3)
    ours = coco_ap(preds, gts, COCO_IOU_THRESHOLDS)
    _assert_same_precision(ours, evaluator)
    assert coco_map(preds, gts) == pytest.approx(evaluator.stats[0], abs=1e-6)
    assert ap50(preds, gts) == pytest.approx(evaluator.stats[1], abs=1e-6)
    assert ours["per_threshold"][5] == pytest.approx(evaluator.stats[2], abs=1e-6)  # AP75
    assert 0.05 < evaluator.stats[0] < 0.95 and 0.05 < evaluator.stats[1] < 0.95  # a scene that tests something


@pytest.mark.parametrize("seed", [0, 3])
def test_map40_fx_matches_cocoeval_with_fx_thresholds(seed):
    preds, gts = _random_scene(seed)
    evaluator = _cocoeval(preds, gts, n_cat=3, iou_thrs=np.linspace(0.40, 0.95, 12))
    ours = coco_ap(preds, gts, FX_IOU_THRESHOLDS)
    _assert_same_precision(ours, evaluator)
    assert ours["map"] == pytest.approx(evaluator.stats[0], abs=1e-6)  # the reference's logged "mAP50_95"
    assert ours["per_threshold"][2] == pytest.approx(evaluator.stats[1], abs=1e-6)  # stock stats[1]: IoU 0.50
    # Foundation X's vendored summarize() reports stats[1] at IoU 0.40: the first threshold.
    s = evaluator.eval["precision"][0, :, :, 0, -1]
    assert map40_fx(preds, gts) == pytest.approx(s[s > -1].mean(), abs=1e-6)
    assert map40_fx(preds, gts) >= ap50(preds, gts)


def test_detection_hand_cases():
    preds, gts = _tie_case()
    assert ap50(preds, gts) == 1.0  # last-of-equal-IoU matching and IoU exactly 0.5 >= 0.5
    assert coco_ap(preds, gts, [0.55])["map"] < 1.0
    # torch tensors, one empty image, no predictions at all for a category with ground truth
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    truth = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])}
    assert coco_ap([empty], [truth], [0.5])["per_category"] == {1: 0.0}
    assert np.isnan(coco_map([empty], [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int)}]))
    with pytest.raises(ValueError, match="one per image"):
        coco_map([empty], [])
    evaluator = _cocoeval(preds, gts, n_cat=1)  # last: skips only this check when pycocotools is absent
    assert ap50(preds, gts) == pytest.approx(evaluator.stats[1], abs=1e-12)


# ---------------------------------------------------------------- Dice


def _masks(*rows):
    return np.array(rows, np.float32).reshape(len(rows), 1, 2, 2)


def test_dice_hand_cases():
    probs = _masks([0.9, 0.2, 0.6, 0.1], [0.1, 0.2, 0.3, 0.4], [0.7, 0.0, 0.0, 0.0], [0.5, 0.5, 0.1, 0.0])
    target = _masks([1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0])
    # image 0: 2/3; image 1: empty/empty = 1; image 2: empty GT with a prediction = 0; image 3: 0.5 is not > 0.5
    np.testing.assert_allclose(dice_per_image(probs, target)[:, 0], [2 / 3, 1, 0, 0])
    assert dice_fx(probs, target) == pytest.approx((2 / 3 + 1) / 4)
    assert dice_pos(probs, target) == pytest.approx((2 / 3 + 0) / 2)  # images 1 and 2 have no ground truth
    assert dice_global(probs, target) == pytest.approx(2 * 1 / (3 + 2))
    assert dice_fx(torch.tensor(probs), torch.tensor(target)) == pytest.approx((2 / 3 + 1) / 4)
    assert np.isnan(dice_pos(probs[1:3], target[1:3]))
    assert dice_global(probs[1:2], target[1:2]) == 1.0
    with pytest.raises(ValueError, match="logits"):
        dice_fx(probs * 4 - 2, target)


def test_dice_channels():
    probs = np.zeros((2, 2, 2, 2), np.float32)
    target = np.zeros((2, 2, 2, 2), np.float32)
    probs[0, 0, 0, 0] = target[0, 0, 0, 0] = 1  # image 0: channel 0 perfect, channel 1 empty/empty
    probs[1, 1, 0, :] = 1  # image 1: channel 0 empty/empty, channel 1 prediction on empty GT
    assert dice_fx(probs, target) == pytest.approx(3 / 4)
    assert dice_fx(probs, target, pool_channels=True) == pytest.approx((1 + 0) / 2)
    assert dice_global(probs, target) == pytest.approx((1 + 0) / 2)
    # dice_pos reduces as MONAI's "mean": channels within an image first, then images
    target[0, 1, 1, 1] = probs[0, 1, 1, 1] = 1  # image 0: two non-empty channels, both perfect
    target[1, 0, 1, 1] = 1  # image 1: one non-empty channel, missed (channel 1 has an empty GT: left out)
    assert dice_pos(probs, target) == pytest.approx((1 + 0) / 2)  # not (1 + 1 + 0) / 3


def test_dice_matches_monai_dicemetric():
    from monai.metrics import DiceMetric

    rng = np.random.default_rng(0)
    probs = rng.uniform(size=(6, 3, 16, 16)).astype(np.float32)
    target = (rng.uniform(size=(6, 3, 16, 16)) < 0.3).astype(np.float32)
    target[1, 0] = 0
    target[4] = 0
    probs[4, 2] = 0.1  # empty prediction on empty ground truth
    y_pred, y = torch.tensor(probs > 0.5).float(), torch.tensor(target)
    for ignore_empty, ours in ((True, dice_pos), (False, dice_fx)):
        metric = DiceMetric(include_background=True, reduction="mean", ignore_empty=ignore_empty)
        metric(y_pred=y_pred, y=y)
        assert ours(probs, target) == pytest.approx(metric.aggregate().item(), abs=1e-6)
    per_image = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(y_pred=y_pred, y=y)
    np.testing.assert_allclose(dice_per_image(probs, target), per_image.numpy(), atol=1e-6)
