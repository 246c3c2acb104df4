"""``cxrfx validate``: every file problem is one line naming the item, the file and what is wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cxrfx.data.validate import validate_datalist

H, W = 40, 60


def _png(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


@pytest.fixture
def dataset(tmp_path):
    """A small valid dataset on disk, returned as (folder, datalist dict, writer)."""
    img = np.zeros((H, W), np.uint8)
    img[5:15, 40:55] = 200
    for name in ("a", "b", "c"):
        _png(tmp_path / "images" / f"{name}.png", img)
    _png(tmp_path / "masks" / "a_lung.png", (img > 0) * 255)
    data = {
        "name": "toy",
        "tasks": {"classification": {"labels": ["x"]}, "detection": {"classes": ["x"]},
                  "segmentation": {"classes": ["lung"], "mask_format": "per_class"}},
        "training": [
            {"id": "a", "image": "images/a.png", "label": [1], "boxes": [[40, 5, 55, 15]], "box_labels": [0],
             "mask": {"lung": "masks/a_lung.png"}},
            {"id": "b", "image": "images/b.png", "label": [0], "boxes": [], "box_labels": []},
        ],
        "test": [{"id": "c", "image": "images/c.png", "label": [0]}],
    }

    def write(d):
        path = tmp_path / "datalist.json"
        path.write_text(json.dumps(d))
        return str(path)

    return tmp_path, data, write


def test_valid_dataset_passes(dataset):
    _, data, write = dataset
    assert validate_datalist(write(data)) == []
    assert validate_datalist(write(data), workers=2) == []


def test_every_file_problem_is_one_line(dataset):
    root, data, write = dataset
    png = (root / "images" / "b.png").read_bytes()
    (root / "images" / "b.png").write_bytes(png[: len(png) // 2])  # truncated
    (root / "images" / "c.png").write_bytes(b"")  # 0 bytes
    _png(root / "masks" / "small.png", np.zeros((H // 2, W), np.uint8))
    data["training"][0]["mask"] = {"lung": "masks/small.png"}
    data["training"][0]["boxes"] = [[40, 5, 65, 15]]  # past the right edge (W = 60)
    data["validation"] = [{"id": "d", "image": "images/missing.png", "label": [0]}]
    problems = validate_datalist(write(data))
    text = "\n".join(problems)
    assert len(problems) == 5, text
    assert all(p.startswith(str(root / "datalist.json") + ": ") for p in problems)
    assert any("training[0] (id=a): box 0 [40, 5, 65, 15] lies outside the image" in p and "width 60" in p
               for p in problems), text
    assert any("training[0] (id=a): mask" in p and "small.png" in p and "(20, 60)" in p and "(40, 60)" in p
               for p in problems), text
    assert any("training[1] (id=b): image" in p and "b.png" in p and "cannot decode" in p for p in problems), text
    assert any("test[0] (id=c): image" in p and "c.png: empty file (0 bytes)" in p for p in problems), text
    assert any("validation[0] (id=d): image" in p and "missing.png: file not found" in p for p in problems), text


def test_content_problems_stop_before_files(dataset):
    _, data, write = dataset
    data["training"][0]["label"] = [1, 0]
    problems = validate_datalist(write(data))
    assert problems == [f"{write(data)}: training[0] (id=a): label has 2 entries, expected 1 ['x']"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "cxrfx", *args], capture_output=True, text=True, timeout=300)


def test_cli_validate_exit_codes(dataset):
    root, data, write = dataset
    good = write(data)
    proc = _cli("validate", good)
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stderr
    (root / "images" / "a.png").unlink()
    proc = _cli("validate", good)
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "a.png: file not found" in lines[0]
    assert "Traceback" not in proc.stderr
    proc = _cli("validate", str(root / "nope.json"))
    assert proc.returncode == 1 and "nope.json: file not found" in proc.stdout
