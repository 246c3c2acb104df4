"""ChestX-Det adapter: the two Deepwise JSON files (one-line lists of records) + train/ and test/ PNG folders."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from cxrfx.data.adapters import prepare
from cxrfx.data.adapters.chestx_det import FINDINGS
from cxrfx.errors import ConfigError, DatasetLayoutError

H, W = 32, 40
RECT = [[2, 3], [9, 3], [9, 7], [2, 7]]          # rows 3..7, cols 2..9 (outline included)
RECT2 = [[6, 5], [12, 5], [12, 9], [6, 9]]        # overlaps RECT: same finding -> union
TRIANGLE = [[30, 2], [38, 2], [38, 10]]           # right angle at the top-right: tells x from y
BIG = [[0, 0], [39, 0], [39, 31], [0, 31]]


def rec(name, pairs):
    """pairs: (sym, box, polygon)."""
    return {"file_name": name, "syms": [p[0] for p in pairs], "boxes": [p[1] for p in pairs],
            "polygons": [p[2] for p in pairs]}


TRAIN = [
    rec("36204.png", [("Nodule", [2, 3, 9, 7], RECT), ("Nodule", [6, 5, 12, 9], RECT2),
                      ("Cardiomegaly", [30, 2, 38, 10], TRIANGLE), ("Effusion", [0, 0, 39, 31], BIG)]),
    rec("36205.png", [("pleural thickening", [1.5, 2.5, 20, 30], RECT), ("Fracture", [5, 5, 5, 9], RECT2)]),
] + [rec(f"{36210 + k}.png", []) for k in range(10)]
TEST = [rec("40000.png", [("Diffuse Nodule", [2, 3, 9, 7], RECT)]), rec("40001.png", [])]


@pytest.fixture
def det(tmp_path):
    root = tmp_path / "ChestX-Det"
    gray = (np.arange(H * W).reshape(H, W) % 256).astype(np.uint8)
    for part, recs in (("train", TRAIN), ("test", TEST)):
        (root / part).mkdir(parents=True)
        for r in recs:
            img = Image.fromarray(gray, "L")
            if r["file_name"] == "36205.png":
                img = img.convert("RGBA")  # some NIH PNGs are RGBA
            img.save(root / part / r["file_name"])
        (root / f"ChestX_Det_{part}.json").write_text(json.dumps(recs))  # one line, as released
    return root


def build(root, tmp_path, **kw):
    out = tmp_path / "out" / "det.json"
    prepare("chestx_det", str(root), str(out), **kw)
    data = json.loads(out.read_text())
    return data, {it["id"]: it for s in ("training", "validation", "test") for it in data[s]}, out.parent


def read_mask(out_dir, rel):
    return np.array(Image.open(os.path.join(out_dir, rel))) > 0


def rect_mask(r0, r1, c0, c1):
    m = np.zeros((H, W), bool)
    m[r0:r1, c0:c1] = True
    return m


def test_labels_boxes_masks(det, tmp_path):
    data, items, out_dir = build(det, tmp_path)
    assert data["tasks"]["classification"]["labels"] == FINDINGS and len(FINDINGS) == 13
    assert data["tasks"]["segmentation"]["classes"] == FINDINGS
    a = items["36204"]
    expected = [0] * 13
    for name in ("Nodule", "Cardiomegaly", "Effusion"):
        expected[FINDINGS.index(name)] = 1
    assert a["label"] == expected
    assert a["boxes"] == [[2.0, 3.0, 9.0, 7.0], [6.0, 5.0, 12.0, 9.0], [30.0, 2.0, 38.0, 10.0], [0.0, 0.0, 39.0, 31.0]]
    assert a["box_labels"] == [FINDINGS.index("Nodule")] * 2 + [FINDINGS.index("Cardiomegaly"), FINDINGS.index("Effusion")]
    assert set(a["mask"]) == {"Nodule", "Cardiomegaly", "Effusion"}
    np.testing.assert_array_equal(read_mask(out_dir, a["mask"]["Nodule"]),
                                  rect_mask(3, 8, 2, 10) | rect_mask(5, 10, 6, 13))
    tri = read_mask(out_dir, a["mask"]["Cardiomegaly"])
    assert tri[2, 30] and tri[10, 38] and tri[2, 38] and not tri[10, 30]  # x = column
    rows, cols = np.nonzero(tri)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2, 10, 30, 38)
    assert read_mask(out_dir, a["mask"]["Effusion"]).all()  # overlaps the other findings: own channel
    assert a["meta"] == {"source_id": "36204.png", "official_split": "train", "original_size": [H, W]}
    assert a["mask"]["Nodule"].startswith("chestx_det_masks") and a["mask"]["Nodule"].endswith("36204_nodule.png")

    b = items["36205"]  # lower-case name matched; degenerate box dropped but finding kept; RGBA image
    assert b["label"][FINDINGS.index("Pleural Thickening")] == 1 and b["label"][FINDINGS.index("Fracture")] == 1
    assert b["boxes"] == [[1.5, 2.5, 20.0, 30.0]] and b["box_labels"] == [FINDINGS.index("Pleural Thickening")]
    assert b["meta"]["dropped_empty_boxes"] == 1
    assert items["40000"]["mask"]["Diffuse Nodule"].endswith("40000_diffuse_nodule.png")
    assert items["36210"]["label"] == [0] * 13 and items["36210"]["boxes"] == [] and items["36210"]["mask"] == {}


def test_official_split_with_carve_out(det, tmp_path):
    data, _, _ = build(det, tmp_path, seed=1)
    assert {it["id"] for it in data["test"]} == {"40000", "40001"}
    assert len(data["training"]) + len(data["validation"]) == 12 and len(data["validation"]) == 1
    assert all(it["meta"]["official_split"] == "train" for it in data["training"] + data["validation"])
    none, _, _ = build(det, tmp_path, val_fraction=0)
    assert len(none["training"]) == 12 and none["validation"] == []
    rnd, _, _ = build(det, tmp_path, split="random", seed=1)
    ids = [it["id"] for s in ("training", "validation", "test") for it in rnd[s]]
    assert len(ids) == len(set(ids)) == 14


def test_image_folder_names_are_tolerated(det, tmp_path):
    os.rename(det / "train", det / "train_data")
    os.makedirs(det / "test_data")
    os.rename(det / "test", det / "test_data" / "test")
    _, items, _ = build(det, tmp_path)
    assert items["40000"]["image"].replace(os.sep, "/").endswith("test_data/test/40000.png")


def test_views_refused(det, tmp_path):
    with pytest.raises(ConfigError, match="view"):
        prepare("chestx_det", str(det), str(tmp_path / "o.json"), views=["PA"])


def test_wrong_root(tmp_path):
    with pytest.raises(DatasetLayoutError, match="ChestX_Det_train.json"):
        prepare("chestx_det", str(tmp_path), str(tmp_path / "o.json"))


def test_missing_key(det, tmp_path):
    recs = json.loads((det / "ChestX_Det_test.json").read_text())
    del recs[1]["boxes"]
    (det / "ChestX_Det_test.json").write_text(json.dumps(recs))
    with pytest.raises(DatasetLayoutError, match=r"ChestX_Det_test\.json: record 1 \(40001\.png\) needs lists"):
        prepare("chestx_det", str(det), str(tmp_path / "o.json"))


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(syms=["Nodul"]), "unknown finding 'Nodul'"),
    (lambda r: r.update(boxes=[[1, 2, "x", 4]]), "box 0 is not"),
    (lambda r: r.update(polygons=[]), "one polygon per sym"),
    (lambda r: r.update(polygons=[[[1, 2, 3]]]), "polygon 0 is not"),
])
def test_bad_record(det, tmp_path, change, message):
    recs = json.loads((det / "ChestX_Det_test.json").read_text())
    change(recs[0])
    (det / "ChestX_Det_test.json").write_text(json.dumps(recs))
    with pytest.raises(DatasetLayoutError, match=rf"ChestX_Det_test\.json: record 0 \(40000\.png\).*{message}"):
        prepare("chestx_det", str(det), str(tmp_path / "o.json"))


def test_unparsable_json(det, tmp_path):
    (det / "ChestX_Det_train.json").write_text('[\n{"file_name": "1.png",\n "syms": [}]')
    with pytest.raises(DatasetLayoutError, match=r"ChestX_Det_train\.json:3"):
        prepare("chestx_det", str(det), str(tmp_path / "o.json"))


def test_missing_images(det, tmp_path):
    os.remove(det / "train" / "36211.png")
    with pytest.warns(UserWarning, match="1 annotated image"):
        _, items, _ = build(det, tmp_path)
    assert "36211" not in items
    with pytest.raises(DatasetLayoutError, match=r"record 3 \(36211\.png\): image not found"):
        prepare("chestx_det", str(det), str(tmp_path / "o.json"), missing="error")
