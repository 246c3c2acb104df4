"""ChestX-Det (Deepwise, 2021): 3,578 NIH images with instance boxes and polygons of 13 findings -> datalist.

Layout::

    <root>/ChestX_Det_train.json, ChestX_Det_test.json    [{"file_name": "36204.png", "syms": [...],
                                                            "boxes": [[x1, y1, x2, y2], ...],
                                                            "polygons": [[[x, y], ...], ...]}, ...]
    <root>/train/*.png, <root>/test/*.png                  (from train_data.zip / test_data.zip; 1024 x 1024)

Boxes are already ``[x1, y1, x2, y2]`` (left, top, right, bottom) in pixels and are kept as given. Polygons are
rasterised (``common.polygon_mask``, outline included) at the PNG's size, one binary mask per finding; instances
of one finding are unioned, different findings may overlap (per-class masks). Findings are matched to the 13
names case-insensitively; an unknown name is an error naming the file and record.

Images are looked up by file name anywhere under ``--root`` (or under ``images=``); when a name occurs in
several folders, the one whose path mentions the split (``train`` / ``test``) wins. Official split: train ->
training (minus a validation carve-out of ``val_fraction``, default 0.1, with ``seed``), test -> test. The
ChestX-Det file names are Deepwise's own numbers, not NIH names, so there are no patient ids: the carve-out and
``split="random"`` are image level (each image its own patient).

This module also implements ChestX-Det10 (``chestx_det10``), the earlier 10-finding, box-only release.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from cxrfx.data.adapters import common, register
from cxrfx.data.adapters.base import AdapterInfo, DatasetAdapter
from cxrfx.data.adapters.common import refuse_views
from cxrfx.data.adapters.siim_acr import find_file, warn_missing
from cxrfx.errors import ConfigError, DatasetLayoutError

__all__ = ["ChestXDetAdapter", "FINDINGS", "build_deepwise"]

FINDINGS = ["Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "Diffuse Nodule", "Effusion",
            "Emphysema", "Fibrosis", "Fracture", "Mass", "Nodule", "Pleural Thickening", "Pneumothorax"]
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _norm(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def _slug(name: str) -> str:
    return _norm(name).replace(" ", "_")


def load_records(path: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise common.row_error(path, exc.lineno, f"not valid JSON ({exc.msg})") from None
    except OSError as exc:
        raise DatasetLayoutError(f"{path}: cannot open ({exc.strerror})") from None
    if not isinstance(data, list):
        raise DatasetLayoutError(f"{path}: expected a list of records {{file_name, syms, boxes, ...}}")
    return data


def index_images(folder: str) -> dict[str, list[str]]:
    """file name -> every path under ``folder`` with that name (sorted)."""
    out: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(_IMAGE_EXTENSIONS) and not name.startswith("."):
                out.setdefault(name, []).append(os.path.join(dirpath, name))
    return out


def _pick(paths: Sequence[str], part: str, root: str) -> str:
    if len(paths) == 1:
        return paths[0]
    hits = [p for p in paths if part in os.path.relpath(p, root).lower()]
    return (hits or list(paths))[0]


def build_deepwise(*, name: str, root: str, out_dir: str, split: str, seed: int, json_names: dict[str, Sequence[str]],
                   findings: Sequence[str], with_masks: bool, patient_of: Callable[[str], str],
                   val_fraction: float, images: str | None, missing_policy: str, info: AdapterInfo) -> dict:
    """Shared builder of the two Deepwise datasets (records ``file_name, syms, boxes[, polygons]``)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"{name}: val_fraction must be in [0, 1), got {val_fraction!r}")
    if missing_policy not in ("skip", "error"):
        raise ConfigError(f"{name}: missing must be 'skip' or 'error', got {missing_policy!r}")
    lookup = {_norm(f): k for k, f in enumerate(findings)}
    json_paths = {part: find_file(root, names, what=f"{name} {part} annotations") for part, names in
                  json_names.items()}
    if images:
        image_root = images if os.path.isabs(images) else os.path.join(root, images)
        common.require_dir(image_root, what="image folder given as images=")
    else:
        image_root = root
    index = index_images(image_root)
    mask_dir = os.path.join(out_dir, f"{name}_masks")

    by_part: dict[str, list[dict]] = {}
    missing: list[str] = []
    n_records = 0
    for part, path in json_paths.items():
        items = []
        for k, rec in enumerate(load_records(path)):
            n_records += 1
            where = f"record {k}"
            if not isinstance(rec, dict) or not isinstance(rec.get("file_name"), str):
                raise DatasetLayoutError(f"{path}: {where} has no 'file_name'")
            file_name = rec["file_name"].strip()
            where = f"record {k} ({file_name})"
            syms, boxes = rec.get("syms"), rec.get("boxes")
            if not isinstance(syms, list) or not isinstance(boxes, list):
                raise DatasetLayoutError(f"{path}: {where} needs lists 'syms' and 'boxes'")
            if len(syms) != len(boxes):
                raise DatasetLayoutError(f"{path}: {where} has {len(syms)} syms but {len(boxes)} boxes")
            polygons = rec.get("polygons") if with_masks else None
            if with_masks:
                if not isinstance(polygons, list) or len(polygons) != len(syms):
                    raise DatasetLayoutError(f"{path}: {where} needs one polygon per sym ({len(syms)}), got "
                                             f"{len(polygons) if isinstance(polygons, list) else polygons!r}")
            classes = []
            for s in syms:
                if _norm(s) not in lookup:
                    raise DatasetLayoutError(f"{path}: {where}: unknown finding {s!r}; known: {list(findings)}")
                classes.append(lookup[_norm(s)])
            out_boxes, out_labels, dropped = [], [], 0
            for j, (box, cls) in enumerate(zip(boxes, classes)):
                try:
                    x1, y1, x2, y2 = (float(v) for v in box)
                except (TypeError, ValueError):
                    raise DatasetLayoutError(f"{path}: {where}: box {j} is not [x1, y1, x2, y2]: {box!r}") from None
                if x2 > x1 and y2 > y1:
                    out_boxes.append([x1, y1, x2, y2])
                    out_labels.append(cls)
                else:
                    dropped += 1
            candidates = index.get(os.path.basename(file_name))
            if not candidates:
                if missing_policy == "error":
                    raise DatasetLayoutError(f"{path}: {where}: image not found under {image_root}")
                missing.append(file_name)
                continue
            image_path = _pick(candidates, part, image_root)
            stem = os.path.splitext(os.path.basename(file_name))[0]
            label = [0] * len(findings)
            for cls in classes:
                label[cls] = 1
            meta: dict[str, Any] = {"source_id": file_name, "official_split": part}
            if dropped:
                meta["dropped_empty_boxes"] = dropped
            item: dict[str, Any] = {"id": stem, "image": common.rel(image_path, out_dir),
                                    "patient_id": patient_of(stem), "label": label, "boxes": out_boxes,
                                    "box_labels": out_labels}
            if with_masks:
                from PIL import Image

                try:
                    with Image.open(image_path) as im:
                        width, height = im.size
                except OSError as exc:
                    raise DatasetLayoutError(f"{image_path}: cannot read the image header ({exc})") from None
                meta["original_size"] = [height, width]
                per_class: dict[int, list] = {}
                for j, (poly, cls) in enumerate(zip(polygons, classes)):
                    try:
                        points = [[float(x), float(y)] for x, y in poly]
                    except (TypeError, ValueError):
                        raise DatasetLayoutError(f"{path}: {where}: polygon {j} is not a list of [x, y]") from None
                    per_class.setdefault(cls, []).append(points)
                masks = {}
                for cls, polys in sorted(per_class.items()):
                    mask = common.polygon_mask(polys, height, width)
                    if mask.any():
                        out = common.write_mask(os.path.join(mask_dir, f"{stem}_{_slug(findings[cls])}.png"), mask)
                        masks[findings[cls]] = common.rel(out, out_dir)
                item["mask"] = masks
            item["meta"] = meta
            items.append(item)
        by_part[part] = items
    if n_records and len(missing) == n_records:
        raise DatasetLayoutError(f"{image_root}: none of the {n_records} annotated images was found here (searched "
                                 "recursively by file name); is --root the unpacked dataset folder?")
    warn_missing(name, missing, image_root)

    if split == "random":
        splits = common.assign_splits(by_part["train"] + by_part["test"], seed)
    else:
        if val_fraction > 0:
            carved = common.assign_splits(by_part["train"], seed, fractions=(1.0 - val_fraction, val_fraction, 0.0))
            train, val = carved["training"], carved["validation"] + carved["test"]
        else:
            train, val = by_part["train"], []
        splits = {"training": train, "validation": val, "test": by_part["test"]}

    tasks: dict[str, Any] = {
        "classification": {"labels": list(findings)},
        "detection": {"classes": list(findings), "description": "boxes [x1, y1, x2, y2] as given by Deepwise"},
    }
    if with_masks:
        tasks["segmentation"] = {"classes": list(findings), "mask_format": "per_class",
                                 "description": "instance polygons rasterised and unioned per finding"}
    return common.datalist(name, tasks, splits, info.description, info.license, info.source)


_INFO = AdapterInfo(
    name="chestx_det",
    tasks=("classification", "detection", "segmentation"),
    source="github.com/Deepwise-AILab/ChestX-Det-Dataset (JSON) + resource.deepwise.com/ChestX-Det/"
           "{train,test}_data.zip (images)",
    license="not clearly stated (Deepwise-AILab/ChestX-Det-Dataset#4); images from NIH ChestX-ray14",
    description="ChestX-Det: 13 findings, instance boxes + polygons (rasterised per finding) on NIH images; "
                "official train/test (+ image-level validation carve-out)",
    official_split=True,
    views=False,
)


@register
class ChestXDetAdapter(DatasetAdapter):
    info = _INFO

    def build(self, root: str, out_dir: str, split: str = "official", seed: int = 0,
              views: list[str] | None = None, **options: Any) -> dict:
        val_fraction = float(options.pop("val_fraction", 0.1))
        images = options.pop("images", None)
        missing_policy = options.pop("missing", "skip")
        if options:
            raise ConfigError(f"chestx_det: unknown option(s) {sorted(options)}; known: val_fraction, images, missing")
        refuse_views(self.info.name, views)
        return build_deepwise(
            name=self.info.name, root=root, out_dir=out_dir, split=split, seed=seed,
            json_names={"train": ("ChestX_Det_train.json",), "test": ("ChestX_Det_test.json",)},
            findings=FINDINGS, with_masks=True, patient_of=lambda stem: stem, val_fraction=val_fraction,
            images=images, missing_policy=missing_policy, info=self.info)
