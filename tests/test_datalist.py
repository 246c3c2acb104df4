"""Datalist schema and consistency checks, reading, resolving and writing."""

from __future__ import annotations

import copy
import json
import os

import pytest

from cxrfx.data.datalist import check_datalist, load_datalist, read_datalist, write_datalist
from cxrfx.errors import DatalistError

GOOD = {
    "name": "toy",
    "tasks": {
        "classification": {"labels": ["nodule", "effusion"]},
        "detection": {"classes": ["nodule"]},
        "segmentation": {"classes": ["lung_left", "lung_right"], "mask_format": "per_class"},
    },
    "training": [
        {"id": "a", "image": "images/a.png", "label": [1, -1], "boxes": [[1, 2, 10, 12]], "box_labels": [0],
         "mask": {"lung_left": "masks/a_l.png"}},
        {"id": "b", "image": "/abs/b.dcm", "label": [0, 0], "boxes": [], "box_labels": []},
        {"id": "c", "image": "images/c.png"},
    ],
    "validation": [{"id": "d", "image": "images/d.png", "label": [0, 1]}],
}


def _with(change):
    data = copy.deepcopy(GOOD)
    change(data)
    return data


def test_good_datalist_has_no_problems():
    assert check_datalist(GOOD) == []


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda d: d.pop("name"), "'name' is a required property"),
        (lambda d: d["training"][0].update(label=[2, 0]), "training[0].label[0]"),
        (lambda d: d["training"][0].update(label=[1]), "label has 1 entries, expected 2"),
        (lambda d: d["training"][0].update(box_labels=[0, 0]), "1 boxes but 2 box_labels"),
        (lambda d: d["training"][0].update(boxes=[[10, 2, 1, 12]]), "x1<x2"),
        (lambda d: d["training"][0].update(box_labels=[3]), "box_labels[0] = 3 but there are 1 classes"),
        (lambda d: d["training"][0].update(mask="masks/a.png"), "must map class name -> file"),
        (lambda d: d["training"][0].update(mask={"heart": "h.png"}), "unknown classes ['heart']"),
        (lambda d: d["training"][1].update(id="a"), "training[1] (id=a): duplicate id"),
        (lambda d: d["validation"][0].update(image="images/a.png"), "listed twice"),
        (lambda d: d["training"][2].update(box=[[0, 0, 1, 1]]), "Additional properties are not allowed ('box'"),
        (lambda d: d["training"][0].pop("box_labels"), "must be given together"),
        (lambda d: d["tasks"].pop("detection"), "declares no detection task"),
        (lambda d: d["tasks"]["segmentation"].pop("mask_format"), "'mask_format' is a required property"),
        (lambda d: d.update(box_mode="xywh"), "box_mode"),
    ],
)
def test_each_defect_is_reported(change, expected):
    problems = check_datalist(_with(change))
    assert any(expected in p for p in problems), problems


def test_read_reports_json_errors_with_the_path(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"name": "x", ')
    with pytest.raises(DatalistError, match=r"(?s)broken\.json.*not valid JSON.*line 1"):
        read_datalist(path)
    with pytest.raises(DatalistError, match=r"missing\.json.*file not found"):
        read_datalist(tmp_path / "missing.json")


def test_read_lists_every_problem(tmp_path):
    data = _with(lambda d: (d["training"][0].update(label=[1]), d["training"][1].update(box_labels=[0])))
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DatalistError) as info:
        read_datalist(path)
    assert len(info.value.problems) == 2
    assert str(path) in str(info.value)


def test_paths_resolve_relative_to_the_datalist(tmp_path):
    path = write_datalist(GOOD, tmp_path / "sub" / "toy.json")
    items = load_datalist(path, "training")
    assert items[0]["image"] == os.path.join(str(tmp_path), "sub", "images", "a.png")
    assert items[0]["mask"] == {"lung_left": os.path.join(str(tmp_path), "sub", "masks", "a_l.png")}
    assert items[1]["image"] == "/abs/b.dcm"
    assert all(it["dataset"] == "toy" for it in items)
    assert load_datalist(path, "test") == []
    with pytest.raises(ValueError, match="split must be one of"):
        load_datalist(path, "train")


def test_write_refuses_an_invalid_datalist_and_leaves_no_file(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(DatalistError):
        write_datalist(_with(lambda d: d.pop("tasks")), target)
    assert list(tmp_path.iterdir()) == []
