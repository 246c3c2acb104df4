"""JSRT adapter: three raw 2048 x 2048 big-endian .IMG files (the format has a fixed size), the tab-separated
clinical files, and a tiny SCR tree (scratch/fold{1,2}/masks/<structure>/<stem>.gif at 1024 x 1024)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cxrfx.data.adapters import prepare
from cxrfx.data.adapters.jsrt import SPACING_MM, parse_clndat
from cxrfx.errors import ConfigError, DatasetLayoutError

CLNDAT = ("JPCLN001.IMG\t3\t15\t53\tmale\t1634\t692\tmalignant\tl.upper lobe\tlung cancer(adenocarcinoma)\n"
          "JPCLN002.IMG\t5\t20\t?\tfemale\t30\t2040\tbenign\tr.lower lobe\thamartoma\n")
CNNDAT = "JPCNN001.IMG\t58\tmale\tnon-nodule\n"
STRUCTURES = ("left lung", "right lung", "heart", "left clavicle", "right clavicle")


def _scr_masks(swap=False):
    """1024 x 1024 masks: patient's left lung on the viewer's right (unless ``swap``)."""
    out = {s: np.zeros((1024, 1024), np.uint8) for s in STRUCTURES}
    out["right lung"][200:800, 100:450] = 255
    out["left lung"][220:820, 580:920] = 255
    out["heart"][500:850, 400:700] = 255
    out["right clavicle"][100:150, 150:480] = 255
    out["left clavicle"][110:160, 560:880] = 255
    if swap:
        out["left lung"], out["right lung"] = out["right lung"], out["left lung"]
    return out


def _write_scr(scr, swap=False, folds=(("fold1", ("JPCLN001", "JPCNN001")), ("fold2", ("JPCLN002",))),
               structures=STRUCTURES):
    masks = _scr_masks(swap)
    for fold, stems in folds:
        for s in structures:
            d = scr / "scratch" / fold / "masks" / s
            d.mkdir(parents=True)
            for stem in stems:
                Image.fromarray(masks[s]).save(d / f"{stem}.gif")
    return scr


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    base = tmp_path_factory.mktemp("jsrt")
    root = base / "JSRT"
    (root / "All247images").mkdir(parents=True)
    for i, stem in enumerate(("JPCLN001", "JPCLN002", "JPCNN001")):
        raw = np.zeros((2048, 2048), dtype=">u2")
        raw[:100, :50] = 4095 - i  # asymmetric pattern, 12-bit values
        raw.tofile(root / "All247images" / f"{stem}.IMG")
    info = root / "Clinical_Information"
    info.mkdir()
    (info / "CLNDAT_EN.txt").write_text(CLNDAT)
    (info / "CNNDAT_EN.TXT").write_text(CNNDAT)  # upper-case extension: matched ignoring case
    _write_scr(base / "SCR")
    _write_scr(base / "SCR_swapped", swap=True, structures=("left lung", "right lung", "left clavicle"))
    return base


def _prepare(tmp_path, root, **kw):
    out = tmp_path / "out" / "jsrt.json"
    prepare("jsrt", str(root), str(out), **kw)
    return json.loads(out.read_text()), out.parent


def _items(data):
    return {it["id"]: it for s in ("training", "validation", "test") for it in data[s]}


def test_labels_boxes_and_meta(tmp_path, dataset):
    data, _ = _prepare(tmp_path, dataset / "JSRT")
    assert "segmentation" not in data["tasks"]
    assert data["tasks"]["classification"]["labels"] == ["nodule"]
    assert data["tasks"]["detection"]["classes"] == ["nodule"]
    items = _items(data)
    one, two, neg = items["JPCLN001"], items["JPCLN002"], items["JPCNN001"]
    assert (one["label"], two["label"], neg["label"]) == ([1], [1], [0])
    half = 15 / SPACING_MM / 2  # 42.857 px
    assert one["boxes"] == [[round(1634 - half, 2), round(692 - half, 2), round(1634 + half, 2), round(692 + half, 2)]]
    assert one["boxes"] == [[1591.14, 649.14, 1676.86, 734.86]] and one["box_labels"] == [0]
    assert two["boxes"] == [[0.0, 1982.86, 87.14, 2048.0]]  # 20 mm nodule near the bottom-left corner, clipped
    assert neg["boxes"] == [] and neg["box_labels"] == []
    m = one["meta"]
    assert m["source_id"] == "JPCLN001.IMG" and m["malignancy"] == "malignant" and m["subtlety"] == 3
    assert (m["size_mm"], m["age"], m["sex"], m["nodule_center"]) == (15.0, 53, "M", [1634.0, 692.0])
    assert (m["location"], m["diagnosis"]) == ("l.upper lobe", "lung cancer(adenocarcinoma)")
    assert "age" not in two["meta"] and two["meta"]["sex"] == "F"  # age "?"
    assert neg["meta"]["age"] == 58 and neg["meta"]["sex"] == "M"
    assert all(it["view"] == "PA" and it["patient_id"] == it["id"] for it in items.values())
    assert one["image"].endswith("/JSRT/All247images/JPCLN001.IMG") and not one["image"].startswith("/")


def test_views_filter(tmp_path, dataset):
    data, _ = _prepare(tmp_path, dataset / "JSRT", views=["pa", "AP"])
    assert len(_items(data)) == 3
    data, _ = _prepare(tmp_path, dataset / "JSRT", views=["AP"])
    assert _items(data) == {}


@pytest.fixture(scope="module")
def scr_build(dataset, tmp_path_factory):
    return _prepare(tmp_path_factory.mktemp("scr_out"), dataset / "JSRT", scr_root=str(dataset / "SCR"))


def test_scr_masks_upsampled_and_official_folds(scr_build):
    data, out_dir = scr_build
    seg = data["tasks"]["segmentation"]
    assert seg["classes"] == ["lung_left", "lung_right", "heart", "clavicle_left", "clavicle_right"]
    assert "found to be the patient's left" in seg["description"]
    assert [it["id"] for it in data["training"]] == ["JPCLN001", "JPCNN001"]  # fold1 (0.15 of 2 rounds to 0)
    assert [it["id"] for it in data["test"]] == ["JPCLN002"]  # fold2
    item = _items(data)["JPCLN001"]
    assert item["meta"]["scr_fold"] == "fold1" and item["meta"]["mask_upsampled_from"] == [1024, 1024]
    assert "lung_sides_contradict" not in item["meta"]
    src = _scr_masks()
    names = {"lung_left": "left lung", "lung_right": "right lung", "heart": "heart",
             "clavicle_left": "left clavicle", "clavicle_right": "right clavicle"}
    assert list(item["mask"]) == list(names)
    for cls, folder in names.items():
        m = np.array(Image.open(out_dir / item["mask"][cls]))
        assert m.shape == (2048, 2048) and set(np.unique(m)) == {0, 255}
        assert np.array_equal(m > 0, np.kron(src[folder] > 0, np.ones((2, 2), bool))), cls


def test_scr_left_lung_on_viewers_left_is_swapped_and_validation_carved(tmp_path, dataset):
    data, out_dir = _prepare(tmp_path, dataset / "JSRT", scr_root=str(dataset / "SCR_swapped"), val_fraction=0.5)
    assert "viewer's left = the patient's right" in data["tasks"]["segmentation"]["description"]
    assert data["tasks"]["segmentation"]["classes"] == ["lung_left", "lung_right", "clavicle_right"]
    item = _items(data)["JPCLN001"]
    src = _scr_masks(swap=True)
    m = np.array(Image.open(out_dir / item["mask"]["lung_left"])) > 0
    assert np.array_equal(m, np.kron(src["right lung"] > 0, np.ones((2, 2), bool)))  # lies on the viewer's right
    c = np.array(Image.open(out_dir / item["mask"]["clavicle_right"])) > 0
    assert np.array_equal(c, np.kron(src["left clavicle"] > 0, np.ones((2, 2), bool)))  # clavicles follow
    # fold1 split into training and validation, fold2 stays the test set
    assert len(data["training"]) == 1 and len(data["validation"]) == 1
    assert {it["id"] for it in data["training"] + data["validation"]} == {"JPCLN001", "JPCNN001"}
    assert [it["id"] for it in data["test"]] == ["JPCLN002"]


def test_scr_forced_side_partial_folds_and_options(tmp_path, dataset):
    scr = _write_scr(tmp_path / "SCR_part", swap=True, folds=(("fold2", ("JPCLN002",)),),
                     structures=("left lung", "right lung"))
    with pytest.warns(UserWarning, match="in neither SCR fold"):
        data, _ = _prepare(tmp_path, dataset / "JSRT", scr_root=str(scr), left_side="patient")
    items = _items(data)
    assert items["JPCLN002"]["meta"]["lung_sides_contradict"] is True
    assert "mask" not in items["JPCLN001"] and "mask" in items["JPCLN002"]
    assert [it["id"] for it in data["test"]] == ["JPCLN002"]
    with pytest.raises(ConfigError, match="val_fraction"):
        _prepare(tmp_path, dataset / "JSRT", scr_root=str(scr), val_fraction=1.5)
    with pytest.raises(ConfigError, match="left_side"):
        _prepare(tmp_path, dataset / "JSRT", scr_root=str(scr), left_side="up")
    with pytest.raises(ConfigError, match="unknown option"):
        _prepare(tmp_path, dataset / "JSRT", masks="x")


def test_random_split_without_scr(tmp_path, dataset):
    data, _ = _prepare(tmp_path, dataset / "JSRT", split="random", seed=2)
    ids = [it["id"] for s in ("training", "validation", "test") for it in data[s]]
    assert sorted(ids) == ["JPCLN001", "JPCLN002", "JPCNN001"]
    again, _ = _prepare(tmp_path, dataset / "JSRT", seed=2)  # official without SCR = the random patient split
    assert {s: [it["id"] for it in again[s]] for s in ("training", "validation", "test")} == \
        {s: [it["id"] for it in data[s]] for s in ("training", "validation", "test")}


def test_wrong_root_and_missing_clinical_file(tmp_path, dataset):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="All247images: no JSRT images"):
        prepare("jsrt", str(tmp_path / "empty"), str(tmp_path / "o.json"))
    root = tmp_path / "noinfo"
    shutil.copytree(dataset / "JSRT" / "All247images", root / "All247images")
    with pytest.raises(DatasetLayoutError, match="CLNDAT_EN.txt: expected file not found"):
        _prepare(tmp_path, root)
    with pytest.raises(DatasetLayoutError, match="SCR mask folders"):
        _prepare(tmp_path, dataset / "JSRT", scr_root=str(tmp_path / "empty"))


def test_wrong_image_size(tmp_path):
    root = tmp_path / "JSRT"
    (root / "All247images").mkdir(parents=True)
    (root / "All247images" / "JPCNN001.IMG").write_bytes(b"\0" * 1000)
    (root / "CLNDAT_EN.txt").write_text("")
    with pytest.raises(DatasetLayoutError, match=r"JPCNN001\.IMG: 1000 bytes"):
        _prepare(tmp_path, root)


def test_unparsable_record_names_file_and_line(tmp_path, dataset):
    root = tmp_path / "JSRT"
    (root / "All247images").mkdir(parents=True)
    (root / "CLNDAT_EN.txt").write_text(CLNDAT.split("\n")[0] + "\nJPCLN002.IMG\t5\t20\t60\tfemale\tleft\t2040\n")
    with pytest.raises(DatasetLayoutError, match=r"CLNDAT_EN\.txt:2: JPCLN002: .*not numbers"):
        parse_clndat(str(root / "CLNDAT_EN.txt"))
    (root / "CLNDAT_EN.txt").write_text("JPCLN001.IMG\t3\t15\n")
    with pytest.raises(DatasetLayoutError, match=r"CLNDAT_EN\.txt:1: JPCLN001: 2 fields"):
        parse_clndat(str(root / "CLNDAT_EN.txt"))


def test_records_run_together_and_space_separated(tmp_path):
    path = tmp_path / "CLNDAT_EN.txt"
    path.write_text("JPCLN001.IMG\t3\t15\t53\tmale\t1634\t692\tmalignant\tl.upper lobe\tlung cancer"
                    "JPCLN002.IMG\t5\t20\t61\tfemale\t30\t40\tbenign\tr.lower lobe\thamartoma\r\n"
                    "JPCLN003 2 12.5 47 male 100 200 benign r.upper lobe inflammatory mass\r\n")
    recs = parse_clndat(str(path))
    assert recs["JPCLN001"]["diagnosis"] == "lung cancer" and recs["JPCLN002"]["x"] == 30
    assert recs["JPCLN003"]["size_mm"] == 12.5 and recs["JPCLN003"]["location"] == "r.upper"
    assert recs["JPCLN003"]["diagnosis"] == "lobe inflammatory mass"  # without tabs the free text is ambiguous
