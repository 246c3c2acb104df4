"""The checks of the MONAI Label server's requests: values, uploaded images, labels, and one check per endpoint.

Each check is a plain function that raises :class:`fastapi.HTTPException` (MONAI Label's own mechanism) with a
one-line reason, so the request middleware (:mod:`cxrfx.label.validation`) and app code (labels saved through
``/infer?save_label``, ``/train`` in the training child) call the same code. Statuses: 400 malformed request,
404 unknown model / image / strategy, 409 state conflict, 413 too large, 415 unsupported file type, 422
well-formed but invalid value.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re

import numpy as np
from fastapi import HTTPException

__all__ = ["reject", "check_infer", "check_train", "check_activelearning", "check_label_file", "check_model_upload",
           "check_image_file", "check_tag", "check_remove", "parse_json_field", "image_path", "app_infers",
           "app_trainers", "app_strategies", "PLAIN_NAME", "MAX_UPLOAD_BYTES", "MAX_PIXELS"]

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = int(float(os.environ.get("CXRFX_LABEL_MAX_UPLOAD_MB", "200")) * 1024 * 1024)
MAX_PIXELS = int(os.environ.get("CXRFX_LABEL_MAX_PIXELS", str(8192 * 8192)))  # 16-bit 8k x 8k: 128 MB decoded
IMAGE_SUFFIXES = (".png", ".dcm", ".jpg", ".jpeg")
SEG_LABEL_SUFFIXES = (".png", ".nii.gz", ".nii")
BOX_LABEL_SUFFIX = ".json"
TRAIN_MODES = ("full", "frozen", "warmup")
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def reject(status: int, reason: str):
    """Raise the 4xx a client sees: ``{"detail": reason}``."""
    raise HTTPException(status_code=status, detail=reason)


# -- the app's parts, looked up on the MONAI Label app instance ------------------------------------------------
def app_infers(app) -> dict:
    return dict(getattr(app, "_infers", {}) or {})


def app_trainers(app) -> dict:
    return dict(getattr(app, "_trainers", {}) or {})


def app_strategies(app) -> dict:
    return dict(getattr(app, "_strategies", {}) or {})


def _classes(app, kind: str) -> list[str]:
    """Class names of the served model of ``kind`` ("segmentation" / "detection"), index k -> classes[k-1]."""
    for task in app_infers(app).values():
        if _model_type(task) == kind and hasattr(task, "classes"):
            return list(task.classes)
    return []


def _model_type(task) -> str:
    t = getattr(task, "type", "")
    return str(getattr(t, "value", t))


def image_path(app, image_id: str) -> str:
    """The datastore file of ``image_id``; 404 when the id is not in the datastore (paths are not ids)."""
    if not isinstance(image_id, str) or not image_id:
        reject(400, "image: missing (give a datastore image id, e.g. ?image=<id>)")
    if "/" in image_id or "\\" in image_id or image_id.startswith("."):
        reject(404, f"image {image_id!r}: not an image id of the datastore (ids have no path separators)")
    try:
        uri = app.datastore().get_image_uri(image_id)
    except Exception:  # noqa: BLE001 (a remote datastore may raise anything for an unknown id)
        uri = ""
    if not uri or not os.path.exists(uri):
        reject(404, f"image {image_id!r}: no such image id in the datastore")
    return uri


def image_shape(path: str) -> tuple[int, int]:
    """(H, W) of an image file from its header (DICOM series folders: the first instance)."""
    from cxrfx.label.served import resolve_image

    path = resolve_image(path)
    try:
        from PIL import Image

        with Image.open(path) as im:
            return int(im.size[1]), int(im.size[0])
    except Image.DecompressionBombError:
        raise
    except Exception:  # noqa: BLE001 (not a PIL image: DICOM)
        pass
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return int(ds.Rows), int(ds.Columns)
    except Exception as e:  # noqa: BLE001
        raise ValueError("neither a PNG/JPEG image nor a DICOM file with Rows and Columns") from e


# -- values ----------------------------------------------------------------------------------------------------
def parse_json_field(text, field: str) -> dict:
    """A JSON-object form field (``params``, ``info``); 400 naming the field when it is not one."""
    if text is None or text == "":
        return {}
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        value = json.loads(text)
    except ValueError as e:
        reject(400, f"{field}: malformed JSON ({e})")
    if not isinstance(value, dict):
        reject(400, f"{field}: expected a JSON object, got {type(value).__name__}")
    return value


def _number(params: dict, key: str, lo: float, hi: float) -> None:
    if key not in params:
        return
    v = params[key]
    try:
        f = float(v) if not isinstance(v, bool) else math.nan
    except (TypeError, ValueError):
        f = math.nan
    if not (math.isfinite(f) and lo <= f <= hi):
        reject(422, f"{key}: {v!r} is not a number in [{lo:g}, {hi:g}]")


def _integer(params: dict, key: str, lo: int, hi: int) -> None:
    if key not in params:
        return
    v = params[key]
    ok = False
    if isinstance(v, int) and not isinstance(v, bool):
        ok = True
    elif isinstance(v, str) and re.fullmatch(r"\s*\d+\s*", v):
        v, ok = int(v), True
    if not ok or not lo <= int(v) <= hi:
        reject(422, f"{key}: {params[key]!r} is not an integer in [{lo}, {hi}]")


def _boolean(params: dict, key: str) -> None:
    if key in params and not (isinstance(params[key], bool) or str(params[key]).lower() in ("true", "false")):
        reject(422, f"{key}: {params[key]!r} is not true or false")


def check_tag(tag) -> str:
    """A label tag is a folder name in MONAI Label's local datastore: a plain name, never a path."""
    if tag is None or tag == "":
        return "final"
    if not PLAIN_NAME.match(str(tag)):
        reject(422, f"tag {tag!r}: a label tag is a plain name (letters, digits, '.', '_', '-'), not a path")
    return str(tag)


# -- images ----------------------------------------------------------------------------------------------------
def check_image_file(path: str, filename: str = "file") -> tuple[int, int]:
    """An uploaded image: a supported type, at most :data:`MAX_PIXELS` pixels (from the header, before any
    decoding), readable by cxrfx's loader (pixel data present and finite). Returns (H, W)."""
    name = (filename or "").lower()
    if not name.endswith(IMAGE_SUFFIXES):
        reject(415, f"{filename}: unsupported image type (supported: {', '.join(IMAGE_SUFFIXES)})")
    if os.path.getsize(path) == 0:
        reject(422, f"{filename}: empty file")
    from PIL import Image

    try:
        h, w = image_shape(path)
    except Image.DecompressionBombError as e:
        reject(413, f"{filename}: too many pixels ({e}); the server accepts at most {MAX_PIXELS} pixels per image")
    except Exception as e:  # noqa: BLE001
        reject(422, f"{filename}: not a readable image ({e})")
    if h * w > MAX_PIXELS:
        reject(413, f"{filename}: {w}x{h} pixels; the server accepts at most {MAX_PIXELS} pixels per image")
    from cxrfx.io import load_cxr

    try:
        image, _ = load_cxr(path)
    except Exception as e:  # noqa: BLE001 (CXRReadError names the problem; anything else is unreadable too)
        why = str(e).splitlines()[0].replace(path, filename)[:300] if str(e) else type(e).__name__
        reject(422, f"{filename}: not a readable image ({why})")
    if image.ndim != 2 or min(image.shape) < 8:
        reject(422, f"{filename}: decoded to shape {tuple(image.shape)}; expected a 2D radiograph of at least 8x8")
    return int(image.shape[0]), int(image.shape[1])


# -- labels ----------------------------------------------------------------------------------------------------
def _read_index_map(path: str, filename: str) -> np.ndarray:
    if filename.lower().endswith(".png"):
        from PIL import Image

        try:
            with Image.open(path) as im:
                if im.size[0] * im.size[1] > MAX_PIXELS:
                    reject(413, f"label {filename}: {im.size[0]}x{im.size[1]} pixels; too many")
                if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
                    reject(422, f"label {filename}: PNG mode {im.mode}; a segmentation label is a single-channel "
                                f"index map (value k = class k, 0 = background)")
                return np.asarray(im)
        except HTTPException:
            raise
        except Image.DecompressionBombError as e:
            reject(413, f"label {filename}: too many pixels ({e})")
        except Exception as e:  # noqa: BLE001
            reject(422, f"label {filename}: not a readable PNG ({type(e).__name__})")
    import nibabel as nib

    try:
        arr = np.asarray(nib.load(path).dataobj)
    except Exception as e:  # noqa: BLE001
        reject(422, f"label {filename}: not a readable NIfTI ({type(e).__name__}: {str(e)[:200]})")
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        reject(422, f"label {filename}: NIfTI of shape {arr.shape}; expected one 2D slice")
    return arr.T  # NIfTI (x, y) -> (row, column) as cxrfx reads NIfTI masks


def check_seg_label(path: str, filename: str, shape: tuple[int, int], classes: list[str]) -> None:
    arr = _read_index_map(path, filename)
    if tuple(arr.shape[:2]) != tuple(shape):
        reject(422, f"label {filename}: {arr.shape[1]}x{arr.shape[0]} (WxH) but the image is {shape[1]}x{shape[0]}; "
                    f"a segmentation label has the image's size")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            reject(422, f"label {filename}: non-integer values; expected an index map")
    elif arr.dtype.kind not in "uib":
        reject(422, f"label {filename}: dtype {arr.dtype}; expected integers")
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lo < 0 or hi > len(classes):
        reject(422, f"label {filename}: values {lo}..{hi}, but the segmentation model has {len(classes)} classes "
                    f"(0 = background, 1..{len(classes)} = {', '.join(classes)})")


def check_box_label(path: str, filename: str, shape: tuple[int, int], classes: list[str]) -> None:
    """A detection label in the ``cxrfx-boxes-v1`` format: boxes inside the image, x1 < x2, y1 < y2, known
    classes; an optional ``label`` must be the 1-based index of ``class`` (as ``/info`` lists the labels)."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError included
        reject(422, f"label {filename}: not JSON ({str(e)[:200]})")
    boxes = data.get("boxes") if isinstance(data, dict) else None
    if not isinstance(boxes, list):
        reject(422, f"label {filename}: a detection label is {{\"boxes\": [{{\"box_xyxy\": [x1, y1, x2, y2], "
                    f"\"class\": name}}, ...]}}")
    h, w = shape
    for i, b in enumerate(boxes):
        if not isinstance(b, dict):
            reject(422, f"label {filename}: box {i} is not an object")
        xyxy = b.get("box_xyxy")
        if not (isinstance(xyxy, list) and len(xyxy) == 4 and all(isinstance(v, (int, float)) and not
                                                                  isinstance(v, bool) for v in xyxy)):
            reject(422, f"label {filename}: box {i} box_xyxy {xyxy!r} is not four numbers [x1, y1, x2, y2]")
        x1, y1, x2, y2 = (float(v) for v in xyxy)
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            reject(422, f"label {filename}: box {i} {xyxy} has a non-finite coordinate")
        if not (x1 < x2 and y1 < y2):
            reject(422, f"label {filename}: box {i} {xyxy} is empty or inverted (need x1 < x2 and y1 < y2)")
        if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
            reject(422, f"label {filename}: box {i} {xyxy} is outside the image (x in [0, {w}], y in [0, {h}]; "
                        f"x = column)")
        name = b.get("class")
        if name not in classes:
            reject(422, f"label {filename}: box {i} has class {name!r}; the detection model's classes are {classes}")
        if "label" in b and b["label"] != classes.index(name) + 1:
            reject(422, f"label {filename}: box {i} has label {b['label']!r} but class {name!r} is label "
                        f"{classes.index(name) + 1} (1-based, as /info lists them)")


def check_label_file(app, image_id: str, path: str, filename: str) -> None:
    """A label for ``image_id``: its image exists, and the file fits the image and the served model."""
    uri = image_path(app, image_id)
    name = (filename or "").lower()
    if os.path.getsize(path) == 0:
        reject(422, f"label {filename}: empty file")
    if os.path.getsize(path) > MAX_UPLOAD_BYTES:
        reject(413, f"label {filename}: larger than {MAX_UPLOAD_BYTES} bytes")
    shape = image_shape(uri)
    if name.endswith(SEG_LABEL_SUFFIXES):
        check_seg_label(path, filename, shape, _classes(app, "segmentation"))
    elif name.endswith(BOX_LABEL_SUFFIX):
        check_box_label(path, filename, shape, _classes(app, "detection"))
    else:
        reject(415, f"label {filename}: unsupported label type (segmentation: {', '.join(SEG_LABEL_SUFFIXES)} "
                    f"index map; detection: {BOX_LABEL_SUFFIX} boxes)")


# -- endpoints -------------------------------------------------------------------------------------------------
def check_infer(app, model: str, query: dict, params: dict, upload: tuple[str, str] | None = None) -> None:
    """``POST /infer/{model}``."""
    task = app_infers(app).get(model)
    if task is None:
        reject(404, f"model {model!r}: unknown; served models are {sorted(app_infers(app))}")
    kind = _model_type(task)
    output = query.get("output")
    if output in ("image", "dicom_seg") and kind != "segmentation":
        reject(400, f"output={output}: model {model!r} ({kind}) returns JSON only; use output=json")
    if output == "dicom_seg":
        reject(400, "output=dicom_seg: not served; pass params {\"dicom_seg\": \"true\"} (DICOM inputs) or use the "
                    "DICOMweb datastore, which stores saved labels as DICOM SEG")
    if query.get("session_id"):
        reject(400, "session_id: sessions are not served by this app; give ?image=<id>")
    if upload is not None:
        check_image_file(*upload)
    else:
        image_path(app, query.get("image", ""))
    if kind == "detection":
        _number(params, "score_threshold", 0.0, 1.0)
    _boolean(params, "save_label")
    _boolean(params, "dicom_seg")
    if "label_tag" in params:
        check_tag(params["label_tag"])
    if "device" in params and str(params["device"]) != "cpu" and not str(params["device"]).startswith("cuda"):
        reject(422, f"device: {params['device']!r} is not cpu or cuda[:n]")


def check_train(app, model: str, params: dict) -> None:
    """``POST /train/{model}``: a trainable model, sane settings, enough valid labels (else 409)."""
    trainers = app_trainers(app)
    if model not in trainers:
        known = "" if model not in app_infers(app) else " (served for inference only)"
        reject(404, f"model {model!r}: not trainable{known}; trainable models are {sorted(trainers)}")
    if not isinstance(params, dict):
        reject(400, "body: expected a JSON object of training settings")
    _integer(params, "max_epochs", 1, 1000)
    if params.get("iterations") not in (None, 0):
        _integer(params, "iterations", 1, 1_000_000)
    _boolean(params, "use_teacher")
    _number(params, "replay", 0.0, 1.0)
    if "mode" in params and params["mode"] not in TRAIN_MODES:
        reject(422, f"mode: {params['mode']!r} is not one of {list(TRAIN_MODES)}")
    task = trainers[model]
    count = getattr(task, "count_labels", None)
    if count is not None:
        n, needed, kind = count(app.datastore())
        if n < needed:
            reject(409, f"model {model!r}: {n} final {kind} label(s) in the datastore; training needs at least "
                        f"{needed} (save labels with tag final first)")


def check_activelearning(app, strategy: str, params: dict) -> None:
    """``POST /activelearning/{strategy}``."""
    strategies = app_strategies(app)
    if strategy not in strategies:
        reject(404, f"strategy {strategy!r}: unknown; strategies are {sorted(strategies)}")
    if not isinstance(params, dict):
        reject(400, "body: expected a JSON object")
    _integer(params, "max_samples", 1, 10_000)
    ready = getattr(strategies[strategy], "ready", None)
    if ready is not None:
        problem = ready()
        if problem:
            reject(409, f"strategy {strategy!r}: {problem}")


def check_model_upload(app, model: str, path: str | None, filename: str = "file") -> None:
    """``PUT /model/{model}`` replaces the served weights: a served model, and a PyTorch checkpoint whose tensors
    all fit the served network (every tensor of it present, no shape mismatch); otherwise nothing is replaced."""
    task = app_infers(app).get(model)
    if task is None:
        reject(404, f"model {model!r}: unknown; served models are {sorted(app_infers(app))}")
    if path is None:
        reject(400, "file: missing (a multipart field 'file' with the weights)")
    served = getattr(task, "served", None)
    if served is None:
        return
    import torch

    from cxrfx.networks import load_checkpoint

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        reject(422, f"{filename}: not a PyTorch checkpoint of tensors ({type(e).__name__})")
    try:
        report = load_checkpoint(served.build_network(), path, source="cxrfx")
    except Exception as e:  # noqa: BLE001
        reject(422, f"{filename}: does not load into {model}'s network ({str(e).splitlines()[0][:200]})")
    if report.mismatched or report.missing or not report.loaded:
        reject(422, f"{filename}: does not fit {model}'s network (loaded {len(report.loaded)} tensors, missing "
                    f"{len(report.missing)}, shape-mismatched {len(report.mismatched)})")


def check_remove(app, image_id: str, tag: str | None = None) -> None:
    image_path(app, image_id)
    if tag is not None:
        check_tag(tag)
        if not app.datastore().get_label_uri(image_id, tag):
            reject(404, f"label of image {image_id!r} with tag {tag!r}: not in the datastore")
