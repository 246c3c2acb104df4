"""NODE21 (nodule detection challenge, 2021): preprocessed ``.mha`` images + ``metadata.csv`` -> datalist.

Layout of the Zenodo release (folder names as distributed, including the typo)::

    <root>/cxr_images/proccessed_data/images/<name>.mha        preprocessed (lung crop, energy norm., 1024^2)
    <root>/cxr_images/proccessed_data/metadata.csv             img_name, x, y, width, height, label
    <root>/cxr_images/original_data/{images/, metadata.csv, filenames_orig_and_new.csv, ...}

``metadata.csv`` has one row per nodule (``label`` 1, box ``x, y, width, height`` in pixels of the stored image)
and one row with ``label`` 0 per image without a nodule; an image with several nodules has several rows. Boxes
become ``[x, y, x + width, y + height]``. The folder names are matched tolerantly: the adapter looks for
``metadata.csv`` up to three levels below ``--root`` and prefers the one in a ``*process*`` folder (``variant=
"original"`` prefers ``original_data``); images are read from the ``images`` (or ``Images``) folder beside it,
else from the CSV's folder. When ``filenames_orig_and_new.csv`` / ``non_nodule_filenames_orig_and_new.csv``
(columns ``node21_img_id``, ``orig_dataset``, ...) are found, each item's ``meta["origin"]`` records its source
dataset (JSRT, PadChest, ChestX-ray14, OpenI: leakage checks).

No official labelled test split (the challenge test set is hidden), and no patient ids: both ``official`` and
``random`` give a random split with each image as its own patient.
"""

from __future__ import annotations

import os
from typing import Any

from cxrfx.data.adapters import common, register
from cxrfx.data.adapters.base import AdapterInfo, DatasetAdapter
from cxrfx.data.adapters.common import refuse_views
from cxrfx.data.adapters.siim_acr import index_files, warn_missing
from cxrfx.errors import ConfigError, DatasetLayoutError

__all__ = ["NODE21Adapter"]

_MAPPING_FILES = ("filenames_orig_and_new.csv", "non_nodule_filenames_orig_and_new.csv")
_IMAGE_EXTENSIONS = (".mha", ".mhd")

_INFO = AdapterInfo(
    name="node21",
    tasks=("classification", "detection"),
    source="NODE21 challenge (node21.grand-challenge.org; data on Zenodo, 'NODE21 dataset')",
    license="see the Zenodo record (built from JSRT, PadChest, ChestX-ray14 and OpenI; exact licence uncertain)",
    description="NODE21 nodules: preprocessed .mha + metadata.csv (xywh boxes, label 0 rows for negatives); no "
                "official labelled split (random split, image = patient)",
    official_split=False,
    views=False,
)


def _walk_for(root: str, name: str, depth: int = 3) -> list[str]:
    found = []
    level = [root]
    for _ in range(depth + 1):
        nxt = []
        for folder in level:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                found.append(path)
            try:
                nxt.extend(e.path for e in sorted(os.scandir(folder), key=lambda e: e.name)
                           if e.is_dir() and not e.name.startswith("."))
            except OSError:
                pass
        level = nxt
    return found


def _pick_metadata(root: str, variant: str) -> str:
    found = _walk_for(root, "metadata.csv")
    if not found:
        return common.require_file(root, "cxr_images", "proccessed_data", "metadata.csv",
                                   what="NODE21 labels; searched 3 levels below --root for metadata.csv")
    keys = ("process", "proccess") if variant == "processed" else ("original",)
    preferred = [p for p in found if any(k in os.path.basename(os.path.dirname(p)).lower() for k in keys)]
    return (preferred or found)[0]


def _number(path: str, line: int, row: dict[str, str], key: str) -> float:
    try:
        return float(row[key])
    except ValueError:
        raise common.row_error(path, line, f"{key} is not a number: {row[key]!r}") from None


@register
class NODE21Adapter(DatasetAdapter):
    info = _INFO

    def build(self, root: str, out_dir: str, split: str = "official", seed: int = 0,
              views: list[str] | None = None, **options: Any) -> dict:
        variant = options.pop("variant", "processed")
        missing_policy = options.pop("missing", "skip")
        if options:
            raise ConfigError(f"node21: unknown option(s) {sorted(options)}; known: variant, missing")
        if variant not in ("processed", "original"):
            raise ConfigError(f"node21: variant must be 'processed' or 'original', got {variant!r}")
        if missing_policy not in ("skip", "error"):
            raise ConfigError(f"node21: missing must be 'skip' or 'error', got {missing_policy!r}")
        refuse_views(self.info.name, views)

        csv_path = _pick_metadata(root, variant)
        data_dir = os.path.dirname(csv_path)
        image_dir = next((os.path.join(data_dir, d) for d in ("images", "Images", "imgs")
                          if os.path.isdir(os.path.join(data_dir, d))), data_dir)
        files = index_files(image_dir, _IMAGE_EXTENSIONS, strip_extension=False)
        by_stem = {os.path.splitext(k)[0]: v for k, v in files.items()}
        rows = common.read_csv(csv_path, required=("img_name", "x", "y", "width", "height", "label"))

        origin = self._origins(root)
        per_image: dict[str, dict[str, Any]] = {}
        for line, row in rows:
            name = row["img_name"]
            if not name:
                raise common.row_error(csv_path, line, "empty img_name")
            try:
                label = int(float(row["label"]))
            except ValueError:
                raise common.row_error(csv_path, line, f"label is not 0 or 1: {row['label']!r}") from None
            if label not in (0, 1):
                raise common.row_error(csv_path, line, f"label is not 0 or 1: {row['label']!r}")
            entry = per_image.setdefault(name, {"line": line, "label": 0, "boxes": [], "dropped": 0})
            if label == 1:
                x, y, w, h = (_number(csv_path, line, row, k) for k in ("x", "y", "width", "height"))
                entry["label"] = 1
                if w > 0 and h > 0:
                    entry["boxes"].append([x, y, x + w, y + h])
                else:
                    entry["dropped"] += 1

        items, missing = [], []
        for name, entry in per_image.items():
            stem = os.path.splitext(name)[0] if name.lower().endswith(_IMAGE_EXTENSIONS) else name
            path = files.get(name) or by_stem.get(stem)
            if path is None:
                if missing_policy == "error":
                    raise common.row_error(csv_path, entry["line"], f"image {name} not found under {image_dir}")
                missing.append(name)
                continue
            meta: dict[str, Any] = {"source_id": name}
            if entry["dropped"]:
                meta["dropped_empty_boxes"] = entry["dropped"]
            if stem in origin:
                meta["origin"] = origin[stem]
            items.append({"id": stem, "image": common.rel(path, out_dir), "patient_id": stem,
                          "label": [entry["label"]], "boxes": entry["boxes"],
                          "box_labels": [0] * len(entry["boxes"]), "meta": meta})
        if per_image and not items:
            raise DatasetLayoutError(f"{image_dir}: none of the {len(per_image)} images of {csv_path} was found "
                                     "here; is --root the unpacked NODE21 folder?")
        warn_missing(self.info.name, missing, image_dir)

        splits = common.assign_splits(items, seed)
        tasks = {"classification": {"labels": ["nodule"]},
                 "detection": {"classes": ["nodule"], "description": "metadata.csv x, y, width, height -> xyxy"}}
        return common.datalist(self.info.name, tasks, splits, self.info.description, self.info.license,
                               self.info.source)

    @staticmethod
    def _origins(root: str) -> dict[str, dict[str, str]]:
        """node21 image id -> the other columns of the name-mapping CSVs (when the release ships them)."""
        out: dict[str, dict[str, str]] = {}
        for name in _MAPPING_FILES:
            for path in _walk_for(root, name)[:1]:
                for _, row in common.read_csv(path, required=("node21_img_id",)):
                    key = os.path.splitext(row["node21_img_id"])[0]
                    if key:
                        out[key] = {k: v for k, v in row.items() if k and k != "node21_img_id" and v}
        return out
