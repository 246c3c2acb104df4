"""CheXmask adapter: OriginalResolution/<source>.csv with RLE masks (absolute 1-based starts, row-major), and the
source dataset's images found through images_root (VinDr-CXR as MONOCHROME1 DICOM, ChestX-Ray8 as PNG)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrfx.data.adapters import prepare
from cxrfx.errors import ConfigError, DatasetLayoutError

H, W = 32, 40
HEADER = ["image_id", "Dice RCA (Mean)", "Dice RCA (Max)", "Landmarks", "Left Lung", "Right Lung", "Heart",
          "Height", "Width"]


def rle(mask):
    """CheXmask's own encoder (get_RLE_from_mask): 1-based starts and lengths over the row-major flat mask."""
    pixels = np.concatenate([[0], np.asarray(mask, bool).flatten().astype(int), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def organs(h=H, w=W):
    viewer_left = np.zeros((h, w), bool)
    viewer_left[4:26, 3:15] = True
    viewer_right = np.zeros((h, w), bool)
    viewer_right[5:28, 25:37] = True
    heart = np.zeros((h, w), bool)
    heart[18:28, 14:27] = True
    return viewer_left, viewer_right, heart


def write_dicom(path, h=H, w=W):
    path.parent.mkdir(parents=True, exist_ok=True)
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    fm.MediaStorageSOPInstanceUID = generate_uid()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID, ds.SOPInstanceUID = fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = h, w
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"  # VinDr-CXR has inverted images
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(h * w).reshape(h, w) % 4096).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def row(ident, dice, left, right, heart, h=H, w=W, header=HEADER):
    values = {header[0]: ident, "Dice RCA (Mean)": dice, "Dice RCA (Max)": min(1.0, dice + 0.05),
              "Landmarks": "1,2,3,4,5,6", "Left Lung": rle(left), "Right Lung": rle(right), "Heart": rle(heart),
              "Height": h, "Width": w}
    return [values[c] for c in header]


def write_csv(path, rows, header=HEADER):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def vindr(root, swap=False, extra=()):
    vl, vr, heart = organs()
    left, right = (vl, vr) if swap else (vr, vl)  # "Left Lung" = patient's left = viewer's right
    rows = [row("a1b2", 0.85, left, right, heart), row("c3d4", 0.9, left, right, np.zeros((H, W), bool)),
            row("e5f6", 0.5, left, right, heart), row("i9j0", 0.95, left, right, heart), *extra]
    write_csv(root / "chexmask" / "OriginalResolution" / "VinDr-CXR.csv", rows)
    for ident, folder in (("a1b2", "train"), ("c3d4", "test"), ("e5f6", "train"), ("i9j0", "train")):
        write_dicom(root / "vinbigdata" / folder / f"{ident}.dicom")
    return root


def _prepare(tmp_path, root, **kw):
    kw.setdefault("images_root", str(root / "vinbigdata"))
    out = tmp_path / "out" / "chexmask.json"
    prepare("chexmask", str(root / "chexmask"), str(out), **kw)
    return json.loads(out.read_text()), out.parent


def _items(data):
    return {it["id"]: it for s in ("training", "validation", "test") for it in data[s]}


def _read(out_dir, rel):
    return np.array(Image.open(out_dir / rel)) > 0


def test_vindr_masks_decoded_and_filtered(tmp_path):
    root = vindr(tmp_path / "data")
    data, out_dir = _prepare(tmp_path, root)
    seg = data["tasks"]["segmentation"]
    assert seg["classes"] == ["lung_left", "lung_right", "heart"] and seg["mask_format"] == "per_class"
    assert "(1 dropped)" in seg["description"] and "found to be the patient's left" in seg["description"]
    items = _items(data)
    assert sorted(items) == ["a1b2", "c3d4", "i9j0"]  # e5f6 below Dice RCA 0.7
    vl, vr, heart = organs()
    a = items["a1b2"]
    assert a["image"].endswith("vinbigdata/train/a1b2.dicom")
    assert items["c3d4"]["image"].endswith("vinbigdata/test/c3d4.dicom")
    assert np.array_equal(_read(out_dir, a["mask"]["lung_left"]), vr)
    assert np.array_equal(_read(out_dir, a["mask"]["lung_right"]), vl)
    assert np.array_equal(_read(out_dir, a["mask"]["heart"]), heart)
    assert list(items["c3d4"]["mask"]) == ["lung_left", "lung_right"]  # empty heart RLE: class absent
    m = a["meta"]
    assert (m["source_id"], m["source_dataset"], m["dice_rca_mean"], m["dice_rca_max"], m["size"]) == \
        ("a1b2", "VinDr-CXR", 0.85, 0.9, [H, W])
    assert "patient_id" not in a  # VinDr-CXR ids carry no patient: image-level split


def test_rle_is_one_based_and_row_major(tmp_path):
    root = tmp_path / "data"
    corner = np.zeros((H, W), bool)
    corner[0, 0] = corner[0, 1] = corner[1, 0] = True  # first pixel included: a 0-based decoder would shift it
    strip = np.zeros((H, W), bool)
    strip[2, 5:W] = True
    strip[3, 0:3] = True  # a run wrapping from one row into the next
    vindr(root, extra=[row("k1", 0.8, strip, corner, corner)])
    write_dicom(root / "vinbigdata" / "train" / "k1.dicom")
    data, out_dir = _prepare(tmp_path, root)
    k1 = _items(data)["k1"]
    masks = {c: _read(out_dir, p) for c, p in k1["mask"].items()}
    assert rle(corner) == "1 2 41 1" and rle(strip) == f"{2 * W + 6} {W - 5 + 3}"
    assert np.array_equal(masks["heart"], corner)
    assert np.array_equal(masks["lung_left"], strip) and np.array_equal(masks["lung_right"], corner)


def test_left_lung_column_on_the_viewers_left_is_swapped(tmp_path):
    root = vindr(tmp_path / "data", swap=True)
    data, out_dir = _prepare(tmp_path, root)
    assert "viewer's left = the patient's right" in data["tasks"]["segmentation"]["description"]
    vl, vr, _ = organs()
    a = _items(data)["a1b2"]
    assert np.array_equal(_read(out_dir, a["mask"]["lung_left"]), vr)  # still the lung on the viewer's right
    forced, _ = _prepare(tmp_path, root, left_lung="patient")
    assert _items(forced)["a1b2"]["meta"]["lung_sides_contradict"] is True


def test_min_dice_option_and_missing_images(tmp_path):
    root = vindr(tmp_path / "data")
    (root / "vinbigdata" / "train" / "i9j0.dicom").unlink()
    with pytest.warns(UserWarning, match="1 row.*no image.*i9j0"):
        data, _ = _prepare(tmp_path, root, min_dice_rca=0)
    assert sorted(_items(data)) == ["a1b2", "c3d4", "e5f6"]


def test_size_mismatch_is_skipped(tmp_path):
    root = vindr(tmp_path / "data")
    write_dicom(root / "vinbigdata" / "train" / "a1b2.dicom", h=W, w=H)  # transposed image
    with pytest.warns(UserWarning, match="mask size different"):
        data, _ = _prepare(tmp_path, root)
    assert "a1b2" not in _items(data)
    data, _ = _prepare(tmp_path, root, check_size=False)
    assert "a1b2" in _items(data)


def test_chestxray8_id_column_patients_and_pattern(tmp_path):
    root = tmp_path / "data"
    header = ["Image Index"] + HEADER[1:]
    vl, vr, heart = organs()
    names = [f"{p:08d}_{k:03d}.png" for p in range(1, 6) for k in range(2)]
    write_csv(root / "chexmask" / "OriginalResolution" / "ChestX-Ray8.csv",
              [row(n, 0.8, vr, vl, heart, header=header) for n in names], header=header)
    for n in names:
        (root / "nih" / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "nih" / "images" / n)
    data, _ = _prepare(tmp_path, root, source="ChestX-Ray8", images_root=str(root / "nih"), seed=3)
    items = _items(data)
    assert items["00000003_001.png"]["patient_id"] == "00000003"
    patients = {s: {it["patient_id"] for it in data[s]} for s in ("training", "validation", "test")}
    assert sum(len(p) for p in patients.values()) == 5  # no patient in two splits
    assert sum(len(data[s]) for s in ("training", "validation", "test")) == 10
    # an explicit id_column and pattern work for a CSV the mapping does not know
    (root / "chexmask" / "OriginalResolution" / "ChestX-Ray8.csv").rename(root / "chexmask" / "custom.csv")
    data, _ = _prepare(tmp_path, root, csv="custom.csv", id_column="Image Index", images_root=str(root / "nih"),
                       image_pattern="images/{id}")
    assert len(_items(data)) == 10


def test_options_and_views(tmp_path):
    root = vindr(tmp_path / "data")
    with pytest.raises(ConfigError, match="images_root"):
        prepare("chexmask", str(root / "chexmask"), str(tmp_path / "o.json"))
    with pytest.raises(ConfigError, match="view"):
        _prepare(tmp_path, root, views=["PA"])
    with pytest.raises(ConfigError, match="left_lung"):
        _prepare(tmp_path, root, left_lung="north")
    with pytest.raises(ConfigError, match="unknown option"):
        _prepare(tmp_path, root, scr_root="x")


def test_wrong_root(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"OriginalResolution/VinDr-CXR\.csv: expected file not found"):
        prepare("chexmask", str(tmp_path / "empty"), str(tmp_path / "o.json"), images_root=str(tmp_path))


def test_missing_column(tmp_path):
    root = vindr(tmp_path / "data")
    header = [h for h in HEADER if h != "Heart"]
    write_csv(root / "chexmask" / "OriginalResolution" / "VinDr-CXR.csv", [["a1b2"] + ["0"] * 7], header=header)
    with pytest.raises(DatasetLayoutError, match=r"VinDr-CXR\.csv: missing column.*Heart"):
        _prepare(tmp_path, root)


@pytest.mark.parametrize("field, value, phrase", [
    ("Left Lung", "5 3 9", "Left Lung: odd number of RLE values"),
    ("Heart", f"{H * W} 5", "Heart: run .* leaves the 32x40 image"),
    ("Dice RCA (Mean)", "high", "Dice RCA / Height / Width not numeric"),
])
def test_unparsable_row_names_file_and_line(tmp_path, field, value, phrase):
    root = vindr(tmp_path / "data")
    path = root / "chexmask" / "OriginalResolution" / "VinDr-CXR.csv"
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    rows[2][HEADER.index(field)] = value  # the second data row (c3d4) is line 3
    write_csv(path, rows[1:])
    with pytest.raises(DatasetLayoutError, match=r"VinDr-CXR\.csv:3: " + phrase):
        _prepare(tmp_path, root)


def test_huge_rle_fields_are_read(tmp_path):
    root = vindr(tmp_path / "data")
    h, w = 400, 700  # a checkerboard-ish mask whose RLE exceeds the csv module's default 131072-char field limit
    big = np.zeros((h, w), bool)
    big[:, ::2] = True
    write_csv(root / "chexmask" / "OriginalResolution" / "VinDr-CXR.csv",
              [row("big", 0.9, big, np.zeros((h, w), bool), np.zeros((h, w), bool), h=h, w=w)])
    assert len(rle(big)) > 131072
    write_dicom(root / "vinbigdata" / "train" / "big.dicom", h=h, w=w)
    data, out_dir = _prepare(tmp_path, root)
    item = _items(data)["big"]
    assert np.array_equal(_read(out_dir, next(iter(item["mask"].values()))), big)


def test_images_found_by_name_unless_ambiguous(tmp_path):
    root = vindr(tmp_path / "data")
    moved = root / "vinbigdata" / "elsewhere" / "deeper"
    moved.mkdir(parents=True)
    (root / "vinbigdata" / "train" / "a1b2.dicom").rename(moved / "a1b2.dicom")  # no pattern finds it
    (root / "vinbigdata" / "train" / "i9j0.dicom").rename(moved / "i9j0.dicom")
    write_dicom(root / "vinbigdata" / "other" / "i9j0.dicom")  # the same name twice: ambiguous
    with pytest.warns(UserWarning, match="no image.*i9j0"):
        data, _ = _prepare(tmp_path, root)
    items = _items(data)
    assert items["a1b2"]["image"].endswith("elsewhere/deeper/a1b2.dicom") and "i9j0" not in items
