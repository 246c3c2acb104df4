"""SIIM-ACR Pneumothorax Segmentation (Kaggle 2019): DICOM images + ``train-rle.csv`` -> datalist.

Layout (Kaggle)::

    <root>/train-rle.csv                     header "ImageId, EncodedPixels" (leading space in the 2nd name)
    <root>/dicom-images-train/<study>/<series>/<ImageId>.dcm

``EncodedPixels`` is the Kaggle *relative* run-length encoding over the column-major flattened image
(:func:`common.rle_decode_relative_colmajor`); ``-1`` means no pneumothorax; an image with several
pneumothorax regions has one row per region, and the rows are unioned. The mask size comes from the DICOM
header (``Rows`` x ``Columns``, read without pixel data). Detection boxes are the connected components of the
unioned mask (8-connected by default, ``connectivity=4`` for scipy's default cross), all of class
``pneumothorax``. There is no official split: ``split="official"`` falls back to the random patient split
(``PatientID`` from the DICOM header, else the ImageId). ``views`` keeps the images whose DICOM
``ViewPosition`` is listed (an image without the tag is dropped by a filter).

Options: ``images`` (folder holding the DICOMs, default ``dicom-images-train`` beside the CSV, else the CSV's
folder), ``missing`` (``"skip"`` (default, warns) or ``"error"`` for a CSV image without a DICOM file),
``connectivity`` (4 or 8).

This module also holds small helpers that the CANDID-PTX adapter reuses (DICOM header, file search,
component boxes).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from cxrfx.data.adapters import common, register
from cxrfx.data.adapters.base import AdapterInfo, DatasetAdapter
from cxrfx.errors import ConfigError, DatasetLayoutError

__all__ = ["SIIMACRAdapter", "component_boxes", "dicom_header", "find_file", "index_files", "select_views"]

_DICOM_TAGS = ["Rows", "Columns", "PatientID", "ViewPosition", "PatientSex", "PatientAge", "StudyInstanceUID"]
DICOM_EXTENSIONS = (".dcm", ".dicom")


# ------------------------------------------------------------------------------------------ shared helpers


def find_file(root: str, names: Sequence[str], depth: int = 2, what: str = "") -> str:
    """The first of ``names`` found in ``root`` or up to ``depth`` folder levels below it (breadth first).

    Raises a DatasetLayoutError naming the expected path when none is found.
    """
    level = [root]
    for _ in range(depth + 1):
        for folder in level:
            for name in names:
                path = os.path.join(folder, name)
                if os.path.isfile(path):
                    return path
        nxt = []
        for folder in level:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            nxt.extend(e.path for e in entries if e.is_dir() and not e.name.startswith("."))
        level = nxt
    alternatives = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
    return common.require_file(root, names[0], what=(what + alternatives).strip())


def index_files(folder: str, extensions: Sequence[str] | None, strip_extension: bool = True) -> dict[str, str]:
    """Every file under ``folder`` (recursively) whose name ends with one of ``extensions`` (case-insensitive;
    None = any file): name (without its extension when ``strip_extension``) -> path; first in sorted order wins."""
    out: dict[str, str] = {}
    exts = tuple(e.lower() for e in extensions) if extensions is not None else None
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            lower = name.lower()
            if exts is not None and not lower.endswith(exts):
                continue
            if name.startswith("."):
                continue
            key = name
            if strip_extension and exts is not None:
                key = name[: len(name) - len(next(e for e in exts if lower.endswith(e)))]
            out.setdefault(key, os.path.join(dirpath, name))
    return out


def dicom_header(path: str) -> dict[str, Any]:
    """Rows, Columns, PatientID, ViewPosition, ... of a DICOM file, read without its pixel data."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=_DICOM_TAGS)
    except Exception as exc:  # pydicom raises many kinds of errors for broken files
        raise DatasetLayoutError(f"{path}: cannot read the DICOM header ({type(exc).__name__}: {exc})") from None
    out: dict[str, Any] = {}
    for key in _DICOM_TAGS:
        value = ds.get(key)
        if value is not None and str(value).strip() != "":
            out[key] = value if key in ("Rows", "Columns") else str(value).strip()
    if "Rows" not in out or "Columns" not in out:
        raise DatasetLayoutError(f"{path}: DICOM header has no Rows/Columns (is it an image?)")
    out["Rows"], out["Columns"] = int(out["Rows"]), int(out["Columns"])
    return out


def component_boxes(mask: np.ndarray, connectivity: int = 8) -> list[list[float]]:
    """One ``[x1, y1, x2, y2]`` (pixel edges) per connected component of a binary mask, in label order."""
    if connectivity not in (4, 8):
        raise ConfigError(f"connectivity must be 4 or 8, got {connectivity!r}")
    structure = np.ones((3, 3), dtype=bool) if connectivity == 8 else None
    labelled, _ = ndimage.label(np.asarray(mask, dtype=bool), structure=structure)
    boxes = []
    for sl in ndimage.find_objects(labelled):
        if sl is None:
            continue
        rows, cols = sl
        boxes.append([float(cols.start), float(rows.start), float(cols.stop), float(rows.stop)])
    return boxes


def select_views(views: Sequence[str] | None) -> set[str] | None:
    """``views`` normalised for comparison (upper case, stripped), None for no filter."""
    if views is None:
        return None
    if isinstance(views, str):
        views = [views]
    return {str(v).strip().upper() for v in views}




def warn_missing(name: str, missing: list[str], where: str) -> None:
    if missing:
        examples = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        warnings.warn(f"{name}: {len(missing)} annotated image(s) have no image file under {where} and were left "
                      f"out ({examples})", stacklevel=3)


# ------------------------------------------------------------------------------------------------ adapter

_CSV_NAMES = ("train-rle.csv", "stage_2_train.csv")
_INFO = AdapterInfo(
    name="siim_acr",
    tasks=("classification", "detection", "segmentation"),
    source="Kaggle competition 'SIIM-ACR Pneumothorax Segmentation' (kaggle.com/c/siim-acr-pneumothorax-"
           "segmentation; DICOMs also mirrored in Kaggle datasets)",
    license="Kaggle competition terms (research use); images are a subset of NIH ChestX-ray14",
    description="SIIM-ACR pneumothorax: DICOM + relative column-major RLE masks (rows unioned); boxes = mask "
                "components; no official split (random patient split)",
    official_split=False,
    views=True,
)


@register
class SIIMACRAdapter(DatasetAdapter):
    info = _INFO

    def build(self, root: str, out_dir: str, split: str = "official", seed: int = 0,
              views: list[str] | None = None, **options: Any) -> dict:
        images_opt = options.pop("images", None)
        missing_policy = options.pop("missing", "skip")
        connectivity = int(options.pop("connectivity", 8))
        if options:
            raise ConfigError(f"siim_acr: unknown option(s) {sorted(options)}; known: images, missing, connectivity")
        if missing_policy not in ("skip", "error"):
            raise ConfigError(f"siim_acr: missing must be 'skip' or 'error', got {missing_policy!r}")
        keep_views = select_views(views)

        csv_path = find_file(root, _CSV_NAMES, what="SIIM-ACR masks, header 'ImageId, EncodedPixels'")
        rows = common.read_csv(csv_path, required=("ImageId", "EncodedPixels"))
        data_dir = os.path.dirname(csv_path)
        if images_opt:
            image_dir = images_opt if os.path.isabs(images_opt) else os.path.join(root, images_opt)
            common.require_dir(image_dir, what="DICOM folder given as images=")
        elif os.path.isdir(os.path.join(data_dir, "dicom-images-train")):
            image_dir = os.path.join(data_dir, "dicom-images-train")
        else:
            image_dir = data_dir
        dicoms = index_files(image_dir, DICOM_EXTENSIONS)

        # rows grouped per image, in file order
        per_image: dict[str, list[tuple[int, str]]] = {}
        for line, row in rows:
            image_id = row["ImageId"]
            if not image_id:
                raise common.row_error(csv_path, line, "empty ImageId")
            rle = row["EncodedPixels"]
            if rle not in ("", "-1"):
                tokens = rle.split()
                if not all(t.lstrip("-").isdigit() for t in tokens) or len(tokens) % 2:
                    raise common.row_error(csv_path, line, f"EncodedPixels is not '-1' or an even list of integers: "
                                                           f"{rle[:60]!r}")
            per_image.setdefault(image_id, []).append((line, rle))

        mask_dir = os.path.join(out_dir, f"{self.info.name}_masks")
        items, missing = [], []
        for image_id, entries in per_image.items():
            dcm = dicoms.get(image_id)
            if dcm is None:
                if missing_policy == "error":
                    raise common.row_error(csv_path, entries[0][0], f"no DICOM {image_id}.dcm under {image_dir}")
                missing.append(image_id)
                continue
            header = dicom_header(dcm)
            view = header.get("ViewPosition")
            if keep_views is not None and (view or "").upper() not in keep_views:
                continue
            height, width = header["Rows"], header["Columns"]
            mask = np.zeros((height, width), dtype=bool)
            for line, rle in entries:
                if rle in ("", "-1"):
                    continue
                try:
                    mask |= common.rle_decode_relative_colmajor(rle, height, width)
                except ValueError as exc:
                    raise common.row_error(csv_path, line, f"bad EncodedPixels for a {height}x{width} image "
                                                           f"({dcm}): {exc}") from None
            item: dict[str, Any] = {"id": image_id, "image": common.rel(dcm, out_dir),
                                    "patient_id": header.get("PatientID") or image_id}
            if view:
                item["view"] = view
            positive = bool(mask.any())
            item["label"] = [1 if positive else 0]
            boxes = component_boxes(mask, connectivity) if positive else []
            item["boxes"], item["box_labels"] = boxes, [0] * len(boxes)
            if positive:
                path = common.write_mask(os.path.join(mask_dir, f"{image_id}_pneumothorax.png"), mask)
                item["mask"] = {"pneumothorax": common.rel(path, out_dir)}
            else:
                item["mask"] = {}
            meta: dict[str, Any] = {"source_id": image_id, "original_size": [height, width], "rle_rows": len(entries)}
            for key, name in (("PatientSex", "sex"), ("PatientAge", "age"), ("StudyInstanceUID", "study_uid")):
                if key in header:
                    meta[name] = header[key]
            item["meta"] = meta
            items.append(item)
        if not items and not missing and per_image and keep_views is not None:
            warnings.warn(f"siim_acr: no image has a view in {sorted(keep_views)}", stacklevel=2)
        if per_image and len(missing) == len(per_image):
            raise DatasetLayoutError(f"{image_dir}: none of the {len(per_image)} images of {csv_path} has a DICOM "
                                     f"file <ImageId>.dcm here; is --root the unpacked SIIM-ACR folder?")
        warn_missing(self.info.name, missing, image_dir)

        splits = common.assign_splits(items, seed)
        tasks = {
            "classification": {"labels": ["Pneumothorax"]},
            "detection": {"classes": ["pneumothorax"],
                          "description": f"one box per {connectivity}-connected component of the pneumothorax mask"},
            "segmentation": {"classes": ["pneumothorax"], "mask_format": "per_class"},
        }
        return common.datalist(self.info.name, tasks, splits, self.info.description, self.info.license,
                               self.info.source)
