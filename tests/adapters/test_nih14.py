"""nih14 adapter on a tiny fixture laid out like the NIH release (CSV quirks, images/ and images_XXX/images/)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from PIL import Image

from cxrfx.data.adapters import prepare
from cxrfx.errors import ConfigError, DatasetLayoutError

HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
# image, findings, follow-up, patient, age, sex, view, folder (None = not on disk)
ROWS = [
    ("00000001_000.png", "Cardiomegaly", 0, 1, 57, "M", "PA", "images_001/images"),
    ("00000001_001.png", "Cardiomegaly|Emphysema", 1, 1, 58, "M", "PA", "images_001/images"),
    ("00000002_000.png", "No Finding", 0, 2, 81, "M", "PA", "images_001/images"),
    ("00000003_000.png", "Hernia|Infiltration", 0, 3, 74, "F", "AP", "images_001/images"),  # RGBA
    ("00000004_000.png", "Mass|Nodule", 0, 4, 82, "M", "AP", "images_002/images"),
    ("00000004_001.png", "No Finding", 1, 4, 82, "M", "PA", "images_002/images"),
    ("00000005_000.png", "Effusion|Pleural_Thickening", 0, 5, 70, "F", "PA", "images"),
    ("00000005_001.png", "Atelectasis", 1, 5, 70, "F", "AP", "images"),
    ("00000006_000.png", "Pneumothorax", 0, 6, 33, "F", "PA", "images"),  # 1024 x 1024
    ("00000007_000.png", "Edema", 0, 7, 40, "M", "PA", None),  # listed, not downloaded
]
TEST_PATIENTS = {5, 6}
W, H = 40, 32  # stored size of the small PNGs (non-square)
BBOX = ("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00000005_000.png,Effusion,102.4,256,204.8,128\n"
        "00000005_000.png,Infiltrate,512,512,256,256\n"
        "00000006_000.png,Pneumothorax,100.5,200.25,50,60\n")
GOOGLE_HEADER = HEADER + ",Fracture,Pneumothorax,Airspace opacity,Nodule or mass,Set Id"


def _png(path, mode="L", size=(W, H)):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), np.uint8)
    arr[: size[1] // 3, : size[0] // 4] = 200
    img = Image.fromarray(arr)
    if mode == "RGBA":
        img = img.convert("RGBA")
    img.save(path)


def make_nih(root, rows=ROWS, header=HEADER, csv_name="Data_Entry_2017_v2020.csv"):
    root.mkdir(parents=True, exist_ok=True)
    lines = [header]
    for index, findings, follow, patient, age, sex, view, folder in rows:
        lines.append(f"{index},{findings},{follow},{patient},{age},{sex},{view},2500,2048,0.168,0.168")
        if folder:
            size = (1024, 1024) if index == "00000006_000.png" else (W, H)
            _png(root / folder / index, "RGBA" if index == "00000003_000.png" else "L", size)
    (root / csv_name).write_text("\n".join(lines) + "\n")
    test = [r[0] for r in rows if r[3] in TEST_PATIENTS]
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(r[0] for r in rows if r[3] not in TEST_PATIENTS) + "\n")
    (root / "BBox_List_2017.csv").write_text(BBOX)
    return root


def _run(tmp_path, root, **kw):
    out = tmp_path / "out" / "nih.json"
    prepare("nih14", str(root), str(out), **kw)
    return json.loads(out.read_text()), out


def _all(data):
    return {it["meta"]["source_id"]: (s, it) for s in ("training", "validation", "test") for it in data[s]}


def test_labels_views_meta_and_paths(tmp_path):
    root = make_nih(tmp_path / "nih")
    data, out = _run(tmp_path, root)
    labels = data["tasks"]["classification"]["labels"]
    assert labels[:3] == ["Atelectasis", "Cardiomegaly", "Consolidation"] and len(labels) == 14
    assert "No Finding" not in labels and "detection" not in data["tasks"]
    items = _all(data)
    assert set(items) == {r[0] for r in ROWS if r[7]}  # the image not on disk is left out
    assert "1 listed image(s) not found" in data["description"]

    def vec(*names):
        return [int(n in names) for n in labels]

    assert items["00000001_001.png"][1]["label"] == vec("Cardiomegaly", "Emphysema")
    assert items["00000002_000.png"][1]["label"] == [0] * 14  # No Finding
    assert items["00000003_000.png"][1]["label"] == vec("Hernia", "Infiltration")
    assert items["00000005_000.png"][1]["label"] == vec("Effusion", "Pleural_Thickening")
    it = items["00000004_000.png"][1]
    assert it["view"] == "AP" and it["patient_id"] == "4" and it["id"] == "00000004_000"
    assert it["meta"]["original_size"] == [2500, 2048] and it["meta"]["original_pixel_spacing"] == [0.168, 0.168]
    assert it["meta"]["age"] == 82 and it["meta"]["sex"] == "M"
    # both layouts are searched, paths are relative to the datalist
    assert (out.parent / it["image"]).resolve() == (root / "images_002/images/00000004_000.png").resolve()
    flat = items["00000005_000.png"][1]["image"]
    assert (out.parent / flat).resolve() == (root / "images/00000005_000.png").resolve()
    assert "boxes" not in it


def test_official_split_is_patient_wise(tmp_path):
    root = make_nih(tmp_path / "nih")
    data, _ = _run(tmp_path, root, val_fraction=0.25)
    test_ids = {it["meta"]["source_id"] for it in data["test"]}
    assert test_ids == {r[0] for r in ROWS if r[3] in TEST_PATIENTS}
    patients = {s: {it["patient_id"] for it in data[s]} for s in ("training", "validation", "test")}
    assert len(patients["training"]) == 3 and len(patients["validation"]) == 1  # 4 train_val patients found
    assert not (patients["training"] & patients["validation"]) and not (patients["training"] & patients["test"])
    again, _ = _run(tmp_path, root, val_fraction=0.25)
    assert again["validation"] == data["validation"]  # reproducible with the seed

    default, _ = _run(tmp_path, root)  # val_fraction 0.1 of 4 patients rounds to 0
    assert len(default["training"]) == 6 and default["validation"] == []


def test_views_filter_and_random_split(tmp_path):
    root = make_nih(tmp_path / "nih")
    data, _ = _run(tmp_path, root, views=["PA"])
    assert all(it["view"] == "PA" for s in ("training", "validation", "test") for it in data[s])
    assert set(_all(data)) == {r[0] for r in ROWS if r[7] and r[6] == "PA"}
    with pytest.raises(ConfigError, match=r"views \['LATERAL'\] match no image; the views present are \['AP', 'PA'\]"):
        _run(tmp_path, root, views=["LATERAL"])

    rnd, _ = _run(tmp_path, root, split="random", seed=3)
    where = {}
    for s in ("training", "validation", "test"):
        for it in rnd[s]:
            assert where.setdefault(it["patient_id"], s) == s  # no patient in two splits
    assert sum(len(rnd[s]) for s in ("training", "validation", "test")) == 9


def test_bbox_scaled_to_stored_pixels(tmp_path):
    root = make_nih(tmp_path / "nih")
    data, _ = _run(tmp_path, root, bbox=True)
    assert data["tasks"]["detection"]["classes"] == ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltrate", "Mass",
                                                     "Nodule", "Pneumonia", "Pneumothorax"]
    classes = data["tasks"]["detection"]["classes"]
    items = _all(data)
    it = items["00000005_000.png"][1]  # stored 40 x 32: x scaled by 40/1024, y by 32/1024
    assert it["boxes"] == [[4.0, 8.0, 12.0, 12.0], [20.0, 16.0, 30.0, 24.0]]
    assert [classes[c] for c in it["box_labels"]] == ["Effusion", "Infiltrate"]
    it = items["00000006_000.png"][1]  # stored 1024 x 1024: unchanged, xywh -> xyxy
    assert it["boxes"] == [[100.5, 200.25, 150.5, 260.25]] and classes[it["box_labels"][0]] == "Pneumothorax"
    assert "boxes" not in items["00000001_000.png"][1]  # not annotated for detection


def test_google_relabels(tmp_path):
    root = make_nih(tmp_path / "nih")
    rows = [
        "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143,NO,NO,YES,NO,val",
        "00000005_000.png,Effusion|Pleural_Thickening,0,5,70,F,PA,2500,2048,0.168,0.168,YES,NO,NO,YES,test",
        "00000006_000.png,Pneumothorax,0,6,33,F,PA,2500,2048,0.168,0.168,NO,YES,NO,NO,test",
    ]
    with gzip.open(root / "google2019_nih-chest-xray-labels.csv.gz", "wt", newline="") as f:
        f.write("\r\n".join([GOOGLE_HEADER, *rows]) + "\r\n")  # CRLF as in the released file
    data, _ = _run(tmp_path, root, google_labels=True)
    assert data["tasks"]["classification"]["labels"] == ["Fracture", "Pneumothorax", "Airspace opacity",
                                                         "Nodule or mass"]
    assert data["training"] == []
    assert [it["meta"]["source_id"] for it in data["validation"]] == ["00000001_000.png"]
    assert data["validation"][0]["label"] == [0, 0, 1, 0]
    test = {it["meta"]["source_id"]: it["label"] for it in data["test"]}
    assert test == {"00000005_000.png": [1, 0, 0, 1], "00000006_000.png": [0, 1, 0, 0]}


def test_rgba_png_loads_as_2d(tmp_path):
    root = make_nih(tmp_path / "nih")
    with Image.open(root / "images_001/images/00000003_000.png") as img:
        assert img.mode == "RGBA"
    from cxrfx.io import load_cxr

    image, meta = load_cxr(root / "images_001/images/00000003_000.png")
    assert image.shape == (H, W) and image[0, 0] == 200 and image[-1, -1] == 0


def test_original_data_entry_name_is_found(tmp_path):
    root = make_nih(tmp_path / "nih", csv_name="Data_Entry_2017.csv")
    data, _ = _run(tmp_path, root)
    assert len(_all(data)) == 9


# ------------------------------------------------------------------------------------------------ errors


def test_wrong_root(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="Data_Entry_2017_v2020.csv"):
        _run(tmp_path, tmp_path / "empty")


def test_missing_column(tmp_path):
    root = make_nih(tmp_path / "nih", header=HEADER.replace("Patient ID", "PatientID"))
    with pytest.raises(DatasetLayoutError, match=r"Data_Entry_2017_v2020.csv: missing column.*Patient ID"):
        _run(tmp_path, root)


def test_unparsable_rows(tmp_path):
    rows = list(ROWS)
    rows[2] = ("00000002_000.png", "Pneumonnia", 0, 2, 81, "M", "PA", "images_001/images")
    root = make_nih(tmp_path / "nih", rows=rows)
    with pytest.raises(DatasetLayoutError, match=r"Data_Entry_2017_v2020.csv:4: unknown finding 'Pneumonnia'"):
        _run(tmp_path, root)

    root = make_nih(tmp_path / "nih2")
    (root / "BBox_List_2017.csv").write_text(BBOX + "00000001_000.png,Mass,12,abc,3,4\n")
    with pytest.raises(DatasetLayoutError, match=r"BBox_List_2017.csv:5: Bbox"):
        _run(tmp_path, root, bbox=True)


def test_missing_split_list(tmp_path):
    root = make_nih(tmp_path / "nih")
    (root / "test_list.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="test_list.txt"):
        _run(tmp_path, root)
    data, _ = _run(tmp_path, root, split="random")  # random split does not need the lists
    assert len(_all(data)) == 9
