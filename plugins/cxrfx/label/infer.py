"""MONAI Label infer tasks for 2D chest radiographs: segmentation, detection, classification.

Each task implements MONAI Label's ``InferTask`` interface (``__call__(request) -> (result file, result json)``)
directly instead of its bundle tasks: ``monailabel.tasks.infer.bundle`` imports torchvision through
``monailabel.transform.post``, its writers are 3D / Slicer oriented and the task type would come from a folder
name. Reading, resizing and mapping back to the original pixels are cxrfx's (``cxrfx.io``,
``cxrfx.outputs.predictions.restore_predictions``), as in ``python -m cxrfx predict``.

Results (coordinates of the original image; x = column):

- segmentation: an 8-bit index-map PNG (a raw NRRD with ``result_extension: ".nrrd"``, as OHIF asks) of the image's
  size (value k = ``labels[k-1]``, 0 = background; where
  classes overlap the later class in the list is drawn on top), and JSON ``{"labels": {name: k}, "pixels":
  {name: count}, "mean_probability": {name: p}, "image_size": [H, W]}``; for DICOM inputs and the request parameter ``dicom_seg: "true"`` also
  a BINARY DICOM SEG (highdicom) on the server (``<served bundle>/outputs/dicom_seg/<image>.seg.dcm``, one per
  image, replaced by the next such request), its path as ``"dicom_seg"`` in the JSON. (With the DICOMweb
  datastore every saved segmentation label goes to the PACS as DICOM SEG: :mod:`cxrfx.label.dicomweb`.)
- detection: JSON only, ``{"format": "cxrfx-boxes-v1", "image_size": [H, W], "boxes": [{"box_xyxy": [x1, y1,
  x2, y2], "class": name, "label": k, "score": s}, ...]}`` sorted by score (k 1-based: ``classes[k-1]``, as in
  ``/info``) (``score_threshold`` request
  parameter, default 0.05). The same format, saved as a ``.json`` label, is a detection training label.
- classification: JSON ``{"heads": {head: {label: {"probability", "threshold", "threshold_source",
  "positive"}}}}`` with the thresholds of ``models/thresholds.json`` (``python -m cxrfx calibrate``), 0.5 where
  there are none.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time

import numpy as np
import torch

from cxrfx.label.served import ServedBundle

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType  # noqa: I001 (label venv only)

__all__ = ["CXRInferTask", "SegmentationTask", "DetectionTask", "ClassificationTask", "BOX_FORMAT"]

logger = logging.getLogger(__name__)
BOX_FORMAT = "cxrfx-boxes-v1"


def write_nrrd(index: np.ndarray, path: str) -> None:
    """An (H, W) uint8 index map as a raw NRRD; NRRD lists the fastest axis first, so C order is "W H" (read
    back by ``cxrfx.io.volume.read_nrrd``)."""
    header = (f"NRRD0004\ntype: uint8\ndimension: 2\nsizes: {index.shape[1]} {index.shape[0]}\n"
              "encoding: raw\n\n")
    with open(path, "wb") as f:
        f.write(header.encode() + np.ascontiguousarray(index, np.uint8).tobytes())


class CXRInferTask(InferTask):
    """Common part: a :class:`ServedBundle`, one forward at a time, timing in the JSON; predictions through the
    head registry's :class:`~cxrfx.networks.foundation_x.HeadPredictor` (``predictor``), whatever the head type."""

    #: decoder settings per task (``HeadPredictor``)
    decoder_settings: dict = {}

    def __init__(self, served: ServedBundle, type: str, labels, description: str, config: dict | None = None):
        super().__init__(type=type, labels=labels, dimension=2, description=description, config=config or {})
        self.served = served
        self._forward_lock = threading.Lock()  # two CPU cores: concurrent forwards only oversubscribe them
        self._predictor = None

    def predictor(self, network):
        """The served network's predictor, rebuilt when the weights were reloaded (a new network object)."""
        from cxrfx.networks.foundation_x import HeadPredictor

        if self._predictor is None or self._predictor.model is not network:
            self._predictor = HeadPredictor(network, self.decoder_settings)
        return self._predictor

    def is_valid(self) -> bool:
        return os.path.isdir(self.served.bundle)

    def get_path(self, validate=True):
        """The served weights: ``GET /model/<name>`` downloads them, ``/info`` checksums them."""
        return self.served.weights if not validate or os.path.exists(self.served.weights) else None

    def info(self) -> dict:
        out = super().info()
        out.update({"bundle": os.path.basename(self.served.bundle), "image_size": self.served.image_size,
                    "untrained": self.served.untrained()})
        return out

    def __call__(self, request) -> tuple[str | None, dict]:
        from fastapi import HTTPException

        from cxrfx.errors import CXRReadError

        start = time.perf_counter()
        try:
            path, x, original = self.served.load_image(request["image"])
        except CXRReadError as e:  # a file put into the studies folder by hand: the client's image, not a bug
            raise HTTPException(status_code=422, detail=f"image: not readable ({e})") from e
        network = self.served.network()
        with self._forward_lock, torch.no_grad():
            result_file, result = self.run(path, x, original, network, request)
        result.update({"image_size": list(original.shape), "model": os.path.basename(self.served.bundle),
                       "latency_s": round(time.perf_counter() - start, 4)})
        return result_file, result

    def run(self, path, x, original, network, request) -> tuple[str | None, dict]:
        raise NotImplementedError


class SegmentationTask(CXRInferTask):
    """Masks of the bundle's ``classes`` (one seg head, the bundle's ``dataset_name``)."""

    def __init__(self, served: ServedBundle):
        classes = list(served.get("classes"))
        self.head = served.get("dataset_name")
        super().__init__(served, InferType.SEGMENTATION, {c: i + 1 for i, c in enumerate(classes)},
                         f"2D CXR segmentation ({', '.join(classes)}) from {os.path.basename(served.bundle)}")
        self.classes = classes

    def run(self, path, x, original, network, request):
        from PIL import Image

        from cxrfx.io.loader import detect_format
        from cxrfx.outputs.predictions import restore_predictions

        probs = self.predictor(network)(x, "seg", self.head)[0].cpu()
        masks = restore_predictions({f"seg/{self.head}": probs}, original.shape, x.shape[-2:])[f"seg/{self.head}"]
        index = np.zeros(original.shape, np.uint8)
        for k, m in enumerate(masks):
            index[m] = k + 1
        # OHIF's MONAI Label panel asks for ".nrrd" and parses the reply with nrrd-js: a PNG would not display
        nrrd = str(request.get("result_extension", "")).lower() == ".nrrd"
        out = tempfile.NamedTemporaryFile(suffix=".nrrd" if nrrd else ".png", prefix="cxrfx_seg_", delete=False).name
        if nrrd:
            write_nrrd(index, out)
        else:
            Image.fromarray(index).save(out)
        result = {"labels": {c: i + 1 for i, c in enumerate(self.classes)},
                  "pixels": {c: int(m.sum()) for c, m in zip(self.classes, masks)},
                  "mean_probability": {c: round(float(p.mean()), 6) for c, p in zip(self.classes, probs)}}
        if detect_format(path) == "dicom" and str(request.get("dicom_seg", "false")).lower() == "true":
            from cxrfx.outputs.dicom_seg import write_dicom_seg

            # not a temporary file (the JSON names it and nothing would remove it): one per source image in the
            # served bundle's outputs/, replaced by the next request for that image
            folder = os.path.join(self.served.bundle, "outputs", "dicom_seg")
            os.makedirs(folder, exist_ok=True)
            stem = os.path.basename(path).rsplit(".", 1)[0]
            seg = os.path.join(folder, f"{stem}.seg.dcm")
            tmp = f"{seg}.tmp{os.getpid()}.{threading.get_ident()}"
            write_dicom_seg(path, dict(zip(self.classes, masks)), tmp,
                            series_description=f"cxrfx model output ({self.head})")
            os.replace(tmp, seg)
            result["dicom_seg"] = seg
        return out, result


class DetectionTask(CXRInferTask):
    """Boxes of the bundle's ``classes`` (one det head) in the documented JSON format."""

    decoder_settings = {"det": {"score_thresh": 0.0}}  # the request's score_threshold filters

    def __init__(self, served: ServedBundle):
        classes = list(served.get("classes"))
        self.head = served.get("dataset_name")
        super().__init__(served, InferType.DETECTION, {c: i + 1 for i, c in enumerate(classes)},
                         f"2D CXR detection ({', '.join(classes)}) from {os.path.basename(served.bundle)}",
                         config={"score_threshold": 0.05})
        self.classes = classes

    def run(self, path, x, original, network, request):
        from cxrfx.outputs.predictions import restore_predictions

        det = self.predictor(network)(x, "det", self.head)[0]
        key = f"det/{self.head}"
        boxes = restore_predictions({key: {k: v.cpu() for k, v in det.items()}},
                                    original.shape, x.shape[-2:], {self.head: self.classes})[key]
        h, w = original.shape
        threshold = float(request.get("score_threshold", self._config["score_threshold"]))
        kept = []
        for b in sorted(boxes, key=lambda b: -b["score"]):
            if b["score"] < threshold:
                continue
            x1, y1, x2, y2 = b["box_xyxy"]  # clipped: anchors near the border may reach past it
            b["box_xyxy"] = [max(0.0, min(x1, w)), max(0.0, min(y1, h)), max(0.0, min(x2, w)), max(0.0, min(y2, h))]
            b["label"] = int(b["label"]) + 1  # 1-based, as /info lists the labels (0 = background)
            kept.append(b)
        return None, {"format": BOX_FORMAT, "classes": self.classes, "boxes": kept}


class ClassificationTask(CXRInferTask):
    """Per-label probabilities of every classification head, with the calibrated decision thresholds."""

    def __init__(self, served: ServedBundle):
        from cxrfx.metrics.calibration import load_thresholds

        heads = dict(served.parser.get("network_def").get("cls_heads") or {})
        try:  # the label names are the writer's (foundation_x: ``writer#label_names``)
            names = dict(served.parser.get_parsed_content("writer#label_names", instantiate=False) or {})
        except (KeyError, ValueError):
            names = {}
        self.heads = {h: list(names.get(h) or [str(i) for i in range(int(n))]) for h, n in heads.items()}
        thresholds = os.path.join(served.bundle, "models", "thresholds.json")
        self.thresholds = load_thresholds(thresholds) if os.path.exists(thresholds) else None
        labels = sorted({lab for v in self.heads.values() for lab in v})
        super().__init__(served, InferType.CLASSIFICATION, labels,
                         f"2D CXR classification, heads {', '.join(self.heads)} from {os.path.basename(served.bundle)}",
                         config={"thresholds": "calibrated (Youden's J)" if self.thresholds else "0.5 (not calibrated)"})

    def run(self, path, x, original, network, request):
        from cxrfx.outputs.tables import decide

        probs = self.predictor(network).all(x, tasks=("cls",))  # one backbone pass for every head
        out = {}
        for head, labels in self.heads.items():
            p = probs[f"cls/{head}"][0].tolist()
            out[head] = decide(head, dict(zip(labels, (round(v, 6) for v in p))), self.thresholds)
        return None, {"heads": json.loads(json.dumps(out))}
