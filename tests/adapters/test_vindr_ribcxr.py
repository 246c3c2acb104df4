"""VinDr-RibCXR adapter: the assumed layout (Data/{train,val}/img/*.png + pandas column-oriented JSON with an
``img`` column and R1..R10, L1..L10 polygons of {x, y} points, "None" for an invisible rib)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cxrfx.data.adapters import common, prepare
from cxrfx.data.adapters.vindr_ribcxr import RIBS
from cxrfx.errors import ConfigError, DatasetLayoutError

H, W = 32, 40

R1 = [{"x": 4.0, "y": 5.0}, {"x": 16.5, "y": 5.0}, {"x": 16.5, "y": 9.0}, {"x": 4.0, "y": 9.0}]   # viewer's left
L1 = [{"x": 24.0, "y": 5.0}, {"x": 36.0, "y": 6.0}, {"x": 30.0, "y": 12.0}]                       # viewer's right
R2 = [{"x": 3.0, "y": 11.0}, {"x": 17.0, "y": 12.0}, {"x": 16.0, "y": 15.0}, {"x": 3.0, "y": 14.0}]


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.arange(H * W).reshape(H, W) % 256).astype(np.uint8)).save(path)


def _annotations(tag, n, ribs_of):
    data = {"img": {str(i): f"data/{tag}/img/VinDr_RibCXR_{tag}_{i:03d}.png" for i in range(n)}}
    for rib in RIBS:
        data[rib] = {str(i): ribs_of(i).get(rib, "None") for i in range(n)}
    return data


def _write_dataset(root, train=None, val=None):
    for tag, n in (("train", 3), ("val", 2)):
        for i in range(n):
            _png(root / "Data" / tag / "img" / f"VinDr_RibCXR_{tag}_{i:03d}.png")
    train = train or _annotations("train", 3, lambda i: {"R1": R1, "L1": L1, "R2": R2} if i == 0 else {"R1": R1})
    val = val or _annotations("val", 2, lambda i: {"L1": L1})
    (root / "Data" / "train" / "Vindr_RibCXR_train_mask.json").write_text(json.dumps(train))
    (root / "Data" / "val" / "Vindr_RibCXR_val_mask.json").write_text(json.dumps(val))
    return root


def _prepare(tmp_path, root=None, **kw):
    if root is None:
        root = tmp_path / "VinDr-RibCXR"
        if not root.exists():
            _write_dataset(root)
    out = tmp_path / "out" / "ribs.json"
    prepare("vindr_ribcxr", str(root), str(out), **kw)
    return json.loads(out.read_text()), out.parent


def _items(data):
    return {it["id"]: it for s in ("training", "validation", "test") for it in data[s]}


def _poly(points):
    return [[(p["x"], p["y"]) for p in points]]


def test_official_split_and_classes(tmp_path):
    data, _ = _prepare(tmp_path)
    assert [len(data[s]) for s in ("training", "validation", "test")] == [3, 2, 0]
    seg = data["tasks"]["segmentation"]
    assert seg["classes"] == [f"R{i}" for i in range(1, 11)] + [f"L{i}" for i in range(1, 11)]
    assert seg["mask_format"] == "per_class" and set(data["tasks"]) == {"segmentation"}
    item = _items(data)["train/VinDr_RibCXR_train_000"]
    assert item["meta"]["source_id"] == "VinDr_RibCXR_train_000" and item["meta"]["record"] == "0"
    assert item["image"].endswith("VinDr-RibCXR/Data/train/img/VinDr_RibCXR_train_000.png")  # "data/" in JSON


def test_each_rib_rasterised_into_its_own_mask(tmp_path):
    data, out_dir = _prepare(tmp_path)
    items = _items(data)
    first = items["train/VinDr_RibCXR_train_000"]
    assert sorted(first["mask"]) == ["L1", "R1", "R2"]  # invisible ribs ("None") left out
    for rib, pts in (("R1", R1), ("L1", L1), ("R2", R2)):
        m = np.array(Image.open(out_dir / first["mask"][rib]))
        assert m.shape == (H, W) and set(np.unique(m)) == {0, 255}
        assert np.array_equal(m > 0, common.polygon_mask(_poly(pts), H, W)), rib
    r1 = np.array(Image.open(out_dir / first["mask"]["R1"])) > 0
    assert r1[5:10, 4:17].all() and not r1[:5].any() and not r1[10:].any() and not r1[:, 18:].any()
    l1 = np.array(Image.open(out_dir / first["mask"]["L1"])) > 0
    assert l1[7, 30] and not l1[:, :24].any()
    assert list(items["val/VinDr_RibCXR_val_001"]["mask"]) == ["L1"]


def test_records_orientation_and_point_pairs(tmp_path):
    root = tmp_path / "rib"
    train = [{"img": "data/train/img/VinDr_RibCXR_train_000.png", "R1": [[4, 5], [16.5, 5], [16.5, 9], [4, 9]]},
             {"img": "VinDr_RibCXR_train_001.png", "R1": None},
             {"img": "Data/train/img/VinDr_RibCXR_train_002.png", "L1": [L1, R2]}]  # two polygons
    _write_dataset(root, train=train)
    data, out_dir = _prepare(tmp_path, root=root)
    items = _items(data)
    r1 = np.array(Image.open(out_dir / items["train/VinDr_RibCXR_train_000"]["mask"]["R1"])) > 0
    assert np.array_equal(r1, common.polygon_mask(_poly(R1), H, W))
    assert items["train/VinDr_RibCXR_train_001"]["mask"] == {}
    both = np.array(Image.open(out_dir / items["train/VinDr_RibCXR_train_002"]["mask"]["L1"])) > 0
    assert np.array_equal(both, common.polygon_mask(_poly(L1) + _poly(R2), H, W))


def test_random_split_and_refusals(tmp_path):
    data, _ = _prepare(tmp_path, split="random", seed=5)
    ids = [it["id"] for s in ("training", "validation", "test") for it in data[s]]
    assert len(ids) == len(set(ids)) == 5
    with pytest.raises(ConfigError, match="view"):
        _prepare(tmp_path, views=["PA"])
    with pytest.raises(ConfigError, match="unknown option"):
        _prepare(tmp_path, scr_root="x")


def test_json_options_override_the_search(tmp_path):
    root = _write_dataset(tmp_path / "rib")
    (root / "Data" / "val" / "Vindr_RibCXR_val_mask.json").rename(root / "labels_b.json")
    with pytest.raises(DatasetLayoutError, match=r"Vindr_RibCXR_val_mask\.json: expected file not found"):
        _prepare(tmp_path, root=root)
    data, _ = _prepare(tmp_path, root=root, val_json="labels_b.json")
    assert len(data["validation"]) == 2


def test_wrong_root(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="train_mask.json: expected file not found"):
        prepare("vindr_ribcxr", str(tmp_path / "empty"), str(tmp_path / "o.json"))


def test_json_without_img_column(tmp_path):
    root = _write_dataset(tmp_path / "rib", train={"image": {"0": "x.png"}, "R1": {"0": "None"}})
    with pytest.raises(DatasetLayoutError, match=r"Vindr_RibCXR_train_mask\.json: expected the VinDr-RibCXR"):
        _prepare(tmp_path, root=root)


@pytest.mark.parametrize("bad, phrase", [
    ([{"x": 1, "y": 2}, {"x": 3}], "lacks 'x' or 'y'"),
    ([{"x": 1, "y": 2}, {"x": "a", "y": 3}, {"x": 5, "y": 5}], "non-numeric"),
    ([{"x": 1, "y": 2}, {"x": 3, "y": 4}], "at least 3 points"),
    ({"x": 1}, "expected a list"),
])
def test_unparsable_rib_names_file_record_and_rib(tmp_path, bad, phrase):
    train = _annotations("train", 3, lambda i: {"R1": R1, "L5": bad} if i == 1 else {})
    root = _write_dataset(tmp_path / "rib", train=train)
    with pytest.raises(DatasetLayoutError, match=r"train_mask\.json: record 1, rib L5: .*" + phrase):
        _prepare(tmp_path, root=root)


def test_missing_image(tmp_path):
    root = _write_dataset(tmp_path / "rib")
    (root / "Data" / "val" / "img" / "VinDr_RibCXR_val_001.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"val_mask\.json: record 1: image .*val_001\.png' not found"):
        _prepare(tmp_path, root=root)
