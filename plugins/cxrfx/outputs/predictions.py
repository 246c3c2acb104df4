"""Writing every head's predictions for one image: JSON, a CSV row of probabilities, mask PNGs, an overlay.

Coordinates are those of the original image: masks are resized back to (H, W), boxes are
``[x1, y1, x2, y2]`` with x = column (the datalist convention), scaled from the network input.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cxrfx.outputs.overlays import save_overlay

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
            result[key] = [round(float(v), 6) for v in torch.as_tensor(value).flatten()]
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
    ``predictions.csv`` (one row per image and classification head)."""

    def __init__(self, output_dir: str, label_names: Mapping[str, Sequence[str]] | None = None,
                 seg_classes: Mapping[str, Sequence[str]] | None = None, score_threshold: float = 0.5):
        self.output_dir = output_dir
        self.label_names = dict(label_names or {})
        self.seg_classes = dict(seg_classes or {})
        self.score_threshold = score_threshold
        os.makedirs(output_dir, exist_ok=True)
        self.csv_path = os.path.join(output_dir, "predictions.csv")

    def write(self, source: str, image: np.ndarray, result: Mapping[str, object]) -> str:
        stem = os.path.splitext(os.path.basename(source))[0]
        record: dict = {"image": source, "heads": {}}
        masks_for_overlay: dict[str, np.ndarray] = {}
        boxes, box_names = [], []
        rows = []
        for key, value in result.items():
            task, name = key.split("/", 1)
            if task == "cls":
                names = list(self.label_names.get(name, [str(i) for i in range(len(value))]))
                record["heads"][key] = dict(zip(names, value))
                rows.append([source, name] + [f"{n}={v:.4f}" for n, v in zip(names, value)])
            elif task == "seg":
                classes = list(self.seg_classes.get(name, [str(i) for i in range(len(value))]))
                files = {}
                for cls, channel in zip(classes, value):
                    path = os.path.join(self.output_dir, f"{stem}_{name}_{cls}.png")
                    Image.fromarray((channel.astype(np.uint8) * 255)).save(path)
                    files[cls] = os.path.basename(path)
                    masks_for_overlay[cls] = channel
                record["heads"][key] = {"masks": files, "pixels": {c: int(m.sum()) for c, m in zip(classes, value)}}
            else:
                record["heads"][key] = value
                for det in value:
                    if det["score"] >= self.score_threshold:
                        boxes.append(det["box_xyxy"])
                        box_names.append(f"{det['class']} {det['score']:.2f}")
        json_path = os.path.join(self.output_dir, f"{stem}.json")
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
        new = not os.path.exists(self.csv_path)
        with open(self.csv_path, "a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["image", "head", "probabilities"])
            for row in rows:
                writer.writerow([row[0], row[1], ";".join(row[2:])])
        save_overlay(os.path.join(self.output_dir, f"{stem}_overlay.png"), image, masks=masks_for_overlay,
                     boxes=boxes, box_names=box_names, caption=stem)
        return json_path
