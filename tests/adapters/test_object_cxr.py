"""Object-CXR adapter: a tiny copy of the challenge layout (train.csv / dev.csv + JPEG folders)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cxrfx.data.adapters import common, prepare
from cxrfx.errors import ConfigError, DatasetLayoutError

H, W = 32, 40  # non-square: a transposed mask or swapped box axes would show


def _jpeg(path, h=H, w=W):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8)
    Image.fromarray(arr, mode="L").save(path, quality=90)


def _write_dataset(root, train_rows=None, dev_rows=None, header="image_name,annotation"):
    train_rows = train_rows if train_rows is not None else [
        "00001.jpg,0 2 3 10 8;1 20 4 30 12",          # rectangle + ellipse
        "00002.jpg,2 5 5 15 5 10 20",                  # polygon (triangle)
        "00003.jpg,",                                  # negative
        "00004.jpg,",
    ]
    dev_rows = dev_rows if dev_rows is not None else [
        "08001.jpg,0 30 20 45 40",                     # rectangle reaching past the right/bottom edges
        "08002.jpg,",
    ]
    for folder, rows, csv in (("train", train_rows, "train.csv"), ("dev", dev_rows, "dev.csv")):
        for row in rows:
            _jpeg(root / folder / row.split(",")[0])
        (root / csv).write_text("\n".join([header, *rows]) + "\n")


def _prepare(tmp_path, **kw):
    root = tmp_path / "object-CXR"
    if not root.exists():
        _write_dataset(root)
    out = tmp_path / "out" / "object_cxr.json"
    prepare("object_cxr", str(root), str(out), **kw)
    return json.loads(out.read_text()), out.parent


def _by_id(data):
    return {it["id"]: it for s in ("training", "validation", "test") for it in data[s]}


def _mask(out_dir, item):
    return np.array(Image.open(out_dir / item["mask"]["foreign_object"])) > 0


def test_official_split_labels_and_tasks(tmp_path):
    data, _ = _prepare(tmp_path)
    assert [len(data[s]) for s in ("training", "validation", "test")] == [4, 2, 0]
    assert data["tasks"]["classification"]["labels"] == ["foreign_object"]
    assert data["tasks"]["detection"]["classes"] == ["foreign_object"]
    assert data["tasks"]["segmentation"] == {"classes": ["foreign_object"], "mask_format": "per_class",
                                             "description": data["tasks"]["segmentation"]["description"]}
    items = _by_id(data)
    assert items["train/00001"]["label"] == [1]
    assert items["train/00003"]["label"] == [0]
    assert items["dev/08001"]["label"] == [1]
    assert items["train/00001"]["meta"]["source_id"] == "00001.jpg"
    assert items["train/00001"]["image"] == "../object-CXR/train/00001.jpg"
    # negatives: annotated for detection and segmentation, with nothing in them
    assert items["train/00004"]["boxes"] == [] and items["train/00004"]["box_labels"] == []
    assert items["train/00004"]["mask"] == {}


def test_boxes_of_every_shape_type(tmp_path):
    items = _by_id(_prepare(tmp_path)[0])
    one = items["train/00001"]
    assert one["boxes"] == [[2, 3, 10, 8], [20, 4, 30, 12]]  # rectangle, ellipse (its bounding box)
    assert one["box_labels"] == [0, 0]
    assert one["meta"]["shapes"] == ["rectangle", "ellipse"]
    poly = items["train/00002"]
    assert poly["boxes"] == [[5, 5, 15, 20]]  # polygon (5,5) (15,5) (10,20): min/max of x and y
    assert items["dev/08001"]["boxes"] == [[30, 20, W, H]]  # clipped to the 40 x 32 image


def test_masks_rasterise_each_shape(tmp_path):
    data, out_dir = _prepare(tmp_path)
    items = _by_id(data)
    m = _mask(out_dir, items["train/00001"])
    assert m.shape == (H, W) and m.dtype == bool
    # the rectangle: rows 3..8, columns 2..10, boundary included
    rect = np.zeros((H, W), bool)
    rect[3:9, 2:11] = True
    ellipse = common.ellipse_mask([20, 4, 30, 12], H, W)
    assert np.array_equal(m, rect | ellipse)
    assert m[8, 25] and not m[4, 20] and not m[12, 30]  # ellipse centre in, its box corners out
    assert not m[:, 11:20].any()  # nothing between the two shapes
    p = _mask(out_dir, items["train/00002"])
    assert np.array_equal(p, common.polygon_mask([[(5, 5), (15, 5), (10, 20)]], H, W))
    assert p[10, 10] and not p[18, 6] and not p[6, 3]
    d = _mask(out_dir, items["dev/08001"])
    assert d[20:, 30:].all() and not d[:20].any() and not d[:, :30].any()
    # written masks are binary 8-bit PNGs
    img = Image.open(out_dir / items["train/00001"]["mask"]["foreign_object"])
    assert img.mode == "L" and set(np.unique(np.array(img))) <= {0, 255}


def test_image_path_header_and_paths_in_names(tmp_path):
    root = tmp_path / "object-CXR"
    _write_dataset(root, train_rows=["00001.jpg,0 1 1 5 5"], dev_rows=["08001.jpg,"],
                   header="image_path,annotation")
    (root / "train.csv").write_text("image_path,annotation\n/path/00001.jpg,0 1 1 5 5;\n")  # README style
    items = _by_id(_prepare(tmp_path)[0])
    assert items["train/00001"]["boxes"] == [[1, 1, 5, 5]]
    assert items["train/00001"]["meta"]["source_id"] == "/path/00001.jpg"


def test_random_split_is_reproducible_and_complete(tmp_path):
    a, _ = _prepare(tmp_path, split="random", seed=3)
    b, _ = _prepare(tmp_path, split="random", seed=3)
    ids = [it["id"] for s in ("training", "validation", "test") for it in a[s]]
    assert sorted(ids) == sorted(_by_id(a)) and len(ids) == len(set(ids)) == 6
    assert {s: [it["id"] for it in a[s]] for s in ("training", "validation", "test")} == \
        {s: [it["id"] for it in b[s]] for s in ("training", "validation", "test")}


def test_views_and_options_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="view"):
        _prepare(tmp_path, views=["PA"])
    with pytest.raises(ConfigError, match="options"):
        _prepare(tmp_path, bogus=1)


def test_wrong_root(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="train.csv"):
        prepare("object_cxr", str(tmp_path / "empty"), str(tmp_path / "o.json"))


def test_missing_column(tmp_path):
    root = tmp_path / "object-CXR"
    _write_dataset(root, header="image_name,label")
    with pytest.raises(DatasetLayoutError, match=r"train\.csv: missing column.*annotation"):
        _prepare(tmp_path)


@pytest.mark.parametrize("bad, phrase", [
    ("00002.jpg,3 1 2 3 4", "shape type"),
    ("00002.jpg,0 1 2 x 4", "non-numeric"),
    ("00002.jpg,1 1 2 3", "needs 4 coordinates"),
    ("00002.jpg,2 1 2 3 4", "polygon"),
])
def test_unparsable_row_names_file_and_line(tmp_path, bad, phrase):
    root = tmp_path / "object-CXR"
    _write_dataset(root, train_rows=["00001.jpg,", bad])
    with pytest.raises(DatasetLayoutError, match=r"train\.csv:3: .*" + phrase):
        _prepare(tmp_path)


def test_missing_image_names_file_and_line(tmp_path):
    root = tmp_path / "object-CXR"
    _write_dataset(root)
    (root / "dev" / "08002.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match=r"dev\.csv:3: .*08002\.jpg not found"):
        _prepare(tmp_path)
