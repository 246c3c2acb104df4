"""COCO-style box average precision, computed as pycocotools' ``COCOeval`` (iouType "bbox") does, in numpy.

What is reproduced (pycocotools 2.0.x, area range "all", no crowd annotations):

- IoU of [x1, y1, x2, y2] boxes in pixel-edge coordinates with COCO's +0 convention: width = x2 - x1,
  area = width * height (no +1), in float64 exactly as ``maskUtils.iou`` computes it on xywh boxes.
- Per image and category: detections sorted by score (stable) and cut to ``max_dets`` (COCO's maxDets=100 applies
  per image *and category*); each detection in turn takes the still unmatched ground truth of highest IoU
  >= threshold (on equal IoU the later ground truth), independently at every IoU threshold.
- Per category: detections of all images pooled and sorted by score (stable, images in input order), precision
  made monotone, read at the 101 recall points 0:0.01:1 (0 beyond the highest recall reached), averaged.
- Categories without ground truth anywhere are left out of every mean (COCO's precision = -1); predictions of such
  categories are ignored. The result is the mean over (category, threshold) pairs — ``COCOeval.stats[0]``.

Named metrics (REFERENCE §3): :func:`ap50` (stock ``stats[1]``), :func:`coco_map` (stock ``stats[0]``) and
:func:`map40_fx` — Foundation X's vendored COCOeval uses thresholds 0.40:0.05:0.95 and its ``stats[1]`` is AP at
IoU 0.40; its ``stats[0]``, logged as "mAP50_95", is ``coco_ap(..., FX_IOU_THRESHOLDS)["map"]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["coco_ap", "ap50", "coco_map", "map40_fx", "box_iou_coco",
           "COCO_IOU_THRESHOLDS", "FX_IOU_THRESHOLDS", "RECALL_THRESHOLDS"]

# np.linspace as in pycocotools' Params: np.arange drifts, and the thresholds must compare equal to COCO's.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
FX_IOU_THRESHOLDS = np.linspace(0.4, 0.95, 12)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)


def _as_numpy(x, dtype=np.float64) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def box_iou_coco(boxes_a, boxes_b) -> np.ndarray:
    """(A, B) IoU of [x1, y1, x2, y2] boxes, computed like pycocotools' ``bbIou`` (float64, area = w * h).

    MONAI's ``box_iou`` is not used: it computes in float32 with an eps in the denominator, which can move an IoU
    across a threshold and change a match relative to COCOeval.
    """
    a = _as_numpy(boxes_a).reshape(-1, 4)
    b = _as_numpy(boxes_b).reshape(-1, 4)
    # Through xywh, as COCO stores boxes, so that x + w rounds exactly as in pycocotools.
    ax, ay, aw, ah = a[:, 0:1], a[:, 1:2], a[:, 2:3] - a[:, 0:1], a[:, 3:4] - a[:, 1:2]
    bx, by, bw, bh = b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    w = np.minimum(ax + aw, bx + bw) - np.maximum(ax, bx)
    h = np.minimum(ay + ah, by + bh) - np.maximum(ay, by)
    overlap = (w > 0) & (h > 0)
    inter = np.where(overlap, w * h, 0.0)
    union = aw * ah + bw * bh - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


def _match(dt_boxes, dt_scores, gt_boxes, thresholds, max_dets):
    """Greedy COCO matching in one image and category: (sorted scores (D,), matched (T, D) bool)."""
    order = np.argsort(-dt_scores, kind="mergesort")[:max_dets]
    scores = dt_scores[order]
    matched = np.zeros((len(thresholds), len(order)), dtype=bool)
    if len(order) == 0 or len(gt_boxes) == 0:
        return scores, matched
    ious = box_iou_coco(dt_boxes[order], gt_boxes)
    # COCO caps the threshold just below 1 so that IoU = 1 can still match at threshold 1.
    thr = np.minimum(thresholds, 1 - 1e-10)
    gt_taken = np.zeros((len(thresholds), len(gt_boxes)), dtype=bool)
    last = len(gt_boxes) - 1
    for d in range(len(order)):
        cand = np.where(gt_taken, -np.inf, ious[d][None, :])
        best = cand.max(axis=1)
        # pycocotools keeps the *last* ground truth among equal best IoUs.
        idx = last - np.argmax(cand[:, ::-1] == best[:, None], axis=1)
        ok = best >= thr
        matched[ok, d] = True
        gt_taken[np.flatnonzero(ok), idx[ok]] = True
    return scores, matched


def _check_item(item: Mapping, keys: Sequence[str], where: str):
    missing = [k for k in keys if k not in item]
    if missing:
        raise ValueError(f"{where} lacks {missing}")
    boxes = _as_numpy(item["boxes"]).reshape(-1, 4)
    labels = _as_numpy(item["labels"], np.int64).reshape(-1)
    scores = _as_numpy(item["scores"]).reshape(-1) if "scores" in keys else None
    if len(labels) != len(boxes) or (scores is not None and len(scores) != len(boxes)):
        raise ValueError(f"{where}: boxes, labels{' and scores' if scores is not None else ''} differ in length")
    return boxes, labels, scores


def coco_ap(predictions: Sequence[Mapping], ground_truths: Sequence[Mapping],
            iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS, max_dets: int = 100) -> dict:
    """Average precision as pycocotools COCOeval (bbox, area "all", no crowd) computes it.

    Args:
        predictions: one dict per image: ``boxes`` (N, 4) [x1, y1, x2, y2] in pixels, ``scores`` (N,),
            ``labels`` (N,) integer categories. numpy arrays, torch tensors or lists.
        ground_truths: one dict per image, same order: ``boxes`` (M, 4) and ``labels`` (M,).
        iou_thresholds: IoU thresholds; pass :data:`COCO_IOU_THRESHOLDS` / :data:`FX_IOU_THRESHOLDS` (made with
            ``np.linspace`` like COCO) rather than ``np.arange``.
        max_dets: detections kept per image and category, highest scores first (COCO: 100).

    Returns:
        ``map``: mean AP over categories with ground truth and over thresholds (``COCOeval.stats[0]`` for these
        thresholds; NaN when no category has ground truth); ``per_threshold``: (T,) AP at each threshold, mean over
        categories; ``iou_thresholds``: (T,); ``per_category``: {label: AP averaged over thresholds};
        ``precision``: (T, 101, K) interpolated precision, -1 for categories without ground truth;
        ``categories``: the K labels, sorted, of ``precision``'s last axis.
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truths)} ground truths: one per image")
    thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    preds = [_check_item(p, ("boxes", "scores", "labels"), f"prediction {i}") for i, p in enumerate(predictions)]
    gts = [_check_item(g, ("boxes", "labels"), f"ground truth {i}") for i, g in enumerate(ground_truths)]
    categories = np.unique(np.concatenate([g[1] for g in gts])) if gts else np.zeros(0, np.int64)

    n_thr, n_rec, n_cat = len(thresholds), len(RECALL_THRESHOLDS), len(categories)
    precision = -np.ones((n_thr, n_rec, n_cat))
    for k, cat in enumerate(categories):
        all_scores, all_matched, n_gt = [], [], 0
        for (p_boxes, p_labels, p_scores), (g_boxes, g_labels, _) in zip(preds, gts):
            p_sel, g_sel = p_labels == cat, g_labels == cat
            n_gt += int(g_sel.sum())
            scores, matched = _match(p_boxes[p_sel], p_scores[p_sel], g_boxes[g_sel], thresholds, max_dets)
            all_scores.append(scores)
            all_matched.append(matched)
        scores = np.concatenate(all_scores)
        order = np.argsort(-scores, kind="mergesort")
        matched = np.concatenate(all_matched, axis=1)[:, order]
        # Same float operations as COCOeval.accumulate, so recall compares equal at the recall points.
        tp = np.cumsum(matched, axis=1).astype(np.float64)
        fp = np.cumsum(~matched, axis=1).astype(np.float64)
        recall = tp / n_gt
        prec = tp / (fp + tp + np.spacing(1))
        prec = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
        n_det = matched.shape[1]
        for t in range(n_thr):
            idx = np.searchsorted(recall[t], RECALL_THRESHOLDS, side="left")
            q = np.zeros(n_rec)
            inside = idx < n_det
            q[inside] = prec[t, idx[inside]]
            precision[t, :, k] = q

    def mean_valid(a):
        a = a[a > -1]
        return float(a.mean()) if a.size else float("nan")

    return {
        "map": mean_valid(precision),
        "per_threshold": np.array([mean_valid(precision[t]) for t in range(n_thr)]),
        "iou_thresholds": thresholds,
        "per_category": {int(c): mean_valid(precision[:, :, k]) for k, c in enumerate(categories)},
        "precision": precision,
        "categories": categories,
    }


def ap50(predictions, ground_truths, max_dets: int = 100) -> float:
    """``ap50``: AP at IoU 0.50, mean over categories — stock ``COCOeval.stats[1]``."""
    return coco_ap(predictions, ground_truths, COCO_IOU_THRESHOLDS[:1], max_dets)["map"]


def coco_map(predictions, ground_truths, max_dets: int = 100) -> float:
    """``coco_map``: AP averaged over IoU 0.50:0.05:0.95 and categories — stock ``COCOeval.stats[0]``."""
    return coco_ap(predictions, ground_truths, COCO_IOU_THRESHOLDS, max_dets)["map"]


def map40_fx(predictions, ground_truths, max_dets: int = 100) -> float:
    """``map40_fx``: Foundation X's localization number — AP at IoU 0.40, mean over categories.

    The reference evaluates with IoU thresholds 0.40:0.05:0.95 (:data:`FX_IOU_THRESHOLDS`) and reports its
    vendored ``stats[1]`` = AP at the first threshold, 0.40. AP at one threshold does not depend on the others;
    the same thresholds are used here so that ``coco_ap(..., FX_IOU_THRESHOLDS)`` is the whole reference run.
    """
    return float(coco_ap(predictions, ground_truths, FX_IOU_THRESHOLDS, max_dets)["per_threshold"][0])
