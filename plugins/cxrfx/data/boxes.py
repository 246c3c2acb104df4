"""Box statistics of a detection datalist at the network's input size, and anchors proposed from them.

``propose_anchors(datalist, image_size)`` is what ``finetune_det`` uses by default (and ``python -m cxrfx anchors``
prints): the training boxes, scaled as ``ResizeWithBoxesd`` scales them to the square input, fitted per pyramid
level by :func:`fit_anchor_shapes`. MONAI's lung-nodule bundle derives its anchor
shapes from the training boxes the same way (offline); here it happens when the bundle starts, from the datalist
it trains on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from cxrfx.data.datalist import load_datalist
from cxrfx.errors import ConfigError
from cxrfx.io import load_cxr

__all__ = ["box_sizes", "propose_anchors", "fit_anchor_shapes", "anchor_shapes_for"]

log = logging.getLogger("cxrfx.anchors")


def box_sizes(datalist: str | os.PathLike, image_size: int, split: str = "training") -> dict[str, np.ndarray]:
    """``{"hw": (N, 2) (height, width), "labels": (N,)}`` of a split's boxes after resizing to ``image_size``².

    An item's source size comes from its ``meta`` (``rows`` / ``columns``) when the adapter recorded it, else
    from the image file (only images with boxes are opened).
    """
    hw, labels = [], []
    for item in load_datalist(str(datalist), split):
        boxes = np.asarray(item.get("boxes") or [], dtype=np.float64).reshape(-1, 4)
        if not len(boxes):
            continue
        meta = item.get("meta") or {}
        if "rows" in meta and "columns" in meta:
            rows, cols = float(meta["rows"]), float(meta["columns"])
        else:
            rows, cols = load_cxr(item["image"])[0].shape[:2]
        # datalist boxes are [x1, y1, x2, y2] (x = column): height from y, width from x
        hw.append(np.stack([(boxes[:, 3] - boxes[:, 1]) * image_size / rows,
                            (boxes[:, 2] - boxes[:, 0]) * image_size / cols], axis=1))
        labels.extend(item.get("box_labels") or [0] * len(boxes))
    return {"hw": np.concatenate(hw) if hw else np.zeros((0, 2)), "labels": np.asarray(labels, dtype=np.int64)}


def propose_anchors(datalist: str | os.PathLike, image_size: int, strides: Sequence[int] = (4, 8, 16, 32),
                    num_anchors: int = 3, split: str = "training") -> dict:
    """Anchor shapes per level fitted to a datalist's training boxes at ``image_size``.

    Returns ``{"shapes": [[[h, w], ...] per level], "strides": [...], "boxes": N, "size_px": {percentiles}}``;
    ``shapes`` goes to ``FoundationX(det_anchors=...)``. Fewer boxes than ``num_anchors`` is a configuration
    error naming the datalist (anchors cannot be fitted to nothing).
    """
    stats = box_sizes(datalist, image_size, split)
    hw = stats["hw"]
    if len(hw) < num_anchors:
        raise ConfigError(f"{datalist}: {len(hw)} boxes in the {split} split, at least {num_anchors} are needed to "
                          "fit anchors (pass det_anchors explicitly, or null for the default shapes)")
    size = np.sqrt(hw.prod(axis=1))
    return {
        "shapes": fit_anchor_shapes(hw, strides, num_anchors),
        "strides": [int(s) for s in strides],
        "boxes": int(len(hw)),
        "size_px": {f"p{q}": round(float(np.percentile(size, q)), 1) for q in (0, 5, 25, 50, 75, 95, 100)},
    }


def anchor_shapes_for(datalist: str | os.PathLike, image_size: int, strides: Sequence[int] = (4, 8, 16, 32),
                      num_anchors: int = 3) -> list | None:
    """What a training config passes as ``det_anchors``: shapes fitted to the datalist's training boxes, or None
    (the model's default shapes) when there are too few boxes to fit (a few-shot run with one or two lesions).
    Either way the choice is logged with the box sizes it rests on."""
    try:
        proposal = propose_anchors(datalist, image_size, strides, num_anchors)
    except ConfigError as err:
        log.warning(f"anchors: default shapes ({err})")
        return None
    log.info(f"anchors fitted to {proposal['boxes']} boxes (sqrt-area percentiles {proposal['size_px']} px at "
             f"{image_size} px): {proposal['shapes']}")
    return proposal["shapes"]


def fit_anchor_shapes(box_hw: np.ndarray, strides: Sequence[int], num_anchors: int = 3,
                      min_stride_factor: float = 1.5, max_stride_factor: float = 12.0) -> list[list[list[float]]]:
    """Anchor shapes per level fitted to boxes given as (N, 2) (height, width) in input pixels.

    Each box goes to the level whose typical object size (4 x stride, RetinaNet's choice) is nearest in log
    scale; a level's ``num_anchors`` shapes are k-means centres (in log height / log width) of its boxes,
    clipped to [min, max] stride factors so an anchor neither falls between grid cells nor outgrows its
    receptive field. A level with fewer boxes than anchors takes the nearest populated level's shapes scaled
    by the stride ratio (clipped the same way), so every level still covers its own size range.
    """
    box_hw = np.asarray(box_hw, dtype=np.float64).reshape(-1, 2)
    box_hw = box_hw[(box_hw > 0).all(axis=1)]
    strides = [int(s) for s in strides]
    if len(box_hw) < num_anchors:
        raise ValueError(f"{len(box_hw)} boxes cannot fit {num_anchors} anchor shapes: use default_anchor_shapes")
    size = np.sqrt(box_hw.prod(axis=1))
    level_of = np.argmin(np.abs(np.log2(size[:, None] / (4.0 * np.array(strides)[None, :]))), axis=1)
    fitted: dict[int, np.ndarray] = {}
    for lvl in range(len(strides)):
        members = np.log(box_hw[level_of == lvl])
        if len(members) >= num_anchors:
            fitted[lvl] = np.exp(_kmeans(members, num_anchors))
    if not fitted:  # boxes spread thinly over levels: fit all boxes once, then scale per level
        anchor_level = int(np.bincount(level_of).argmax())
        fitted[anchor_level] = np.exp(_kmeans(np.log(box_hw), num_anchors))
    shapes = []
    for lvl, stride in enumerate(strides):
        src = min(fitted, key=lambda k: abs(k - lvl))
        level = fitted[src] * (stride / strides[src])
        level = np.clip(level, min_stride_factor * stride, max_stride_factor * stride)
        shapes.append([[round(float(h), 2), round(float(w), 2)] for h, w in level])
    return shapes


def _kmeans(points: np.ndarray, k: int, iterations: int = 50) -> np.ndarray:
    """Deterministic k-means (centres initialised at quantiles of the first principal direction), sorted by area."""
    centre = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - centre, full_matrices=False)
    proj = (points - centre) @ vt[0]
    order = np.argsort(proj, kind="mergesort")
    centres = np.stack([points[order[int((i + 0.5) * len(points) / k)]] for i in range(k)])
    for _ in range(iterations):
        assign = np.argmin(((points[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        new = np.stack([points[assign == j].mean(axis=0) if (assign == j).any() else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return centres[np.argsort(centres.sum(axis=1), kind="mergesort")]
