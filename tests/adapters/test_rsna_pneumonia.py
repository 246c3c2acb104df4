"""rsna_pneumonia adapter on a tiny fixture laid out like the Kaggle stage 2 release (CSV pair + DICOMs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrfx.data.adapters import prepare
from cxrfx.errors import ConfigError, DatasetLayoutError

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
P = ["0004cfab-14fd-4e49-80ba-63a80b6bddd6", "00313ee0-9eaa-42f4-b0ab-c148ed3241cd",
     "00436515-870c-4b36-a041-de91049b9ab4", "00c0b293-48e7-4e16-ac76-9269ba535a62",
     "00f08de1-517e-4652-a04f-d1dc9ee48593", "01027bc3-dc40-4165-a6c3-d6be2cb7ca34"]
LABELS = ["patientId,x,y,width,height,Target",
          f"{P[0]},,,,,0",
          f"{P[1]},,,,,0",
          f"{P[2]},2,3,10,8,1",  # two boxes on one image
          f"{P[2]},20,4.5,12,20,1",
          f"{P[3]},5,6,7,8,1",
          f"{P[4]},,,,,0",
          f"{P[5]},,,,,0"]  # DICOM not downloaded
CLASSES = ["patientId,class",
           f"{P[0]},No Lung Opacity / Not Normal",
           f"{P[1]},Normal",
           f"{P[2]},Lung Opacity",
           f"{P[2]},Lung Opacity",
           f"{P[3]},Lung Opacity",
           f"{P[4]},Normal",
           f"{P[5]},Normal"]
VIEWS = {P[0]: "PA", P[1]: "AP", P[2]: "AP", P[3]: "PA", P[4]: "PA"}


def write_dicom(path, pid, view, rows=32, cols=40):
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = CR_STORAGE
    fm.MediaStorageSOPInstanceUID = generate_uid()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID, ds.SOPInstanceUID = fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID
    ds.Modality, ds.ConversionType, ds.BodyPartExamined = "CR", "WSD", "CHEST"
    ds.PatientID, ds.ViewPosition = pid, view
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = (np.arange(rows * cols) % 256).astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_rsna(root, labels=LABELS, classes=CLASSES):
    (root / "stage_2_train_images").mkdir(parents=True, exist_ok=True)
    (root / "stage_2_test_images").mkdir(exist_ok=True)
    (root / "stage_2_train_labels.csv").write_text("\n".join(labels) + "\n")
    (root / "stage_2_detailed_class_info.csv").write_text("\n".join(classes) + "\n")
    for pid, view in VIEWS.items():
        write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", pid, view)
    return root


def _run(tmp_path, root, **kw):
    out = tmp_path / "out" / "rsna.json"
    prepare("rsna_pneumonia", str(root), str(out), **kw)
    return json.loads(out.read_text()), out


def _items(data):
    return {it["id"]: it for s in ("training", "validation", "test") for it in data[s]}


def test_classes_boxes_views(tmp_path):
    root = make_rsna(tmp_path / "rsna")
    data, out = _run(tmp_path, root)
    assert data["tasks"]["classification"]["labels"] == ["Normal", "No Lung Opacity / Not Normal", "Lung Opacity"]
    assert data["tasks"]["detection"]["classes"] == ["Lung Opacity"]
    items = _items(data)
    assert set(items) == set(VIEWS)  # the missing DICOM is left out
    assert "1 listed DICOM(s) not found" in data["description"]
    assert items[P[0]]["label"] == [0, 1, 0] and items[P[1]]["label"] == [1, 0, 0]
    two = items[P[2]]
    assert two["label"] == [0, 0, 1]
    assert two["boxes"] == [[2.0, 3.0, 12.0, 11.0], [20.0, 4.5, 32.0, 24.5]] and two["box_labels"] == [0, 0]
    assert items[P[3]]["boxes"] == [[5.0, 6.0, 12.0, 14.0]]
    assert items[P[0]]["boxes"] == [] and items[P[0]]["box_labels"] == []  # annotated negative
    assert {pid: it["view"] for pid, it in items.items()} == VIEWS
    assert two["meta"]["source_id"] == P[2] and two["patient_id"] == P[2]
    assert (out.parent / two["image"]).resolve() == (root / "stage_2_train_images" / f"{P[2]}.dcm").resolve()

    ap, _ = _run(tmp_path, root, views=["AP"])
    assert sorted(_items(ap)) == sorted([P[1], P[2]])
    with pytest.raises(ConfigError, match="match no image"):
        _run(tmp_path, root, views=["LL"])


def test_random_split(tmp_path):
    root = make_rsna(tmp_path / "rsna")
    a, _ = _run(tmp_path, root, seed=2)
    b, _ = _run(tmp_path, root, split="random", seed=2)
    assert a["training"] == b["training"]
    assert sum(len(a[s]) for s in ("training", "validation", "test")) == 5
    seen = set()
    for s in ("training", "validation", "test"):
        ids = {it["patient_id"] for it in a[s]}
        assert not ids & seen
        seen |= ids


def test_wrong_root(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(DatasetLayoutError, match="stage_2_train_labels.csv"):
        _run(tmp_path, tmp_path / "e")


def test_missing_column(tmp_path):
    labels = [LABELS[0].replace("Target", "target")] + LABELS[1:]
    root = make_rsna(tmp_path / "rsna", labels=labels)
    with pytest.raises(DatasetLayoutError, match=r"stage_2_train_labels.csv: missing column.*Target"):
        _run(tmp_path, root)


def test_unparsable_rows(tmp_path):
    labels = list(LABELS)
    labels[4] = f"{P[2]},20,four,12,20,1"
    root = make_rsna(tmp_path / "rsna", labels=labels)
    with pytest.raises(DatasetLayoutError, match=r"stage_2_train_labels.csv:5: y is 'four'"):
        _run(tmp_path, root)
    classes = list(CLASSES)
    classes[2] = f"{P[1]},Abnormal"
    root = make_rsna(tmp_path / "rsna2", classes=classes)
    with pytest.raises(DatasetLayoutError, match=r"stage_2_detailed_class_info.csv:3: class is 'Abnormal'"):
        _run(tmp_path, root)
    labels = list(LABELS)
    labels[1] = f"{P[0]},1,2,3,4,1"  # a box on an image whose class is not Lung Opacity
    root = make_rsna(tmp_path / "rsna3", labels=labels)
    with pytest.raises(DatasetLayoutError, match=r"stage_2_train_labels.csv:2: Target 1 disagrees"):
        _run(tmp_path, root)


def test_broken_dicom_is_named(tmp_path):
    root = make_rsna(tmp_path / "rsna")
    (root / "stage_2_train_images" / f"{P[4]}.dcm").write_bytes(b"not a dicom")
    with pytest.raises(DatasetLayoutError, match=P[4]):
        _run(tmp_path, root)
