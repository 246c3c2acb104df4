"""ChestX-Det10 adapter: train.json / test.json with NIH file names, images in train_data/ and test_data/ (or
an NIH-style images folder given with images=)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from cxrfx.data.adapters import prepare
from cxrfx.data.adapters.chestx_det10 import FINDINGS10
from cxrfx.errors import ConfigError, DatasetLayoutError

H, W = 32, 40

TRAIN = [
    {"file_name": "00000011_000.png", "syms": ["Nodule", "Nodule", "Mass"],
     "boxes": [[3, 4, 10, 12], [20.5, 6, 30, 15.5], [1, 1, 39, 31]]},
    {"file_name": "00000011_005.png", "syms": ["Consolidation"], "boxes": [[5, 5, 15, 25]]},
    {"file_name": "00000012_000.png", "syms": ["Effusion", "Effusion"], "boxes": [[0, 20, 10, 32], [30, 20, 40, 32]]},
] + [{"file_name": f"{100 + k // 2:08d}_{k % 2:03d}.png", "syms": [], "boxes": []} for k in range(12)]
TEST = [{"file_name": "00000030_001.png", "syms": ["Pneumothorax", "Fracture"], "boxes": [[2, 2, 8, 9], [9, 9, 12, 20]]},
        {"file_name": "00000030_002.png", "syms": [], "boxes": []}]


def write_images(folder, recs):
    folder.mkdir(parents=True, exist_ok=True)
    gray = (np.arange(H * W).reshape(H, W) % 256).astype(np.uint8)
    for r in recs:
        Image.fromarray(gray, "L").save(folder / r["file_name"])


@pytest.fixture
def det10(tmp_path):
    root = tmp_path / "ChestX-Det10"
    write_images(root / "train_data", TRAIN)
    write_images(root / "test_data", TEST)
    (root / "train.json").write_text(json.dumps(TRAIN))
    (root / "test.json").write_text(json.dumps(TEST))
    return root


def build(root, tmp_path, **kw):
    out = tmp_path / "out" / "det10.json"
    prepare("chestx_det10", str(root), str(out), **kw)
    data = json.loads(out.read_text())
    return data, {it["id"]: it for s in ("training", "validation", "test") for it in data[s]}


def onehot(*names):
    v = [0] * len(FINDINGS10)
    for n in names:
        v[FINDINGS10.index(n)] = 1
    return v


def test_labels_and_boxes(det10, tmp_path):
    data, items = build(det10, tmp_path)
    assert data["tasks"] == {"classification": {"labels": FINDINGS10},
                             "detection": {"classes": FINDINGS10,
                                           "description": "boxes [x1, y1, x2, y2] as given by Deepwise"}}
    a = items["00000011_000"]
    assert a["label"] == onehot("Nodule", "Mass") and a["patient_id"] == "00000011"
    assert a["boxes"] == [[3.0, 4.0, 10.0, 12.0], [20.5, 6.0, 30.0, 15.5], [1.0, 1.0, 39.0, 31.0]]
    assert a["box_labels"] == [FINDINGS10.index("Nodule")] * 2 + [FINDINGS10.index("Mass")]
    assert a["meta"] == {"source_id": "00000011_000.png", "official_split": "train"}
    assert "mask" not in a and "segmentation" not in data["tasks"]
    assert items["00000012_000"]["box_labels"] == [FINDINGS10.index("Effusion")] * 2
    assert items["00000100_000"]["label"] == [0] * 10 and items["00000100_000"]["boxes"] == []
    t = items["00000030_001"]
    assert t["label"] == onehot("Pneumothorax", "Fracture")
    assert t["image"].replace(os.sep, "/").endswith("test_data/00000030_001.png")


def test_official_split(det10, tmp_path):
    data, _ = build(det10, tmp_path)
    assert [len(data[s]) for s in ("training", "validation", "test")] == [15, 0, 2]


def test_patient_level_carve_out_and_random(det10, tmp_path):
    for kw in ({"val_fraction": 0.3, "seed": 2}, {"split": "random", "seed": 2}):
        data, _ = build(det10, tmp_path, **kw)
        where = {}
        for s in ("training", "validation", "test"):
            for it in data[s]:
                assert where.setdefault(it["patient_id"], s) == s
        assert len(data["validation"]) > 0
    data, _ = build(det10, tmp_path, val_fraction=0.3, seed=2)
    assert {it["id"] for it in data["test"]} == {"00000030_001", "00000030_002"}


def test_images_from_an_nih_folder(det10, tmp_path):
    nih = tmp_path / "NIH" / "images_001" / "images"
    write_images(nih, TRAIN + TEST)
    for folder in ("train_data", "test_data"):
        for f in (det10 / folder).iterdir():
            f.unlink()
    data, items = build(det10, tmp_path, images=str(tmp_path / "NIH"))
    assert len(items) == 17 and "images_001" in items["00000011_000"]["image"]


def test_views_refused(det10, tmp_path):
    with pytest.raises(ConfigError, match="view"):
        prepare("chestx_det10", str(det10), str(tmp_path / "o.json"), views=["PA"])


def test_wrong_root(tmp_path):
    with pytest.raises(DatasetLayoutError, match="train.json"):
        prepare("chestx_det10", str(tmp_path), str(tmp_path / "o.json"))


def test_missing_key_and_mismatch(det10, tmp_path):
    recs = json.loads((det10 / "train.json").read_text())
    recs[2]["syms"] = ["Effusion"]
    (det10 / "train.json").write_text(json.dumps(recs))
    with pytest.raises(DatasetLayoutError, match=r"train\.json: record 2 \(00000012_000\.png\) has 1 syms but 2 boxes"):
        prepare("chestx_det10", str(det10), str(tmp_path / "o.json"))
    del recs[0]["file_name"]
    (det10 / "train.json").write_text(json.dumps(recs))
    with pytest.raises(DatasetLayoutError, match=r"train\.json: record 0 has no 'file_name'"):
        prepare("chestx_det10", str(det10), str(tmp_path / "o.json"))


def test_unknown_finding_and_bad_json(det10, tmp_path):
    recs = json.loads((det10 / "test.json").read_text())
    recs[0]["syms"][1] = "Cardiomegaly"  # a ChestX-Det (13) finding, not one of the 10
    (det10 / "test.json").write_text(json.dumps(recs))
    with pytest.raises(DatasetLayoutError, match=r"test\.json: record 0 .*unknown finding 'Cardiomegaly'"):
        prepare("chestx_det10", str(det10), str(tmp_path / "o.json"))
    (det10 / "test.json").write_text("[{\"file_name\": \"a.png\" \"syms\": []}]")
    with pytest.raises(DatasetLayoutError, match=r"test\.json:1"):
        prepare("chestx_det10", str(det10), str(tmp_path / "o.json"))


def test_no_images_at_all(det10, tmp_path):
    for folder in ("train_data", "test_data"):
        for f in (det10 / folder).iterdir():
            f.unlink()
    with pytest.raises(DatasetLayoutError, match="none of the 17 annotated images"):
        prepare("chestx_det10", str(det10), str(tmp_path / "o.json"))
