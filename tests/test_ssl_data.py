"""Unlabelled datalists: schema kind, a folder of images listed as one (``prepare image_folder``), bad files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cxrfx.data.datalist import check_datalist, folder_datalist, load_datalist, read_datalist
from cxrfx.data.validate import validate_datalist
from cxrfx.errors import DatalistError


def _images(folder, n=3, size=16):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def test_unlabelled_kind_rules():
    base = {"name": "u", "kind": "unlabelled", "tasks": {}, "training": [{"image": "a.png"}]}
    assert check_datalist(base) == []
    annotated_empty = {**base, "kind": "annotated"}
    assert any("tasks" in p for p in check_datalist(annotated_empty))  # an annotated datalist still needs a task
    assert any("tasks" in p for p in check_datalist({k: v for k, v in base.items() if k != "kind"}))
    with_tasks = {**base, "tasks": {"classification": {"labels": ["x"]}}}
    assert any("tasks" in p for p in check_datalist(with_tasks))
    labelled_item = {**base, "training": [{"image": "a.png", "label": [1]}]}
    assert any("declares no classification task" in p for p in check_datalist(labelled_item))


def test_folder_becomes_a_valid_unlabelled_datalist(tmp_path):
    _images(tmp_path / "imgs" / "sub", n=4)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    out = folder_datalist(tmp_path / "imgs", tmp_path / "lists" / "u.json", validation_fraction=0.5, seed=1)
    data = read_datalist(out)
    assert data["kind"] == "unlabelled" and data["tasks"] == {} and data["name"] == "imgs"
    items = data["training"] + data.get("validation", [])
    assert sorted(i["id"] for i in items) == [f"sub/img{i}.png" for i in range(4)]
    assert items[0]["image"].startswith("../imgs/")  # relative to the datalist's folder
    again = folder_datalist(tmp_path / "imgs", tmp_path / "lists" / "v.json", validation_fraction=0.5, seed=1)
    assert json.loads(open(again).read())["training"] == data["training"]  # the split is a function of the paths
    resolved = load_datalist(out, "training") + load_datalist(out, "validation")
    assert all(item["dataset"] == "imgs" and item["image"].startswith(str(tmp_path)) for item in resolved)
    assert validate_datalist(out) == []


def test_bad_file_is_named(tmp_path):
    folder = _images(tmp_path / "imgs", n=2)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage")
    with pytest.raises(DatalistError, match=r"broken\.png") as err:
        folder_datalist(folder, tmp_path / "u.json")
    assert "skip_bad" in str(err.value) and not (tmp_path / "u.json").exists()
    out = folder_datalist(folder, tmp_path / "u.json", skip_bad=True)
    data = read_datalist(out)
    assert len(data["training"]) == 2 and "broken.png" in data["description"]
    with pytest.raises(DatalistError, match="no readable image"):
        folder_datalist(_images(tmp_path / "empty", n=0), tmp_path / "e.json")


def test_prepare_image_folder_command(tmp_path):
    folder = _images(tmp_path / "my images", n=3)
    out = tmp_path / "u.json"
    proc = subprocess.run([sys.executable, "-m", "cxrfx", "prepare", "image_folder", "--root", str(folder),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = read_datalist(out)
    assert data["name"] == "my_images" and len(data["training"]) == 3
    (folder / "bad.png").write_bytes(b"not a png at all")
    proc = subprocess.run([sys.executable, "-m", "cxrfx", "prepare", "image_folder", "--root", str(folder),
                           "--out", str(tmp_path / "v.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "bad.png" in proc.stderr
