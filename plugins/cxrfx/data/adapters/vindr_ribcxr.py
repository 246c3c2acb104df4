"""VinDr-RibCXR (Vingroup Big Data Institute, MIDL 2021): 20 individual ribs as polygons -> datalist.

ASSUMED LAYOUT (from the authors' training code and README, not checked against the distributed archive)::

    <root>/data/train/img/VinDr_RibCXR_train_000.png     196 training images (``Data/`` accepted too)
    <root>/data/train/Vindr_RibCXR_train_mask.json       their annotations
    <root>/data/val/img/VinDr_RibCXR_val_000.png          49 validation images
    <root>/data/val/Vindr_RibCXR_val_mask.json

The JSON files are found anywhere up to four levels below ``--root`` (a ``.json`` whose name contains ``train`` /
``val``; names containing ``mask`` preferred; options ``train_json`` / ``val_json`` override). Each is a pandas
``DataFrame.to_json()`` dump, column oriented::

    {"img": {"0": "data/train/img/VinDr_RibCXR_train_000.png", ...},
     "R1":  {"0": [{"x": 1027.8, "y": 470.7}, ...], ...}, ..., "L10": {...}}

(``records`` / ``index`` orientations are accepted too). A rib value is a polygon as a list of ``{"x", "y"}``
points (or ``[x, y]`` pairs, or a list of such polygons); ``"None"`` / null / empty = rib not visible. The
``img`` path is resolved against ``--root`` (``data``/``Data`` spelling tolerated), the JSON's folder, the
split's ``img`` folder, then any image of that name under ``--root``. Images are PNG (DICOM is accepted; its size
comes from the header).

Task: segmentation with 20 classes ``R1``..``R10``, ``L1``..``L10`` (the dataset's labels: R = the patient's
right ribs, shown on the viewer's left, numbered from the top), one binary PNG per visible rib (ribs overlap,
so one channel each), rasterised with :func:`common.polygon_mask` at the image's size. Official split: train ->
training, val -> validation (the paper's held-out set; no test split). No patient ids: ``split="random"`` is
image level. No view metadata: ``views`` is refused.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np

from cxrfx.data.adapters import common, register
from cxrfx.data.adapters.base import AdapterInfo, DatasetAdapter
from cxrfx.data.adapters.common import check_options, refuse_views
from cxrfx.data.adapters.shenzhen import image_header
from cxrfx.errors import DatasetLayoutError

__all__ = ["VinDrRibCXRAdapter", "RIBS", "parse_polygons"]

RIBS = [f"R{i}" for i in range(1, 11)] + [f"L{i}" for i in range(1, 11)]
_SPLITS = (("train", "training"), ("val", "validation"))
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


def parse_polygons(value: Any) -> list[list[tuple[float, float]]]:
    """A rib's JSON value -> polygons ``[[(x, y), ...], ...]`` (empty when the rib is absent); ValueError."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "", "nan")):
        return []
    if not isinstance(value, list):
        raise ValueError(f"expected a list of points, got {type(value).__name__}")
    if not value:
        return []
    if isinstance(value[0], list) and value[0] and isinstance(value[0][0], (dict, list)):
        polygons = [_points(v) for v in value]  # several polygons
    else:
        polygons = [_points(value)]
    return [p for p in polygons if p]


def _points(points: list) -> list[tuple[float, float]]:
    out = []
    for p in points:
        if isinstance(p, dict):
            if "x" not in p or "y" not in p:
                raise ValueError(f"point {p!r} lacks 'x' or 'y'")
            x, y = p["x"], p["y"]
        elif isinstance(p, (list, tuple)) and len(p) == 2:
            x, y = p
        else:
            raise ValueError(f"point {p!r} is neither {{'x': .., 'y': ..}} nor [x, y]")
        try:
            xy = (float(x), float(y))
        except (TypeError, ValueError):
            raise ValueError(f"point {p!r} has a non-numeric coordinate") from None
        if not all(np.isfinite(xy)):
            raise ValueError(f"point {p!r} has a non-finite coordinate")
        out.append(xy)
    if 0 < len(out) < 3:
        raise ValueError(f"a polygon needs at least 3 points, got {len(out)}")
    return out


def _records(path: str) -> list[tuple[str, dict[str, Any]]]:
    """(record key, {"img": ..., "R1": ..., ...}) from a JSON in columns / records / index orientation."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise DatasetLayoutError(f"{path}: cannot open ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetLayoutError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("img"), dict):  # columns (pandas default)
        keys = sorted(data["img"], key=lambda k: (len(str(k)), str(k)))
        return [(str(k), {col: (vals.get(k) if isinstance(vals, dict) else None) for col, vals in data.items()})
                for k in keys]
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):  # records
        return [(str(i), r) for i, r in enumerate(data)]
    if isinstance(data, dict) and data and all(isinstance(r, dict) and "img" in r for r in data.values()):  # index
        return [(str(k), r) for k, r in data.items()]
    raise DatasetLayoutError(f"{path}: expected the VinDr-RibCXR annotation format (an 'img' column mapping record "
                             "keys to image paths, plus rib columns R1..R10, L1..L10)")


def _find_json(root: str, tag: str) -> str | None:
    best = None
    base = root.rstrip(os.sep).count(os.sep)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        depth = dirpath.count(os.sep) - base
        if depth >= 4:
            dirnames[:] = []
        for name in sorted(filenames):
            low = name.lower()
            if not low.endswith(".json"):
                continue
            stem = low[:-5]
            other = "val" if tag == "train" else "train"
            if tag not in stem or other in stem:
                continue
            rank = ("mask" not in stem, depth, os.path.join(dirpath, name))
            if best is None or rank < best:
                best = rank
    return best[2] if best else None


class _Resolver:
    """Finds the image a JSON ``img`` value names, trying the plausible prefixes before a search by name."""

    def __init__(self, root: str):
        self.root = root
        self._by_name: dict[str, str] | None = None

    def __call__(self, value: str, json_path: str, tag: str) -> str | None:
        rel = value.replace("\\", "/").strip()
        name = os.path.basename(rel)
        parts = [p for p in rel.split("/") if p]
        candidates = [rel] if os.path.isabs(rel) else []
        if parts:
            candidates += [os.path.join(self.root, *parts), os.path.join(os.path.dirname(json_path), *parts)]
            if parts[0].lower() == "data":
                candidates += [os.path.join(self.root, p0, *parts[1:]) for p0 in ("data", "Data")]
                candidates.append(os.path.join(self.root, *parts[1:]))
        candidates += [os.path.join(os.path.dirname(json_path), "img", name),
                       os.path.join(self.root, "data", tag, "img", name), os.path.join(self.root, "Data", tag, "img",
                                                                                      name)]
        for c in candidates:
            if os.path.isfile(c):
                return c
        if self._by_name is None:
            self._by_name = {}
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for f in sorted(filenames):
                    if f.lower().endswith(_IMAGE_EXTS):  # a name found twice is ambiguous: no guess
                        self._by_name[f] = os.path.join(dirpath, f) if f not in self._by_name else None
        return self._by_name.get(name)


def _size(path: str) -> tuple[int, int]:
    if path.lower().endswith((".dcm", ".dicom")):
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            return int(ds.Rows), int(ds.Columns)
        except Exception as exc:
            raise DatasetLayoutError(f"{path}: cannot read the DICOM header ({type(exc).__name__}: {exc})") from None
    header = image_header(path)
    return header["height"], header["width"]


@register
class VinDrRibCXRAdapter(DatasetAdapter):
    info = AdapterInfo(
        name="vindr_ribcxr",
        tasks=("segmentation",),
        source="VinDr-RibCXR (vindr.ai/datasets/ribcxr): download link after signing the data use agreement "
               "(github.com/vinbigdata-medical/MIDL2021-VinDr-RibCXR)",
        license="VinDr data use agreement, research only (exact terms uncertain)",
        description="245 CXRs (196 train / 49 val) with 20 individual rib polygons R1-R10, L1-L10 (one channel each);"
                    " ASSUMED layout: data/{train,val}/img/*.png + Vindr_RibCXR_{train,val}_mask.json (pandas column "
                    "JSON: img + R1..L10 lists of {x,y}); official split train -> training, val -> validation; "
                    "split=random is image level",
        official_split=True,
        views=False,
    )

    def build(self, root: str, out_dir: str, split: str = "official", seed: int = 0,
              views: list[str] | None = None, **options: Any) -> dict:
        check_options(self.info.name, options, ["train_json", "val_json"])
        refuse_views(self.info.name, views)
        resolve = _Resolver(root)
        mask_dir = os.path.join(out_dir, "vindr_ribcxr_masks")
        official: dict[str, list[dict]] = {s: [] for s in common.SPLIT_NAMES}
        seen_images: dict[str, str] = {}
        unknown_keys: set[str] = set()
        for tag, split_name in _SPLITS:
            option = options.get(f"{tag}_json")
            if option:
                json_path = common.require_file(str(option) if os.path.isabs(str(option)) else os.path.join(root,
                                                                                                           str(option)))
            else:
                json_path = _find_json(root, tag)
                if json_path is None:
                    common.require_file(root, "data", tag, f"Vindr_RibCXR_{tag}_mask.json",
                                        what=f"VinDr-RibCXR {tag} annotations")
            for key, record in _records(json_path):
                unknown_keys |= {k for k in record if k != "img" and k not in RIBS}
                official[split_name].append(self._item(json_path, key, record, tag, resolve, out_dir, mask_dir,
                                                       seen_images))
        if unknown_keys:
            warnings.warn(f"vindr_ribcxr: annotation keys ignored (not R1..R10 / L1..L10): {sorted(unknown_keys)}",
                          stacklevel=2)
        splits = official if split == "official" else \
            common.assign_splits(official["training"] + official["validation"], seed)
        tasks = {"segmentation": {"classes": list(RIBS), "mask_format": "per_class",
                                  "description": "individual ribs, R = the patient's right (viewer's left on a PA "
                                                 "film), 1 = uppermost; one binary mask per visible rib"}}
        return common.datalist(self.info.name, tasks, splits, self.info.description, self.info.license,
                               self.info.source)

    @staticmethod
    def _item(json_path: str, key: str, record: dict[str, Any], tag: str, resolve: _Resolver, out_dir: str,
              mask_dir: str, seen_images: dict[str, str]) -> dict:
        where = f"{json_path}: record {key}"
        value = record.get("img")
        if not isinstance(value, str) or not value.strip():
            raise DatasetLayoutError(f"{where}: no image path under 'img' (got {value!r})")
        image = resolve(value, json_path, tag)
        if image is None:
            raise DatasetLayoutError(f"{where}: image {value!r} not found under {resolve.root}")
        if image in seen_images:
            raise DatasetLayoutError(f"{where}: image {value!r} is also {seen_images[image]}")
        seen_images[image] = where
        height, width = _size(image)
        stem = os.path.splitext(os.path.basename(image))[0]
        item: dict[str, Any] = {"id": f"{tag}/{stem}", "image": common.rel(image, out_dir), "mask": {},
                                "meta": {"source_id": stem, "source_split": tag, "record": key,
                                         "size": [height, width]}}
        for rib in RIBS:
            try:
                polygons = parse_polygons(record.get(rib))
            except ValueError as exc:
                raise DatasetLayoutError(f"{where}, rib {rib}: {exc}") from None
            if not polygons:
                continue
            mask = common.polygon_mask(polygons, height, width)
            if mask.any():
                path = common.write_mask(os.path.join(mask_dir, tag, f"{stem}_{rib}.png"), mask)
                item["mask"][rib] = common.rel(path, out_dir)
        return item
