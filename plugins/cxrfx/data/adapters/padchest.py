"""PadChest (BIMCV, Hospital San Juan de Alicante) -> datalist.

Layout (``--root`` = the folder with the CSV and the unzipped image folders)::

    PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv   (or .csv.gz)
    <ImageDir>/<ImageID>          e.g. 0/216840111366964012283393834152009027091819347_00-165-068.png

Images are 16-bit PNGs of variable size; ``ImageDir`` is the number of the zip the image came in. An image
is also looked for under ``images/<ImageID>`` and ``<ImageID>`` (flattened copies). Rows whose image is not on
disk (partial download; the release has a few missing / broken files) or whose ``Labels`` cell is empty are left
out and counted in the datalist description.

Labels: ``Labels`` is a stringified Python list (``"['pleural effusion', 'cardiomegaly']"``), parsed with
``ast.literal_eval``; entries are stripped and empty strings dropped. The label space is every label present in
the CSV, sorted (so it does not depend on which zips were downloaded), or the ``labels`` option. ``normal`` is
kept as a label of its own, as the CSV has it (1 for reports with no finding, like CheXpert's "No Finding"); it
is not treated as "all other labels 0 and nothing else". Other administrative labels (``exclude``,
``suboptimal study``, ``unchanged``) are kept too; pass ``labels=[...]`` to choose.

No official split: ``split="official"`` falls back to the random patient-level split (``PatientID``).
Views: ``Projection`` (PA, L, AP, AP_horizontal, COSTAL, EXCLUDE, UNK), matched case-insensitively.

Options:
    labels (list or comma-separated names): the label space (names as in the CSV, e.g. ``"pneumonia"``);
        an image's other labels are ignored.
    physician_only (bool, default False): keep only rows with ``MethodLabel`` = ``Physician`` (manually
        labelled reports; the others were labelled by an RNN).
"""

from __future__ import annotations

import ast
import os
from typing import Any

from cxrfx.data.adapters import common, register
from cxrfx.data.adapters.base import AdapterInfo, DatasetAdapter
from cxrfx.errors import ConfigError, DatasetLayoutError

__all__ = ["PadChestAdapter"]

NAME = "padchest"
CSV_NAMES = ("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv",
             "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz")
SOURCE = "BIMCV: https://bimcv.cipf.es/bimcv-projects/padchest/ (request form and research-use agreement)"
LICENSE = "PadChest Dataset Research Use Agreement (BIMCV; non-commercial research; exact terms: see the agreement)"
OPTIONS = ("labels", "physician_only")
REQUIRED = ("ImageID", "ImageDir", "PatientID", "Projection", "MethodLabel", "Labels")


def _bool_option(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", "", "none"):
        return False
    raise ConfigError(f"{NAME}: option {name} must be true or false, got {value!r}")


def _parse_labels(path: str, line: int, text: str) -> list[str]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise common.row_error(path, line, f"Labels {text[:80]!r} is not a Python list literal "
                                           "(e.g. \"['normal']\")") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise common.row_error(path, line, f"Labels {text[:80]!r} is not a list of strings")
    out = []
    for v in value:
        v = v.strip()
        if v and v not in out:
            out.append(v)
    return out


def _label_option(value: Any) -> list[str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        names = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)):
        names = [str(v).strip() for v in value]
    else:
        raise ConfigError(f"{NAME}: option labels must be a list of label names, got {value!r}")
    names = [n for n in names if n]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"{NAME}: option labels must name distinct labels, got {value!r}")
    return names


def _find_image(root: str, image_dir: str, image_id: str) -> str | None:
    for path in (os.path.join(root, image_dir, image_id), os.path.join(root, "images", image_id),
                 os.path.join(root, image_id)):
        if os.path.isfile(path):
            return path
    return None


@register
class PadChestAdapter(DatasetAdapter):
    info = AdapterInfo(
        name=NAME,
        tasks=("classification",),
        source=SOURCE,
        license=LICENSE,
        description="PadChest: multi-label findings from the Labels list (label space = labels present, sorted, "
                    "'normal' kept as a label); no official split, so 'official' = random patient-level split; "
                    "views from Projection",
        official_split=False,
        views=True,
    )

    def build(self, root: str, out_dir: str, split: str = "official", seed: int = 0,
              views: list[str] | None = None, **options: Any) -> dict:
        common.check_options(NAME, options, OPTIONS)
        chosen = _label_option(options.get("labels"))
        physician_only = _bool_option(options.get("physician_only", False), "physician_only")

        path = next((os.path.join(root, n) for n in CSV_NAMES if os.path.isfile(os.path.join(root, n))), None)
        if path is None:
            path = common.require_file(root, CSV_NAMES[0], what="the PadChest label CSV")
        rows = []
        no_labels, seen = 0, {}
        for line, row in common.read_csv(path, required=REQUIRED):
            image_id = row["ImageID"]
            if not image_id or not row["PatientID"]:
                raise common.row_error(path, line, "empty ImageID or PatientID")
            if image_id in seen:
                raise common.row_error(path, line, f"ImageID {image_id} is listed twice (also line {seen[image_id]})")
            seen[image_id] = line
            if row["Labels"] in ("", "nan", "NaN", "None"):
                no_labels += 1
                continue
            rows.append((line, row, _parse_labels(path, line, row["Labels"])))
        present = sorted({name for _, _, names in rows for name in names})
        if chosen is not None:
            absent = [n for n in chosen if n not in present]
            if absent:
                raise ConfigError(f"{NAME}: labels {absent} never occur in {path}; known labels include "
                                  f"{present[:20]}{' ...' if len(present) > 20 else ''}")
        labels = chosen if chosen is not None else present
        if not labels:
            raise DatasetLayoutError(f"{path}: no row has a non-empty Labels list")
        position = {name: k for k, name in enumerate(labels)}

        items, missing, not_physician = [], 0, 0
        for _line, row, names in rows:
            if physician_only and row["MethodLabel"].lower() != "physician":
                not_physician += 1
                continue
            image = _find_image(root, row["ImageDir"], row["ImageID"])
            if image is None:
                missing += 1
                continue
            vector = [0] * len(labels)
            for name in names:
                if name in position:
                    vector[position[name]] = 1
            meta: dict[str, Any] = {"source_id": row["ImageID"], "labels": names, "method_label": row["MethodLabel"],
                                    "image_dir": row["ImageDir"]}
            for key, column in (("study_id", "StudyID"), ("sex", "PatientSex_DICOM"), ("birth", "PatientBirth"),
                                ("study_date", "StudyDate_DICOM"), ("modality", "Modality_DICOM"),
                                ("photometric_interpretation", "PhotometricInterpretation_DICOM")):
                if row.get(column, "") not in ("", "nan", "None"):
                    meta[key] = row[column]
            for key, column in (("bits_stored", "BitsStored_DICOM"), ("rows", "Rows_DICOM"),
                                ("columns", "Columns_DICOM")):
                try:
                    meta[key] = int(float(row.get(column, "")))
                except ValueError:
                    pass
            item = {"id": os.path.splitext(row["ImageID"])[0], "image": common.rel(image, out_dir),
                    "patient_id": row["PatientID"], "label": vector, "meta": meta}
            if row["Projection"]:
                item["view"] = row["Projection"]
            items.append(item)
        if not items:
            raise DatasetLayoutError(f"{root}: none of the {len(rows)} labelled images of {os.path.basename(path)} "
                                     "was found under <ImageDir>/<ImageID>")

        splits = common.assign_splits(items, seed)  # no official split
        if views:
            splits = common.filter_views(NAME, splits, views)
        notes = [f"random patient-level split (seed {seed}; PadChest has no official split)",
                 f"{len(labels)} labels ({'chosen' if chosen is not None else 'all present in the CSV, sorted'})"]
        if physician_only:
            notes.append(f"physician-labelled rows only ({not_physician} RNN-labelled left out)")
        if no_labels:
            notes.append(f"{no_labels} row(s) with an empty Labels cell were left out")
        if missing:
            notes.append(f"{missing} image(s) not found on disk were left out")
        if views:
            notes.append(f"views {sorted({v.upper() for v in views})}")
        tasks = {"classification": {"labels": list(labels), "description":
                                    "PadChest Labels (report-derived; 'normal' is a label of its own; MethodLabel in "
                                    "meta says Physician or RNN_model)"}}
        return common.datalist(NAME, tasks, splits, f"{self.info.description}. " + "; ".join(notes), LICENSE, SOURCE)
