"""``cxrfx validate``: check a datalist's schema AND every file it points to, one line per problem.

Each image must exist and decode; each mask must decode and have the image's size; boxes must lie
inside the image; label lengths must match the declared labels. Run it before training so that a bad
file is reported in the first minute rather than at hour ten.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from cxrfx.data.datalist import SPLITS, check_datalist, item_name, read_json, resolve_items
from cxrfx.errors import CXRReadError, DatalistError

__all__ = ["validate_datalist", "check_item_files", "assert_valid", "validate_sources"]

_BOX_TOLERANCE = 1e-3  # pixels; float round-off of converted coordinates


def check_item_files(item: Mapping[str, Any], mask_classes: list[str] | None = None) -> list[str]:
    """Problems with one resolved item's files (no item name prefix)."""
    from cxrfx.io.loader import load_cxr
    from cxrfx.io.transforms import read_mask

    problems = []
    try:
        image, _ = load_cxr(item["image"])
        height, width = image.shape
    except CXRReadError as exc:
        return [f"image {exc}"]
    for j, box in enumerate(item.get("boxes") or []):
        x1, y1, x2, y2 = box
        if x1 < -_BOX_TOLERANCE or y1 < -_BOX_TOLERANCE or x2 > width + _BOX_TOLERANCE or y2 > height + _BOX_TOLERANCE:
            problems.append(f"box {j} {list(box)} lies outside the image {item['image']} (width {width}, height {height})")
    if "mask" in item and mask_classes is not None:
        try:
            mask = read_mask(item["mask"], mask_classes)
        except CXRReadError as exc:
            problems.append(f"mask {exc}")
        else:
            if tuple(mask.shape[1:]) != (height, width):
                where = item["mask"] if isinstance(item["mask"], str) else ", ".join(item["mask"].values())
                problems.append(
                    f"mask {where}: size {tuple(mask.shape[1:])} (H, W) differs from image size {(height, width)}"
                )
    return problems


def _check(args: tuple[Mapping[str, Any], list[str] | None]) -> list[str]:
    return check_item_files(*args)


def validate_datalist(path: str | os.PathLike, splits: tuple[str, ...] = SPLITS, workers: int = 0) -> list[str]:
    """Every problem of a datalist file and its files, as lines ``<datalist>: <item>: <problem>``.

    An empty list means all good. ``workers > 1`` decodes files in that many processes.
    """
    path = os.fspath(path)
    try:
        data = read_json(path)
    except DatalistError as exc:
        return [f"{path}: {p}" for p in exc.problems]
    content_problems = check_datalist(data)
    if content_problems:
        return [f"{path}: {p}" for p in content_problems]
    base_dir = os.path.dirname(os.path.abspath(path))
    seg = data["tasks"].get("segmentation")
    classes = seg["classes"] if seg else None
    jobs, names = [], []
    for split in splits:
        for i, item in enumerate(resolve_items(data, split, base_dir)):
            jobs.append((item, classes))
            names.append(item_name(split, i, item))
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_check, jobs, chunksize=8))
    else:
        results = [_check(job) for job in jobs]
    return [f"{path}: {name}: {p}" for name, probs in zip(names, results) for p in probs]


def assert_valid(path: str | os.PathLike, **kwargs) -> None:
    """Raise :class:`DatalistError` if :func:`validate_datalist` finds anything."""
    problems = validate_datalist(path, **kwargs)
    if problems:
        raise DatalistError(path, problems)


def validate_sources(sources, workers: int = 0):
    """Validate every datalist of a bundle's ``datasets`` mapping before training; raise listing all problems.

    Returns ``sources`` unchanged, so a config can chain it. A bad file is then reported in the first minute of a
    run rather than when the loader reaches it.
    """
    problems = []
    for spec in sources.values():
        problems += validate_datalist(spec["datalist"], workers=workers)
    if problems:
        raise DatalistError("datasets", problems)
    return sources
