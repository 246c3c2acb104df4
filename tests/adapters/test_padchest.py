"""padchest adapter on a tiny fixture laid out like the BIMCV release (one CSV, <ImageDir>/<ImageID> 16-bit PNGs)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from cxrfx.data.adapters import prepare
from cxrfx.errors import ConfigError, DatasetLayoutError

CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
HEADER = ["ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
          "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric", "Modality_DICOM", "Manufacturer_DICOM",
          "PhotometricInterpretation_DICOM", "PixelRepresentation_DICOM", "PixelAspectRatio_DICOM",
          "SpatialResolution_DICOM", "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Rows_DICOM",
          "Columns_DICOM", "XRayTubeCurrent_DICOM", "Exposure_DICOM", "ExposureInuAs_DICOM", "ExposureTime",
          "RelativeXRayExposure_DICOM", "ReportID", "Report", "MethodLabel", "Labels", "Localizations",
          "LabelsLocalizationsBySentence", "labelCUIS", "LocalizationsCUIS"]
# ImageID, ImageDir, PatientID, Projection, MethodLabel, Labels, on disk
ROWS = [
    ("216840111366964012283393834152009027091819347_00-165-068.png", "0", "p1", "PA", "Physician", "['normal']", True),
    ("216840111366964012283393834152009027091819348_00-165-069.png", "0", "p1", "L", "Physician", "['normal']", True),
    ("216840111366964012339356563862009041122518701_00-061-160.png", "1", "p2", "AP_horizontal", "RNN_model",
     "['pleural effusion', 'cardiomegaly', ' pneumonia', '']", True),
    ("216840111366964012373310883942009111121552024_00-072-099.png", "1", "p3", "PA", "RNN_model",
     "['pneumonia']", True),
    ("216840111366964012373310883942009111121552025_00-072-100.png", "1", "p4", "PA", "Physician", "", True),
    ("216840111366964012373310883942009111121552026_00-072-101.png", "2", "p5", "COSTAL", "Physician",
     "['rib fracture']", False),
    ("216840111366964012373310883942009111121552027_00-072-102.png", "2", "p6", "AP", "Physician",
     "['cardiomegaly', 'pacemaker']", True),
]
W, H = 40, 32


def make_padchest(root, rows=ROWS, header=HEADER):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / CSV, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for image_id, image_dir, patient, projection, method, labels, on_disk in rows:
            values = {"ImageID": image_id, "ImageDir": image_dir, "StudyDate_DICOM": "20090127",
                      "StudyID": f"s-{patient}",
                      "PatientID": patient, "PatientBirth": "1950.0", "PatientSex_DICOM": "M",
                      "ViewPosition_DICOM": "POSTEROANTERIOR", "Projection": projection,
                      "MethodProjection": "Manual review of DICOM fields", "Pediatric": "No", "Modality_DICOM": "CR",
                      "Manufacturer_DICOM": "PhilipsMedicalSystems", "PhotometricInterpretation_DICOM": "MONOCHROME2",
                      "PixelRepresentation_DICOM": "0", "PixelAspectRatio_DICOM": "None",
                      "SpatialResolution_DICOM": "0.139", "BitsStored_DICOM": "12", "WindowCenter_DICOM": "None",
                      "WindowWidth_DICOM": "None", "Rows_DICOM": str(H), "Columns_DICOM": str(W),
                      "XRayTubeCurrent_DICOM": "250", "Exposure_DICOM": "2", "ExposureInuAs_DICOM": "2000",
                      "ExposureTime": "8", "RelativeXRayExposure_DICOM": "None", "ReportID": "4765777",
                      "Report": "sin hallazgos radiologicos significativos, ", "MethodLabel": method, "Labels": labels,
                      "Localizations": "[]", "LabelsLocalizationsBySentence": "[['normal']]",
                      "labelCUIS": "[]", "LocalizationsCUIS": "[]"}
            w.writerow([values.get(h, "") for h in header])
            if on_disk:
                (root / image_dir).mkdir(exist_ok=True)
                arr = (np.arange(W)[None, :] * 100 + np.arange(H)[:, None]).astype(np.uint16)  # 16-bit values
                Image.fromarray(arr).save(root / image_dir / image_id)
    return root


def _run(tmp_path, root, **kw):
    out = tmp_path / "out" / "padchest.json"
    prepare("padchest", str(root), str(out), **kw)
    return json.loads(out.read_text()), out


def _items(data):
    return {it["id"][-10:]: (s, it) for s in ("training", "validation", "test") for it in data[s]}


def test_labels_views_paths_16bit(tmp_path):
    root = make_padchest(tmp_path / "pc")
    with Image.open(root / "0" / ROWS[0][0]) as img:
        assert img.mode in ("I;16", "I;16L", "I") and np.array(img).max() > 255  # a real 16-bit PNG
    data, out = _run(tmp_path, root)
    labels = data["tasks"]["classification"]["labels"]
    assert labels == ["cardiomegaly", "normal", "pacemaker", "pleural effusion", "pneumonia", "rib fracture"]
    items = _items(data)
    assert len(items) == 5  # empty Labels and the missing image left out
    assert "1 row(s) with an empty Labels cell" in data["description"] and "1 image(s) not found" in data["description"]
    assert items["00-165-068"][1]["label"] == [0, 1, 0, 0, 0, 0]
    it = items["00-061-160"][1]
    assert it["label"] == [1, 0, 0, 1, 1, 0]  # leading space and empty entry handled
    assert it["meta"]["labels"] == ["pleural effusion", "cardiomegaly", "pneumonia"]
    assert it["view"] == "AP_horizontal" and it["patient_id"] == "p2" and it["meta"]["method_label"] == "RNN_model"
    assert it["meta"]["bits_stored"] == 12 and it["meta"]["source_id"] == ROWS[2][0]
    assert (out.parent / it["image"]).resolve() == (root / "1" / ROWS[2][0]).resolve()

    lateral, _ = _run(tmp_path, root, views=["l"])
    kept = [it for s in ("training", "validation", "test") for it in lateral[s]]
    assert [it["view"] for it in kept] == ["L"]
    horiz, _ = _run(tmp_path, root, views=["PA", "AP_horizontal"])
    assert sorted(it["view"] for s in ("training", "validation", "test") for it in horiz[s]) == \
        ["AP_horizontal", "PA", "PA"]
    with pytest.raises(ConfigError, match="match no image"):
        _run(tmp_path, root, views=["COSTAL"])  # only on the missing image


def test_label_option_and_physician_only(tmp_path):
    root = make_padchest(tmp_path / "pc")
    data, _ = _run(tmp_path, root, labels="pneumonia,cardiomegaly")
    assert data["tasks"]["classification"]["labels"] == ["pneumonia", "cardiomegaly"]
    items = _items(data)
    assert items["00-061-160"][1]["label"] == [1, 1] and items["00-165-068"][1]["label"] == [0, 0]
    phys, _ = _run(tmp_path, root, physician_only=True)
    assert all(it["meta"]["method_label"] == "Physician" for s in ("training", "validation", "test") for it in phys[s])
    assert len(_items(phys)) == 3
    with pytest.raises(ConfigError, match="pneumonnia"):
        _run(tmp_path, root, labels=["pneumonnia"])


def test_random_patient_split(tmp_path):
    root = make_padchest(tmp_path / "pc")
    a, _ = _run(tmp_path, root, seed=0)
    b, _ = _run(tmp_path, root, split="random", seed=0)
    assert a["training"] == b["training"] and a["test"] == b["test"]  # official falls back to random
    for seed in range(4):
        data, _ = _run(tmp_path, root, seed=seed)
        where = {}
        for s in ("training", "validation", "test"):
            for it in data[s]:
                assert where.setdefault(it["patient_id"], s) == s
        assert sum(len(data[s]) for s in ("training", "validation", "test")) == 5


def test_wrong_root(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(DatasetLayoutError, match=CSV):
        _run(tmp_path, tmp_path / "e")


def test_missing_column(tmp_path):
    root = make_padchest(tmp_path / "pc", header=[h if h != "Projection" else "Proj" for h in HEADER])
    with pytest.raises(DatasetLayoutError, match=rf"{CSV}: missing column.*Projection"):
        _run(tmp_path, root)


def test_unparsable_labels(tmp_path):
    rows = list(ROWS)
    rows[3] = rows[3][:5] + ("['pneumonia'",) + rows[3][6:]
    root = make_padchest(tmp_path / "pc", rows=rows)
    with pytest.raises(DatasetLayoutError, match=rf"{CSV}:5: Labels .* not a Python list"):
        _run(tmp_path, root)
    rows[3] = rows[3][:5] + ("{'pneumonia': 1}",) + rows[3][6:]
    root = make_padchest(tmp_path / "pc2", rows=rows)
    with pytest.raises(DatasetLayoutError, match=rf"{CSV}:5: Labels .* not a list of strings"):
        _run(tmp_path, root)
