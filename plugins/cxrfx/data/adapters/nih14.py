"""NIH ChestX-ray14 (+ ``BBox_List_2017.csv`` boxes, + the Google 2019 expert relabels) -> datalist.

Layout (as distributed by the NIH Clinical Center box folder or the Kaggle copy)::

    <root>/Data_Entry_2017_v2020.csv      (or Data_Entry_2017.csv)
    <root>/train_val_list.txt, test_list.txt
    <root>/BBox_List_2017.csv             (bbox=True)
    <root>/images/<Image Index>            and/or  <root>/images_001/images/<Image Index>, images_002/...

Labels: the 14 findings of ``Finding Labels`` (``|``-joined), in the order below; ``No Finding`` is the
all-zero vector (it is not a label of its own). Official split: ``test_list.txt`` -> test; the images of
``train_val_list.txt`` are split patient-wise into training and validation (``val_fraction``, default 0.1,
reproducible with ``seed``). Images listed in the CSV but absent from the image folders are left out (their
number is in the datalist description), so a partial download (a few ``images_XXX`` tarballs) works.

Options:
    bbox (bool, default False): add the detection task from ``BBox_List_2017.csv`` (8 classes, NIH's names, so
        ``Infiltrate``). Its ``[x, y, w, h]`` are in the 1024-px space of the released PNGs; they become
        ``[x1, y1, x2, y2]`` scaled by (stored width / 1024, stored height / 1024), i.e. unchanged for the
        1024x1024 PNGs. Only the images listed in the box file carry ``boxes``; the others are "not annotated
        for detection" (no ``boxes`` key).
    google_labels (bool or path, default False): use the Google relabels (Majkowska et al. 2020; four
        adjudicated findings, YES/NO) as the label space. The datalist then holds only the images the relabel
        file covers; ``Set Id`` gives the official split (val -> validation, test -> test; training is empty).
        The file is ``google2019_nih-chest-xray-labels.csv[.gz]`` or the Google release's ``test_labels.csv``
        + ``validation_labels.csv`` (in the root or ``four_findings_expert_labels/``), or a path given here.
    val_fraction (float, default 0.1): share of the train_val patients that go to validation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from PIL import Image

from cxrfx.data.adapters import common, register
from cxrfx.data.adapters.base import AdapterInfo, DatasetAdapter
from cxrfx.errors import ConfigError, DatasetLayoutError

__all__ = ["NIH14Adapter", "LABELS", "BOX_CLASSES", "GOOGLE_LABELS"]

NAME = "nih14"
LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
          "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax")
NO_FINDING = "No Finding"
BOX_CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltrate", "Mass", "Nodule", "Pneumonia", "Pneumothorax")
BOX_ALIASES = {"Infiltration": "Infiltrate"}  # tolerated spelling in the box file
GOOGLE_LABELS = ("Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")
GOOGLE_SETS = {"val": "validation", "valid": "validation", "validation": "validation", "test": "test",
               "train": "training"}
DATA_ENTRY_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv.gz",
                    "Data_Entry_2017.csv.gz")
GOOGLE_FILES = ("google2019_nih-chest-xray-labels.csv", "google2019_nih-chest-xray-labels.csv.gz")
# the bracketed headers contain commas, so a CSV parser splits them (REFERENCE §5)
RENAME = {"OriginalImage[Width": "OriginalImage Width", "Height]": "OriginalImage Height",
          "OriginalImagePixelSpacing[x": "OriginalImagePixelSpacing x", "y]": "OriginalImagePixelSpacing y"}
BBOX_COLUMNS = ("Image Index", "Finding Label", "x", "y", "w", "h")  # header "Bbox [x,y,w,h],,," is malformed
NIH_SIZE = 1024.0
SOURCE = ("NIH Clinical Center: https://nihcc.app.box.com/v/ChestXray-NIHCC (also on Kaggle as nih-chest-xrays/data); "
          "Google relabels: https://cloud.google.com/healthcare/docs/resources/public-datasets/nih-chest")
LICENSE = "NIH Clinical Center public release: unrestricted use, cite Wang et al. CVPR 2017 (Kaggle copy lists CC0)"
OPTIONS = ("bbox", "google_labels", "val_fraction")


# ------------------------------------------------------------------------------------------ small helpers


def _bool_option(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", "", "none"):
        return False
    raise ConfigError(f"{NAME}: option {name} must be true or false, got {value!r}")


def _number(text: str) -> int | float | str | None:
    """Meta values: int or float when they parse, else the text as given (None when empty)."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _find_data_entry(root: str) -> str:
    for name in DATA_ENTRY_FILES:
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return path
    return common.require_file(root, DATA_ENTRY_FILES[0], what=f"or {DATA_ENTRY_FILES[1]}: the NIH label CSV")


def _image_folders(root: str) -> list[str]:
    """``images/`` and every ``images_XXX/images/`` (or a flat ``images_XXX/``), sorted."""
    folders = []
    if os.path.isdir(os.path.join(root, "images")):
        folders.append(os.path.join(root, "images"))
    for entry in sorted(os.listdir(root)):
        if entry.startswith("images_") and os.path.isdir(os.path.join(root, entry)):
            inner = os.path.join(root, entry, "images")
            folders.append(inner if os.path.isdir(inner) else os.path.join(root, entry))
    return folders


def _index_images(root: str) -> dict[str, str]:
    """File name -> path of every PNG in the image folders (the first found wins)."""
    folders = _image_folders(root)
    if not folders:
        raise DatasetLayoutError(f"{os.path.join(root, 'images')}: expected folder not found (nor any "
                                 "images_XXX/images/); is --root the unpacked NIH ChestX-ray14 folder?")
    index: dict[str, str] = {}
    for folder in folders:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.lower().endswith(".png") and entry.name not in index:
                    index[entry.name] = entry.path
    return index


def _read_list(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as exc:
        raise DatasetLayoutError(f"{path}: cannot open ({exc.strerror})") from None


def _parse_findings(path: str, line: int, text: str) -> list[int]:
    vector = [0] * len(LABELS)
    for name in (t.strip() for t in text.split("|")):
        if name == NO_FINDING:
            continue
        if name not in LABELS:
            raise common.row_error(path, line, f"unknown finding {name!r} in 'Finding Labels' ({text!r}); "
                                               f"expected {NO_FINDING!r} or |-joined names among {list(LABELS)}")
        vector[LABELS.index(name)] = 1
    return vector


def _image_size(path: str) -> tuple[int, int]:
    """(width, height) of a PNG from its header."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetLayoutError(f"{path}: cannot read the image size ({exc})") from None


def _item(row: Mapping[str, str], image_path: str, out_dir: str) -> dict:
    index = row["Image Index"]
    item = {"id": os.path.splitext(index)[0], "image": common.rel(image_path, out_dir), "patient_id": row["Patient ID"]}
    if row["View Position"]:
        item["view"] = row["View Position"].upper()
    meta: dict[str, Any] = {"source_id": index}
    for key, column in (("follow_up", "Follow-up #"), ("age", "Patient Age"), ("sex", "Patient Gender")):
        if row.get(column, "") != "":
            meta[key] = _number(row[column]) if key != "sex" else row[column]
    if row.get("OriginalImage Width") and row.get("OriginalImage Height"):
        meta["original_size"] = [_number(row["OriginalImage Width"]), _number(row["OriginalImage Height"])]
    if row.get("OriginalImagePixelSpacing x") and row.get("OriginalImagePixelSpacing y"):
        meta["original_pixel_spacing"] = [_number(row["OriginalImagePixelSpacing x"]),
                                          _number(row["OriginalImagePixelSpacing y"])]
    if row.get("Finding Labels"):
        meta["finding_labels"] = row["Finding Labels"]
    item["meta"] = meta
    return item


# ------------------------------------------------------------------------------------------ the pieces


def _google_files(root: str, option: Any) -> list[str]:
    if isinstance(option, str) and option.strip().lower() not in ("1", "true", "yes", "on"):
        path = option if os.path.isabs(option) else os.path.join(root, option)
        if not os.path.isfile(path):
            raise DatasetLayoutError(f"{path}: expected file not found (google_labels)")
        return [path]
    for name in GOOGLE_FILES:
        if os.path.isfile(os.path.join(root, name)):
            return [os.path.join(root, name)]
    for folder in (root, os.path.join(root, "four_findings_expert_labels")):
        pair = [os.path.join(folder, "validation_labels.csv"), os.path.join(folder, "test_labels.csv")]
        if all(os.path.isfile(p) for p in pair):
            return pair
    raise DatasetLayoutError(f"{os.path.join(root, GOOGLE_FILES[0])}: expected file not found (google_labels: the "
                             "Google relabel CSV, or validation_labels.csv + test_labels.csv of "
                             "four_findings_expert_labels/); is --root the NIH folder?")


def _google_rows(paths: list[str]) -> list[tuple[str, int, dict[str, str], list[int], str]]:
    """(file, line, row, label vector, official split) for each image of the relabel file(s)."""
    out = []
    required = ("Image Index", "Patient ID", "View Position", *GOOGLE_LABELS, "Set Id")
    for path in paths:
        for line, row in common.read_csv(path, required=required, rename=RENAME):
            vector = []
            for name in GOOGLE_LABELS:
                value = row[name].upper()
                if value not in ("YES", "NO", ""):
                    raise common.row_error(path, line, f"{name} is {row[name]!r}, expected YES or NO")
                vector.append(1 if value == "YES" else 0 if value == "NO" else -1)
            split = GOOGLE_SETS.get(row["Set Id"].lower())
            if split is None:
                raise common.row_error(path, line, f"Set Id is {row['Set Id']!r}, expected val or test")
            out.append((path, line, row, vector, split))
    return out


def _read_boxes(root: str) -> dict[str, list[tuple[list[float], int]]]:
    """Image Index -> [(x, y, w, h in 1024 space), class index] from BBox_List_2017.csv."""
    path = common.require_file(root, "BBox_List_2017.csv", what="bbox=True needs the NIH box list")
    boxes: dict[str, list[tuple[list[float], int]]] = {}
    for line, row in common.read_csv(path, required=BBOX_COLUMNS, positional=BBOX_COLUMNS):
        name = BOX_ALIASES.get(row["Finding Label"], row["Finding Label"])
        if name not in BOX_CLASSES:
            raise common.row_error(path, line, f"unknown Finding Label {row['Finding Label']!r}; "
                                               f"expected one of {list(BOX_CLASSES)}")
        try:
            xywh = [float(row[k]) for k in ("x", "y", "w", "h")]
        except ValueError:
            raise common.row_error(path, line, "Bbox [x,y,w,h] must be four numbers, got "
                                               f"{[row[k] for k in ('x', 'y', 'w', 'h')]}") from None
        if xywh[2] <= 0 or xywh[3] <= 0:
            raise common.row_error(path, line, f"box width and height must be positive, got {xywh}")
        boxes.setdefault(row["Image Index"], []).append((xywh, BOX_CLASSES.index(name)))
    return boxes


def _attach_boxes(items: list[dict], boxes: Mapping[str, list], images: Mapping[str, str]) -> int:
    """Add boxes (xyxy, stored pixels) to the items whose image is in the box list; returns how many."""
    n = 0
    for item in items:
        entries = boxes.get(item["meta"]["source_id"])
        if entries is None:
            continue
        width, height = _image_size(images[item["meta"]["source_id"]])
        sx, sy = width / NIH_SIZE, height / NIH_SIZE
        item["boxes"] = [[round(x * sx, 3), round(y * sy, 3), round((x + w) * sx, 3), round((y + h) * sy, 3)]
                         for (x, y, w, h), _ in entries]
        item["box_labels"] = [c for _, c in entries]
        n += 1
    return n


def _official_nih_split(root: str, items: list[dict], seed: int, val_fraction: float) -> tuple[dict, int]:
    train_val = set(_read_list(common.require_file(root, "train_val_list.txt", what="official split; or use "
                                                                                    "split='random'")))
    test = set(_read_list(common.require_file(root, "test_list.txt", what="official split; or use split='random'")))
    splits: dict[str, list[dict]] = {s: [] for s in common.SPLIT_NAMES}
    pool, unlisted = [], 0
    for item in items:
        source = item["meta"]["source_id"]
        if source in test:
            splits["test"].append(item)
        elif source in train_val:
            pool.append(item)
        else:
            unlisted += 1
    by_patient = common.patient_split([it["patient_id"] for it in pool], seed, (1.0 - val_fraction, val_fraction, 0.0))
    for item in pool:  # patient_split's rounding may leave a remainder in "test": it belongs to validation here
        splits["training" if by_patient[item["patient_id"]] == "training" else "validation"].append(item)
    return splits, unlisted


# ------------------------------------------------------------------------------------------ the adapter


@register
class NIH14Adapter(DatasetAdapter):
    info = AdapterInfo(
        name=NAME,
        tasks=("classification", "detection"),
        source=SOURCE,
        license=LICENSE,
        description="NIH ChestX-ray14: 14 NLP-mined findings (PA/AP); official train_val/test lists with a "
                    "patient-level validation carve-out; bbox=True adds the 880-image box subset, "
                    "google_labels=True the 4-finding expert relabels",
        official_split=True,
        views=True,
    )

    def build(self, root: str, out_dir: str, split: str = "official", seed: int = 0,
              views: list[str] | None = None, **options: Any) -> dict:
        common.check_options(NAME, options, OPTIONS)
        bbox = _bool_option(options.get("bbox", False), "bbox")
        google = options.get("google_labels", False)
        use_google = not (google is False or google is None or
                          (isinstance(google, str) and google.strip().lower() in ("0", "false", "no", "off", "")))
        try:
            val_fraction = float(options.get("val_fraction", 0.1))
        except (TypeError, ValueError):
            raise ConfigError(f"{NAME}: val_fraction must be a number, got {options.get('val_fraction')!r}") from None
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"{NAME}: val_fraction must be in [0, 1), got {val_fraction}")

        if use_google:
            rows = _google_rows(_google_files(root, google))
            labels, label_note = GOOGLE_LABELS, "Google 2019 expert relabels (YES/NO)"
        else:
            path = _find_data_entry(root)
            required = ("Image Index", "Finding Labels", "Patient ID", "View Position")
            rows = [(path, line, row, _parse_findings(path, line, row["Finding Labels"]), None)
                    for line, row in common.read_csv(path, required=required, rename=RENAME)]
            labels, label_note = LABELS, "NLP-mined Finding Labels; No Finding = all zeros"
        images = _index_images(root)

        items, missing, seen = [], 0, {}
        official = {}
        for path, line, row, vector, google_split in rows:
            index = row["Image Index"]
            if not index or not row["Patient ID"]:
                raise common.row_error(path, line, "empty Image Index or Patient ID")
            if index in seen:
                raise common.row_error(path, line, f"image {index} is listed twice (also line {seen[index]})")
            seen[index] = line
            if index not in images:
                missing += 1
                continue
            item = _item(row, images[index], out_dir)
            item["label"] = vector
            items.append(item)
            official[index] = google_split
        if not items:
            listed = rows[0][0] if rows else "the CSV"
            raise DatasetLayoutError(f"{root}: none of the {len(rows)} images listed in {listed} "
                                     "was found under images/ or images_XXX/images/")

        tasks: dict[str, Any] = {"classification": {"labels": list(labels), "description": label_note}}
        n_boxed = 0
        if bbox:
            n_boxed = _attach_boxes(items, _read_boxes(root), images)
            tasks["detection"] = {"classes": list(BOX_CLASSES), "description":
                                  "BBox_List_2017.csv, [x,y,w,h] in 1024 px -> xyxy in stored pixels; images "
                                  "without an entry are not annotated for detection"}

        # split over every found image first, then filter views: a patient's split does not depend on `views`
        unlisted = 0
        if split == "random":
            splits = common.assign_splits(items, seed)
            how = f"random patient-level split (seed {seed})"
        elif use_google:
            splits = {s: [it for it in items if official[it["meta"]["source_id"]] == s] for s in common.SPLIT_NAMES}
            how = "official Google Set Id split (val -> validation, test -> test)"
        else:
            splits, unlisted = _official_nih_split(root, items, seed, val_fraction)
            how = (f"official split: test_list.txt -> test, train_val_list.txt -> training + patient-level "
                   f"validation ({val_fraction:g}, seed {seed})")
        if views:
            splits = common.filter_views(NAME, splits, views)

        notes = [how]
        if missing:
            notes.append(f"{missing} listed image(s) not found on disk were left out")
        if unlisted:
            notes.append(f"{unlisted} image(s) in neither train_val_list.txt nor test_list.txt were left out")
        if bbox:
            notes.append(f"{n_boxed} image(s) with boxes")
        if views:
            notes.append(f"views {sorted({v.upper() for v in views})}")
        description = f"{self.info.description}. " + "; ".join(notes)
        return common.datalist(NAME, tasks, splits, description, LICENSE, SOURCE)
