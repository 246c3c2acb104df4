"""TBX11K adapter: a tiny copy of the release layout (imgs/<class>/*.png RGB, COCO json, lists)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from cxrfx.data.adapters import prepare
from cxrfx.errors import ConfigError, DatasetLayoutError

H, W = 32, 40
CATEGORIES = [{"id": 1, "name": "ActiveTuberculosis", "supercategory": "Tuberculosis"},
              {"id": 2, "name": "ObsoletePulmonaryTuberculosis", "supercategory": "Tuberculosis"},
              {"id": 3, "name": "PulmonaryTuberculosis", "supercategory": "Tuberculosis"}]
TRAIN = ["health/h0001.png", "health/h0002.png", "health/h0003.png", "sick/s0001.png", "sick/s0002.png",
         "tb/tb0003.png", "tb/tb0004.png", "tb/tb1199.png"]
VAL = ["health/h0010.png", "sick/s0010.png", "tb/tb0100.png"]
BOXES = {  # COCO [x, y, w, h], category id
    "tb/tb0003.png": [([10.5, 4.0, 12.25, 8.0], 1), ([1.0, 2.0, 3.0, 4.0], 2)],
    "tb/tb0004.png": [([0.0, 0.0, 40.0, 32.0], 3), ([5.0, 5.0, 0.0, 3.0], 1)],  # 2nd: zero width, dropped
    "tb/tb0100.png": [([20.0, 10.0, 5.0, 5.0], 2)],
}


def write_coco(path, names, in_json=None):
    images, anns = [], []
    for k, name in enumerate(names, start=1):
        if in_json is not None and name not in in_json:
            continue
        images.append({"id": k, "file_name": name, "width": W, "height": H})
        for bbox, cat in BOXES.get(name, []):
            anns.append({"id": len(anns) + 1, "image_id": k, "category_id": cat, "iscrowd": 0,
                         "area": bbox[2] * bbox[3], "bbox": bbox})
    path.write_text(json.dumps({"info": [], "licenses": [], "categories": CATEGORIES, "images": images,
                                "annotations": anns}))


@pytest.fixture
def tbx(tmp_path):
    root = tmp_path / "download"
    base = root / "TBX11K"
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, :, 0] = np.arange(W)[None, :]
    for name in TRAIN + VAL + ["test/t0001.png", "extra/shenzhen/CHNCXR_0001_0.png"]:
        p = base / "imgs" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb, "RGB").save(p)  # the release PNGs are RGB
    (base / "annotations" / "json").mkdir(parents=True)
    # the train JSON leaves out one healthy image: it is still listed, so it is a detection negative
    write_coco(base / "annotations" / "json" / "TBX11K_train.json", TRAIN,
               in_json=set(TRAIN) - {"health/h0003.png"})
    write_coco(base / "annotations" / "json" / "TBX11K_val.json", VAL)
    (base / "lists").mkdir()
    (base / "lists" / "TBX11K_train.txt").write_text("\n".join(TRAIN) + "\n")
    (base / "lists" / "TBX11K_val.txt").write_text("\n".join(VAL) + "\n")
    return root


def build(root, tmp_path, **kw):
    out = tmp_path / "out" / "tbx.json"
    prepare("tbx11k", str(root), str(out), **kw)
    data = json.loads(out.read_text())
    return data, {it["id"]: it for s in ("training", "validation", "test") for it in data[s]}


def test_official_split_labels_boxes(tbx, tmp_path):
    data, items = build(tbx, tmp_path)
    assert data["tasks"]["classification"]["labels"] == ["healthy", "sick_but_non_tb", "tb"]
    assert data["tasks"]["detection"]["classes"] == [c["name"] for c in CATEGORIES]
    assert [len(data[s]) for s in ("training", "validation", "test")] == [8, 3, 0]
    assert {it["id"] for it in data["validation"]} == {"h0010", "s0010", "tb0100"}
    assert items["h0001"]["label"] == [1, 0, 0] and items["s0001"]["label"] == [0, 1, 0]
    assert items["tb0003"]["label"] == [0, 0, 1]
    assert items["h0001"]["boxes"] == [] and items["h0003"]["boxes"] == []  # not in the JSON, healthy -> negative
    t = items["tb0003"]
    assert t["boxes"] == [[10.5, 4.0, 22.75, 12.0], [1.0, 2.0, 4.0, 6.0]] and t["box_labels"] == [0, 1]
    assert t["meta"] == {"source_id": "tb/tb0003.png", "official_split": "train", "original_size": [H, W]}
    assert items["tb0004"]["boxes"] == [[0.0, 0.0, 40.0, 32.0]] and items["tb0004"]["box_labels"] == [2]
    assert items["tb0004"]["meta"]["dropped_empty_boxes"] == 1
    assert "boxes" not in items["tb1199"] and items["tb1199"]["label"] == [0, 0, 1]  # TB without boxes
    assert items["tb0100"]["box_labels"] == [1]
    assert "t0001" not in items and "CHNCXR_0001_0" not in items  # withheld test set, extra datasets
    path = os.path.join(tmp_path / "out", t["image"])
    assert Image.open(path).size == (W, H)


def test_root_may_be_the_tbx11k_folder(tbx, tmp_path):
    data, _ = build(tbx / "TBX11K", tmp_path)
    assert len(data["training"]) == 8


def test_val_as_test(tbx, tmp_path):
    data, _ = build(tbx, tmp_path, val_as="test", seed=1)
    assert {it["id"] for it in data["test"]} == {"h0010", "s0010", "tb0100"}
    assert len(data["training"]) + len(data["validation"]) == 8 and len(data["validation"]) >= 1


def test_random_split(tbx, tmp_path):
    data, _ = build(tbx, tmp_path, split="random", seed=5)
    ids = [it["id"] for s in ("training", "validation", "test") for it in data[s]]
    assert sorted(ids) == sorted(os.path.splitext(os.path.basename(n))[0] for n in TRAIN + VAL)
    assert len(ids) == len(set(ids)) and len(data["training"]) > len(data["test"]) > 0


def test_without_lists_uses_json_images(tbx, tmp_path):
    for f in (tbx / "TBX11K" / "lists").iterdir():
        f.unlink()
    _, items = build(tbx, tmp_path)
    assert "h0003" not in items and len(items) == 10


def test_views_refused(tbx, tmp_path):
    with pytest.raises(ConfigError, match="view"):
        prepare("tbx11k", str(tbx), str(tmp_path / "o.json"), views=["PA"])


def test_wrong_root(tmp_path):
    with pytest.raises(DatasetLayoutError, match="imgs"):
        prepare("tbx11k", str(tmp_path), str(tmp_path / "o.json"))


def test_missing_json(tbx, tmp_path):
    (tbx / "TBX11K" / "annotations" / "json" / "TBX11K_val.json").unlink()
    with pytest.raises(DatasetLayoutError, match="TBX11K_val.json"):
        prepare("tbx11k", str(tbx), str(tmp_path / "o.json"))


def test_missing_coco_key(tbx, tmp_path):
    path = tbx / "TBX11K" / "annotations" / "json" / "TBX11K_train.json"
    data = json.loads(path.read_text())
    del data["categories"]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetLayoutError, match=r"TBX11K_train\.json.*categories"):
        prepare("tbx11k", str(tbx), str(tmp_path / "o.json"))


def test_unparsable_json_and_bbox(tbx, tmp_path):
    path = tbx / "TBX11K" / "annotations" / "json" / "TBX11K_val.json"
    path.write_text('{"images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(DatasetLayoutError, match=r"TBX11K_val\.json:2"):
        prepare("tbx11k", str(tbx), str(tmp_path / "o.json"))
    data = {"categories": CATEGORIES, "images": [{"id": 1, "file_name": "tb/tb0100.png"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, "x", 4]}]}
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetLayoutError, match=r"TBX11K_val\.json: annotations\[0\] bbox"):
        prepare("tbx11k", str(tbx), str(tmp_path / "o.json"))


def test_unknown_folder_in_list(tbx, tmp_path):
    path = tbx / "TBX11K" / "lists" / "TBX11K_train.txt"
    path.write_text(path.read_text() + "extra/da/x.png\n")
    with pytest.raises(DatasetLayoutError, match=r"TBX11K_train\.txt:9"):
        prepare("tbx11k", str(tbx), str(tmp_path / "o.json"))


def test_missing_image_skipped_or_error(tbx, tmp_path):
    (tbx / "TBX11K" / "imgs" / "sick" / "s0002.png").unlink()
    with pytest.warns(UserWarning, match="1 annotated image"):
        _, items = build(tbx, tmp_path)
    assert "s0002" not in items
    with pytest.raises(DatasetLayoutError, match=r"TBX11K_train\.txt:5: image .*s0002\.png not found"):
        prepare("tbx11k", str(tbx), str(tmp_path / "o.json"), missing="error")
