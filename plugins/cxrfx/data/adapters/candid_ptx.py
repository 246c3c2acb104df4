"""CANDID-PTX (Feng et al., Radiology: AI 2021): DICOMs + RLE mask CSVs for pneumothorax, acute rib fracture and
chest tube -> datalist.

Layout as distributed (University of Auckland Figshare, after the DUA)::

    <root>/Pneumothorax_reports.csv   SOPInstanceUID, EncodedPixels ("-1" = none), filename ("P<patient>_..."),
                                      StudyInstanceUID, Report, ... (one row per pneumothorax region)
    <root>/acute_rib_fracture.csv     anon_SOPUID, annotation_ref, mask_rle (one row per fracture region)
    <root>/chest_tube.csv             anon_SOPUID, annotation_ref, mask_rle (one row per tube)
    <root>/dataset/<SOPInstanceUID>[.dcm]   (folder also seen as chest_radiographs/ or images/)

Column names are matched tolerantly (image id: ``SOPInstanceUID`` / ``anon_SOPUID`` / ``ImageId``; mask:
``EncodedPixels`` / ``mask_rle``), the rib-fracture file also as ``Rib_fracture_mask_rle.csv``, and the image
folder is searched recursively for ``<id>`` or ``<id>.dcm``. Every image of ``Pneumothorax_reports.csv`` is an
item; rows of one image and class are unioned. Images not listed in the rib-fracture / chest-tube files are
negatives for those classes (``unlisted="unknown"`` makes them -1); an image listed only there gets -1 for
pneumothorax.

The mask encoding is UNCERTAIN (REFERENCE marks it "SIIM-style, validate by overlaying"): the default
``rle="siim"`` decodes Kaggle relative column-major RLE (0-based offsets) at the DICOM's Rows x Columns;
``rle="absolute"`` decodes absolute 1-based row-major starts; ``mask_size=(H, W)`` decodes at a fixed size
instead of the DICOM's (third-party loaders decode CANDID masks at 1024 x 1024). Boxes are the connected
components of each class mask. No official split: random patient split (patient from the ``filename`` prefix,
else the DICOM PatientID, else the image id). ``views`` filters on the DICOM ``ViewPosition`` (an image
without the tag is dropped by a filter).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from cxrfx.data.adapters import common, register
from cxrfx.data.adapters.base import AdapterInfo, DatasetAdapter
from cxrfx.data.adapters.siim_acr import (component_boxes, dicom_header, find_file, index_files, select_views,
                                          warn_missing)
from cxrfx.errors import ConfigError, DatasetLayoutError

__all__ = ["CANDIDPTXAdapter"]

CLASSES = ["pneumothorax", "rib_fracture", "chest_tube"]
_FILES = {
    "pneumothorax": ("Pneumothorax_reports.csv",),
    "rib_fracture": ("acute_rib_fracture.csv", "Rib_fracture_mask_rle.csv"),
    "chest_tube": ("chest_tube.csv",),
}
_ID_COLUMNS = ("SOPInstanceUID", "anon_SOPUID", "ImageId", "SOPUID")
_RLE_COLUMNS = ("EncodedPixels", "mask_rle", "rle")
_IMAGE_DIRS = ("dataset", "chest_radiographs", "images", "dicom")
_NOT_IMAGES = (".csv", ".txt", ".json", ".md", ".zip", ".pdf", ".xlsx", ".py")

_INFO = AdapterInfo(
    name="candid_ptx",
    tasks=("classification", "detection", "segmentation"),
    source="CANDID-PTX, University of Auckland Figshare (data use agreement + ethics course required)",
    license="CANDID-PTX data use agreement (research only, no redistribution)",
    description="CANDID-PTX: pneumothorax / acute rib fracture / chest tube RLE masks (format uncertain: SIIM-style "
                "by default), boxes = mask components; no official split (random patient split)",
    official_split=False,
    views=True,
)


def _pick_columns(path: str) -> tuple[str, str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = [h.strip() for h in next(csv.reader(f), [])]
    except OSError as exc:
        raise DatasetLayoutError(f"{path}: cannot open ({exc.strerror})") from None
    id_col = next((c for c in _ID_COLUMNS if c in header), None)
    rle_col = next((c for c in _RLE_COLUMNS if c in header), None)
    if id_col is None or rle_col is None:
        wanted = [" or ".join(_ID_COLUMNS) if id_col is None else None, " or ".join(_RLE_COLUMNS) if rle_col is None
                  else None]
        raise DatasetLayoutError(f"{path}: missing column(s) {[w for w in wanted if w]}; header is {header}")
    return id_col, rle_col


def _image_size(path: str) -> tuple[int, int, dict[str, Any]]:
    if path.lower().endswith((".png", ".jpg", ".jpeg")):
        from PIL import Image

        try:
            with Image.open(path) as im:
                return im.size[1], im.size[0], {}
        except OSError as exc:
            raise DatasetLayoutError(f"{path}: cannot read the image header ({exc})") from None
    header = dicom_header(path)
    return header["Rows"], header["Columns"], header


@register
class CANDIDPTXAdapter(DatasetAdapter):
    info = _INFO

    def build(self, root: str, out_dir: str, split: str = "official", seed: int = 0,
              views: list[str] | None = None, **options: Any) -> dict:
        rle_kind = options.pop("rle", "siim")
        mask_size = options.pop("mask_size", None)
        unlisted = options.pop("unlisted", "negative")
        images_opt = options.pop("images", None)
        missing_policy = options.pop("missing", "skip")
        connectivity = int(options.pop("connectivity", 8))
        if options:
            raise ConfigError(f"candid_ptx: unknown option(s) {sorted(options)}; known: rle, mask_size, unlisted, "
                              "images, missing, connectivity")
        if rle_kind not in ("siim", "absolute"):
            raise ConfigError(f"candid_ptx: rle must be 'siim' or 'absolute', got {rle_kind!r}")
        if unlisted not in ("negative", "unknown"):
            raise ConfigError(f"candid_ptx: unlisted must be 'negative' or 'unknown', got {unlisted!r}")
        if missing_policy not in ("skip", "error"):
            raise ConfigError(f"candid_ptx: missing must be 'skip' or 'error', got {missing_policy!r}")
        if mask_size is not None:
            try:
                if isinstance(mask_size, str):  # "1024,1024" or "1024x1024" from the command line
                    mask_size = mask_size.lower().replace("x", ",").split(",")
                mask_size = tuple(int(v) for v in mask_size)
                assert len(mask_size) == 2 and min(mask_size) > 0
            except (TypeError, ValueError, AssertionError):
                raise ConfigError(f"candid_ptx: mask_size must be (height, width), got {mask_size!r}") from None
        decode: Callable[[str, int, int], np.ndarray] = (
            common.rle_decode_relative_colmajor if rle_kind == "siim"
            else lambda r, h, w: common.rle_decode_absolute(r, h, w, one_based=True))
        keep_views = select_views(views)

        # ---- the three CSVs: per image, per class, the (line, rle) rows
        paths: dict[str, str] = {}
        rows_by_class: dict[str, dict[str, list[tuple[int, str]]]] = {}
        extra: dict[str, dict[str, str]] = {}
        order: list[str] = []
        for cls in CLASSES:
            path = find_file(root, _FILES[cls], what=f"CANDID-PTX {cls.replace('_', ' ')} masks")
            paths[cls] = path
            id_col, rle_col = _pick_columns(path)
            per_image: dict[str, list[tuple[int, str]]] = {}
            for line, row in common.read_csv(path, required=(id_col, rle_col)):
                image_id, rle = row[id_col], row[rle_col]
                if not image_id:
                    raise common.row_error(path, line, f"empty {id_col}")
                if rle not in ("", "-1"):
                    tokens = rle.split()
                    if len(tokens) % 2 or not all(t.isdigit() for t in tokens):
                        raise common.row_error(path, line, f"{rle_col} is not '-1' or an even list of non-negative "
                                                           f"integers: {rle[:60]!r}")
                order.append(image_id)
                per_image.setdefault(image_id, []).append((line, rle))
                if cls == "pneumothorax" and image_id not in extra:
                    extra[image_id] = {k: row[k] for k in ("filename", "StudyInstanceUID") if row.get(k)}
            rows_by_class[cls] = per_image
        order = list(dict.fromkeys(order))  # every image once, in file order

        # ---- images
        data_dir = os.path.dirname(paths["pneumothorax"])
        if images_opt:
            image_dir = images_opt if os.path.isabs(images_opt) else os.path.join(root, images_opt)
            common.require_dir(image_dir, what="image folder given as images=")
        else:
            image_dir = next((os.path.join(data_dir, d) for d in _IMAGE_DIRS
                              if os.path.isdir(os.path.join(data_dir, d))), data_dir)
        index: dict[str, str] = {}
        for name, path in index_files(image_dir, None, strip_extension=False).items():
            if name.lower().endswith(_NOT_IMAGES):
                continue
            index.setdefault(name, path)
            stem, ext = os.path.splitext(name)
            if ext.lower() in (".dcm", ".dicom", ".png", ".jpg", ".jpeg"):
                index.setdefault(stem, path)

        mask_dir = os.path.join(out_dir, f"{self.info.name}_masks")
        items, missing = [], []
        for image_id in order:
            path = index.get(image_id) or index.get(os.path.splitext(image_id)[0])
            if path is None:
                if missing_policy == "error":
                    cls = next(c for c in CLASSES if image_id in rows_by_class[c])
                    line = rows_by_class[cls][image_id][0][0]
                    raise common.row_error(paths[cls], line, f"no image {image_id} under {image_dir}")
                missing.append(image_id)
                continue
            height, width, header = _image_size(path)
            view = header.get("ViewPosition")
            if keep_views is not None and (view or "").upper() not in keep_views:
                continue
            mh, mw = mask_size or (height, width)
            label, masks, boxes, box_labels = [], {}, [], []
            for k, cls in enumerate(CLASSES):
                entries = rows_by_class[cls].get(image_id)
                if entries is None:
                    label.append(-1 if (cls == "pneumothorax" or unlisted == "unknown") else 0)
                    continue
                mask = np.zeros((mh, mw), dtype=bool)
                for line, rle in entries:
                    if rle in ("", "-1"):
                        continue
                    try:
                        mask |= decode(rle, mh, mw)
                    except ValueError as exc:
                        raise common.row_error(paths[cls], line, f"bad mask for a {mh}x{mw} image ({path}): "
                                                                 f"{exc}") from None
                positive = bool(mask.any())
                label.append(1 if positive else 0)
                if positive:
                    out = common.write_mask(os.path.join(mask_dir, f"{image_id}_{cls}.png"), mask)
                    masks[cls] = common.rel(out, out_dir)
                    for box in component_boxes(mask, connectivity):
                        boxes.append(box)
                        box_labels.append(k)
            info = extra.get(image_id, {})
            patient = (info.get("filename", "").split("_", 1)[0] or header.get("PatientID") or image_id)
            item: dict[str, Any] = {"id": image_id, "image": common.rel(path, out_dir), "patient_id": patient}
            if view:
                item["view"] = view
            meta: dict[str, Any] = {"source_id": image_id, "original_size": [height, width]}
            if mask_size:
                meta["mask_size"] = list(mask_size)
            if info.get("StudyInstanceUID"):
                meta["study_uid"] = info["StudyInstanceUID"]
            if info.get("filename"):
                meta["filename"] = info["filename"]
            item.update({"label": label, "boxes": boxes, "box_labels": box_labels, "mask": masks, "meta": meta})
            items.append(item)
        if order and len(missing) == len(order):
            raise DatasetLayoutError(f"{image_dir}: none of the {len(order)} images named in the CANDID-PTX CSVs was "
                                     "found here (as <SOPInstanceUID> or <SOPInstanceUID>.dcm); is --root the "
                                     "unpacked dataset folder?")
        warn_missing(self.info.name, missing, image_dir)

        splits = common.assign_splits(items, seed)
        tasks = {
            "classification": {"labels": list(CLASSES)},
            "detection": {"classes": list(CLASSES),
                          "description": f"one box per {connectivity}-connected component of each class mask"},
            "segmentation": {"classes": list(CLASSES), "mask_format": "per_class",
                             "description": f"decoded from {rle_kind} RLE (CANDID-PTX encoding uncertain)"},
        }
        return common.datalist(self.info.name, tasks, splits, self.info.description, self.info.license,
                               self.info.source)
