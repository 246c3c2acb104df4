"""Hostile requests against a real MONAI Label server (127.0.0.1, label venv): every bad request is answered 4xx
with a reason naming the parameter and the problem, and none of them changes the datastore.

One server for the module, on its own copy of the phantom studies, its own temporary folder (leak check) and a
small upload limit (24 MB, so the 413 case stays cheap). The corpus table (case -> status) is printed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from label_server import (copy_images, file_hashes, http, multipart, print_table, read_json,
                          start_label_server)

SEG = "cxr_segmentation"
DET = "cxr_detection"
CLS = "cxr_classification"
SEG_IMAGE = "phantom_seg_0000"
DET_IMAGE = "phantom_det_0000"
TABLE: list[tuple[str, int, str]] = []


@pytest.fixture(scope="module")
def server(tmp_path_factory, label_python, label_env, studies, bundles):
    tmp = tmp_path_factory.mktemp("hostile")
    own = tmp / "studies"
    copy_images(studies, own)
    with open(own / "broken_0000.png", "wb") as f:  # put into the folder by hand, not through the API
        f.write(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    os.makedirs(tmp / "tmp")
    env = dict(label_env, TMPDIR=str(tmp / "tmp"), CXRFX_LABEL_MAX_UPLOAD_MB="24")
    srv, url = start_label_server(tmp, label_python, env, str(own), bundles, extra=["--limit-concurrency", "24"])
    srv.url, srv.studies, srv.phantom, srv.tmp = url, str(own), studies.rstrip("/") + "_phantom", str(tmp / "tmp")
    yield srv
    srv.stop()
    print_table("hostile-request corpus", TABLE)


def snapshot(server) -> dict:
    """Every file of the datastore (images, labels) with its content hash, and the datastore's own listing."""
    out = file_hashes(server.studies, server.studies)
    for model in (SEG, DET, CLS):  # the served weights
        out[f"<weights {model}>"] = hashlib.sha256(http("GET", f"{server.url}/model/{model}")[1]).hexdigest()
    listing = read_json(http("GET", f"{server.url}/datastore/?output=all")[1])
    out["<listing>"] = json.dumps({k: sorted((v.get("labels") or {}).keys())
                                   for k, v in (listing.get("objects") or {}).items()}, sort_keys=True)
    return out


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""
    data = bytearray(png(np.zeros((1, 1), np.uint8)))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def image_hw(server, image_id: str) -> tuple[int, int]:
    path = os.path.join(server.studies, image_id + ".png")
    w, h = Image.open(path).size
    return h, w


def seg_label(server, image_id: str) -> bytes:
    masks = os.path.join(server.phantom, "phantom_seg", "masks")
    classes = ["lung_left", "lung_right", "heart", "clavicle_left", "clavicle_right"]
    index = None
    for k, name in enumerate(classes):
        m = np.asarray(Image.open(os.path.join(masks, f"{image_id}_{name}.png"))) > 0
        index = np.zeros(m.shape, np.uint8) if index is None else index
        index[m] = k + 1
    return png(index)


def det_label(server, image_id: str) -> bytes:
    with open(os.path.join(server.phantom, "phantom_det", "datalist.json")) as f:
        data = json.load(f)
    item = next(i for s in ("training", "validation", "test") for i in data[s] if image_id in i["image"])
    boxes = [{"box_xyxy": b, "class": ["nodule", "mass"][lab]} for b, lab in zip(item["boxes"], item["box_labels"])]
    return json.dumps({"format": "cxrfx-boxes-v1", "boxes": boxes}).encode()


def boxes(*entries) -> bytes:
    return json.dumps({"format": "cxrfx-boxes-v1", "boxes": list(entries)}).encode()


# -- requests ---------------------------------------------------------------------------------------------------
def infer(server, model, query="", params=b"{}", files=None):
    fields = {"params": ("", params if isinstance(params, bytes) else json.dumps(params).encode(), "text/plain")}
    fields.update(files or {})
    body, ctype = multipart(fields)
    return http("POST", f"{server.url}/infer/{model}?{query}", body, {"Content-Type": ctype})


def post_json(server, path, payload):
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return http("POST", server.url + path, data, {"Content-Type": "application/json"})


def put_label(server, image_id, name, content, tag="final", params=None):
    fields = {"label": (name, content, "application/octet-stream")}
    if params is not None:
        fields["params"] = ("", params, "text/plain")
    body, ctype = multipart(fields)
    q = f"image={image_id}" + (f"&tag={tag}" if tag is not None else "")
    return http("PUT", f"{server.url}/datastore/label?{q}", body, {"Content-Type": ctype})


def put_image(server, name, content, image_id=None):
    body, ctype = multipart({"file": (name, content, "application/octet-stream")})
    q = f"?image={image_id}" if image_id else ""
    return http("PUT", f"{server.url}/datastore/image{q}", body, {"Content-Type": ctype})


def hostile_cases(server) -> list[tuple[str, object, int, list[str]]]:
    """(case, request thunk, expected status, words the reason must contain)."""
    h, w = image_hw(server, SEG_IMAGE)
    good_seg = seg_label(server, SEG_IMAGE)
    rgb = png(np.zeros((h, w, 3), np.uint8))
    nine = np.zeros((h, w), np.uint8)
    nine[: h // 2] = 9
    return [
        # /infer
        ("infer unknown model", lambda: infer(server, "nope", f"image={SEG_IMAGE}"), 404, ["model", "nope", "unknown"]),
        ("infer unknown image id", lambda: infer(server, SEG, "image=no_such_image"), 404, ["image", "no_such_image"]),
        ("infer server file path as image", lambda: infer(server, SEG, "image=/etc/passwd"), 404, ["image", "id"]),
        ("infer on an unreadable datastore file", lambda: infer(server, SEG, "image=broken_0000&output=json"), 422,
         ["image", "not readable"]),
        ("infer without image", lambda: infer(server, SEG, ""), 400, ["image", "missing"]),
        ("infer malformed params JSON", lambda: infer(server, SEG, f"image={SEG_IMAGE}", b"{score: "), 400,
         ["params", "malformed JSON"]),
        ("infer params not an object", lambda: infer(server, SEG, f"image={SEG_IMAGE}", b"[1, 2]"), 400,
         ["params", "JSON object"]),
        ("infer non-numeric score_threshold", lambda: infer(server, DET, f"image={DET_IMAGE}",
                                                            {"score_threshold": "high"}), 422, ["score_threshold", "high"]),
        ("infer score_threshold out of range", lambda: infer(server, DET, f"image={DET_IMAGE}",
                                                             {"score_threshold": 7}), 422, ["score_threshold", "[0, 1]"]),
        ("infer output=image for detection", lambda: infer(server, DET, f"image={DET_IMAGE}&output=image"), 400,
         ["output=image", "JSON only"]),
        ("infer output=image for classification", lambda: infer(server, CLS, f"image={SEG_IMAGE}&output=image"),
         400, ["output=image", "JSON only"]),
        ("infer output=dicom_seg", lambda: infer(server, SEG, f"image={DET_IMAGE}&output=dicom_seg"), 400,
         ["dicom_seg"]),
        ("infer unknown output", lambda: infer(server, SEG, f"image={SEG_IMAGE}&output=movie"), 422, ["output"]),
        ("infer save_label not boolean", lambda: infer(server, SEG, f"image={SEG_IMAGE}", {"save_label": "maybe"}),
         422, ["save_label", "maybe"]),
        ("infer label_tag path", lambda: infer(server, SEG, f"image={SEG_IMAGE}", {"save_label": True,
                                                                                  "label_tag": "../../x"}),
         422, ["tag", "path"]),
        ("infer garbage upload", lambda: infer(server, SEG, "", files={"file": ("x.png", b"\x89PNG garbage", "image/png")}),
         422, ["x.png", "not a readable image"]),
        ("infer upload of unsupported type", lambda: infer(server, SEG, "", files={"file": ("x.txt", b"hello",
                                                                                             "text/plain")}),
         415, ["x.txt", "unsupported"]),
        ("batch infer unknown model", lambda: post_json(server, "/batch/infer/nope", {}), 404, ["model", "nope"]),
        # /train
        ("train unknown model", lambda: post_json(server, "/train/nope", {}), 404, ["model", "nope", "not trainable"]),
        ("train inference-only model", lambda: post_json(server, f"/train/{CLS}", {}), 404, [CLS, "inference only"]),
        ("train detection without box labels", lambda: post_json(server, f"/train/{DET}", {"max_epochs": 1}), 409,
         ["0 final", "box", "at least 2"]),
        ("train non-numeric max_epochs", lambda: post_json(server, f"/train/{SEG}", {"max_epochs": "two"}), 422,
         ["max_epochs", "two"]),
        ("train zero max_epochs", lambda: post_json(server, f"/train/{SEG}", {"max_epochs": 0}), 422, ["max_epochs"]),
        ("train unknown mode", lambda: post_json(server, f"/train/{SEG}", {"mode": "turbo"}), 422, ["mode", "turbo"]),
        ("train malformed JSON body", lambda: post_json(server, f"/train/{SEG}", b"{max_epochs"), 400,
         ["body", "malformed JSON"]),
        # /activelearning
        ("activelearning unknown strategy", lambda: post_json(server, "/activelearning/clairvoyant", {}), 404,
         ["strategy", "clairvoyant", "unknown"]),
        ("activelearning non-numeric max_samples", lambda: post_json(server, "/activelearning/epistemic",
                                                                    {"max_samples": "many"}), 422, ["max_samples", "many"]),
        ("activelearning zero max_samples", lambda: post_json(server, "/activelearning/epistemic", {"max_samples": 0}),
         422, ["max_samples"]),
        ("activelearning negative max_samples", lambda: post_json(server, "/activelearning/random",
                                                                 {"max_samples": -3}), 422, ["max_samples"]),
        ("activelearning disagreement before training", lambda: post_json(server, "/activelearning/disagreement", {}),
         409, ["disagreement", "/train"]),
        # PUT /datastore/label
        ("label for unknown image", lambda: put_label(server, "ghost", "ghost.png", good_seg), 404, ["image", "ghost"]),
        ("seg label of the wrong size", lambda: put_label(server, SEG_IMAGE, "l.png", png(np.ones((10, 10), np.uint8))),
         422, ["10x10", "size"]),
        ("seg label values outside the classes", lambda: put_label(server, SEG_IMAGE, "l.png", png(nine)), 422,
         ["values 0..9", "5 classes"]),
        ("seg label RGB", lambda: put_label(server, SEG_IMAGE, "l.png", rgb), 422, ["RGB", "index map"]),
        ("seg label garbage bytes", lambda: put_label(server, SEG_IMAGE, "l.png", os.urandom(300)), 422,
         ["l.png", "not a readable PNG"]),
        ("box label inverted box", lambda: put_label(server, DET_IMAGE, "b.json", boxes(
            {"box_xyxy": [50, 50, 10, 10], "class": "nodule"})), 422, ["box 0", "inverted"]),
        ("box label outside the image", lambda: put_label(server, DET_IMAGE, "b.json", boxes(
            {"box_xyxy": [10, 10, 5000, 20], "class": "mass"})), 422, ["box 0", "outside the image"]),
        ("box label unknown class", lambda: put_label(server, DET_IMAGE, "b.json", boxes(
            {"box_xyxy": [10, 10, 20, 20], "class": "unicorn"})), 422, ["unicorn", "classes"]),
        ("box label index disagrees with class", lambda: put_label(server, DET_IMAGE, "b.json", boxes(
            {"box_xyxy": [10, 10, 20, 20], "class": "nodule", "label": 0})), 422, ["label 0", "1-based"]),
        ("box label coordinates not numbers", lambda: put_label(server, DET_IMAGE, "b.json", boxes(
            {"box_xyxy": ["a", 1, 2, 3], "class": "nodule"})), 422, ["box_xyxy", "four numbers"]),
        ("box label not JSON", lambda: put_label(server, DET_IMAGE, "b.json", b"\x00\x01garbage"), 422,
         ["b.json", "not JSON"]),
        ("box label without boxes", lambda: put_label(server, DET_IMAGE, "b.json", b'{"rects": []}'), 422,
         ["b.json", "boxes"]),
        ("label of unsupported type", lambda: put_label(server, SEG_IMAGE, "l.txt", b"hello"), 415, ["l.txt"]),
        ("empty label file", lambda: put_label(server, SEG_IMAGE, "l.png", b""), 422, ["empty"]),
        ("label tag with a path", lambda: put_label(server, SEG_IMAGE, "l.png", good_seg, tag="..%2F..%2Fetc"), 422,
         ["tag", "path"]),
        ("label with malformed params", lambda: put_label(server, SEG_IMAGE, "l.png", good_seg, params=b"{nope"), 400,
         ["params", "malformed JSON"]),
        ("label request without a file", lambda: http("PUT", f"{server.url}/datastore/label?image={SEG_IMAGE}",
                                                      *_form_without_file()), 400, ["label", "missing"]),
        # PUT /datastore/image
        ("image upload garbage bytes", lambda: put_image(server, "junk.png", os.urandom(500)), 422,
         ["junk.png", "not a readable image"]),
        ("image upload truncated DICOM", lambda: put_image(server, "cut.dcm", _truncated_dicom(server)), 422,
         ["cut.dcm"]),
        ("image upload of unsupported type", lambda: put_image(server, "notes.txt", b"hello"), 415, ["notes.txt"]),
        ("image upload decompression bomb", lambda: put_image(server, "bomb.png", bomb_png(60000, 60000)), 413,
         ["bomb.png", "pixels"]),
        ("image upload id with a path", lambda: put_image(server, "x.png", png(np.zeros((64, 64), np.uint8)),
                                                          image_id="..%2Fescape"), 422, ["image", "plain name"]),
        ("image upload over the size limit", lambda: put_image(server, "big.png", b"\0" * (25 * 1024 * 1024)), 413,
         ["bytes"]),
        # PUT / DELETE /model
        ("weights upload of garbage", lambda: put_model(server, SEG, "w.pt", os.urandom(400)), 422,
         ["w.pt", "not a PyTorch checkpoint"]),
        ("weights upload of another model's weights", lambda: put_model(server, SEG, "w.pt", _model_bytes(server, CLS)),
         422, ["w.pt", "does not fit"]),
        ("weights upload for unknown model", lambda: put_model(server, "nope", "w.pt", b"x"), 404, ["nope"]),
        ("weights delete for unknown model", lambda: http("DELETE", f"{server.url}/model/nope"), 404, ["nope"]),
        # DELETE
        ("delete unknown image", lambda: http("DELETE", f"{server.url}/datastore/image?id=ghost"), 404, ["ghost"]),
        ("delete label that does not exist", lambda: http("DELETE", f"{server.url}/datastore/label?id={SEG_IMAGE}"
                                                                    f"&tag=final"), 404, ["label", "final"]),
    ]


def put_model(server, model, name, content):
    body, ctype = multipart({"file": (name, content, "application/octet-stream")})
    return http("PUT", f"{server.url}/model/{model}", body, {"Content-Type": ctype})


def _model_bytes(server, model) -> bytes:
    status, body = http("GET", f"{server.url}/model/{model}")
    assert status == 200
    return body


def _form_without_file():
    body, ctype = multipart({"params": ("", b"{}", "text/plain")})
    return body, {"Content-Type": ctype}


def _truncated_dicom(server) -> bytes:
    with open(os.path.join(server.studies, DET_IMAGE + ".dcm"), "rb") as f:
        data = f.read()
    return data[: len(data) // 2]


def reason(body: bytes) -> str:
    try:
        detail = read_json(body).get("detail")
    except (ValueError, AttributeError):
        return body.decode(errors="replace")
    return detail if isinstance(detail, str) else json.dumps(detail)


# -- tests ------------------------------------------------------------------------------------------------------
def test_untrained_before_training(server):
    info = read_json(http("GET", server.url + "/info/")[1])
    assert info["models"][DET]["untrained"] is True and info["models"][SEG]["untrained"] is True


def test_acft_before_any_training(server):
    """ACFT starts from the served (pretrained) model: it scores without a /train run, unlike disagreement."""
    status, body = post_json(server, "/activelearning/acft", {"max_samples": 100})
    assert status == 200, body[:300]
    result = read_json(body)
    # every unlabelled image but the unreadable one (skipped, not a failure)
    assert len(result["scores"]) == 8 and "broken_0000" not in result["scores"]
    assert result["score"] == max(result["scores"].values()) > 0
    assert result["id"] in result["scores"] and os.path.exists(result["path"])


def test_hostile_corpus(server):
    before = snapshot(server)
    cases = hostile_cases(server)
    assert len(cases) >= 40
    failures = []
    for case, send, expected, words in cases:
        status, body = send()
        text = reason(body)
        TABLE.append((case, status, text))
        if status != expected or not all(wd.lower() in text.lower() for wd in words) or "Traceback" in text:
            failures.append(f"{case}: {status} {text[:300]!r} (expected {expected} with {words})")
    assert not failures, "\n".join(failures)
    assert snapshot(server) == before, "a refused request changed the datastore"
    # the server still works after all that
    status, body = infer(server, SEG, f"image={SEG_IMAGE}&output=json")
    assert status == 200, body[:300]


def test_controls_and_output_types(server):
    h, w = image_hw(server, SEG_IMAGE)
    status, body = infer(server, SEG, f"image={SEG_IMAGE}&output=image")
    assert status == 200 and np.asarray(Image.open(io.BytesIO(body))).shape == (h, w)
    for output in ("json", "all", ""):
        for model, image in ((DET, DET_IMAGE), (CLS, SEG_IMAGE)):
            status, body = infer(server, model, f"image={image}" + (f"&output={output}" if output else ""),
                                 {"score_threshold": 0} if model == DET else {})
            assert status == 200, (model, output, body[:300])
            result = read_json(body)
            if model == DET:
                assert result["boxes"]
                info = read_json(http("GET", server.url + "/info/")[1])["models"][DET]["labels"]
                for b in result["boxes"]:  # label indices as /info lists them (1-based)
                    assert info[b["class"]] == b["label"] >= 1
    weights = _model_bytes(server, CLS)  # the served model's own weights are accepted back
    status, body = put_model(server, CLS, "cls.pt", weights)
    assert status == 200, body[:300]
    assert hashlib.sha256(_model_bytes(server, CLS)).digest() == hashlib.sha256(weights).digest()
    status, body = infer(server, SEG, "output=json", files={"file": ("up.png", png(np.full((96, 80), 90, np.uint8)),
                                                                  "image/png")})
    assert status == 200 and read_json(body)["image_size"] == [96, 80]


def test_no_temporary_file_survives_requests(server):
    before = set(os.listdir(server.tmp))
    for _ in range(3):
        assert infer(server, SEG, f"image={SEG_IMAGE}&output=image")[0] == 200
        assert infer(server, SEG, f"image={SEG_IMAGE}&output=json")[0] == 200
        assert infer(server, SEG, f"image={DET_IMAGE}&output=all")[0] == 200
        assert infer(server, DET, f"image={DET_IMAGE}&output=json")[0] == 200
        assert infer(server, SEG, f"image={DET_IMAGE}&output=json", {"dicom_seg": "true"})[0] == 200
        assert put_label(server, SEG_IMAGE, "l.png", b"garbage")[0] == 422
        assert infer(server, SEG, "", files={"file": ("x.png", b"\x89PNG garbage", "image/png")})[0] == 422
    time.sleep(1)  # background tasks remove result files after the response
    left = sorted(set(os.listdir(server.tmp)) - before)
    assert not left, f"temporary files left behind: {left}"


def test_concurrent_good_and_bad_requests(server):
    before = snapshot(server)
    bad = [lambda: infer(server, "nope", f"image={SEG_IMAGE}"),
           lambda: infer(server, SEG, f"image={SEG_IMAGE}", b"{oops"),
           lambda: put_label(server, SEG_IMAGE, "l.png", png(np.ones((10, 10), np.uint8))),
           lambda: put_label(server, DET_IMAGE, "b.json", boxes({"box_xyxy": [9, 9, 1, 1], "class": "mass"})),
           lambda: post_json(server, "/activelearning/epistemic", {"max_samples": "x"})]
    good = [lambda: infer(server, SEG, f"image={SEG_IMAGE}&output=json"),
            lambda: infer(server, DET, f"image={DET_IMAGE}&output=json")]
    jobs = [(bad[i % len(bad)], "bad") if i % 2 else (good[i % len(good)], "good") for i in range(50)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda j: (j[1], j[0]()), jobs))
    statuses = [(kind, s) for kind, (s, _) in results]
    assert not [s for _, s in statuses if s >= 500], statuses
    assert all(s == 200 for kind, s in statuses if kind == "good")
    assert all(400 <= s < 500 for kind, s in statuses if kind == "bad")
    assert snapshot(server) == before


def test_valid_labels_are_stored_and_detection_trains(server):
    h, w = image_hw(server, SEG_IMAGE)
    status, body = put_label(server, SEG_IMAGE, SEG_IMAGE + ".png", seg_label(server, SEG_IMAGE))
    assert status == 200, body[:300]
    for image_id in ("phantom_det_0000", "phantom_det_0002"):
        status, body = put_label(server, image_id, image_id + ".json", det_label(server, image_id))
        assert status == 200, body[:300]
    status, body = post_json(server, f"/train/{DET}?run_sync=true", {"max_epochs": 1})
    assert status == 200, body[:500]
    info = read_json(http("GET", server.url + "/info/")[1])
    assert info["models"][DET]["untrained"] is False  # follows training
    assert info["models"][SEG]["untrained"] is True


def test_continual_fine_tuning_with_replay(server):
    """ACFT's continual step: after a run, only the newly saved label plus a replay of the earlier ones train."""
    status, body = put_label(server, "phantom_det_0001", "phantom_det_0001.json", det_label(server, "phantom_det_0001"))
    assert status == 200, body[:300]
    assert post_json(server, f"/train/{DET}", {"replay": "some"})[0] == 422
    status, body = post_json(server, f"/train/{DET}?run_sync=true", {"max_epochs": 1, "replay": 0.5})
    assert status == 200, body[:500]
    stats = read_json(body)
    assert stats["new_labels"] == 1 and stats["replayed_labels"] == 1 and stats["images"] == 2


def test_refusal_reaches_a_browser_client(server):
    """The 4xx carries the CORS headers MONAI Label's middleware adds, so a viewer on another origin reads it."""
    import urllib.error
    import urllib.request

    body, ctype = multipart({"params": ("", b"{}", "text/plain")})
    req = urllib.request.Request(f"{server.url}/infer/nope?image={SEG_IMAGE}", data=body, method="POST",
                                 headers={"Content-Type": ctype, "Origin": "http://viewer.example"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=60)
    assert e.value.code == 404 and "nope" in read_json(e.value.read())["detail"]
    assert e.value.headers.get("access-control-allow-origin") in ("*", "http://viewer.example")


def test_connection_bound_answers_503(server):
    """``--limit-concurrency`` (MONAI Label's / uvicorn's bound): past it a request is answered 503, not queued
    without end; once connections close, requests are served again."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(server.url)
    idle = [socket.create_connection((u.hostname, u.port), timeout=30) for _ in range(24)]
    try:
        time.sleep(0.5)
        status, body = http("GET", server.url + "/info/", timeout=60)
        assert status == 503 and b"Service Unavailable" in body
    finally:
        for s in idle:
            s.close()
    time.sleep(1)
    assert http("GET", server.url + "/info/")[0] == 200
