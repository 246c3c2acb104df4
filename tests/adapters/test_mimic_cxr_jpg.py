"""mimic_cxr_jpg adapter on a tiny fixture laid out like MIMIC-CXR-JPG 2.0.0 (gzip CSVs, files/pXX/p<subj>/s<study>)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from PIL import Image

from cxrfx.data.adapters import prepare
from cxrfx.errors import ConfigError, DatasetLayoutError

LABEL_HEADER = ("subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,"
                "Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,"
                "Support Devices")
LABEL_ROWS = [
    #         AT   CM   CO   ED   EC   FR LL LO   NF   PE   PO PN   PX   SD
    "10000032,50414267,,,,,,,,,1.0,,,,,",
    "10000032,53189527,,,,,,,,,1.0,,,,,",
    "10000764,57375967,,,1.0,,,,,,,,,-1.0,,",
    "11000011,51029426,1.0,-1.0,,0.0,,,,1.0,,1.0,,,0.0,1.0",
    "12000012,52000001,,1.0,,,,,,,,,,,,",
    "14000014,54000001,,,,1.0,,,,,,,,,,",
]
META_HEADER = ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,"
               "StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
               "PatientOrientationCodeSequence_CodeMeaning")
# dicom_id, subject, study, view, split (None: no JPG on disk)
IMAGES = [
    ("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "10000032", "50414267", "PA", "train"),
    ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "10000032", "50414267", "LATERAL", "train"),
    ("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "10000032", "53189527", "AP", "train"),
    ("a917c883-720a5bbf-02c84fc6-98ad00ac-c562ff80", "10000764", "57375967", "AP", "train"),
    ("b1a2c3d4-00000000-00000000-00000000-00000001", "11000011", "51029426", "PA", "validate"),
    ("b1a2c3d4-00000000-00000000-00000000-00000002", "12000012", "52000001", "LL", "test"),
    ("b1a2c3d4-00000000-00000000-00000000-00000003", "12000012", "52000001", "", "test"),
    ("b1a2c3d4-00000000-00000000-00000000-00000004", "13000013", "53000001", "PA", "train"),  # study unlabelled
    ("b1a2c3d4-00000000-00000000-00000000-00000005", "14000014", "54000001", "PA", "train"),  # JPG missing
]


def _gz(path, lines):
    with gzip.open(path, "wt", newline="") as f:
        f.write("\n".join(lines) + "\n")


def make_mimic(root, label_header=LABEL_HEADER, label_rows=LABEL_ROWS, meta_header=META_HEADER, split_rows=None):
    root.mkdir(parents=True, exist_ok=True)
    _gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", [label_header, *label_rows])
    _gz(root / "mimic-cxr-2.0.0-negbio.csv.gz", [label_header, *[r.replace("-1.0", "1.0") for r in label_rows]])
    meta = [meta_header]
    for dicom, subject, study, view, _ in IMAGES:
        meta.append(f"{dicom},{subject},{study},CHEST (PA AND LAT),{view},32,40,21800506,213014.531,"
                    f"CHEST (PA AND LAT),postero-anterior,Erect")
        if subject != "14000014":
            path = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((32, 40), 80, np.uint8)).save(path)
    _gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", meta)
    rows = split_rows or [f"{d},{st},{su},{sp}" for d, su, st, _, sp in IMAGES]
    _gz(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id,study_id,subject_id,split", *rows])
    return root


def _run(tmp_path, root, **kw):
    out = tmp_path / "out" / "mimic.json"
    prepare("mimic_cxr_jpg", str(root), str(out), **kw)
    return json.loads(out.read_text()), out


def _items(data):
    return {it["id"]: (s, it) for s in ("training", "validation", "test") for it in data[s]}


def test_labels_joined_per_study_and_policies(tmp_path):
    root = make_mimic(tmp_path / "mimic")
    data, out = _run(tmp_path, root)
    labels = data["tasks"]["classification"]["labels"]
    assert labels[0] == "Atelectasis" and labels[8] == "No Finding" and len(labels) == 14
    items = _items(data)
    assert len(items) == 7  # unlabelled study and missing JPG left out
    assert "1 image(s) whose study has no label row" in data["description"]
    assert "1 image(s) not found on disk" in data["description"]
    pa = items["02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"][1]
    lat = items["174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962"][1]
    assert pa["label"] == lat["label"] == [0] * 8 + [1] + [0] * 5  # both images of the study get its labels
    #                 AT CM  CO ED EC FR LL LO NF PE PO PN PX SD
    assert items["b1a2c3d4-00000000-00000000-00000000-00000001"][1]["label"] == \
        [1, -1, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1]
    assert items["a917c883-720a5bbf-02c84fc6-98ad00ac-c562ff80"][1]["label"] == [0, 0, 1] + [0] * 8 + [-1, 0, 0]
    assert pa["patient_id"] == "10000032" and pa["meta"]["study_id"] == "50414267" and pa["view"] == "PA"
    assert pa["meta"]["source_id"] == pa["id"] and pa["meta"]["size"] == [40, 32]
    assert (out.parent / pa["image"]).resolve() == \
        (root / "files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg").resolve()
    assert "view" not in items["b1a2c3d4-00000000-00000000-00000000-00000003"][1]  # blank ViewPosition

    ones, _ = _run(tmp_path, root, uncertain="ones", blank="ignore")
    assert _items(ones)["b1a2c3d4-00000000-00000000-00000000-00000001"][1]["label"] == \
        [1, 1, -1, 0, -1, -1, -1, 1, -1, 1, -1, -1, 0, 1]
    zeros, _ = _run(tmp_path, root, uncertain="zeros")
    assert _items(zeros)["a917c883-720a5bbf-02c84fc6-98ad00ac-c562ff80"][1]["label"][11] == 0
    negbio, _ = _run(tmp_path, root, labeler="negbio")
    assert _items(negbio)["a917c883-720a5bbf-02c84fc6-98ad00ac-c562ff80"][1]["label"][11] == 1


def test_official_split_views_random(tmp_path):
    root = make_mimic(tmp_path / "mimic")
    data, _ = _run(tmp_path, root)
    sizes = {s: len(data[s]) for s in ("training", "validation", "test")}
    assert sizes == {"training": 4, "validation": 1, "test": 2}
    assert {it["patient_id"] for it in data["test"]} == {"12000012"}

    front, _ = _run(tmp_path, root, views=["pa", "AP"])
    kept = [it for s in ("training", "validation", "test") for it in front[s]]
    assert sorted(it["view"] for it in kept) == ["AP", "AP", "PA", "PA"]
    with pytest.raises(ConfigError, match="match no image"):
        _run(tmp_path, root, views=["AP AXIAL"])

    rnd, _ = _run(tmp_path, root, split="random", seed=5)
    where = {}
    for s in ("training", "validation", "test"):
        for it in rnd[s]:
            assert where.setdefault(it["patient_id"], s) == s
    assert sum(len(rnd[s]) for s in ("training", "validation", "test")) == 7


def test_uncompressed_csvs_are_accepted(tmp_path):
    root = make_mimic(tmp_path / "mimic")
    for kind in ("chexpert", "metadata", "split"):
        gz = root / f"mimic-cxr-2.0.0-{kind}.csv.gz"
        (root / f"mimic-cxr-2.0.0-{kind}.csv").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    data, _ = _run(tmp_path, root)
    assert len(_items(data)) == 7


def test_wrong_root(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DatasetLayoutError, match="mimic-cxr-2.0.0-chexpert.csv.gz"):
        _run(tmp_path, tmp_path / "x")


def test_missing_column(tmp_path):
    root = make_mimic(tmp_path / "mimic", meta_header=META_HEADER.replace("ViewPosition", "View"))
    with pytest.raises(DatasetLayoutError, match=r"mimic-cxr-2.0.0-metadata.csv.gz: missing column.*ViewPosition"):
        _run(tmp_path, root)


def test_unparsable_rows(tmp_path):
    rows = list(LABEL_ROWS)
    rows[2] = rows[2].replace(",1.0,", ",positive,")
    root = make_mimic(tmp_path / "mimic", label_rows=rows)
    with pytest.raises(DatasetLayoutError, match=r"mimic-cxr-2.0.0-chexpert.csv.gz:4: Consolidation is 'positive'"):
        _run(tmp_path, root)
    root = make_mimic(tmp_path / "mimic2", split_rows=[f"{IMAGES[0][0]},50414267,10000032,training_set"])
    with pytest.raises(DatasetLayoutError, match=r"mimic-cxr-2.0.0-split.csv.gz:2: split is 'training_set'"):
        _run(tmp_path, root)
