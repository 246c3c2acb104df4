"""VinDr-CXR (Kaggle VinBigData layout, or the PhysioNet release) -> datalist.

Kaggle layout (``layout="kaggle"``; competition "VinBigData Chest X-ray Abnormalities Detection")::

    train.csv    image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max
    train/<image_id>.dicom
    test.csv     (optional, same columns: labelled test annotations -> official test split)
    test/<image_id>.dicom

``train.csv`` has one row per (reader, box); each training image was read by 3 of 17 radiologists
(``R1``..``R17``); a reader who found nothing has one ``No finding`` row (class_id 14) with empty coordinates.
Boxes are ``[x_min, y_min, x_max, y_max]`` in pixels of the original DICOM (the stored image), kept as is.

PhysioNet layout (``layout="physionet"``; file names from the 1.0.0 release as commonly used, not verified
against the release itself)::

    annotations/annotations_train.csv   image_id, rad_id, class_name, x_min, y_min, x_max, y_max
    annotations/annotations_test.csv    same (5-reader consensus; rad_id may be absent)
    train/<image_id>.dicom, test/<image_id>.dicom

Its class list is read from the data (the class names present, sorted, without ``No finding``: the 22 local
labels); the six global labels of ``image_labels_*.csv`` are not used. ``layout="auto"`` (default) picks Kaggle
when ``train.csv`` exists, else PhysioNet.

Readers are fused per image and class with :func:`common.fuse_boxes` (``fusion``):
``"wbf"`` (default: overlapping boxes, IoU >= ``fusion_iou`` = 0.4, of the same class are averaged; every box
counts, so one reader suffices), ``"majority"`` (the same clusters, kept only when marked by more than half of the
readers who read the image, "No finding" readers included) or ``"union"`` (every reader's box, unfused). Files
without ``rad_id`` (consensus annotations) are never fused. Classification labels are the box classes plus
``No finding``: an image is positive for a class when at least one fused box of that class remains, and
``No finding`` is 1 exactly when no box remains (so under ``"majority"`` an image one reader of three marked is
"No finding").

Split: ``"official"`` uses the test annotations when they exist (Kaggle ``test.csv`` or PhysioNet
``annotations_test.csv``: test; the training images are split into training + validation, ``val_fraction``
default 0.1, seeded); otherwise (plain Kaggle) it falls back to the random split. There are no patient ids, so
``image_id`` stands for the patient. No view metadata in the CSVs (the release is PA only): ``views`` is refused.
Images whose DICOM is missing are left out and counted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from cxrfx.data.adapters import common, register
from cxrfx.data.adapters.base import AdapterInfo, DatasetAdapter
from cxrfx.errors import ConfigError, DatasetLayoutError

__all__ = ["VinDrCXRAdapter", "KAGGLE_CLASSES"]

NAME = "vindr_cxr"
KAGGLE_CLASSES = ("Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
                  "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
                  "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis")  # class_id 0..13
NO_FINDING = "No finding"  # class_id 14
SOURCE = ("PhysioNet: https://physionet.org/content/vindr-cxr/ (credentialed, DUA); Kaggle: "
          "https://www.kaggle.com/c/vinbigdata-chest-xray-abnormalities-detection")
LICENSE = "VinDr-CXR data use agreement / PhysioNet Credentialed Health Data License (research and education only)"
OPTIONS = ("fusion", "fusion_iou", "val_fraction", "layout")
FUSIONS = ("wbf", "majority", "union")
LAYOUTS = ("auto", "kaggle", "physionet")
BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")


def _layout(root: str, choice: str) -> str:
    if choice == "auto":
        if os.path.isfile(os.path.join(root, "train.csv")):
            return "kaggle"
        if os.path.isfile(os.path.join(root, "annotations", "annotations_train.csv")):
            return "physionet"
        common.require_file(root, "train.csv", what="Kaggle VinBigData layout; or annotations/annotations_train.csv "
                                                    "of the PhysioNet release")
    return choice


def _files(root: str, layout: str) -> list[tuple[str, str | None, str]]:
    """(part, annotation CSV or None, image folder) for "train" and "test"."""
    if layout == "kaggle":
        train = common.require_file(root, "train.csv", what="Kaggle VinBigData annotations")
        test = os.path.join(root, "test.csv")
    else:
        train = common.require_file(root, "annotations", "annotations_train.csv",
                                    what="PhysioNet VinDr-CXR annotations")
        test = os.path.join(root, "annotations", "annotations_test.csv")
    return [("train", train, os.path.join(root, "train")),
            ("test", test if os.path.isfile(test) else None, os.path.join(root, "test"))]


def _read(path: str, layout: str) -> tuple[dict[str, list[tuple[int, str, str, list[float] | None]]], bool]:
    """image_id -> [(line, class name, reader, box or None)], in file order; and whether rad_id exists."""
    required = ["image_id", "class_name", *BOX_COLUMNS] + (["class_id", "rad_id"] if layout == "kaggle" else [])
    rows = common.read_csv(path, required=required)
    has_readers = bool(rows) and "rad_id" in rows[0][1]
    images: dict[str, list] = {}
    for line, row in rows:
        image_id, name = row["image_id"], row["class_name"]
        if not image_id or not name:
            raise common.row_error(path, line, "empty image_id or class_name")
        if layout == "kaggle":
            expected = KAGGLE_CLASSES.index(name) if name in KAGGLE_CLASSES else 14 if name == NO_FINDING else None
            if expected is None:
                raise common.row_error(path, line, f"unknown class_name {name!r}; expected one of "
                                                   f"{[*KAGGLE_CLASSES, NO_FINDING]}")
            try:
                class_id = float(row["class_id"])
            except ValueError:
                class_id = None
            if class_id != expected:
                raise common.row_error(path, line, f"class_id {row['class_id']!r} does not match class_name {name!r} "
                                                   f"(expected {expected})")
        reader = row.get("rad_id", "") or "consensus"
        coords = [row[c] for c in BOX_COLUMNS]
        if name == NO_FINDING:
            if any(coords):
                raise common.row_error(path, line, f"{NO_FINDING!r} row with box coordinates {coords}")
            box = None
        else:
            try:
                box = [float(v) for v in coords]
            except ValueError:
                raise common.row_error(path, line, f"{name} box {coords} is not four numbers "
                                                   "(x_min, y_min, x_max, y_max)") from None
            if not (box[0] < box[2] and box[1] < box[3]):
                raise common.row_error(path, line, f"box {box} is empty (expects x_min < x_max, y_min < y_max)")
        images.setdefault(image_id, []).append((line, name, reader, box))
    return images, has_readers


def _image(folder: str, image_id: str) -> str | None:
    for ext in (".dicom", ".dcm"):
        path = os.path.join(folder, image_id + ext)
        if os.path.isfile(path):
            return path
    return None


def _fuse(rows: Sequence[tuple], classes: Sequence[str], method: str, iou: float) -> tuple[list, list, list[str]]:
    boxes = [r[3] for r in rows if r[3] is not None]
    labels = [classes.index(r[1]) for r in rows if r[3] is not None]
    box_readers = [r[2] for r in rows if r[3] is not None]
    readers = sorted({r[2] for r in rows})
    # "majority" counts every reader of the image, those who said "No finding" too
    fused, fused_labels = common.fuse_boxes(boxes, labels, box_readers, method=method, iou=iou,
                                            n_readers=len(readers))
    return fused, fused_labels, readers


@register
class VinDrCXRAdapter(DatasetAdapter):
    info = AdapterInfo(
        name=NAME,
        tasks=("classification", "detection"),
        source=SOURCE,
        license=LICENSE,
        description="VinDr-CXR: 14 box classes (Kaggle; PhysioNet: local labels present) fused over 3 readers "
                    "(wbf default, majority, union) + image labels (classes + No finding) from the fused boxes; "
                    "official test where test annotations exist, else random split by image_id",
        official_split=True,
        views=False,
    )

    def build(self, root: str, out_dir: str, split: str = "official", seed: int = 0,
              views: list[str] | None = None, **options: Any) -> dict:
        common.check_options(NAME, options, OPTIONS)
        if views:
            raise ConfigError(f"{NAME}: the annotation CSVs carry no view position (the release is PA only); "
                              "leave views unset")
        method = common.choice_option(NAME, options, "fusion", FUSIONS, "wbf")
        layout_choice = common.choice_option(NAME, options, "layout", LAYOUTS, "auto")
        try:
            iou = float(options.get("fusion_iou", 0.4))
            val_fraction = float(options.get("val_fraction", 0.1))
        except (TypeError, ValueError):
            raise ConfigError(f"{NAME}: fusion_iou and val_fraction must be numbers") from None
        if not 0.0 < iou <= 1.0 or not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"{NAME}: fusion_iou must be in (0, 1] and val_fraction in [0, 1)")

        layout = _layout(root, layout_choice)
        parts = []
        for part, path, folder in _files(root, layout):
            if path is not None:
                images, has_readers = _read(path, layout)
                parts.append((part, path, folder, images, has_readers))
        if layout == "kaggle":
            classes = list(KAGGLE_CLASSES)
        else:
            classes = sorted({r[1] for *_, images, _ in parts for rows in images.values() for r in rows} - {NO_FINDING})
            if not classes:
                raise DatasetLayoutError(f"{parts[0][1]}: no box class found (only {NO_FINDING!r} rows)")

        items: dict[str, list[dict]] = {"train": [], "test": []}
        missing, raw_boxes, kept_boxes = 0, 0, 0
        for part, path, folder, images, has_readers in parts:
            for image_id, rows in images.items():
                dicom = _image(folder, image_id)
                if dicom is None:
                    missing += 1
                    continue
                fused, fused_labels, readers = _fuse(rows, classes, method if has_readers else "union", iou)
                raw_boxes += sum(r[3] is not None for r in rows)
                kept_boxes += len(fused)
                label = [int(k in fused_labels) for k in range(len(classes))] + [int(not fused)]
                items[part].append({
                    "id": image_id, "image": common.rel(dicom, out_dir), "patient_id": image_id, "label": label,
                    "boxes": fused, "box_labels": fused_labels,
                    "meta": {"source_id": image_id, "readers": readers, "annotations": os.path.basename(path),
                             "reader_findings": sorted({r[1] for r in rows})},
                })
        if not items["train"] and not items["test"]:
            raise DatasetLayoutError(f"{os.path.join(root, 'train')}: none of the annotated images was found as "
                                     "<image_id>.dicom")

        has_test = any(part == "test" for part, *_ in parts)
        if split == "random" or not has_test:
            splits = common.assign_splits(items["train"] + items["test"], seed)
            how = f"random split by image_id (seed {seed}; no patient ids" + \
                  (")" if split == "random" else "; no test annotations found)")
        else:
            by_image = common.patient_split([it["id"] for it in items["train"]], seed,
                                            (1.0 - val_fraction, val_fraction, 0.0))
            splits = {"training": [], "validation": [], "test": list(items["test"])}
            for it in items["train"]:  # patient_split's rounding remainder belongs to validation here
                splits["training" if by_image[it["id"]] == "training" else "validation"].append(it)
            how = (f"official: test annotations -> test; training images -> training + validation "
                   f"({val_fraction:g}, seed {seed}, by image_id)")
        notes = [how, f"{layout} layout", f"fusion {method} (IoU {iou:g}): {raw_boxes} reader boxes -> {kept_boxes}"]
        if missing:
            notes.append(f"{missing} annotated image(s) without a DICOM on disk were left out")
        tasks = {"classification": {"labels": [*classes, NO_FINDING], "description":
                                    "positive when a fused box of the class remains; No finding when none remains"},
                 "detection": {"classes": classes, "description":
                               f"reader boxes fused per image and class ({method}); xyxy in DICOM pixels"}}
        return common.datalist(NAME, tasks, splits, f"{self.info.description}. " + "; ".join(notes), LICENSE, SOURCE)
