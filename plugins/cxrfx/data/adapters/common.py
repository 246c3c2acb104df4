"""Shared pieces of the dataset adapters: strict CSV reading, splits, mask decoding and box fusion.

Every error names the file (and the line for a bad row): ``DatasetLayoutError``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from cxrfx.errors import DatasetLayoutError

__all__ = [
    "require_file", "require_dir", "read_csv", "filter_views", "check_options", "refuse_views", "row_error", "rel", "patient_split", "assign_splits",
    "datalist", "rle_decode_relative_colmajor", "rle_decode_absolute", "polygon_mask", "ellipse_mask",
    "write_mask", "mask_box", "fuse_boxes", "box_iou_xyxy", "SPLIT_NAMES",
]

SPLIT_NAMES = ("training", "validation", "test")


def require_file(root: str, *parts: str, what: str = "") -> str:
    """``root/parts`` if it is a file, else a DatasetLayoutError saying what was expected where."""
    path = os.path.join(root, *parts)
    if not os.path.isfile(path):
        hint = f" ({what})" if what else ""
        raise DatasetLayoutError(f"{path}: expected file not found{hint}; is --root the unpacked dataset folder?")
    return path


def require_dir(root: str, *parts: str, what: str = "") -> str:
    path = os.path.join(root, *parts)
    if not os.path.isdir(path):
        hint = f" ({what})" if what else ""
        raise DatasetLayoutError(f"{path}: expected folder not found{hint}; is --root the unpacked dataset folder?")
    return path


def row_error(path: str, line: int, message: str) -> DatasetLayoutError:
    """Error for one bad row: ``<file>:<line>: <message>``."""
    return DatasetLayoutError(f"{path}:{line}: {message}")


def _read_text(path: str) -> str:
    """The whole file (gunzipped for ``.gz``) as UTF-8 text; errors name the file, and the line and column of
    the first byte that is not UTF-8 (Latin-1 / Windows-1252 exports, UTF-16 files) or of a NUL character."""
    try:  # gzip-compressed CSVs (MIMIC's *.csv.gz, some mirrors) read the same way
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
            raw = f.read()
    except FileNotFoundError as exc:
        raise DatasetLayoutError(f"{path}: cannot open ({exc.strerror})") from None
    except (OSError, EOFError, zlib.error) as exc:  # not gzip, truncated gzip, unreadable
        raise DatasetLayoutError(f"{path}: cannot read ({type(exc).__name__}: {exc or 'truncated'})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        hint = "it looks like UTF-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "Latin-1 / Windows-1252?"
        raise row_error(path, line, f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at column {column} ({hint}); "
                                    "re-save the file as UTF-8") from None
    if "\x00" in text:
        at = text.index("\x00")
        raise row_error(path, text.count("\n", 0, at) + 1, "NUL character in the file: a binary or UTF-16 file?")
    return text


def read_csv(path: str, required: Sequence[str] = (), rename: Mapping[str, str] | None = None,
             positional: Sequence[str] | None = None, delimiter: str = ",") -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV as ``(line number, {column: value})``, values stripped.

    ``rename`` maps raw header names to clean ones (e.g. NIH's ``OriginalImage[Width``); ``positional``
    replaces the header entirely by these names (for malformed headers such as ``Bbox [x,y,w,h],,,``).
    Raises naming the file for a missing required column, and file:line for a row with too few fields, for
    bytes that are not UTF-8, NUL characters and malformed quoting.
    """
    text = _read_text(path)
    # strict: an unterminated quote is an error, not a field that silently swallows the rest of the file
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DatasetLayoutError(f"{path}: empty file, expected a CSV header") from None
    except csv.Error as exc:
        raise row_error(path, reader.line_num, f"malformed CSV ({exc})") from None
    header = [h.strip() for h in header]
    if positional is not None:
        header = list(positional) + header[len(positional):]
    if rename:
        header = [rename.get(h, h) for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise DatasetLayoutError(f"{path}: missing column(s) {missing}; header is {header}")
    needed = max((header.index(c) for c in required), default=-1) + 1
    rows = []
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # unterminated quote, field over csv.field_size_limit(), ...
            raise row_error(path, reader.line_num, f"malformed CSV ({exc})") from None
        line = reader.line_num  # physical line (the record's last, for quoted fields spanning lines)
        if not values or all(not v.strip() for v in values):
            continue
        if len(values) < needed:
            raise row_error(path, line, f"{len(values)} fields, expected at least {needed} ({header[:needed]})")
        rows.append((line, {h: (values[i].strip() if i < len(values) else "") for i, h in enumerate(header)}))
    return rows


def check_options(dataset: str, options: Mapping[str, Any], known: Sequence[str]) -> None:
    """Refuse options the adapter does not know (a typo must not be ignored silently)."""
    from cxrfx.errors import ConfigError

    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"{dataset}: unknown option(s) {unknown}; known: {', '.join(known) if known else 'none'}")


def choice_option(dataset: str, options: Mapping[str, Any], key: str, choices: Iterable[str], default: str) -> str:
    """The option ``key`` (case-insensitive, ``default`` when absent), refused unless it is one of ``choices``."""
    from cxrfx.errors import ConfigError

    choices = list(choices)
    value = str(options.get(key, default)).strip().lower()
    if value not in choices:
        raise ConfigError(f"{dataset}: option {key} must be one of {choices}, got {options.get(key)!r}")
    return value


def refuse_views(dataset: str, views: Sequence[str] | None) -> None:
    """Datasets without view metadata refuse a ``views`` filter rather than silently ignoring it."""
    from cxrfx.errors import ConfigError

    if views:
        raise ConfigError(f"{dataset} has no view-position metadata, so it cannot be filtered by views={list(views)}; "
                          "leave views unset")


def filter_views(dataset: str, splits: Mapping[str, list[dict]], views: Sequence[str]) -> dict[str, list[dict]]:
    """The items whose ``view`` is one of ``views`` (case-insensitive); a filter that keeps nothing is refused."""
    from cxrfx.errors import ConfigError

    keep = {str(v).strip().upper() for v in views}
    out = {s: [it for it in splits.get(s, []) if it.get("view", "").upper() in keep] for s in SPLIT_NAMES}
    if not any(out.values()):
        present = sorted({it.get("view", "") for s in SPLIT_NAMES for it in splits.get(s, [])} - {""})
        raise ConfigError(f"{dataset}: views {sorted(keep)} match no image; the views present are {present}")
    return out


def rel(path: str, out_dir: str) -> str:
    """``path`` relative to the datalist folder when both are on the same tree, else absolute."""
    path, out_dir = os.path.abspath(path), os.path.abspath(out_dir)
    try:
        r = os.path.relpath(path, out_dir)
    except ValueError:
        return path
    return r if not r.startswith(".." + os.sep + ".." + os.sep + ".." + os.sep + "..") else path


def _stable_rank(key: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")


def patient_split(patients: Iterable[str], seed: int = 0, fractions: Sequence[float] = (0.7, 0.1, 0.2)) -> dict[str, str]:
    """Patient id -> split name, random but reproducible for ``seed`` (patients never straddle splits)."""
    unique = sorted(set(patients), key=lambda p: _stable_rank(p, seed))
    n = len(unique)
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n)) if len(fractions) > 2 else 0
    n_train = n - n_val - n_test  # the rounding remainder goes to training; an empty fraction stays empty
    out = {}
    for i, p in enumerate(unique):
        out[p] = "training" if i < n_train else "validation" if i < n_train + n_val else "test"
    return out


def assign_splits(items: Sequence[dict], seed: int = 0, fractions: Sequence[float] = (0.7, 0.1, 0.2),
                  key: str = "patient_id") -> dict[str, list[dict]]:
    """Items grouped by a patient-level random split (``key`` holds the patient id; the id is used if absent)."""
    patients = [it.get(key) or it.get("id") for it in items]
    by_patient = patient_split(patients, seed, fractions)
    splits = {s: [] for s in SPLIT_NAMES}
    for it, p in zip(items, patients):
        splits[by_patient[p]].append(it)
    return splits


def datalist(name: str, tasks: Mapping[str, Any], splits: Mapping[str, list[dict]], description: str,
             license: str, source: str) -> dict:
    """A datalist dict (validated when written by ``prepare``)."""
    data = {"name": name, "schema_version": 1, "box_mode": "xyxy", "description": description, "license": license,
            "source": source, "tasks": dict(tasks)}
    for s in SPLIT_NAMES:
        data[s] = list(splits.get(s, []))
    return data


def rle_decode_relative_colmajor(rle: str, height: int, width: int) -> np.ndarray:
    """SIIM-ACR Kaggle RLE: pairs (offset, length), each offset counted from the end of the previous run (the
    first from pixel 0), over the column-major flattened image; ``"-1"`` or empty = no mask. (H, W) bool."""
    mask = np.zeros(height * width, dtype=bool)
    text = rle.strip()
    if text in ("", "-1"):
        return mask.reshape(width, height).T
    values = [int(v) for v in text.split()]
    if len(values) % 2:
        raise ValueError(f"odd number of RLE values ({len(values)})")
    position = 0
    for offset, length in zip(values[0::2], values[1::2]):
        position += offset
        if position < 0 or position + length > mask.size:
            raise ValueError(f"run {offset} {length} leaves the {height}x{width} image")
        mask[position:position + length] = True
        position += length
    return mask.reshape(width, height).T  # column-major: x varies slowest


def rle_decode_absolute(rle: str, height: int, width: int, one_based: bool = True) -> np.ndarray:
    """Absolute-start RLE (``start length`` pairs, row-major; CheXmask: 1-based). (H, W) bool."""
    mask = np.zeros(height * width, dtype=bool)
    values = [int(v) for v in rle.split()] if rle and rle.strip() not in ("", "-1") else []
    if len(values) % 2:
        raise ValueError(f"odd number of RLE values ({len(values)})")
    for start, length in zip(values[0::2], values[1::2]):
        s = start - 1 if one_based else start
        if s < 0 or s + length > mask.size:
            raise ValueError(f"run {start} {length} leaves the {height}x{width} image")
        mask[s:s + length] = True
    return mask.reshape(height, width)


def polygon_mask(polygons: Sequence[Sequence[Sequence[float]]], height: int, width: int) -> np.ndarray:
    """Union of polygons given as ``[[x, y], ...]`` (pixel coordinates, x = column), rasterised. (H, W) bool."""
    img = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(img)
    for poly in polygons:
        points = [(float(x), float(y)) for x, y in poly]
        if len(points) >= 3:
            draw.polygon(points, fill=1, outline=1)
    return np.array(img, dtype=bool)


def ellipse_mask(box: Sequence[float], height: int, width: int) -> np.ndarray:
    """The ellipse inscribed in ``[x1, y1, x2, y2]``. (H, W) bool."""
    img = Image.new("1", (width, height), 0)
    ImageDraw.Draw(img).ellipse([float(v) for v in box], fill=1, outline=1)
    return np.array(img, dtype=bool)


def write_mask(path: str, mask: np.ndarray) -> str:
    """A binary mask as an 8-bit PNG (0 / 255); creates the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray((np.asarray(mask, dtype=bool) * 255).astype(np.uint8)).save(path)
    return path


def mask_box(mask: np.ndarray) -> list[float] | None:
    """Tight ``[x1, y1, x2, y2]`` (pixel edges) around a mask, None when empty."""
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return None
    return [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]


def box_iou_xyxy(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def fuse_boxes(boxes: Sequence[Sequence[float]], labels: Sequence[int], readers: Sequence[str],
               method: str = "wbf", iou: float = 0.4, min_readers: int = 1,
               n_readers: int | None = None) -> tuple[list[list[float]], list[int]]:
    """Fuse several readers' boxes of one image, per class.

    Boxes of the same class overlapping (IoU >= ``iou``) with a cluster join it (greedy, in input order).
    ``method``: ``"wbf"`` averages each cluster's coordinates (weighted box fusion with equal weights);
    ``"majority"`` does the same but keeps only clusters marked by more than half of the ``n_readers`` who read
    the image (readers who found nothing count: pass their number; default: the readers who drew boxes), and at
    least ``min_readers``; ``"union"`` keeps every box unfused.
    """
    if method == "union":
        return [list(map(float, b)) for b in boxes], [int(v) for v in labels]
    if method not in ("wbf", "majority"):
        raise ValueError(f"box fusion must be 'wbf', 'majority' or 'union', got {method!r}")
    n_readers = n_readers or len(set(readers))
    need = min_readers if method == "wbf" else max(min_readers, n_readers // 2 + 1)
    clusters: list[dict] = []
    for box, label, reader in zip(boxes, labels, readers):
        best, best_iou = None, iou
        for c in clusters:
            if c["label"] == label:
                v = box_iou_xyxy(c["mean"], box)
                if v >= best_iou:
                    best, best_iou = c, v
        if best is None:
            clusters.append({"label": int(label), "boxes": [list(map(float, box))], "readers": {reader}, "mean": list(box)})
        else:
            best["boxes"].append(list(map(float, box)))
            best["readers"].add(reader)
            best["mean"] = list(np.mean(best["boxes"], axis=0))
    kept = [c for c in clusters if len(c["readers"]) >= need]
    return [[round(float(v), 2) for v in c["mean"]] for c in kept], [c["label"] for c in kept]

