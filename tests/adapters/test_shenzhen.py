"""Shenzhen adapter: a tiny copy of the NLM layout (ChinaSet_AllFiles/CXR_png, ClinicalReadings) plus the
third-party Kaggle lung masks (mask/CHNCXR_XXXX_X_mask.png)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cxrfx.data.adapters import prepare
from cxrfx.data.adapters.shenzhen import parse_clinical_reading
from cxrfx.errors import ConfigError, DatasetLayoutError

H, W = 32, 40

NAMES = [f"CHNCXR_{i:04d}_{i % 2}.png" for i in range(1, 11)]  # odd numbers TB, even normal


def _png(path, mode="RGB", h=H, w=W):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.arange(h * w).reshape(h, w) % 200).astype(np.uint8)
    img = Image.fromarray(arr, mode="L")
    img.convert(mode).save(path)  # the NLM Shenzhen PNGs are RGB


def _lung_mask(h=H, w=W, value=255):
    m = np.zeros((h, w), np.uint8)
    m[5:25, 4:15] = value   # one lung on the viewer's left
    m[6:27, 24:36] = value  # the other on the viewer's right
    return m


def _write_dataset(root, masks=True):
    base = root / "ChinaSet_AllFiles"
    for name in NAMES:
        _png(base / "CXR_png" / name)
    (base / "CXR_png" / "Thumbs.db").write_bytes(b"junk")
    readings = base / "ClinicalReadings"
    readings.mkdir(parents=True)
    (readings / "CHNCXR_0001_1.txt").write_text("male 35yrs\nPTB in the right upper field\n")
    (readings / "CHNCXR_0002_0.txt").write_text("female  24yrs\r\nnormal\r\n")
    (readings / "CHNCXR_0004_0.txt").write_text("Male 9month\n\nnormal\n")
    if masks:
        mdir = root / "shcxr-lung-mask" / "mask" / "mask"  # the Kaggle archive nests mask/mask
        mdir.mkdir(parents=True)
        for name in NAMES[:4]:  # third-party masks cover only part of the set
            Image.fromarray(_lung_mask()).save(mdir / name.replace(".png", "_mask.png"))
        # a mask at twice the image size, and a 0/1-valued one
        Image.fromarray(np.kron(_lung_mask(), np.ones((2, 2), np.uint8))).save(mdir / "CHNCXR_0005_1_mask.png")
        Image.fromarray(_lung_mask(value=1)).save(mdir / "CHNCXR_0006_0_mask.png")
    return root


def _prepare(tmp_path, root=None, **kw):
    if root is None:
        root = tmp_path / "shenzhen"
        if not root.exists():
            _write_dataset(root)
    out = tmp_path / "out" / "shenzhen.json"
    prepare("shenzhen", str(root), str(out), **kw)
    return json.loads(out.read_text()), out.parent


def _items(data):
    return {it["id"]: it for s in ("training", "validation", "test") for it in data[s]}


def test_labels_patients_and_readings(tmp_path):
    data, _ = _prepare(tmp_path)
    items = _items(data)
    assert len(items) == 10
    assert data["tasks"]["classification"]["labels"] == ["Tuberculosis"]
    assert items["CHNCXR_0001_1"]["label"] == [1] and items["CHNCXR_0002_0"]["label"] == [0]
    assert items["CHNCXR_0003_1"]["patient_id"] == "CHNCXR_0003"
    assert items["CHNCXR_0001_1"]["meta"]["source_id"] == "CHNCXR_0001_1"
    assert items["CHNCXR_0001_1"]["image"] == "../shenzhen/ChinaSet_AllFiles/CXR_png/CHNCXR_0001_1.png"
    m1 = items["CHNCXR_0001_1"]["meta"]
    assert (m1["sex"], m1["age"], m1["finding"]) == ("M", 35, "PTB in the right upper field")
    m2 = items["CHNCXR_0002_0"]["meta"]
    assert (m2["sex"], m2["age"], m2["finding"]) == ("F", 24, "normal")
    assert items["CHNCXR_0004_0"]["meta"]["age"] == 0.75  # 9 months
    assert "sex" not in items["CHNCXR_0003_1"]["meta"]  # no reading file


def test_masks_decoded_and_resized(tmp_path):
    data, out_dir = _prepare(tmp_path)
    assert data["tasks"]["segmentation"]["classes"] == ["lungs"]
    items = _items(data)
    expected = _lung_mask() > 0
    for stem in ("CHNCXR_0001_1", "CHNCXR_0002_0", "CHNCXR_0006_0"):
        m = np.array(Image.open(out_dir / items[stem]["mask"]["lungs"]))
        assert m.shape == (H, W) and set(np.unique(m)) == {0, 255}
        assert np.array_equal(m > 0, expected)
    resized = items["CHNCXR_0005_1"]
    assert resized["meta"]["mask_resized_from"] == [H * 2, W * 2]
    m = np.array(Image.open(out_dir / resized["mask"]["lungs"])) > 0
    assert np.array_equal(m, _lung_mask() > 0)
    assert "mask" not in items["CHNCXR_0007_1"]  # no third-party mask: not annotated for segmentation


def test_without_masks_there_is_no_segmentation_task(tmp_path):
    data, _ = _prepare(tmp_path, root=_write_dataset(tmp_path / "sz", masks=False))
    assert "segmentation" not in data["tasks"]
    assert all("mask" not in it for it in _items(data).values())


def test_masks_option_points_at_a_folder(tmp_path):
    root = _write_dataset(tmp_path / "sz", masks=False)
    mdir = tmp_path / "elsewhere"
    mdir.mkdir()
    Image.fromarray(_lung_mask()).save(mdir / "CHNCXR_0001_1.png")  # without the _mask suffix
    data, _ = _prepare(tmp_path, root=root, masks=str(mdir))
    items = _items(data)
    assert "lungs" in items["CHNCXR_0001_1"]["mask"] and "mask" not in items["CHNCXR_0002_0"]


def test_random_patient_split(tmp_path):
    data, _ = _prepare(tmp_path, seed=1)
    sizes = [len(data[s]) for s in ("training", "validation", "test")]
    assert sizes == [7, 1, 2]
    patients = {s: {it["patient_id"] for it in data[s]} for s in ("training", "validation", "test")}
    assert not (patients["training"] & patients["test"]) and not (patients["training"] & patients["validation"])
    again, _ = _prepare(tmp_path, split="random", seed=1)
    assert [it["id"] for it in again["test"]] == [it["id"] for it in data["test"]]


def test_bad_names_are_skipped_with_a_warning(tmp_path):
    root = _write_dataset(tmp_path / "sz", masks=False)
    _png(root / "ChinaSet_AllFiles" / "CXR_png" / "CHNCXR_0011_7.png")
    with pytest.warns(UserWarning, match="CHNCXR_0011_7"):
        data, _ = _prepare(tmp_path, root=root)
    assert "CHNCXR_0011_7" not in _items(data)


def test_views_and_unknown_options_refused(tmp_path):
    with pytest.raises(ConfigError, match="view"):
        _prepare(tmp_path, views=["PA"])
    with pytest.raises(ConfigError, match="unknown option"):
        _prepare(tmp_path, bogus=1)


def test_wrong_root(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="CXR_png"):
        prepare("shenzhen", str(tmp_path / "empty"), str(tmp_path / "o.json"))


def test_unreadable_mask_names_the_file(tmp_path):
    root = _write_dataset(tmp_path / "sz")
    bad = root / "shcxr-lung-mask" / "mask" / "mask" / "CHNCXR_0002_0_mask.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetLayoutError, match="CHNCXR_0002_0_mask.png: cannot read the mask"):
        _prepare(tmp_path, root=root)


def test_mask_folder_matching_nothing_is_an_error(tmp_path):
    root = _write_dataset(tmp_path / "sz", masks=False)
    (root / "masks").mkdir()
    Image.fromarray(_lung_mask()).save(root / "masks" / "other_0001_mask.png")
    with pytest.raises(DatasetLayoutError, match="no mask file matches"):
        _prepare(tmp_path, root=root)


def test_parse_clinical_reading_styles():
    assert parse_clinical_reading("Patient's Sex: F\nPatient's Age: 044Y\n\nbilateral PTB\n") == \
        {"sex": "F", "age": 44, "finding": "bilateral PTB"}
    assert parse_clinical_reading("male 35 yrs\nnormal") == {"sex": "M", "age": 35, "finding": "normal"}
    assert parse_clinical_reading("") == {}
    assert parse_clinical_reading("left PTB") == {"finding": "left PTB"}
