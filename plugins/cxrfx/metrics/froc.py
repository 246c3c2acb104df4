"""Lesion-level detection figures next to AP: FROC, sensitivity per lesion, and AP restricted to a lesion subset.

FROC as LUNA16 and NODE21 report it: detections of every class pooled (a lesion is found or not, whatever class
the detector gave it); in each image, detections in score order take the not-yet-found lesion of highest IoU at or
above ``iou`` (NODE21 counts a detection as a hit at IoU > 0.2); a second hit on a found lesion counts neither as a
true nor a false positive (LUNA16's rule); every other detection is a false positive. Sensitivity is read at the
score threshold giving at most ``f`` false positives per image for each ``f`` of :data:`FROC_FP_RATES`, and their
mean is LUNA16's competition performance metric (CPM).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cxrfx.metrics.detection import _check_item, box_iou_coco

__all__ = ["FROC_FP_RATES", "lesion_hits", "froc", "sensitivity_at", "restrict_to_lesions"]

FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def lesion_hits(predictions: Sequence[Mapping], ground_truths: Sequence[Mapping], iou: float = 0.2) -> dict:
    """Class-agnostic matching of detections to lesions (see the module docstring).

    Returns ``scores`` (D,) and ``kind`` (D,) of every detection (1 true positive, 0 false positive, -1 a repeat
    hit, ignored), ``lesion_scores``: per image, (M,) score of the detection that found each lesion (-inf if
    none), ``n_lesions`` and ``n_images``.
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truths)} ground truths: one per image")
    scores, kinds, lesion_scores = [], [], []
    for i, (p, g) in enumerate(zip(predictions, ground_truths)):
        p_boxes, _, p_scores = _check_item(p, ("boxes", "scores", "labels"), f"prediction {i}")
        g_boxes, _, _ = _check_item(g, ("boxes", "labels"), f"ground truth {i}")
        order = np.argsort(-p_scores, kind="mergesort")
        found = np.full(len(g_boxes), -np.inf)
        kind = np.zeros(len(order), dtype=np.int64)
        if len(order) and len(g_boxes):
            ious = box_iou_coco(p_boxes[order], g_boxes)
            for d in range(len(order)):
                free = np.where(np.isinf(found), ious[d], -1.0)
                j = int(np.argmax(free))
                if free[j] >= iou:
                    found[j], kind[d] = p_scores[order[d]], 1
                elif (ious[d] >= iou).any():
                    kind[d] = -1
        scores.append(p_scores[order])
        kinds.append(kind)
        lesion_scores.append(found)
    return {"scores": np.concatenate(scores) if scores else np.zeros(0),
            "kind": np.concatenate(kinds) if kinds else np.zeros(0, np.int64),
            "lesion_scores": lesion_scores, "n_lesions": int(sum(len(f) for f in lesion_scores)),
            "n_images": len(predictions)}


def froc(predictions: Sequence[Mapping], ground_truths: Sequence[Mapping], iou: float = 0.2,
         fp_rates: Sequence[float] = FROC_FP_RATES) -> dict:
    """Sensitivity at each false-positive rate per image, their mean (``cpm``), and the score threshold of each.

    A rate the detector never reaches (too few false positives even at its lowest score) takes the sensitivity of
    all its detections; its threshold is the lowest score.
    """
    hits = lesion_hits(predictions, ground_truths, iou)
    if hits["n_lesions"] == 0:
        raise ValueError("FROC needs at least one lesion in the ground truth")
    keep = hits["kind"] >= 0
    scores, tp = hits["scores"][keep], hits["kind"][keep] == 1
    order = np.argsort(-scores, kind="mergesort")
    scores, tp = scores[order], tp[order]
    tps, fps = np.cumsum(tp), np.cumsum(~tp) / hits["n_images"]
    sens, thresholds = [], []
    for f in fp_rates:
        ok = np.flatnonzero(fps <= f)
        # the last detection before the (f+)th false positive; ties in score are not split
        k = ok[-1] if len(ok) else -1
        while k >= 0 and k + 1 < len(scores) and scores[k + 1] == scores[k]:
            k -= 1
        sens.append(float(tps[k]) / hits["n_lesions"] if k >= 0 else 0.0)
        thresholds.append(float(scores[k]) if k >= 0 else float("inf"))
    return {"fp_rates": list(fp_rates), "sensitivity": sens, "thresholds": thresholds,
            "cpm": float(np.mean(sens)), "n_lesions": hits["n_lesions"]}


def sensitivity_at(lesion_scores: Sequence[np.ndarray], threshold: float,
                   select: Sequence[np.ndarray] | None = None) -> float:
    """Fraction of lesions (``select``: a boolean mask per image choosing some) found by a detection scoring at
    least ``threshold`` (``lesion_hits(...)["lesion_scores"]``); NaN when no lesion is selected."""
    found = np.concatenate([np.asarray(s) for s in lesion_scores]) if len(lesion_scores) else np.zeros(0)
    mask = np.concatenate([np.asarray(m, bool) for m in select]) if select is not None else np.ones(len(found), bool)
    return float((found[mask] >= threshold).mean()) if mask.any() else float("nan")


def restrict_to_lesions(predictions: Sequence[Mapping], ground_truths: Sequence[Mapping],
                        select: Sequence[np.ndarray], iou: float = 0.5) -> tuple[list[dict], list[dict]]:
    """Predictions and ground truths for AP over a subset of lesions (e.g. one conspicuity bin): the lesions not
    selected are removed, and so are the detections that overlap one of them at ``iou`` or more without
    overlapping a selected one (found lesions outside the subset are neither true nor false positives, like
    COCO's ignored regions)."""
    preds, gts = [], []
    for i, (p, g, m) in enumerate(zip(predictions, ground_truths, select)):
        p_boxes, p_labels, p_scores = _check_item(p, ("boxes", "scores", "labels"), f"prediction {i}")
        g_boxes, g_labels, _ = _check_item(g, ("boxes", "labels"), f"ground truth {i}")
        m = np.asarray(m, bool).reshape(-1)
        if len(m) != len(g_boxes):
            raise ValueError(f"ground truth {i}: {len(g_boxes)} lesions but a selection of {len(m)}")
        keep = np.ones(len(p_boxes), bool)
        if len(p_boxes) and (~m).any():
            ious = box_iou_coco(p_boxes, g_boxes)
            near_other = (ious[:, ~m] >= iou).any(1)
            near_kept = (ious[:, m] >= iou).any(1) if m.any() else np.zeros(len(p_boxes), bool)
            keep = ~near_other | near_kept
        preds.append({"boxes": p_boxes[keep], "scores": p_scores[keep], "labels": p_labels[keep]})
        gts.append({"boxes": g_boxes[m], "labels": g_labels[m]})
    return preds, gts
