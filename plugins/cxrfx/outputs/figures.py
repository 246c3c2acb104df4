"""Figures a person reads at a glance, drawn with Pillow (no plotting library needed): line charts (ROC curves,
learning curves) and side-by-side panels of a test film with its ground truth and the model's prediction.

- :func:`roc_curve` / :func:`save_roc_figure`: one ROC curve per label, AUC in the legend.
- :func:`save_line_chart`: any ``{series: (xs, ys)}`` on linear axes (a learning curve: score per cycle).
- :func:`render_comparison` / :func:`save_comparisons`: ground truth | prediction, masks as contours, boxes in two
  colours (truth green, prediction orange), labels with their probabilities.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from cxrfx.outputs.overlays import PALETTE

__all__ = ["roc_curve", "save_line_chart", "save_roc_figure", "render_comparison", "save_comparisons",
           "TRUTH_COLOR", "PRED_COLOR"]

TRUTH_COLOR = (60, 220, 90)
PRED_COLOR = (255, 150, 30)
_WHITE, _GRAY, _BLACK = (255, 255, 255), (200, 200, 200), (0, 0, 0)


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates of every threshold (``score >= t``), from (0, 0) to (1, 1); labels
    1 / 0, unknown (-1 or NaN) dropped. Tied scores give one point (the curve's AUC is the trapezoid area,
    equal to :func:`cxrfx.metrics.roc_auc`). Empty arrays when a class is missing."""
    s, y = np.asarray(scores, np.float64).ravel(), np.asarray(labels, np.float64).ravel()
    known = ~(np.isnan(y) | (y == -1))
    s, y = s[known], y[known]
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last index of each group of equal scores
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos]


def save_line_chart(path: str, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str = "",
                    xlabel: str = "", ylabel: str = "", xlim: tuple[float, float] | None = None,
                    ylim: tuple[float, float] | None = None, diagonal: bool = False, markers: bool = False,
                    size: tuple[int, int] = (420, 340)) -> str:
    """Write a PNG line chart of ``series`` (name -> (xs, ys)); NaN points are left out. ``diagonal``: the
    chance line of an ROC plot. Returns ``path``."""
    width, height = size
    left, right, top, bottom = 48, 10, 34, 40
    legend_w = 30 + 6 * max((len(n) for n in series), default=0) if series else 0  # Pillow's default font: 6 px
    canvas = Image.new("RGB", (width + legend_w, height), _WHITE)
    draw = ImageDraw.Draw(canvas)
    pts = {n: (np.asarray(x, np.float64), np.asarray(y, np.float64)) for n, (x, y) in series.items()}
    finite = [(x[np.isfinite(y)], y[np.isfinite(y)]) for x, y in pts.values()]
    all_x = np.concatenate([x for x, _ in finite] or [np.zeros(0)])
    all_y = np.concatenate([y for _, y in finite] or [np.zeros(0)])
    x0, x1 = xlim or ((float(all_x.min()), float(all_x.max())) if all_x.size else (0.0, 1.0))
    y0, y1 = ylim or ((float(all_y.min()), float(all_y.max())) if all_y.size else (0.0, 1.0))
    if x1 <= x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 <= y0:
        y0, y1 = y0 - 0.05, y1 + 0.05
    pw, ph = width - left - right, height - top - bottom

    def to_px(x, y):
        return left + (x - x0) / (x1 - x0) * pw, top + (1 - (y - y0) / (y1 - y0)) * ph

    integer_x = all_x.size > 0 and np.all(all_x == np.round(all_x)) and xlim is None
    if integer_x:  # e.g. cycles: a tick at whole numbers only, at most 10 of them
        step = max(1, int(np.ceil((x1 - x0) / 10)))
        x_ticks = np.arange(np.ceil(x0), np.floor(x1) + 1, step)
    else:
        x_ticks = [x0 + k * (x1 - x0) / 5 for k in range(6)]
    for fx in x_ticks:
        px, _ = to_px(fx, y0)
        draw.line([px, top, px, top + ph], fill=(235, 235, 235))
        draw.text((px - 10, top + ph + 4), f"{fx:.0f}" if integer_x else _tick(fx), fill=_BLACK)
    for k in range(6):  # grid and tick labels
        fy = y0 + k * (y1 - y0) / 5
        _, py = to_px(x0, fy)
        draw.line([left, py, left + pw, py], fill=(235, 235, 235))
        draw.text((4, py - 6), _tick(fy), fill=_BLACK)
    draw.rectangle([left, top, left + pw, top + ph], outline=_BLACK)
    if diagonal:
        draw.line([*to_px(x0, y0), *to_px(x1, y1)], fill=_GRAY, width=1)
    for k, (name, (x, y)) in enumerate(pts.items()):
        color = PALETTE[k % len(PALETTE)] if len(pts) > 1 else (0, 90, 200)
        ok = np.isfinite(y)
        line = [to_px(a, b) for a, b in zip(x[ok], y[ok])]
        if len(line) > 1:
            draw.line(line, fill=color, width=2)
        if markers or len(line) == 1:
            for px, py in line:
                draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=color)
        draw.line([width + 4, top + 6 + 14 * k, width + 20, top + 6 + 14 * k], fill=color, width=3)
        draw.text((width + 24, top + 14 * k), name, fill=_BLACK)
    draw.text((left, 2), title, fill=_BLACK)
    draw.text((left + pw // 2 - 3 * len(xlabel), height - 16), xlabel, fill=_BLACK)
    if ylabel:  # above the y axis, left-aligned (Pillow's default font does not rotate well)
        draw.text((4, top - 16), ylabel, fill=_BLACK)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)
    return path


def _tick(v: float) -> str:
    return f"{v:.0f}" if abs(v - round(v)) < 1e-9 and abs(v) >= 1 else f"{v:.2f}"


def save_roc_figure(path: str, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str = "") -> str:
    """ROC curves of several labels in one PNG: ``curves`` maps a label to (scores, labels); the legend gives
    each label's AUC and its positive / negative counts; labels with one class only are listed as n/a."""
    from cxrfx.metrics.auc import roc_auc

    series = {}
    for name, (scores, labels) in curves.items():
        fpr, tpr = roc_curve(scores, labels)
        y = np.asarray(labels, np.float64)
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        auc = roc_auc(scores, labels) if len(fpr) else float("nan")
        key = f"{name} {auc:.2f} ({n_pos}+/{n_neg}-)" if auc == auc else f"{name} n/a ({n_pos}+/{n_neg}-)"
        series[key] = (fpr, tpr) if len(fpr) else ([], [])
    return save_line_chart(path, series, title=title, xlabel="false-positive rate (1 - specificity)",
                           ylabel="true-positive rate (sensitivity)", xlim=(0, 1), ylim=(0, 1), diagonal=True,
                           size=(360, 340))


def _contours(rgb: np.ndarray, masks: Mapping[str, np.ndarray], colors: Mapping[str, tuple]) -> None:
    for name, mask in masks.items():
        m = np.asarray(mask).astype(bool)
        if m.any():
            rgb[m & ~ndimage.binary_erosion(m)] = colors.get(name, _WHITE)


def render_comparison(image: np.ndarray, truth_masks: Mapping[str, np.ndarray] | None = None,
                      pred_masks: Mapping[str, np.ndarray] | None = None,
                      truth_boxes: Sequence[Sequence[float]] = (), pred_boxes: Sequence[Sequence[float]] = (),
                      class_order: Sequence[str] = (), caption: str = "", scale: int = 2) -> np.ndarray:
    """RGB uint8: the film twice, ground truth left and prediction right, masks as coloured contours (a class
    keeps its colour, following ``class_order``), truth boxes green and predicted boxes orange on both sides
    (so a hit shows as overlapping rectangles), ``caption`` lines (findings, probabilities) under the pair.
    ``scale``: nearest-neighbour magnification of small demo images. Boxes are [x1, y1, x2, y2] in pixels."""
    gray = np.clip(np.asarray(image, np.float32), 0, 1)
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(class_order or list(truth_masks or {}))}
    halves = []
    for masks in (truth_masks or {}, pred_masks or {}):
        rgb = np.repeat((gray * 255)[..., None], 3, axis=2).astype(np.uint8)
        rgb = np.kron(rgb, np.ones((scale, scale, 1), np.uint8)) if scale > 1 else rgb
        big = {n: np.kron(np.asarray(m).astype(np.uint8), np.ones((scale, scale), np.uint8)) for n, m in masks.items()}
        _contours(rgb, big, colors)
        halves.append(Image.fromarray(rgb))
    h, w = halves[0].height, halves[0].width
    lines = caption.splitlines()
    legend = [n for n in (class_order or colors) if np.asarray((truth_masks or {}).get(n, 0)).any()
              or np.asarray((pred_masks or {}).get(n, 0)).any()]
    out = Image.new("RGB", (2 * w + 6, h + 16 + 12 * (len(lines) + (1 if legend else 0))), _BLACK)
    draw = ImageDraw.Draw(out)
    for k, half in enumerate(halves):
        out.paste(half, (k * (w + 6), 14))
        d = ImageDraw.Draw(out)
        for boxes, color in ((truth_boxes, TRUTH_COLOR), (pred_boxes, PRED_COLOR)):
            for box in boxes:
                x1, y1, x2, y2 = (float(v) * scale for v in box[:4])
                d.rectangle([k * (w + 6) + x1, 14 + y1, k * (w + 6) + x2 - 1, 14 + y2 - 1], outline=color, width=1)
    draw.text((2, 1), "ground truth", fill=TRUTH_COLOR)
    draw.text((w + 8, 1), "prediction", fill=PRED_COLOR)
    y = h + 16
    x = 2
    for name in legend:
        draw.text((x, y), name, fill=colors[name])
        x += 6 * len(name) + 10
    y += 12 if legend else 0
    for line in lines:
        draw.text((2, y), line, fill=_WHITE)
        y += 12
    return np.asarray(out)


def save_comparisons(panels: Sequence[np.ndarray], path: str, columns: int = 3) -> str:
    """Tile :func:`render_comparison` panels into one PNG."""
    if not panels:
        raise ValueError("save_comparisons needs at least one panel")
    w = max(p.shape[1] for p in panels)
    h = max(p.shape[0] for p in panels)
    rows = (len(panels) + columns - 1) // columns
    sheet = Image.new("RGB", (w * min(columns, len(panels)) + 4 * (columns - 1), h * rows + 4 * (rows - 1)), _GRAY)
    for k, p in enumerate(panels):
        sheet.paste(Image.fromarray(p), ((k % columns) * (w + 4), (k // columns) * (h + 4)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path)
    return path
