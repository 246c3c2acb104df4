"""MIMIC-CXR-JPG 2.x (PhysioNet) -> datalist.

Layout (``--root`` = the ``mimic-cxr-jpg/2.0.0`` or ``2.1.0`` folder)::

    mimic-cxr-2.0.0-chexpert.csv.gz   subject_id, study_id, 14 CheXpert-labeler observations (per STUDY)
    mimic-cxr-2.0.0-negbio.csv.gz     same columns (labeler="negbio")
    mimic-cxr-2.0.0-metadata.csv.gz   dicom_id, subject_id, study_id, ViewPosition, Rows, Columns, ...
    mimic-cxr-2.0.0-split.csv.gz      dicom_id, study_id, subject_id, split (train / validate / test)
    files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg

The CSVs may also be unpacked (``.csv``); other version prefixes (``mimic-cxr-2.1.0-...``) are accepted.
One item per image (DICOM id) of the metadata file; labels are those of its study (joined on subject_id +
study_id). Images whose study has no row in the label file, or whose JPG is not on disk (partial download),
are left out and counted in the datalist description.

Labels: the 14 columns in the label file's order. ``1.0`` -> 1, ``0.0`` -> 0, ``-1.0`` per ``uncertain``, blank
per ``blank`` (as the chexpert adapter). Official split: the split file (train -> training, validate ->
validation, test -> test). Views: the metadata's ``ViewPosition`` (PA, AP, LATERAL, LL, ...; images with a blank
ViewPosition have no ``view`` and are dropped by any ``views`` filter).

Options:
    uncertain: ``"ignore"`` (default, -1), ``"ones"`` or ``"zeros"``.
    blank: ``"zeros"`` (default) or ``"ignore"`` (-1).
    labeler: ``"chexpert"`` (default) or ``"negbio"``: which label file to read.
"""

from __future__ import annotations

import glob
import math
import os
from typing import Any

from cxrfx.data.adapters import common, register
from cxrfx.data.adapters.base import AdapterInfo, DatasetAdapter
from cxrfx.errors import DatasetLayoutError

__all__ = ["MIMICCXRJPGAdapter", "LABELS"]

NAME = "mimic_cxr_jpg"
LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
          "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
          "Pneumothorax", "Support Devices")
SPLITS = {"train": "training", "validate": "validation", "validation": "validation", "test": "test"}
SOURCE = "PhysioNet: https://physionet.org/content/mimic-cxr-jpg/ (credentialed access, training + data use agreement)"
LICENSE = "PhysioNet Credentialed Health Data License 1.5.0 (data use agreement; no redistribution)"
OPTIONS = ("uncertain", "blank", "labeler")
UNCERTAIN = {"ignore": -1, "ones": 1, "zeros": 0}
BLANK = {"zeros": 0, "ignore": -1}
LABELERS = ("chexpert", "negbio")


def _find(root: str, kind: str) -> str:
    """``mimic-cxr-2.0.0-<kind>.csv.gz`` (or ``.csv``, or another version prefix) under ``root``."""
    for ext in (".csv.gz", ".csv"):
        path = os.path.join(root, f"mimic-cxr-2.0.0-{kind}{ext}")
        if os.path.isfile(path):
            return path
    found = sorted(glob.glob(os.path.join(glob.escape(root), f"mimic-cxr-*-{kind}.csv*")))
    found = [p for p in found if p.endswith((".csv", ".csv.gz"))]
    if found:
        return found[-1]
    return common.require_file(root, f"mimic-cxr-2.0.0-{kind}.csv.gz", what=f"MIMIC-CXR-JPG {kind} file")


def _id(path: str, line: int, column: str, text: str) -> str:
    """A numeric MIMIC id as its canonical text (``"10000032"``; ``"10000032.0"`` from pandas exports too)."""
    if text.isdigit():
        return str(int(text))
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value != int(value) or value < 0:
        raise common.row_error(path, line, f"{column} is {text!r}, expected a numeric id")
    return str(int(value))


def _value(path: str, line: int, column: str, text: str, uncertain: int, blank: int) -> int:
    if text == "":
        return blank
    try:
        v = float(text)
    except ValueError:
        v = None
    if v == 1.0:
        return 1
    if v == 0.0:
        return 0
    if v == -1.0:
        return uncertain
    raise common.row_error(path, line, f"{column} is {text!r}, expected 1.0, 0.0, -1.0 or blank")


@register
class MIMICCXRJPGAdapter(DatasetAdapter):
    info = AdapterInfo(
        name=NAME,
        tasks=("classification",),
        source=SOURCE,
        license=LICENSE,
        description="MIMIC-CXR-JPG: 14 CheXpert-labeler observations per study joined to each image (-1 "
                    "uncertain per option, blank -> 0); official split file; views from ViewPosition",
        official_split=True,
        views=True,
    )

    def build(self, root: str, out_dir: str, split: str = "official", seed: int = 0,
              views: list[str] | None = None, **options: Any) -> dict:
        common.check_options(NAME, options, OPTIONS)
        policy = common.choice_option(NAME, options, "uncertain", UNCERTAIN, "ignore")
        blank_policy = common.choice_option(NAME, options, "blank", BLANK, "zeros")
        labeler = common.choice_option(NAME, options, "labeler", LABELERS, "chexpert")
        uncertain, blank = UNCERTAIN[policy], BLANK[blank_policy]

        label_path = _find(root, labeler)
        meta_path = _find(root, "metadata")
        files = common.require_dir(root, "files", what="the JPG tree files/pXX/p<subject>/s<study>/")

        studies: dict[tuple[str, str], list[int]] = {}
        for line, row in common.read_csv(label_path, required=("subject_id", "study_id", *LABELS)):
            key = (_id(label_path, line, "subject_id", row["subject_id"]),
                   _id(label_path, line, "study_id", row["study_id"]))
            studies[key] = [_value(label_path, line, c, row[c], uncertain, blank) for c in LABELS]

        official: dict[str, str] = {}
        if split == "official":
            split_path = _find(root, "split")
            for line, row in common.read_csv(split_path, required=("dicom_id", "split")):
                name = SPLITS.get(row["split"].lower())
                if name is None:
                    raise common.row_error(split_path, line, f"split is {row['split']!r}, expected train, validate "
                                                             "or test")
                official[row["dicom_id"]] = name

        items, unlabelled, missing, unsplit, seen = [], 0, 0, 0, {}
        for line, row in common.read_csv(meta_path, required=("dicom_id", "subject_id", "study_id", "ViewPosition")):
            dicom = row["dicom_id"]
            if not dicom:
                raise common.row_error(meta_path, line, "empty dicom_id")
            if dicom in seen:
                raise common.row_error(meta_path, line, f"dicom_id {dicom} is listed twice (also line {seen[dicom]})")
            seen[dicom] = line
            subject = _id(meta_path, line, "subject_id", row["subject_id"])
            study = _id(meta_path, line, "study_id", row["study_id"])
            label = studies.get((subject, study))
            if label is None:
                unlabelled += 1
                continue
            if split == "official" and dicom not in official:
                unsplit += 1
                continue
            image = os.path.join(files, f"p{subject[:2]}", f"p{subject}", f"s{study}", f"{dicom}.jpg")
            if not os.path.isfile(image):
                missing += 1
                continue
            meta: dict[str, Any] = {"source_id": dicom, "study_id": study}
            if row.get("Rows") and row.get("Columns"):
                try:
                    meta["size"] = [int(float(row["Columns"])), int(float(row["Rows"]))]  # [width, height]
                except ValueError:
                    pass
            for key, column in (("study_date", "StudyDate"), ("procedure", "PerformedProcedureStepDescription")):
                if row.get(column):
                    meta[key] = row[column]
            item = {"id": dicom, "image": common.rel(image, out_dir), "patient_id": subject, "label": label,
                    "meta": meta}
            if row["ViewPosition"]:
                item["view"] = row["ViewPosition"].upper()
            items.append(item)
        if not items:
            raise DatasetLayoutError(f"{files}: none of the {len(seen)} images of {meta_path} was found with a label "
                                     f"({unlabelled} without a study label, {missing} JPGs missing)")

        if split == "random":
            splits = common.assign_splits(items, seed)
            how = f"random patient-level split (seed {seed})"
        else:
            splits = {s: [it for it in items if official[it["id"]] == s] for s in common.SPLIT_NAMES}
            how = "official split file (train / validate / test)"
        if views:
            splits = common.filter_views(NAME, splits, views)

        notes = [how, f"{labeler} labels, uncertain -> {policy}, blank -> {'0' if blank == 0 else '-1'}"]
        if unlabelled:
            notes.append(f"{unlabelled} image(s) whose study has no label row were left out")
        if missing:
            notes.append(f"{missing} image(s) not found on disk were left out")
        if unsplit:
            notes.append(f"{unsplit} image(s) absent from the split file were left out")
        if views:
            notes.append(f"views {sorted({v.upper() for v in views})}")
        tasks = {"classification": {"labels": list(LABELS), "description":
                                    f"{labeler} labeler, per study; -1.0 -> {policy}, blank -> "
                                    f"{'0' if blank == 0 else '-1'}"}}
        return common.datalist(NAME, tasks, splits, f"{self.info.description}. " + "; ".join(notes), LICENSE, SOURCE)
