"""Leakage guards: images in the training split of one datalist and the validation / test split of another.

Public CXR sets derive from each other (RSNA, SIIM-ACR, ChestX-Det and the Google labels from NIH;
TBX11K contains Shenzhen and Montgomery; NODE21 is built from JSRT, PadChest, NIH and OpenI), so a model
pretrained on one may have seen another's test images. Two checks:

- **source id**: ``meta["source_id"]`` (the originating image id, e.g. NIH ``Image Index``) equal across lists;
- **pixel hash**: a 64-bit average hash (the image decoded, shrunk to 8 x 8 by area averaging, one bit per
  cell: brighter than the median cell); two images match when the hashes differ in at most 3 bits, found
  through 4 x 16-bit buckets (if 3 bits differ, one bucket is equal). The same radiograph stored at another
  resolution or format (NIH PNG vs RSNA DICOM, Shenzhen 3000 px vs TBX11K 512 px) matches; crops and heavy
  edits do not.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from cxrfx.data.datalist import SPLITS, read_datalist, resolve_items
from cxrfx.errors import ConfigError, CXRReadError

__all__ = ["pixel_fingerprint", "find_leakage", "assert_no_leakage", "check_sources"]


def pixel_fingerprint(path: str, side: int = 8) -> int:
    """64-bit average hash of an image's pixels (see module docstring)."""
    from cxrfx.io.loader import load_cxr

    image, _ = load_cxr(path)
    h, w = image.shape
    rows = np.linspace(0, h, side + 1).astype(int)
    cols = np.linspace(0, w, side + 1).astype(int)
    cells = np.add.reduceat(np.add.reduceat(image.astype(np.float64), rows[:-1], axis=0), cols[:-1], axis=1)
    cells /= np.outer(np.diff(rows), np.diff(cols))
    bits = (cells > np.median(cells)).reshape(-1)
    return int(sum(1 << i for i, b in enumerate(bits) if b))


_MAX_BITS = 3


def _entries(path: str, pixels: bool) -> Iterable[tuple[str, str, str, object]]:
    """(split, item name, kind, key) for every item of a datalist."""
    data = read_datalist(path)
    base = os.path.dirname(os.path.abspath(path))
    for split in SPLITS:
        for item in resolve_items(data, split, base):
            name = item.get("id") or item["image"]
            source = (item.get("meta") or {}).get("source_id")
            if source:
                yield split, name, "source_id", str(source)
            if pixels:
                try:
                    yield split, name, "pixels", pixel_fingerprint(item["image"])
                except CXRReadError:
                    continue  # unreadable files are validate's business


def _line(t: tuple, h: tuple, what: str) -> str:
    return f"{t[0]}: training {t[2]} is also in {h[0]}: {h[1]} {h[2]} (same {what})"


def find_leakage(datalists: Sequence[str], pixels: bool = True) -> list[str]:
    """One line per image that is in a training split and in a validation / test split (of the same or
    another datalist), found by source id or by pixel hash."""
    sources: dict[str, list[tuple]] = defaultdict(list)
    hashes: list[tuple[int, tuple]] = []
    for path in datalists:
        for split, name, kind, key in _entries(path, pixels):
            if kind == "source_id":
                sources[key].append((path, split, name))
            else:
                hashes.append((key, (path, split, name)))
    lines = set()
    for key, places in sources.items():
        for t in (p for p in places if p[1] == "training"):
            for h in (p for p in places if p[1] != "training"):
                lines.add(_line(t, h, f"source_id {key}"))
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (value, _) in enumerate(hashes):
        for chunk in range(4):
            buckets[(chunk, (value >> (16 * chunk)) & 0xFFFF)].append(i)
    for members in buckets.values():
        for i in members:
            value_t, t = hashes[i]
            if t[1] != "training":
                continue
            for j in members:
                value_h, h = hashes[j]
                if h[1] != "training" and (t[0], t[2]) != (h[0], h[2]) and bin(value_t ^ value_h).count("1") <= _MAX_BITS:
                    lines.add(_line(t, h, "pixels"))
    return sorted(lines)


def assert_no_leakage(datalists: Sequence[str], pixels: bool = False) -> None:
    """Raise ``ConfigError`` listing every overlap (for pretraining configs that must refuse leakage)."""
    lines = find_leakage(datalists, pixels=pixels)
    if lines:
        shown = "\n".join(lines[:20]) + (f"\n... and {len(lines) - 20} more" if len(lines) > 20 else "")
        raise ConfigError(f"{len(lines)} image(s) leak from training into validation/test:\n{shown}")


def check_sources(sources: Mapping[str, Mapping], pixels: bool = False) -> Mapping[str, Mapping]:
    """``assert_no_leakage`` over a bundle's ``datasets`` mapping; returns it unchanged (for config chaining)."""
    assert_no_leakage([spec["datalist"] for spec in sources.values()], pixels=pixels)
    return sources
