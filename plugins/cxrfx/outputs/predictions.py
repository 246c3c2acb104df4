"""Writing every head's predictions for one image: JSON, CSV rows, mask PNGs (and NIfTI, DICOM SEG), an overlay.

Coordinates are those of the original image: masks are resized back to (H, W), boxes are
``[x1, y1, x2, y2]`` with x = column (the datalist convention), scaled from the network input.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cxrfx.errors import CXRFXError
from cxrfx.io.loader import detect_format, load_cxr
from cxrfx.metrics.calibration import load_thresholds
from cxrfx.outputs.dicom_seg import write_dicom_seg
from cxrfx.outputs.masks import save_mask_nifti, save_mask_png
from cxrfx.outputs.overlays import save_overlay
from cxrfx.outputs.tables import BOX_COLUMNS, PROBABILITY_COLUMNS, append_rows, decide

__all__ = ["PredictionWriter", "restore_predictions"]


def restore_predictions(outputs: Mapping[str, object], original_size: Sequence[int], input_size: Sequence[int],
                        det_classes: Mapping[str, Sequence[str]] | None = None) -> dict:
    """One image's head outputs (batch element, network input space) -> plain data in original-image space.

    ``outputs``: ``{"cls/<d>": probabilities (C,), "seg/<d>": probabilities (C, h, w),
    "det/<d>": {"boxes": (N, 4) [r1, c1, r2, c2], "labels", "scores"}}``.
    """
    h, w = (int(s) for s in original_size)
    sy, sx = h / input_size[0], w / input_size[1]
    result: dict = {}
    for key, value in outputs.items():
        task, name = key.split("/", 1)
        if task == "cls":
            result[key] = [float(v) for v in torch.as_tensor(value).flatten()]  # rounded when written
        elif task == "seg":
            probs = F.interpolate(torch.as_tensor(value)[None].float(), size=(h, w), mode="bilinear",
                                  align_corners=False)[0]
            result[key] = (probs > 0.5).numpy()
        else:
            boxes = torch.as_tensor(value["boxes"]).reshape(-1, 4).float()
            xyxy = torch.stack([boxes[:, 1] * sx, boxes[:, 0] * sy, boxes[:, 3] * sx, boxes[:, 2] * sy], dim=1)
            names = list((det_classes or {}).get(name, []))
            result[key] = [
                {"box_xyxy": [round(float(v), 2) for v in b], "label": int(lab),
                 "class": names[int(lab)] if int(lab) < len(names) else str(int(lab)), "score": round(float(s), 5)}
                for b, lab, s in zip(xyxy, value["labels"], value["scores"])
            ]
    return result


class PredictionWriter:
    """Writes ``<output_dir>/<stem>.json`` (every detection), ``<stem>_<seg head>_<class>.png`` masks (8-bit,
    255 inside), ``<stem>_overlay.png`` (boxes scoring at least ``score_threshold``) and appends to
    ``predictions.csv`` (one row per image and classification head).

    Optional outputs (``python -m cxrfx predict`` turns them all on):

    - ``tables``: ``probabilities.csv`` (one row per image and label, with the threshold and yes / no;
      see :mod:`cxrfx.outputs.tables`) and ``boxes.csv``; the JSON gains ``"decisions"``, the overlay's
      caption the positive labels.
    - ``thresholds``: a ``thresholds.json`` path or its loaded content (default 0.5 for missing labels).
    - ``nifti``: ``<stem>_<seg head>_<class>.nii.gz`` beside each PNG, with the pixel spacing where known.
    - ``dicom_seg``: ``<stem>_<seg head>_seg.dcm``, a DICOM SEG referencing the source, for DICOM inputs.
    - ``input_root``: stems are paths relative to it (``a/b/img.png`` -> ``a__b__img``), so files with the
      same name in different folders (e.g. DICOM series) do not overwrite each other.

    A failure of one optional output (e.g. a DICOM SEG for an odd source) is logged and kept in
    ``failures``; the image's other outputs are still written.
    """

    def __init__(self, output_dir: str, label_names: Mapping[str, Sequence[str]] | None = None,
                 seg_classes: Mapping[str, Sequence[str]] | None = None, score_threshold: float = 0.5,
                 tables: bool = False, thresholds: str | Mapping | None = None, nifti: bool = False,
                 dicom_seg: bool = False, input_root: str | None = None):
        self.output_dir = output_dir
        self.label_names = dict(label_names or {})
        self.seg_classes = dict(seg_classes or {})
        self.score_threshold = score_threshold
        self.tables, self.nifti, self.dicom_seg = tables, nifti, dicom_seg
        self.thresholds = load_thresholds(thresholds) if isinstance(thresholds, (str, os.PathLike)) else thresholds
        self.input_root = os.path.abspath(input_root) if input_root and os.path.isdir(input_root) else None
        self.failures: list[str] = []
        os.makedirs(output_dir, exist_ok=True)
        self.csv_path = os.path.join(output_dir, "predictions.csv")

    def stem_for(self, source: str) -> str:
        """Output file prefix of one input (see ``input_root``)."""
        path = os.path.abspath(source)
        if self.input_root and path.startswith(self.input_root + os.sep):
            path = os.path.relpath(path, self.input_root)
        else:
            path = os.path.basename(path)
        for ext in (".gz", ".nii", ".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".img",
                    ".mha", ".mhd", ".nrrd", ".nhdr"):
            if path.lower().endswith(ext) and len(path) > len(ext):
                path = path[: -len(ext)]
        return path.replace(os.sep, "__")

    def _optional(self, source: str, what: str, fn, *args) -> None:
        try:
            fn(*args)
        except (CXRFXError, OSError, ValueError) as exc:
            message = f"{source}: {what} not written ({exc})"
            self.failures.append(message)
            logging.getLogger("cxrfx.predict").error(message)

    def write(self, source: str, image: np.ndarray, result: Mapping[str, object]) -> str:
        stem = self.stem_for(source)
        record: dict = {"image": source, "heads": {}}
        masks_for_overlay: dict[str, np.ndarray] = {}
        boxes, box_names, positives = [], [], []
        rows, probability_rows, box_rows = [], [], []
        spacing = self._spacing(source) if self.nifti and any(k.startswith("seg/") for k in result) else None
        for key, value in result.items():
            task, name = key.split("/", 1)
            if task == "cls":
                names = list(self.label_names.get(name, [str(i) for i in range(len(value))]))
                record["heads"][key] = {n: round(v, 6) for n, v in zip(names, value)}
                rows.append([source, name] + [f"{n}={v:.4f}" for n, v in zip(names, value)])
                if self.tables:
                    # decided on the exact probability: a calibrated threshold is a validation score, and rounding
                    # first would turn the image that set it negative under the rule "positive if p >= t"
                    decisions = decide(name, dict(zip(names, value)), self.thresholds)
                    record.setdefault("decisions", {})[key] = decisions
                    if any(d["positive"] for d in decisions.values()):
                        positives.append(f"{name}:")
                    for label, d in decisions.items():
                        probability_rows.append([source, name, label, f"{d['probability']:.6f}", f"{d['threshold']:.6f}",
                                                 d["threshold_source"], "yes" if d["positive"] else "no"])
                        if d["positive"]:
                            positives.append(f" {label} {d['probability']:.2f}")
            elif task == "seg":
                classes = list(self.seg_classes.get(name, [str(i) for i in range(len(value))]))
                files = {}
                for cls, channel in zip(classes, value):
                    path = os.path.join(self.output_dir, f"{stem}_{name}_{cls}.png")
                    save_mask_png(path, channel)
                    files[cls] = os.path.basename(path)
                    masks_for_overlay[cls] = channel
                    if self.nifti:
                        self._optional(source, "NIfTI mask", save_mask_nifti, path[:-4] + ".nii.gz", channel, spacing)
                record["heads"][key] = {"masks": files, "pixels": {c: int(m.sum()) for c, m in zip(classes, value)}}
                if self.dicom_seg and detect_format(source) == "dicom":
                    seg_path = os.path.join(self.output_dir, f"{stem}_{name}_seg.dcm")
                    self._optional(source, "DICOM SEG", write_dicom_seg, source, dict(zip(classes, value)), seg_path)
                    if os.path.exists(seg_path):
                        record["heads"][key]["dicom_seg"] = os.path.basename(seg_path)
            else:
                record["heads"][key] = value
                for det in value:
                    box_rows.append([source, name, det["class"], det["label"], det["score"], *det["box_xyxy"]])
                    if det["score"] >= self.score_threshold:
                        boxes.append(det["box_xyxy"])
                        box_names.append(f"{det['class']} {det['score']:.2f}")
        json_path = os.path.join(self.output_dir, f"{stem}.json")
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
        append_rows(self.csv_path, ["image", "head", "probabilities"], [[r[0], r[1], ";".join(r[2:])] for r in rows])
        if self.tables:
            append_rows(os.path.join(self.output_dir, "probabilities.csv"), PROBABILITY_COLUMNS, probability_rows)
            append_rows(os.path.join(self.output_dir, "boxes.csv"), BOX_COLUMNS, box_rows)
        caption = "\n".join([stem] + positives[:16])  # positive labels under their head (tables only)
        save_overlay(os.path.join(self.output_dir, f"{stem}_overlay.png"), image, masks=masks_for_overlay,
                     boxes=boxes, box_names=box_names, caption=caption)
        return json_path

    @staticmethod
    def _spacing(source: str):
        """(row, column) mm of the source, or None (PNG / JPEG carry none)."""
        try:
            if detect_format(source) in ("png", "jpeg", "raster"):
                return None
            return load_cxr(source)[1].get("pixel_spacing")
        except (CXRFXError, OSError):
            return None
