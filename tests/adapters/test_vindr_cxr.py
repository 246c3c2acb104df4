"""vindr_cxr adapter on tiny fixtures laid out like the Kaggle VinBigData release and the PhysioNet release."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrfx.data.adapters import prepare
from cxrfx.errors import ConfigError, DatasetLayoutError

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"
A, B, C, D, E, F = ("50a418190bc3fb1ef1633bf9678929b3", "9a5094b2563a1ef3ff50dc5c7ff71345",
                    "21a10246a5ec7af151081d0cd6d65dc9", "051132a778e61a86eb147c7c6f564dfe",
                    "1c32170b4af4ce1a3030eb8167753b06", "0c7a38f293d5f5e4846aa4ca6db4daf1")
EXTRA = ["47ed17dcb2cbeec15182ed335a8b5a9e", "7c1add6833d5f0102b0d3619a1682a64", "8e8a6b3d1c0d4e0f9a6b3c2d1e0f9a8b"]
TRAIN = [
    f"{A},No finding,14,R11,,,,", f"{A},No finding,14,R7,,,,", f"{A},No finding,14,R10,,,,",
    f"{B},Cardiomegaly,3,R1,10.0,20.0,30.0,28.0", f"{B},Cardiomegaly,3,R2,12.0,22.0,32.0,30.0",
    f"{B},No finding,14,R3,,,,",
    f"{C},Nodule/Mass,8,R1,2.0,2.0,6.0,6.0", f"{C},No finding,14,R2,,,,", f"{C},No finding,14,R3,,,,",
    f"{D},Pleural effusion,10,R4,1.0,10.0,9.0,30.0", f"{D},Pleural effusion,10,R5,20.0,10.0,28.0,30.0",
    f"{D},Aortic enlargement,0,R6,15.0,5.0,20.0,12.0",
    f"{E},No finding,14,R8,,,,", f"{E},No finding,14,R9,,,,", f"{E},No finding,14,R10,,,,",
    f"{F},No finding,14,R8,,,,", f"{F},No finding,14,R9,,,,", f"{F},No finding,14,R10,,,,",  # DICOM missing
    *[f"{x},No finding,14,R{k},,,," for x in EXTRA for k in (1, 2, 3)],
]


def write_dicom(path, photometric="MONOCHROME2", rows=32, cols=40):
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = DX_STORAGE
    fm.MediaStorageSOPInstanceUID = generate_uid()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID, ds.SOPInstanceUID = fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", ""
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 14, 13, 0
    ds.PixelData = (np.arange(rows * cols) * 7 % 16384).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_kaggle(root, rows=TRAIN, header=HEADER, test_rows=None):
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "test").mkdir(exist_ok=True)
    (root / "train.csv").write_text("\n".join([header, *rows]) + "\n")
    for image_id in dict.fromkeys(r.split(",")[0] for r in rows):
        if image_id != F:
            write_dicom(root / "train" / f"{image_id}.dicom", "MONOCHROME1" if image_id == E else "MONOCHROME2")
    if test_rows:
        (root / "test.csv").write_text("\n".join([header, *test_rows]) + "\n")
        for image_id in dict.fromkeys(r.split(",")[0] for r in test_rows):
            write_dicom(root / "test" / f"{image_id}.dicom")
    return root


def _run(tmp_path, root, **kw):
    out = tmp_path / "out" / "vindr.json"
    prepare("vindr_cxr", str(root), str(out), **kw)
    return json.loads(out.read_text()), out


def _items(data):
    return {it["id"]: it for s in ("training", "validation", "test") for it in data[s]}


def _named(data, it):
    classes = data["tasks"]["detection"]["classes"]
    return sorted(zip([classes[c] for c in it["box_labels"]], it["boxes"]))


def test_wbf_default_boxes_and_labels(tmp_path):
    root = make_kaggle(tmp_path / "vin")
    assert pydicom.dcmread(root / "train" / f"{E}.dicom").PhotometricInterpretation == "MONOCHROME1"
    data, out = _run(tmp_path, root)
    labels = data["tasks"]["classification"]["labels"]
    assert labels[:3] == ["Aortic enlargement", "Atelectasis", "Calcification"] and labels[-1] == "No finding"
    assert len(labels) == 15 and data["tasks"]["detection"]["classes"] == labels[:14]
    items = _items(data)
    assert F not in items and len(items) == 8 and E in items  # MONOCHROME1 image listed like the others
    assert "1 annotated image(s) without a DICOM" in data["description"]

    def vec(*names):
        return [int(n in names) for n in labels]

    assert items[A]["boxes"] == [] and items[A]["label"] == vec("No finding")
    assert _named(data, items[B]) == [("Cardiomegaly", [11.0, 21.0, 31.0, 29.0])]  # IoU 0.51: averaged
    assert items[B]["label"] == vec("Cardiomegaly")
    assert _named(data, items[C]) == [("Nodule/Mass", [2.0, 2.0, 6.0, 6.0])] and items[C]["label"] == vec("Nodule/Mass")
    assert _named(data, items[D]) == [("Aortic enlargement", [15.0, 5.0, 20.0, 12.0]),
                                      ("Pleural effusion", [1.0, 10.0, 9.0, 30.0]),
                                      ("Pleural effusion", [20.0, 10.0, 28.0, 30.0])]  # disjoint: not fused
    assert items[D]["label"] == vec("Aortic enlargement", "Pleural effusion")
    assert items[B]["meta"] == {"source_id": B, "readers": ["R1", "R2", "R3"], "annotations": "train.csv",
                                "reader_findings": ["Cardiomegaly", "No finding"]}
    assert items[B]["patient_id"] == B
    assert (out.parent / items[E]["image"]).resolve() == (root / "train" / f"{E}.dicom").resolve()


def test_majority_and_union(tmp_path):
    root = make_kaggle(tmp_path / "vin")
    maj, _ = _run(tmp_path, root, fusion="majority")
    items = _items(maj)
    labels = maj["tasks"]["classification"]["labels"]
    assert _named(maj, items[B]) == [("Cardiomegaly", [11.0, 21.0, 31.0, 29.0])]  # 2 of 3 readers
    assert items[C]["boxes"] == [] and items[C]["label"][labels.index("No finding")] == 1  # 1 of 3 readers
    assert items[C]["label"][labels.index("Nodule/Mass")] == 0
    assert items[D]["boxes"] == [] and items[D]["label"] == [0] * 14 + [1]

    uni, _ = _run(tmp_path, root, fusion="union")
    items = _items(uni)
    assert _named(uni, items[B]) == [("Cardiomegaly", [10.0, 20.0, 30.0, 28.0]),
                                     ("Cardiomegaly", [12.0, 22.0, 32.0, 30.0])]
    assert len(items[D]["boxes"]) == 3
    with pytest.raises(ConfigError, match="fusion"):
        _run(tmp_path, root, fusion="nms")


def test_splits(tmp_path):
    root = make_kaggle(tmp_path / "vin")
    data, _ = _run(tmp_path, root, seed=4)  # no test annotations: random split by image_id
    rnd, _ = _run(tmp_path, root, split="random", seed=4)
    assert data["training"] == rnd["training"] and "no test annotations" in data["description"]
    assert sum(len(data[s]) for s in ("training", "validation", "test")) == 8
    ids = [it["id"] for s in ("training", "validation", "test") for it in data[s]]
    assert len(ids) == len(set(ids))

    tests = ["aa11", "bb22"]
    test_rows = [f"{tests[0]},Pneumothorax,12,R15,3.0,4.0,13.0,24.0",
                 f"{tests[0]},Pneumothorax,12,R16,5.0,4.0,15.0,24.0",
                 f"{tests[0]},No finding,14,R17,,,,", f"{tests[1]},No finding,14,R15,,,,"]
    root = make_kaggle(tmp_path / "vin2", test_rows=test_rows)
    data, _ = _run(tmp_path, root, val_fraction=0.25)
    assert sorted(it["id"] for it in data["test"]) == tests
    assert len(data["validation"]) == 2 and len(data["training"]) == 6  # 8 training images, 25 %
    t = _items(data)[tests[0]]
    assert _named(data, t) == [("Pneumothorax", [4.0, 4.0, 14.0, 24.0])]


def test_physionet_layout(tmp_path):
    root = tmp_path / "physionet"
    (root / "annotations").mkdir(parents=True)
    (root / "train").mkdir()
    (root / "test").mkdir()
    (root / "annotations" / "annotations_train.csv").write_text(
        "image_id,rad_id,class_name,x_min,y_min,x_max,y_max\n"
        f"{A},R1,Rib fracture,1.0,2.0,3.0,4.0\n{A},R2,Rib fracture,1.0,2.0,3.0,4.0\n{A},R3,No finding,,,,\n"
        f"{B},R1,No finding,,,,\n{B},R2,No finding,,,,\n{B},R3,No finding,,,,\n")
    (root / "annotations" / "annotations_test.csv").write_text(  # consensus: no rad_id, never fused
        "image_id,class_name,x_min,y_min,x_max,y_max\n"
        f"{C},Lung Opacity,5.0,5.0,15.0,15.0\n{C},Lung Opacity,6.0,6.0,16.0,16.0\n{D},No finding,,,,\n")
    for image_id in (A, B):
        write_dicom(root / "train" / f"{image_id}.dicom")
    for image_id in (C, D):
        write_dicom(root / "test" / f"{image_id}.dicom")
    data, _ = _run(tmp_path, root)
    assert data["tasks"]["detection"]["classes"] == ["Lung Opacity", "Rib fracture"]
    assert data["tasks"]["classification"]["labels"] == ["Lung Opacity", "Rib fracture", "No finding"]
    items = _items(data)
    assert sorted(it["id"] for it in data["test"]) == sorted([C, D])
    assert items[A]["boxes"] == [[1.0, 2.0, 3.0, 4.0]] and items[A]["label"] == [0, 1, 0]
    assert items[C]["boxes"] == [[5.0, 5.0, 15.0, 15.0], [6.0, 6.0, 16.0, 16.0]] and items[C]["label"] == [1, 0, 0]
    assert items[D]["label"] == [0, 0, 1] and "physionet layout" in data["description"]


def test_wrong_root(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(DatasetLayoutError, match="train.csv"):
        _run(tmp_path, tmp_path / "e")


def test_missing_column(tmp_path):
    root = make_kaggle(tmp_path / "vin", header=HEADER.replace("rad_id", "reader"))
    with pytest.raises(DatasetLayoutError, match=r"train.csv: missing column.*rad_id"):
        _run(tmp_path, root)


def test_unparsable_rows(tmp_path):
    rows = list(TRAIN)
    rows[3] = f"{B},Cardiomegaly,3,R1,10.0,abc,30.0,28.0"
    root = make_kaggle(tmp_path / "vin", rows=rows)
    with pytest.raises(DatasetLayoutError, match=r"train.csv:5: Cardiomegaly box .* not four numbers"):
        _run(tmp_path, root)
    rows[3] = f"{B},Cardiomegaly,4,R1,10.0,20.0,30.0,28.0"
    root = make_kaggle(tmp_path / "vin2", rows=rows)
    with pytest.raises(DatasetLayoutError, match=r"train.csv:5: class_id '4' does not match"):
        _run(tmp_path, root)
    rows[3] = f"{B},Cardiomegaly,3,R1,30.0,20.0,10.0,28.0"
    root = make_kaggle(tmp_path / "vin3", rows=rows)
    with pytest.raises(DatasetLayoutError, match=r"train.csv:5: box .* is empty"):
        _run(tmp_path, root)
    with pytest.raises(ConfigError, match="views"):
        _run(tmp_path, root, views=["PA"])
