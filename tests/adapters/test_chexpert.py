"""chexpert adapter on a tiny fixture laid out like CheXpert-v1.0-small (train.csv / valid.csv, JPGs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cxrfx.data.adapters import prepare
from cxrfx.errors import ConfigError, DatasetLayoutError

RELEASE = "CheXpert-v1.0-small"
HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
          "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,"
          "Support Devices")
TRAIN = [  # rows as in the released file (values 1.0 / 0.0 / -1.0 / blank)
    "train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0",
    "train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,",
    "train/patient00002/study2/view2_lateral.jpg,Female,87,Lateral,,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,",
    "train/patient00002/study1/view1_frontal.jpg,Female,83,Frontal,AP,,,,1.0,,,-1.0,,,,,,1.0,",
    "train/patient00003/study1/view1_frontal.jpg,Male,41,Frontal,PA,,,,,,1.0,,,,0.0,,,,",
    "train/patient00004/study1/view1_frontal.jpg,Male,20,Frontal,PA,1.0,,,,,,,,,,0.0,,,",
    "train/patient00005/study1/view1_frontal.jpg,Male,55,Frontal,LL,,,,,,,,1.0,,,,,,",
    "train/patient00006/study1/view1_frontal.jpg,Male,60,Frontal,AP,1.0,,,,,,,,,,,,,",  # not downloaded
]
VALID = [
    "valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,"
    "0.0,1.0,1.0,1.0,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0",
    "valid/patient64542/study1/view1_frontal.jpg,Male,70,Frontal,PA,"
    "1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0",
    "valid/patient64542/study1/view2_lateral.jpg,Male,70,Lateral,,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,"
    "0.0",
]


def make_chexpert(root, train=TRAIN, valid=VALID, header=HEADER):
    rel = root / RELEASE
    rel.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.csv", train), ("valid.csv", valid)):
        (rel / name).write_text("\n".join([header] + [f"{RELEASE}/{r}" for r in rows]) + "\n")
        for r in rows:
            path = r.split(",")[0]
            if "patient00006" in path:
                continue
            (rel / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((32, 40), 90, np.uint8)).save(rel / path, quality=90)
    return root


def _run(tmp_path, root, **kw):
    out = tmp_path / "out" / "chexpert.json"
    prepare("chexpert", str(root), str(out), **kw)
    return json.loads(out.read_text()), out


def _by_source(data):
    return {it["meta"]["source_id"].split("/", 1)[1]: it for s in ("training", "validation", "test") for it in data[s]}


def test_labels_uncertain_policies_and_blanks(tmp_path):
    root = make_chexpert(tmp_path / "cx")
    data, out = _run(tmp_path, root)
    labels = data["tasks"]["classification"]["labels"]
    assert labels[0] == "No Finding" and labels[-1] == "Support Devices" and len(labels) == 14
    items = _by_source(data)
    assert len(items) == 10  # patient00006's image is missing
    it = items["train/patient00002/study2/view1_frontal.jpg"]
    #                     NF EC CM LO LL ED CO PN AT PX PE PO FR SD
    assert it["label"] == [0, 0, -1, 1, 0, -1, -1, 0, -1, 0, -1, 0, 1, 0]  # default: uncertain -> -1, blank -> 0
    assert items["train/patient00001/study1/view1_frontal.jpg"]["label"] == [1] + [0] * 12 + [1]
    assert it["patient_id"] == "patient00002" and it["meta"]["study_id"] == "patient00002/study2"
    assert it["meta"]["age"] == 87 and it["meta"]["sex"] == "Female" and it["view"] == "AP"
    assert it["id"] == "train/patient00002/study2/view1_frontal"
    expected = root / RELEASE / "train/patient00002/study2/view1_frontal.jpg"
    assert (out.parent / it["image"]).resolve() == expected.resolve()

    ones, _ = _run(tmp_path, root, uncertain="ones")
    assert _by_source(ones)["train/patient00002/study2/view1_frontal.jpg"]["label"] == \
        [0, 0, 1, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0]
    zeros, _ = _run(tmp_path, root, uncertain="zeros", blank="ignore")
    assert _by_source(zeros)["train/patient00002/study2/view1_frontal.jpg"]["label"] == \
        [-1, -1, 0, 1, -1, 0, 0, -1, 0, -1, 0, -1, 1, -1]


def test_official_split_views_and_random(tmp_path):
    root = make_chexpert(tmp_path / "cx")
    data, _ = _run(tmp_path, root, val_fraction=0.25)
    assert {it["patient_id"] for it in data["test"]} == {"patient64541", "patient64542"} and len(data["test"]) == 3
    train_p = {it["patient_id"] for it in data["training"]}
    val_p = {it["patient_id"] for it in data["validation"]}
    assert len(train_p) == 4 and len(val_p) == 1 and not train_p & val_p  # 5 train.csv patients on disk

    views = {it["meta"]["source_id"].split("/", 1)[1]: it["view"] for it in _by_source(data).values()}
    assert views["train/patient00002/study2/view2_lateral.jpg"] == "LATERAL"
    assert views["train/patient00005/study1/view1_frontal.jpg"] == "LL"
    pa, _ = _run(tmp_path, root, views=["PA", "AP"])
    kept = [it for s in ("training", "validation", "test") for it in pa[s]]
    assert len(kept) == 7 and all(it["view"] in ("PA", "AP") for it in kept)
    with pytest.raises(ConfigError, match="match no image"):
        _run(tmp_path, root, views=["('PA'"])  # e.g. a tuple mangled into a string

    rnd, _ = _run(tmp_path, root / RELEASE, split="random", seed=1)  # root may also be the release folder
    where = {}
    for s in ("training", "validation", "test"):
        for it in rnd[s]:
            assert where.setdefault(it["patient_id"], s) == s
    assert sum(len(rnd[s]) for s in ("training", "validation", "test")) == 10


def test_wrong_root(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DatasetLayoutError, match="train.csv"):
        _run(tmp_path, tmp_path / "nothing")


def test_missing_column(tmp_path):
    root = make_chexpert(tmp_path / "cx", header=HEADER.replace("Pleural Effusion", "Effusion"))
    with pytest.raises(DatasetLayoutError, match=r"train.csv: missing column.*Pleural Effusion"):
        _run(tmp_path, root)


def test_unparsable_rows(tmp_path):
    train = list(TRAIN)
    train[3] = train[3].replace(",1.0,,,-1.0", ",yes,,,-1.0")
    root = make_chexpert(tmp_path / "cx", train=train)
    with pytest.raises(DatasetLayoutError, match=r"train.csv:5: Lung Opacity is 'yes'"):
        _run(tmp_path, root)
    valid = list(VALID) + ["valid/someone/study1/view1_frontal.jpg,Male,70,Frontal,PA" + ",0.0" * 14]
    root = make_chexpert(tmp_path / "cx2", valid=valid)
    with pytest.raises(DatasetLayoutError, match=r"valid.csv:5: Path .* patientXXXXX"):
        _run(tmp_path, root)
