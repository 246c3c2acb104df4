"""The MONAI Label server with the phantom studies: a real process on a free loopback port (label venv).

One server for the module (start ~15 s); the tests run in file order: infer, concurrency, labels + training
(weights served afterwards), active learning.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pydicom
import pytest
from PIL import Image

from label_server import http, multipart, read_json, start_label_server

SEG_CLASSES = ["lung_left", "lung_right", "heart", "clavicle_left", "clavicle_right"]
LABELLED = ["phantom_seg_0000", "phantom_seg_0001"]
DET_LABELLED = ["phantom_det_0000", "phantom_det_0002"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, label_python, label_env, studies, bundles):
    srv, url = start_label_server(tmp_path_factory.mktemp("srv"), label_python, label_env, studies, bundles)
    srv.url, srv.studies = url, studies
    yield srv
    srv.stop()


def image_size(studies: str, image_id: str) -> tuple[int, int]:
    path = os.path.join(studies, image_id + (".png" if "seg" in image_id else ".dcm"))
    if path.endswith(".png"):
        w, h = Image.open(path).size
        return h, w
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return int(ds.Rows), int(ds.Columns)


def infer(server, model: str, image: str, output: str = "json", params: dict | None = None):
    body, ctype = multipart({"params": ("", json.dumps(params or {}).encode(), "text/plain")})
    return http("POST", f"{server.url}/infer/{model}?image={image}&output={output}", body, {"Content-Type": ctype})


def test_info_lists_models_and_strategies(server):
    status, body = http("GET", server.url + "/info/")
    assert status == 200
    info = read_json(body)
    assert set(info["models"]) == {"cxr_segmentation", "cxr_detection", "cxr_classification"}
    assert {m: info["models"][m]["type"] for m in info["models"]} == {
        "cxr_segmentation": "segmentation", "cxr_detection": "detection", "cxr_classification": "classification"}
    assert all(m["dimension"] == 2 for m in info["models"].values())
    assert set(info["strategies"]) == {"random", "epistemic", "disagreement", "acft"}
    assert set(info["trainers"]) == {"cxr_segmentation", "cxr_detection"}
    assert info["datastore"]["total"] == 8  # 4 PNG + 4 DICOM phantom studies


def test_auth_off_by_default_and_tokens_ignored(server):
    """Without --auth-realm every role is granted (MONAI Label's default user) and the login endpoints are not
    served; a token, even garbage, changes nothing. Auth on: test_auth.py."""
    assert http("GET", server.url + "/auth/")[0] == 404
    for headers in ({}, {"Authorization": "Bearer not.a.jwt"}, {"Authorization": "Basic YW5uYTpzM2NyZXQ="}):
        assert http("GET", server.url + "/info/", headers=headers)[0] == 200
        status, body = http("POST", server.url + "/train/nope", b"{}", {"Content-Type": "application/json", **headers})
        assert status == 404 and "nope" in read_json(body)["detail"]  # validation, not auth, answers


@pytest.mark.parametrize("image", ["phantom_seg_0002", "phantom_det_0001"])
def test_infer_segmentation_mask_of_image_size(server, image):
    start = time.perf_counter()
    status, body = infer(server, "cxr_segmentation", image, "image")
    assert status == 200, body[:500]
    mask = np.asarray(Image.open(io.BytesIO(body)))
    print(f"seg infer {image}: {time.perf_counter() - start:.2f} s")
    assert mask.shape == image_size(server.studies, image) and mask.dtype == np.uint8
    assert mask.max() <= len(SEG_CLASSES)
    status, body = infer(server, "cxr_segmentation", image, "json")
    result = read_json(body)
    assert result["labels"] == {c: i + 1 for i, c in enumerate(SEG_CLASSES)}
    assert result["image_size"] == list(mask.shape)
    assert sum(result["pixels"].values()) >= int((mask > 0).sum())


def test_infer_segmentation_dicom_seg_on_request(server):
    status, body = infer(server, "cxr_segmentation", "phantom_det_0001", "json", {"dicom_seg": "true"})
    seg = pydicom.dcmread(read_json(body)["dicom_seg"])
    src = pydicom.dcmread(os.path.join(server.studies, "phantom_det_0001.dcm"), stop_before_pixels=True)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == src.StudyInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == SEG_CLASSES
    os.remove(read_json(body)["dicom_seg"])


@pytest.mark.parametrize("image", ["phantom_det_0003", "phantom_seg_0003"])
def test_infer_detection_boxes_inside_image(server, image):
    status, body = infer(server, "cxr_detection", image, "json", {"score_threshold": 0})
    assert status == 200, body[:500]
    result = read_json(body)
    h, w = image_size(server.studies, image)
    assert result["format"] == "cxrfx-boxes-v1" and result["image_size"] == [h, w]
    assert result["boxes"], "a zero score threshold keeps the detector's top boxes"
    scores = [b["score"] for b in result["boxes"]]
    assert scores == sorted(scores, reverse=True)
    for b in result["boxes"]:
        x1, y1, x2, y2 = b["box_xyxy"]
        assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
        assert b["class"] in ("nodule", "mass") and 0 <= b["score"] <= 1


def test_infer_classification_probabilities(server):
    status, body = infer(server, "cxr_classification", "phantom_seg_0002", "json")
    assert status == 200, body[:500]
    heads = read_json(body)["heads"]
    assert set(heads) == {"phantom_cls", "phantom_det", "phantom_seg"}
    for labels in heads.values():
        assert set(labels) == {"nodule", "mass", "pneumothorax", "effusion", "cardiomegaly"}
        for d in labels.values():
            assert 0.0 <= d["probability"] <= 1.0 and d["threshold"] == 0.5
            assert d["positive"] == (d["probability"] >= d["threshold"])


def test_twenty_concurrent_infer_requests(server):
    images = [f"phantom_seg_000{i % 4}" if i % 2 else f"phantom_det_000{i % 4}" for i in range(20)]

    def one(image):
        t = time.perf_counter()
        status, body = infer(server, "cxr_segmentation", image, "json")
        return status, time.perf_counter() - t, body

    start = time.perf_counter()
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, images))
    wall = time.perf_counter() - start
    latencies = sorted(r[1] for r in results)
    print(f"20 concurrent seg infers: {wall:.1f} s wall, latency median {latencies[10]:.2f} s, max {latencies[-1]:.2f} s")
    assert [r[0] for r in results] == [200] * 20, [r[2][:200] for r in results if r[0] != 200]


def _seg_label(studies: str, image_id: str) -> bytes:
    masks = os.path.join(studies.rstrip("/") + "_phantom", "phantom_seg", "masks")
    index = None
    for k, name in enumerate(SEG_CLASSES):
        m = np.asarray(Image.open(os.path.join(masks, f"{image_id}_{name}.png"))) > 0
        index = np.zeros(m.shape, np.uint8) if index is None else index
        index[m] = k + 1
    buf = io.BytesIO()
    Image.fromarray(index).save(buf, format="PNG")
    return buf.getvalue()


def _det_label(studies: str, image_id: str) -> bytes:
    with open(os.path.join(studies.rstrip("/") + "_phantom", "phantom_det", "datalist.json")) as f:
        data = json.load(f)
    item = next(i for s in ("training", "validation", "test") for i in data[s] if image_id in i["image"])
    boxes = [{"box_xyxy": b, "class": ["nodule", "mass"][lab]} for b, lab in zip(item["boxes"], item["box_labels"])]
    return json.dumps({"format": "cxrfx-boxes-v1", "boxes": boxes}).encode()


def _put_label(server, image_id: str, name: str, content: bytes, ctype: str):
    body, mp = multipart({"label": (name, content, ctype)})
    status, out = http("PUT", f"{server.url}/datastore/label?image={image_id}&tag=final", body, {"Content-Type": mp})
    assert status == 200, out[:300]


def _weights(server, model: str) -> str:
    status, body = http("GET", f"{server.url}/model/{model}")
    assert status == 200
    return hashlib.sha256(body).hexdigest()


def _wait_training(server, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, body = http("GET", f"{server.url}/train/?check_if_running=false")
        task = read_json(body)
        if task.get("status") in ("DONE", "ERROR"):
            return task
        time.sleep(2)
    raise AssertionError(f"training still running after {timeout} s")


def test_train_from_saved_labels_changes_served_weights(server):
    for image_id in LABELLED:
        _put_label(server, image_id, image_id + ".png", _seg_label(server.studies, image_id), "image/png")
    before_weights = _weights(server, "cxr_segmentation")
    before = read_json(infer(server, "cxr_segmentation", "phantom_seg_0002", "json")[1])["mean_probability"]
    start = time.perf_counter()
    status, body = _post_json(server, "/train/cxr_segmentation", {"max_epochs": 2})
    assert status == 200, body[:300]
    task = _wait_training(server)
    print(f"seg fine-tuning (2 labels, 2 epochs, child process): {time.perf_counter() - start:.1f} s")
    assert task["status"] == "DONE", "\n".join(task.get("details", []))
    assert _weights(server, "cxr_segmentation") != before_weights
    after = read_json(infer(server, "cxr_segmentation", "phantom_seg_0002", "json")[1])["mean_probability"]
    assert after != before, "the server still answers with the old weights"
    stats = read_json(http("GET", server.url + "/info/")[1])["train_stats"]["cxr_segmentation"]
    assert stats["images"] == 2 and stats["weights_before"] != stats["weights_after"] and stats["teacher"]


def _post_json(server, path: str, payload: dict):
    return http("POST", server.url + path, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def test_train_refuses_too_few_labels(server):
    image_id = DET_LABELLED[0]
    _put_label(server, image_id, image_id + ".json", _det_label(server.studies, image_id), "application/json")
    before = _weights(server, "cxr_detection")
    status, body = _post_json(server, "/train/cxr_detection?run_sync=true", {"max_epochs": 1})
    assert status == 409 and "at least 2" in read_json(body)["detail"]  # one label; fine-tuning needs two
    assert _weights(server, "cxr_detection") == before


def test_train_detection_from_box_labels(server):
    image_id = DET_LABELLED[1]
    _put_label(server, image_id, image_id + ".json", _det_label(server.studies, image_id), "application/json")
    before = _weights(server, "cxr_detection")
    status, body = _post_json(server, "/train/cxr_detection?run_sync=true", {"max_epochs": 1})
    assert status == 200, body[:500]
    assert read_json(body)["images"] == 2
    assert _weights(server, "cxr_detection") != before


@pytest.mark.parametrize("strategy", ["random", "epistemic", "disagreement", "acft"])
def test_activelearning_returns_unlabelled_image(server, strategy):
    start = time.perf_counter()
    status, body = _post_json(server, f"/activelearning/{strategy}", {"max_samples": 6})
    assert status == 200, body[:500]
    result = read_json(body)
    print(f"activelearning/{strategy}: {result['id']} in {time.perf_counter() - start:.2f} s")
    assert result["id"] not in LABELLED + DET_LABELLED
    assert os.path.exists(result["path"])
    if strategy != "random":
        assert result["score"] == max(result["scores"].values()) and 1 <= len(result["scores"]) <= 6
        assert not set(result["scores"]) & set(LABELLED + DET_LABELLED)
