"""Montgomery adapter: a tiny copy of the NLM layout (MontgomerySet/CXR_png with 16-bit PNGs holding 12-bit
values, ManualMask/leftMask + rightMask, ClinicalReadings)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cxrfx.data.adapters import prepare
from cxrfx.data.adapters.montgomery import resolve_sides, side_vote
from cxrfx.errors import ConfigError, DatasetLayoutError

H, W = 32, 40
NAMES = [f"MCUCXR_{i:04d}_{int(i > 5)}.png" for i in range(1, 9)]  # 1..5 normal, 6..8 TB


def _viewer_left():
    m = np.zeros((H, W), np.uint8)
    m[4:26, 3:16] = 255
    return m


def _viewer_right():
    m = np.zeros((H, W), np.uint8)
    m[6:28, 25:37] = 255
    return m


def _write_dataset(root, left_is_patient_left=True, flipped=(), eight_bit=()):
    base = root / "NLM-MontgomeryCXRSet" / "MontgomerySet"
    for sub in ("CXR_png", "ManualMask/leftMask", "ManualMask/rightMask", "ClinicalReadings"):
        (base / sub).mkdir(parents=True)
    for i, name in enumerate(NAMES, start=1):
        arr = (np.arange(H * W).reshape(H, W) * 4095 // (H * W - 1)).astype(np.uint16)  # 12-bit values
        if name in eight_bit:
            Image.fromarray((arr >> 4).astype(np.uint8)).save(base / "CXR_png" / name)
        else:
            img = Image.fromarray(arr)
            assert img.mode == "I;16"
            img.save(base / "CXR_png" / name)
        left, right = (_viewer_right(), _viewer_left()) if left_is_patient_left else (_viewer_left(), _viewer_right())
        if name in flipped:
            left, right = right, left
        Image.fromarray(left).save(base / "ManualMask" / "leftMask" / name)
        Image.fromarray(right).save(base / "ManualMask" / "rightMask" / name)
    (base / "ClinicalReadings" / "MCUCXR_0001_0.txt").write_text("Patient's Sex: M\nPatient's Age: 044Y\n\nnormal\n")
    (base / "ClinicalReadings" / "MCUCXR_0006_1.txt").write_text(
        "Patient's Sex: F\r\nPatient's Age: 061Y\r\nright upper lobe cavitary TB\r\n")
    (base / "CXR_png" / "Thumbs.db").write_bytes(b"x")
    return root


def _prepare(tmp_path, root=None, **kw):
    if root is None:
        root = tmp_path / "mc"
        if not root.exists():
            _write_dataset(root)
    out = tmp_path / "out" / "montgomery.json"
    prepare("montgomery", str(root), str(out), **kw)
    return json.loads(out.read_text()), out.parent


def _items(data):
    return {it["id"]: it for s in ("training", "validation", "test") for it in data[s]}


def _read(out_dir, rel):
    return np.array(Image.open(out_dir / rel)) > 0


def test_labels_meta_and_bits(tmp_path):
    root = _write_dataset(tmp_path / "mc", eight_bit=("MCUCXR_0002_0.png",))
    data, out_dir = _prepare(tmp_path, root=root)
    items = _items(data)
    assert len(items) == 8
    assert data["tasks"]["classification"]["labels"] == ["Tuberculosis"]
    assert items["MCUCXR_0001_0"]["label"] == [0] and items["MCUCXR_0006_1"]["label"] == [1]
    one = items["MCUCXR_0001_0"]
    assert one["patient_id"] == "MCUCXR_0001"
    assert one["meta"]["source_id"] == "MCUCXR_0001_0"
    assert one["meta"]["bits_stored"] == 12 and one["meta"]["size"] == [H, W]
    assert items["MCUCXR_0002_0"]["meta"]["bits_stored"] == 8
    assert (one["meta"]["sex"], one["meta"]["age"], one["meta"]["finding"]) == ("M", 44, "normal")
    six = items["MCUCXR_0006_1"]["meta"]
    assert (six["sex"], six["age"], six["finding"]) == ("F", 61, "right upper lobe cavitary TB")
    # the image really holds 12-bit values in a 16-bit container (cxrfx.io.load_cxr(path, bits_stored=12) reads it
    # with the value range 0..4095; not called here to keep this file free of the MONAI import)
    with Image.open(out_dir / one["image"]) as img:
        assert img.mode == "I;16" and np.array(img).max() == 4095


def test_left_mask_is_patients_left_when_it_lies_on_the_viewers_right(tmp_path):
    data, out_dir = _prepare(tmp_path)
    seg = data["tasks"]["segmentation"]
    assert seg["classes"] == ["lung_left", "lung_right"] and seg["mask_format"] == "per_class"
    assert "found to be the patient's left (8 image(s)" in seg["description"]
    item = _items(data)["MCUCXR_0003_0"]
    assert sorted(item["mask"]) == ["lung_left", "lung_right"]
    assert np.array_equal(_read(out_dir, item["mask"]["lung_left"]), _viewer_right() > 0)   # leftMask
    assert np.array_equal(_read(out_dir, item["mask"]["lung_right"]), _viewer_left() > 0)   # rightMask
    assert item["mask"]["lung_left"].endswith("MCUCXR_0003_0_lung_left.png")
    assert not any("leftMask" in p.name for p in (out_dir / "montgomery_masks").iterdir())


def test_left_mask_on_the_viewers_left_is_swapped(tmp_path):
    root = _write_dataset(tmp_path / "mc", left_is_patient_left=False, flipped=("MCUCXR_0004_0.png",))
    data, out_dir = _prepare(tmp_path, root=root)
    assert "viewer's left = the patient's right (1 image(s) show it on the viewer's right, 7" in \
        data["tasks"]["segmentation"]["description"]
    items = _items(data)
    item = items["MCUCXR_0003_0"]
    # rightMask (drawn on the viewer's right) becomes the patient's left lung
    assert np.array_equal(_read(out_dir, item["mask"]["lung_left"]), _viewer_right() > 0)
    assert np.array_equal(_read(out_dir, item["mask"]["lung_right"]), _viewer_left() > 0)
    assert items["MCUCXR_0004_0"]["meta"]["lung_sides_contradict"] is True
    assert "lung_sides_contradict" not in item["meta"]


def test_left_mask_option_overrides_the_vote(tmp_path):
    root = _write_dataset(tmp_path / "mc", left_is_patient_left=False)
    data, out_dir = _prepare(tmp_path, root=root, left_mask="patient")
    item = _items(data)["MCUCXR_0001_0"]
    assert np.array_equal(_read(out_dir, item["mask"]["lung_left"]), _viewer_left() > 0)  # leftMask as is
    assert item["meta"]["lung_sides_contradict"] is True
    with pytest.raises(ConfigError, match="left_mask"):
        _prepare(tmp_path, root=root, left_mask="sideways")


def test_random_patient_split(tmp_path):
    data, _ = _prepare(tmp_path, seed=4)
    assert [len(data[s]) for s in ("training", "validation", "test")] == [5, 1, 2]  # round(0.1*8) validation, round(0.2*8) test, rest training
    seen = [it["patient_id"] for s in ("training", "validation", "test") for it in data[s]]
    assert len(seen) == len(set(seen))
    again, _ = _prepare(tmp_path, split="random", seed=4)
    assert [it["id"] for it in again["training"]] == [it["id"] for it in data["training"]]


def test_image_without_masks_warns_and_has_no_mask(tmp_path):
    root = _write_dataset(tmp_path / "mc")
    (root / "NLM-MontgomeryCXRSet/MontgomerySet/ManualMask/rightMask/MCUCXR_0007_1.png").unlink()
    with pytest.warns(UserWarning, match="MCUCXR_0007_1"):
        data, _ = _prepare(tmp_path, root=root)
    assert "mask" not in _items(data)["MCUCXR_0007_1"]


def test_views_and_options_refused(tmp_path):
    with pytest.raises(ConfigError, match="view"):
        _prepare(tmp_path, views=["PA"])
    with pytest.raises(ConfigError, match="unknown option"):
        _prepare(tmp_path, masks="x")


def test_wrong_root(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="CXR_png"):
        prepare("montgomery", str(tmp_path / "empty"), str(tmp_path / "o.json"))


def test_missing_mask_folder_and_unreadable_mask(tmp_path):
    root = _write_dataset(tmp_path / "mc")
    manual = root / "NLM-MontgomeryCXRSet/MontgomerySet/ManualMask"
    (manual / "leftMask" / "MCUCXR_0002_0.png").write_bytes(b"broken")
    with pytest.raises(DatasetLayoutError, match=r"leftMask/MCUCXR_0002_0\.png: cannot read the mask"):
        _prepare(tmp_path, root=root)
    (manual / "rightMask").rename(manual / "other")
    with pytest.raises(DatasetLayoutError, match="rightMask: expected folder not found"):
        _prepare(tmp_path, root=root)


def test_side_helpers():
    left, right = _viewer_left() > 0, _viewer_right() > 0
    assert side_vote(right, left) == 1 and side_vote(left, right) == -1
    assert side_vote(np.zeros_like(left), right) == 0
    assert resolve_sides("auto", [1, 1, -1], "x")[0] == "patient"
    assert resolve_sides("auto", [-1, -1, 1, 0], "x")[0] == "viewer"
    assert resolve_sides("auto", [], "x") == ("patient", "x assumed to be the patient's left: the masks could not "
                                                         "tell (0 image(s) show it on the viewer's right, 0 on the "
                                                         "viewer's left)")
    assert resolve_sides("viewer", [1], "x")[0] == "viewer"
