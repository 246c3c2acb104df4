"""CANDID-PTX adapter: three RLE CSVs with their own column names + DICOMs named by SOPInstanceUID (with and
without the .dcm extension); masks encoded here (SIIM relative column-major, and absolute row-major)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrfx.data.adapters import prepare
from cxrfx.errors import ConfigError, DatasetLayoutError

H, W = 32, 40


def encode_siim(mask):
    flat = np.asarray(mask, bool).T.flatten()
    out, end, i = [], 0, 0
    while i < flat.size:
        if flat[i]:
            j = i
            while j < flat.size and flat[j]:
                j += 1
            out += [i - end, j - i]
            end = i = j
        else:
            i += 1
    return " ".join(map(str, out))


def encode_absolute(mask):
    """1-based absolute starts over the row-major flat array."""
    flat = np.concatenate([[0], np.asarray(mask, bool).flatten().astype(int), [0]])
    runs = np.where(flat[1:] != flat[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(map(str, runs))


def write_dicom(path, *, patient, view="AP", photometric="MONOCHROME1"):
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR
    fm.MediaStorageSOPInstanceUID = generate_uid()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID = fm.MediaStorageSOPClassUID
    ds.SOPInstanceUID = fm.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PatientID = patient
    ds.ViewPosition = view
    ds.Rows, ds.Columns = H, W
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(H * W) % 4096).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def sop(k):  # anonymised UIDs look like this in the release
    return f"8.5.323.562604.1.588.4.70083199{k:02d}.7387629250.60820"


PTX1 = np.zeros((H, W), bool)
PTX1[1:4, 30:38] = True
PTX1[4:9, 36:38] = True  # L shape
PTX2 = np.zeros((H, W), bool)
PTX2[20:30, 2:5] = True
RIB = np.zeros((H, W), bool)
RIB[10:12, 10:14] = True
TUBE = np.zeros((H, W), bool)
TUBE[5:25, 20] = True
TUBE[24, 20:26] = True


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture
def candid(tmp_path):
    root = tmp_path / "candid_ptx"
    images = root / "dataset"
    images.mkdir(parents=True)
    ptx_rows = [
        [sop(0), "P0001_1.dcm", encode_siim(PTX1), "1.2.3.0", "Right apical pneumothorax, 2 cm. Chest tube."],
        [sop(0), "P0001_1.dcm", encode_siim(PTX2), "1.2.3.0", "Right apical pneumothorax, 2 cm. Chest tube."],
        [sop(1), "P0001_2.dcm", "-1", "1.2.3.1", "No pneumothorax."],
    ]
    for k in range(2, 14):
        ptx_rows.append([sop(k), f"P{k // 2:04d}_{k}.dcm", "-1", f"1.2.3.{k}", "Normal."])
    for k in range(14):
        name = sop(k) + (".dcm" if k % 2 else "")  # both naming styles
        write_dicom(str(images / name), patient=f"anon{k}", view="PA" if k in (2, 3) else "AP")
    write_dicom(str(images / sop(20)), patient="anon20")  # listed only in the rib-fracture file
    write_csv(root / "Pneumothorax_reports.csv",
              ["SOPInstanceUID", "filename", "EncodedPixels", "StudyInstanceUID", "Report"], ptx_rows)
    write_csv(root / "acute_rib_fracture.csv", ["anon_SOPUID", "annotation_ref", "mask_rle"],
              [[sop(1), "a1", encode_siim(RIB)], [sop(20), "a2", encode_siim(RIB)]])
    write_csv(root / "chest_tube.csv", ["anon_SOPUID", "annotation_ref", "mask_rle"],
              [[sop(0), "t1", encode_siim(TUBE)], [sop(2), "t2", "-1"]])
    return root


def build(root, tmp_path, **kw):
    out = tmp_path / "out" / "candid.json"
    prepare("candid_ptx", str(root), str(out), **kw)
    data = json.loads(out.read_text())
    return data, {it["id"]: it for s in ("training", "validation", "test") for it in data[s]}, out.parent


def read_mask(out_dir, rel):
    return np.array(Image.open(os.path.join(out_dir, rel))) > 0


def test_masks_labels_boxes(candid, tmp_path):
    data, items, out_dir = build(candid, tmp_path)
    assert data["tasks"]["classification"]["labels"] == ["pneumothorax", "rib_fracture", "chest_tube"]
    assert data["tasks"]["segmentation"]["classes"] == ["pneumothorax", "rib_fracture", "chest_tube"]
    assert len(items) == 15
    a = items[sop(0)]
    assert a["label"] == [1, 0, 1] and set(a["mask"]) == {"pneumothorax", "chest_tube"}
    np.testing.assert_array_equal(read_mask(out_dir, a["mask"]["pneumothorax"]), PTX1 | PTX2)
    np.testing.assert_array_equal(read_mask(out_dir, a["mask"]["chest_tube"]), TUBE)
    assert a["boxes"] == [[30.0, 1.0, 38.0, 9.0], [2.0, 20.0, 5.0, 30.0], [20.0, 5.0, 26.0, 25.0]]
    assert a["box_labels"] == [0, 0, 2]
    assert a["patient_id"] == "P0001" and a["view"] == "AP"
    assert a["meta"] == {"source_id": sop(0), "original_size": [H, W], "study_uid": "1.2.3.0",
                         "filename": "P0001_1.dcm"}
    b = items[sop(1)]
    assert b["label"] == [0, 1, 0] and list(b["mask"]) == ["rib_fracture"] and b["boxes"] == [[10.0, 10.0, 14.0, 12.0]]
    assert b["box_labels"] == [1] and b["image"].endswith(sop(1) + ".dcm")
    assert items[sop(2)]["label"] == [0, 0, 0] and items[sop(2)]["mask"] == {} and items[sop(2)]["boxes"] == []
    only_rib = items[sop(20)]
    assert only_rib["label"] == [-1, 1, 0] and only_rib["patient_id"] == "anon20"


def test_unlisted_unknown(candid, tmp_path):
    _, items, _ = build(candid, tmp_path, unlisted="unknown")
    assert items[sop(3)]["label"] == [0, -1, -1]
    assert items[sop(2)]["label"] == [0, -1, 0]  # listed with -1 in chest_tube.csv: a known negative


def test_absolute_rle_option(candid, tmp_path):
    write_csv(candid / "chest_tube.csv", ["anon_SOPUID", "annotation_ref", "mask_rle"],
              [[sop(0), "t1", encode_absolute(TUBE)]])
    write_csv(candid / "acute_rib_fracture.csv", ["anon_SOPUID", "annotation_ref", "mask_rle"], [])
    rows = list(csv.reader(open(candid / "Pneumothorax_reports.csv")))
    rows[1][2], rows[2][2] = encode_absolute(PTX1), encode_absolute(PTX2)
    write_csv(candid / "Pneumothorax_reports.csv", rows[0], rows[1:])
    _, items, out_dir = build(candid, tmp_path, rle="absolute")
    np.testing.assert_array_equal(read_mask(out_dir, items[sop(0)]["mask"]["pneumothorax"]), PTX1 | PTX2)
    np.testing.assert_array_equal(read_mask(out_dir, items[sop(0)]["mask"]["chest_tube"]), TUBE)


def test_mask_size_option(candid, tmp_path):
    big = np.zeros((64, 64), bool)
    big[40:50, 50:60] = True
    write_csv(candid / "chest_tube.csv", ["anon_SOPUID", "annotation_ref", "mask_rle"],
              [[sop(0), "t1", encode_siim(big)]])
    write_csv(candid / "acute_rib_fracture.csv", ["anon_SOPUID", "annotation_ref", "mask_rle"], [])
    rows = list(csv.reader(open(candid / "Pneumothorax_reports.csv")))
    rows = [rows[0]] + [r for r in rows[1:] if r[0] != sop(0)]
    write_csv(candid / "Pneumothorax_reports.csv", rows[0], rows[1:])
    _, items, out_dir = build(candid, tmp_path, mask_size="64x64")
    it = items[sop(0)]
    np.testing.assert_array_equal(read_mask(out_dir, it["mask"]["chest_tube"]), big)
    assert it["boxes"] == [[50.0, 40.0, 60.0, 50.0]] and it["meta"]["mask_size"] == [64, 64]
    assert it["label"] == [-1, 0, 1]
    with pytest.raises(ConfigError, match="mask_size"):
        prepare("candid_ptx", str(candid), str(tmp_path / "o.json"), mask_size=(64,))


def test_patient_split_and_views(candid, tmp_path):
    data, items, _ = build(candid, tmp_path, seed=4)
    where = {}
    for s in ("training", "validation", "test"):
        for it in data[s]:
            assert where.setdefault(it["patient_id"], s) == s
    assert items[sop(2)]["patient_id"] == items[sop(3)]["patient_id"] == "P0001"
    assert sum(len(data[s]) for s in ("training", "validation", "test")) == 15
    _, pa, _ = build(candid, tmp_path, views=["PA"])
    assert set(pa) == {sop(2), sop(3)}


def test_rib_fracture_alternative_file_name(candid, tmp_path):
    (candid / "acute_rib_fracture.csv").rename(candid / "Rib_fracture_mask_rle.csv")
    _, items, _ = build(candid, tmp_path)
    assert items[sop(1)]["label"] == [0, 1, 0]


def test_wrong_root(tmp_path):
    with pytest.raises(DatasetLayoutError, match="Pneumothorax_reports.csv"):
        prepare("candid_ptx", str(tmp_path), str(tmp_path / "o.json"))


def test_missing_column(candid, tmp_path):
    path = candid / "chest_tube.csv"
    path.write_text(path.read_text().replace("mask_rle", "mask", 1))
    with pytest.raises(DatasetLayoutError, match=r"chest_tube\.csv: missing column.*mask_rle"):
        prepare("candid_ptx", str(candid), str(tmp_path / "o.json"))


@pytest.mark.parametrize("bad", ["3 x", "4 5 6", "1279 5"])
def test_unparsable_row(candid, tmp_path, bad):
    write_csv(candid / "acute_rib_fracture.csv", ["anon_SOPUID", "annotation_ref", "mask_rle"],
              [[sop(1), "a1", encode_siim(RIB)], [sop(3), "a3", bad]])
    with pytest.raises(DatasetLayoutError, match=r"acute_rib_fracture\.csv:3"):
        prepare("candid_ptx", str(candid), str(tmp_path / "o.json"))


def test_missing_images(candid, tmp_path):
    os.remove(candid / "dataset" / (sop(5) + ".dcm"))
    with pytest.warns(UserWarning, match="1 annotated image"):
        _, items, _ = build(candid, tmp_path)
    assert sop(5) not in items
    with pytest.raises(DatasetLayoutError, match=r"Pneumothorax_reports\.csv:\d+: no image"):
        prepare("candid_ptx", str(candid), str(tmp_path / "o.json"), missing="error")
    for f in (candid / "dataset").iterdir():
        f.unlink()
    with pytest.raises(DatasetLayoutError, match="none of the"):
        prepare("candid_ptx", str(candid), str(tmp_path / "o.json"))
