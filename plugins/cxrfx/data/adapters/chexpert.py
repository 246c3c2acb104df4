"""CheXpert (Stanford, v1.0 and v1.0-small) -> datalist.

Layout: ``--root`` is the release folder (``CheXpert-v1.0-small/`` or ``CheXpert-v1.0/``) or the folder that
contains it::

    CheXpert-v1.0-small/train.csv, valid.csv
    CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg
    CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg

``Path`` embeds the release folder (``CheXpert-v1.0-small/train/...``); it is resolved against the folder
holding the CSVs after dropping that first component, so a renamed release folder still works.

Labels: the 14 observations in the CSV's order. ``1.0`` -> 1, ``0.0`` -> 0, ``-1.0`` (uncertain) per the
``uncertain`` option, blank (not mentioned in the report) per ``blank``.

Split (``"official"``): ``train.csv`` -> training plus a patient-level validation carve-out (``val_fraction``,
default 0.1, seeded); ``valid.csv`` (the 234 radiologist-labelled images, disjoint patients) -> **test**, as
Ark / Foundation X evaluate on it (the official 668-image test set is not part of this release).
Views: ``AP`` / ``PA`` (or ``LL`` / ``RL`` as listed) for frontal images, ``FRONTAL`` when the AP/PA column is
blank, ``LATERAL`` for lateral images.

Options:
    uncertain: ``"ignore"`` (default: -1, masked out of losses), ``"ones"`` (U-Ones) or ``"zeros"`` (U-Zeros).
    blank: ``"zeros"`` (default: not mentioned = negative, the common convention) or ``"ignore"`` (-1).
    val_fraction (float, default 0.1): share of the train.csv patients that go to validation.
"""

from __future__ import annotations

import os
import re
from typing import Any

from cxrfx.data.adapters import common, register
from cxrfx.data.adapters.base import AdapterInfo, DatasetAdapter
from cxrfx.errors import ConfigError, DatasetLayoutError

__all__ = ["CheXpertAdapter", "LABELS"]

NAME = "chexpert"
LABELS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
          "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
          "Fracture", "Support Devices")
RELEASE_FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
SOURCE = "Stanford AIMI: https://stanfordmlgroup.github.io/competitions/chexpert/ (registration; v1.0 and v1.0-small)"
LICENSE = "Stanford University CheXpert Dataset Research Use Agreement (non-commercial research, no redistribution)"
OPTIONS = ("uncertain", "blank", "val_fraction")
UNCERTAIN = {"ignore": -1, "ones": 1, "zeros": 0}
BLANK = {"zeros": 0, "ignore": -1}
_PATIENT = re.compile(r"(patient\d+)")
_STUDY = re.compile(r"(study\d+)")


def _csv_folder(root: str) -> str:
    """The folder holding train.csv / valid.csv: ``root`` itself or its CheXpert-v1.0(-small) subfolder."""
    if os.path.isfile(os.path.join(root, "train.csv")) or os.path.isfile(os.path.join(root, "valid.csv")):
        return root
    for name in RELEASE_FOLDERS:
        if os.path.isfile(os.path.join(root, name, "train.csv")):
            return os.path.join(root, name)
    common.require_file(root, "train.csv", what=f"CheXpert label CSV, in --root or {'/ or '.join(RELEASE_FOLDERS)}/")
    return root  # not reached


def _image_path(folder: str, path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    if len(parts) > 1 and parts[0].lower().startswith("chexpert"):
        parts = parts[1:]  # the release folder named in Path
    return os.path.join(folder, *parts)


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


def _view(row: dict) -> str:
    if row["Frontal/Lateral"].lower() == "lateral":
        return "LATERAL"
    return row["AP/PA"].upper() or "FRONTAL"


@register
class CheXpertAdapter(DatasetAdapter):
    info = AdapterInfo(
        name=NAME,
        tasks=("classification",),
        source=SOURCE,
        license=LICENSE,
        description="CheXpert: 14 observations (1/0/-1 uncertain per option, blank -> 0); train.csv -> training + "
                    "patient-level validation, valid.csv (radiologist-labelled) -> test; views AP/PA/LATERAL",
        official_split=True,
        views=True,
    )

    def build(self, root: str, out_dir: str, split: str = "official", seed: int = 0,
              views: list[str] | None = None, **options: Any) -> dict:
        common.check_options(NAME, options, OPTIONS)
        uncertain = UNCERTAIN[common.choice_option(NAME, options, "uncertain", UNCERTAIN, "ignore")]
        blank = BLANK[common.choice_option(NAME, options, "blank", BLANK, "zeros")]
        try:
            val_fraction = float(options.get("val_fraction", 0.1))
        except (TypeError, ValueError):
            raise ConfigError(f"{NAME}: val_fraction must be a number, got {options.get('val_fraction')!r}") from None
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"{NAME}: val_fraction must be in [0, 1), got {val_fraction}")

        folder = _csv_folder(root)
        required = ("Path", "Frontal/Lateral", "AP/PA", *LABELS)
        sources = {"train": common.require_file(folder, "train.csv", what="CheXpert training labels"),
                   "valid": common.require_file(folder, "valid.csv", what="CheXpert validation labels")}
        items: dict[str, list[dict]] = {"train": [], "valid": []}
        missing, seen = 0, {}
        for part, path in sources.items():
            for line, row in common.read_csv(path, required=required):
                rel_path = row["Path"]
                patient = _PATIENT.search(rel_path)
                if not rel_path or patient is None:
                    raise common.row_error(path, line, f"Path {rel_path!r} does not name a patientXXXXX folder")
                if rel_path in seen:
                    raise common.row_error(path, line, f"{rel_path} is listed twice (also {seen[rel_path]})")
                seen[rel_path] = f"{os.path.basename(path)}:{line}"
                label = [_value(path, line, c, row[c], uncertain, blank) for c in LABELS]
                image = _image_path(folder, rel_path)
                if not os.path.isfile(image):
                    missing += 1
                    continue
                ident = os.path.splitext(os.path.relpath(image, folder))[0].replace(os.sep, "/")
                meta: dict[str, Any] = {"source_id": rel_path, "csv": os.path.basename(path)}
                study = _STUDY.search(rel_path)
                if study:
                    meta["study_id"] = f"{patient.group(1)}/{study.group(1)}"
                if row.get("Sex"):
                    meta["sex"] = row["Sex"]
                if row.get("Age"):
                    try:
                        meta["age"] = int(float(row["Age"]))
                    except ValueError:
                        meta["age"] = row["Age"]
                items[part].append({"id": ident, "image": common.rel(image, out_dir), "patient_id": patient.group(1),
                                    "view": _view(row), "label": label, "meta": meta})
        if not items["train"] and not items["valid"]:
            raise DatasetLayoutError(f"{folder}: none of the {len(seen)} images listed in train.csv / valid.csv was "
                                     "found (Path is resolved against the folder holding the CSVs)")

        if split == "random":
            splits = common.assign_splits(items["train"] + items["valid"], seed)
            how = f"random patient-level split (seed {seed})"
        else:
            by_patient = common.patient_split([it["patient_id"] for it in items["train"]], seed,
                                              (1.0 - val_fraction, val_fraction, 0.0))
            splits = {"training": [], "validation": [], "test": list(items["valid"])}
            for it in items["train"]:  # patient_split's rounding remainder belongs to validation here
                splits["training" if by_patient[it["patient_id"]] == "training" else "validation"].append(it)
            how = (f"official: train.csv -> training + patient-level validation ({val_fraction:g}, seed {seed}), "
                   "valid.csv -> test")
        if views:
            splits = common.filter_views(NAME, splits, views)

        policy = {v: k for k, v in UNCERTAIN.items()}[uncertain]
        notes = [how, f"uncertain -> {policy}", f"blank -> {'0' if blank == 0 else '-1'}"]
        if missing:
            notes.append(f"{missing} listed image(s) not found on disk were left out")
        if views:
            notes.append(f"views {sorted({v.upper() for v in views})}")
        tasks = {"classification": {"labels": list(LABELS), "description":
                                    f"CheXpert labeler observations; -1.0 (uncertain) -> {policy}, blank -> "
                                    f"{'0' if blank == 0 else '-1'}"}}
        return common.datalist(NAME, tasks, splits, f"{self.info.description}. " + "; ".join(notes), LICENSE, SOURCE)
