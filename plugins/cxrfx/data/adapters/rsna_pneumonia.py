"""RSNA Pneumonia Detection Challenge (Kaggle, 2018) -> datalist.

Layout (``--root`` = the unpacked Kaggle competition folder)::

    stage_2_train_labels.csv          patientId, x, y, width, height, Target   (one row per box; negatives empty)
    stage_2_detailed_class_info.csv   patientId, class   (Normal / No Lung Opacity / Not Normal / Lung Opacity)
    stage_2_train_images/<patientId>.dcm

(``stage_1_...`` file names are accepted when the stage 2 ones are absent.) Each ``patientId`` is one image.

Tasks: 3-class classification, one-hot over ``Normal``, ``No Lung Opacity / Not Normal``, ``Lung Opacity``
(the detailed class); detection of ``Lung Opacity``: ``[x, y, width, height]`` -> ``[x1, y1, x2, y2]`` in the
DICOM's own pixels (the 1024x1024 stored image, so no scaling). Every image is annotated for detection: an
image without opacity has an empty box list. Views: ``ViewPosition`` (PA / AP) read from each DICOM header
(``stop_before_pixels``, about 0.2 ms per file). Images whose DICOM is missing are left out and counted.

No official labelled test split (the stage 2 test labels were not released): ``split="official"`` falls back to
the random split by patientId (each patientId is one image; RSNA's ids are per image, so this is image level).
The images are NIH ChestX-ray14 images: exclude them from NIH test sets and vice versa (REFERENCE leakage map).
"""

from __future__ import annotations

import os
from typing import Any

from cxrfx.data.adapters import common, register
from cxrfx.data.adapters.base import AdapterInfo, DatasetAdapter
from cxrfx.errors import ConfigError, DatasetLayoutError

__all__ = ["RSNAPneumoniaAdapter", "LABELS", "BOX_CLASSES"]

NAME = "rsna_pneumonia"
LABELS = ("Normal", "No Lung Opacity / Not Normal", "Lung Opacity")
BOX_CLASSES = ("Lung Opacity",)
SOURCE = "Kaggle: https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data (competition rules acceptance)"
LICENSE = "RSNA Pneumonia Detection Challenge terms (Kaggle competition rules; non-commercial research use)"
STAGES = ("stage_2", "stage_1")


def _find_stage(root: str) -> str:
    for stage in STAGES:
        if os.path.isfile(os.path.join(root, f"{stage}_train_labels.csv")):
            return stage
    common.require_file(root, "stage_2_train_labels.csv", what="RSNA Pneumonia box labels")
    return STAGES[0]  # not reached


def _float(path: str, line: int, row: dict, column: str) -> float:
    try:
        return float(row[column])
    except ValueError:
        raise common.row_error(path, line, f"{column} is {row[column]!r}, expected a number") from None


def _view(dcm_path: str) -> str:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(dcm_path, stop_before_pixels=True, specific_tags=["ViewPosition"])
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise DatasetLayoutError(f"{dcm_path}: cannot read the DICOM header ({exc})") from None
    return str(getattr(ds, "ViewPosition", "") or "").strip().upper()


@register
class RSNAPneumoniaAdapter(DatasetAdapter):
    info = AdapterInfo(
        name=NAME,
        tasks=("classification", "detection"),
        source=SOURCE,
        license=LICENSE,
        description="RSNA Pneumonia: 3-class (Normal / No Lung Opacity-Not Normal / Lung Opacity) + 'Lung Opacity' "
                    "boxes; no public test labels, so 'official' = random split by patientId; views from the DICOM",
        official_split=False,
        views=True,
    )

    def build(self, root: str, out_dir: str, split: str = "official", seed: int = 0,
              views: list[str] | None = None, **options: Any) -> dict:
        if options:
            raise ConfigError(f"{NAME}: unknown option(s) {sorted(options)}; this adapter takes none")
        stage = _find_stage(root)
        labels_path = common.require_file(root, f"{stage}_train_labels.csv", what="RSNA Pneumonia box labels")
        class_path = common.require_file(root, f"{stage}_detailed_class_info.csv", what="RSNA detailed classes")
        images = common.require_dir(root, f"{stage}_train_images", what="the training DICOMs")

        classes: dict[str, tuple[int, int]] = {}  # patientId -> (class index, line)
        for line, row in common.read_csv(class_path, required=("patientId", "class")):
            if row["class"] not in LABELS:
                raise common.row_error(class_path, line, f"class is {row['class']!r}, expected one of {list(LABELS)}")
            k = LABELS.index(row["class"])
            previous = classes.setdefault(row["patientId"], (k, line))
            if previous[0] != k:
                raise common.row_error(class_path, line, f"{row['patientId']} is {row['class']!r} here but "
                                                         f"{LABELS[previous[0]]!r} on line {previous[1]}")

        boxes: dict[str, list[list[float]]] = {}
        order: list[str] = []
        for line, row in common.read_csv(labels_path, required=("patientId", "x", "y", "width", "height", "Target")):
            pid = row["patientId"]
            if not pid:
                raise common.row_error(labels_path, line, "empty patientId")
            if row["Target"] not in ("0", "1"):
                raise common.row_error(labels_path, line, f"Target is {row['Target']!r}, expected 0 or 1")
            if pid not in boxes:
                boxes[pid] = []
                order.append(pid)
            if pid not in classes:
                raise common.row_error(labels_path, line, f"{pid} has no row in {os.path.basename(class_path)}")
            if (row["Target"] == "1") != (classes[pid][0] == LABELS.index("Lung Opacity")):
                raise common.row_error(labels_path, line,
                                       f"Target {row['Target']} disagrees with the class "
                                       f"{LABELS[classes[pid][0]]!r} of {os.path.basename(class_path)}")
            if row["Target"] == "0":
                if any(row[c] for c in ("x", "y", "width", "height")):
                    raise common.row_error(labels_path, line, "Target 0 row with box coordinates")
                continue
            x, y, w, h = (_float(labels_path, line, row, c) for c in ("x", "y", "width", "height"))
            if w <= 0 or h <= 0:
                raise common.row_error(labels_path, line, f"box width and height must be positive, got {w}, {h}")
            boxes[pid].append([x, y, x + w, y + h])

        items, missing = [], 0
        for pid in order:
            dcm = os.path.join(images, f"{pid}.dcm")
            if not os.path.isfile(dcm):
                missing += 1
                continue
            k = classes[pid][0]
            item = {"id": pid, "image": common.rel(dcm, out_dir), "patient_id": pid,
                    "label": [int(i == k) for i in range(len(LABELS))],
                    "boxes": boxes[pid], "box_labels": [0] * len(boxes[pid]),
                    "meta": {"source_id": pid, "class": LABELS[k]}}
            view = _view(dcm)
            if view:
                item["view"] = view
            items.append(item)
        if not items:
            raise DatasetLayoutError(f"{images}: none of the {len(order)} DICOMs listed in "
                                     f"{os.path.basename(labels_path)} was found")

        splits = common.assign_splits(items, seed)
        if views:
            splits = common.filter_views(NAME, splits, views)
        notes = [f"random split by patientId (seed {seed}; no public test labels)"]
        if missing:
            notes.append(f"{missing} listed DICOM(s) not found on disk were left out")
        if views:
            notes.append(f"views {sorted({v.upper() for v in views})}")
        tasks = {"classification": {"labels": list(LABELS), "description": "one-hot detailed class "
                                    "(stage_2_detailed_class_info.csv); evaluate with softmax over the 3 classes"},
                 "detection": {"classes": list(BOX_CLASSES), "description": "stage_2_train_labels.csv xywh -> xyxy in "
                               "DICOM pixels; an image without opacity has an empty box list"}}
        return common.datalist(NAME, tasks, splits, f"{self.info.description}. " + "; ".join(notes), LICENSE, SOURCE)
