"""NODE21 adapter: a tiny copy of the Zenodo layout (cxr_images/proccessed_data/{images/*.mha, metadata.csv}),
MetaImage headers written by hand as in tests/test_io_other.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxrfx.data.adapters import prepare
from cxrfx.errors import ConfigError, DatasetLayoutError

H, W = 32, 40
HEADER = ",img_name,x,y,width,height,label"  # pandas-written: unnamed index column first


def write_mha(path, arr):
    h, w = arr.shape
    header = ("ObjectType = Image\nNDims = 2\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              f"DimSize = {w} {h}\nElementType = MET_USHORT\nElementSpacing = 0.2 0.2\nElementDataFile = LOCAL\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode("ascii") + np.ascontiguousarray(arr).astype("<u2").tobytes())


NAMES = ["n0001.mha", "n0002.mha", "c0001.mha", "c0002.mha", "c0003.mha", "c0004.mha", "c0005.mha",
         "n0003.mha", "c0006.mha", "c0007.mha"]


@pytest.fixture
def node(tmp_path):
    root = tmp_path / "node21"
    proc = root / "cxr_images" / "proccessed_data"
    img = (np.arange(H * W).reshape(H, W) % 4096).astype(np.uint16)
    for name in NAMES:
        write_mha(proc / "images" / name, img)
    rows = [
        "0,n0001.mha,10,4,6,8,1",      # two nodules
        "1,n0001.mha,20.5,15,5.5,4,1",
        "2,n0002.mha,0,0,40,32,1",
        "3,c0001.mha,0,0,0,0,0",       # negatives: label 0, zero box
        "4,c0002.mha,0,0,0,0,0",
        "5,c0003.mha,0,0,0,0,0",
        "6,c0004.mha,0,0,0,0,0",
        "7,c0005.mha,0,0,0,0,0",
        "8,n0003.mha,3,3,0,5,1",       # degenerate nodule box: label kept, box dropped
        "9,c0006.mha,0,0,0,0,0",
        "10,c0007.mha,0,0,0,0,0",
    ]
    (proc / "metadata.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    # the original (unprocessed) data has its own metadata.csv, which must not be picked by default
    orig = root / "cxr_images" / "original_data"
    orig.mkdir(parents=True)
    (orig / "metadata.csv").write_text(HEADER + "\n0,n0001.mha,100,40,60,80,1\n")
    (orig / "filenames_orig_and_new.csv").write_text(
        "orig_dataset,orig_img_name,node21_img_id\njsrt,JPCLN001.IMG,n0001\nnih,00000010_000.png,n0002\n")
    return root


def build(root, tmp_path, **kw):
    out = tmp_path / "out" / "node21.json"
    prepare("node21", str(root), str(out), **kw)
    data = json.loads(out.read_text())
    return data, {it["id"]: it for s in ("training", "validation", "test") for it in data[s]}


def test_boxes_labels(node, tmp_path):
    data, items = build(node, tmp_path)
    assert data["tasks"] == {"classification": {"labels": ["nodule"]},
                             "detection": {"classes": ["nodule"],
                                           "description": "metadata.csv x, y, width, height -> xyxy"}}
    assert len(items) == 10
    n1 = items["n0001"]
    assert n1["label"] == [1] and n1["boxes"] == [[10.0, 4.0, 16.0, 12.0], [20.5, 15.0, 26.0, 19.0]]
    assert n1["box_labels"] == [0, 0] and n1["patient_id"] == "n0001"
    assert n1["meta"] == {"source_id": "n0001.mha", "origin": {"orig_dataset": "jsrt", "orig_img_name": "JPCLN001.IMG"}}
    assert items["n0002"]["boxes"] == [[0.0, 0.0, 40.0, 32.0]]
    assert items["c0001"]["label"] == [0] and items["c0001"]["boxes"] == [] and items["c0001"]["box_labels"] == []
    assert items["n0003"]["label"] == [1] and items["n0003"]["boxes"] == []
    assert items["n0003"]["meta"]["dropped_empty_boxes"] == 1
    image = (tmp_path / "out" / n1["image"]).resolve()  # relative to the datalist, pointing at the .mha
    assert image == (node / "cxr_images" / "proccessed_data" / "images" / "n0001.mha").resolve()


def test_random_split_is_image_level_and_reproducible(node, tmp_path):
    data, _ = build(node, tmp_path, seed=2)
    sizes = [len(data[s]) for s in ("training", "validation", "test")]
    assert sum(sizes) == 10 and sizes[0] == 7 and sizes[1] == 1 and sizes[2] == 2
    again, _ = build(node, tmp_path, split="random", seed=2)
    assert again["test"] == data["test"]


def test_original_variant(node, tmp_path):
    orig = node / "cxr_images" / "original_data"
    write_mha(orig / "images" / "n0001.mha", np.zeros((H, W), np.uint16))
    _, items = build(node, tmp_path, variant="original")
    assert list(items) == ["n0001"] and items["n0001"]["boxes"] == [[100.0, 40.0, 160.0, 120.0]]


def test_root_is_the_data_folder(node, tmp_path):
    data, _ = build(node / "cxr_images" / "proccessed_data", tmp_path)
    assert sum(len(data[s]) for s in ("training", "validation", "test")) == 10


def test_views_refused(node, tmp_path):
    with pytest.raises(ConfigError, match="view"):
        prepare("node21", str(node), str(tmp_path / "o.json"), views=["PA"])


def test_wrong_root(tmp_path):
    with pytest.raises(DatasetLayoutError, match="metadata.csv"):
        prepare("node21", str(tmp_path), str(tmp_path / "o.json"))


def test_missing_column(node, tmp_path):
    csv = node / "cxr_images" / "proccessed_data" / "metadata.csv"
    csv.write_text(csv.read_text().replace(HEADER, ",img_name,x,y,w,height,label"))
    with pytest.raises(DatasetLayoutError, match=r"metadata\.csv.*width"):
        prepare("node21", str(node), str(tmp_path / "o.json"))


@pytest.mark.parametrize("row, what", [("11,n0002.mha,abc,0,4,4,1", "x is not a number"),
                                       ("11,n0002.mha,0,0,4,4,yes", "label is not 0 or 1"),
                                       ("11,n0002.mha,0,0", "fields")])
def test_unparsable_row(node, tmp_path, row, what):
    csv = node / "cxr_images" / "proccessed_data" / "metadata.csv"
    csv.write_text(csv.read_text() + row + "\n")
    with pytest.raises(DatasetLayoutError, match=rf"metadata\.csv:13: .*{what}"):
        prepare("node21", str(node), str(tmp_path / "o.json"))


def test_missing_image(node, tmp_path):
    (node / "cxr_images" / "proccessed_data" / "images" / "c0007.mha").unlink()
    with pytest.warns(UserWarning, match="1 annotated image"):
        _, items = build(node, tmp_path)
    assert "c0007" not in items
    with pytest.raises(DatasetLayoutError, match=r"metadata\.csv:12: image c0007\.mha not found"):
        prepare("node21", str(node), str(tmp_path / "o.json"), missing="error")
