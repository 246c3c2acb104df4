"""Shared adapter helpers: RLE decoders, polygons, splits, box fusion, harmonised labels, leakage, CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cxrfx.data.adapters.common import (
    assign_splits, fuse_boxes, mask_box, patient_split, polygon_mask, read_csv, rle_decode_absolute,
    rle_decode_relative_colmajor,
)
from cxrfx.data.adapters.labels import SHARED_LABELS, harmonise_datalist, harmonise_vector
from cxrfx.data.adapters.leakage import assert_no_leakage, find_leakage, pixel_fingerprint
from cxrfx.data.datalist import write_datalist
from cxrfx.errors import ConfigError, DatasetLayoutError


def _encode_relative_colmajor(mask: np.ndarray) -> str:
    """Test-side encoder of the SIIM scheme, written independently of the decoder."""
    flat = mask.T.reshape(-1).astype(int)
    runs, pos, prev_end = [], 0, 0
    while pos < flat.size:
        if flat[pos]:
            start = pos
            while pos < flat.size and flat[pos]:
                pos += 1
            runs += [start - prev_end, pos - start]
            prev_end = pos
        else:
            pos += 1
    return " ".join(map(str, runs)) if runs else "-1"


def test_siim_rle_round_trip_on_a_non_square_mask():
    mask = np.zeros((6, 9), bool)
    mask[1:3, 2:7] = True
    mask[4, 8] = True
    rle = _encode_relative_colmajor(mask)
    np.testing.assert_array_equal(rle_decode_relative_colmajor(rle, 6, 9), mask)
    assert not rle_decode_relative_colmajor(" -1", 6, 9).any()
    with pytest.raises(ValueError, match="leaves the 6x9 image"):
        rle_decode_relative_colmajor("50 10", 6, 9)


def test_absolute_rle_is_one_based_row_major():
    mask = rle_decode_absolute("2 3 10 1", 3, 4)  # pixels 1..3 and 9 (0-based), row-major
    expected = np.zeros(12, bool)
    expected[[1, 2, 3, 9]] = True
    np.testing.assert_array_equal(mask, expected.reshape(3, 4))


def test_polygon_mask_and_box():
    mask = polygon_mask([[[2, 1], [6, 1], [6, 4], [2, 4]]], 8, 10)
    assert mask[1:5, 2:7].all() and mask.sum() == 20
    assert mask_box(mask) == [2.0, 1.0, 7.0, 5.0]
    assert mask_box(np.zeros((3, 3), bool)) is None


def test_patient_split_is_seeded_and_never_splits_a_patient():
    items = [{"id": f"i{k}", "patient_id": f"p{k // 3}"} for k in range(60)]
    a, b = assign_splits(items, seed=1), assign_splits(items, seed=1)
    assert a == b and assign_splits(items, seed=2) != a
    owners = {}
    for split, group in a.items():
        for it in group:
            assert owners.setdefault(it["patient_id"], split) == split
    assert [len(v) // 3 for v in a.values()] == [14, 2, 4]
    assert set(patient_split(["x", "y"], seed=0).values()) <= {"training", "validation", "test"}


def test_box_fusion_rules():
    boxes = [[10, 10, 20, 20], [11, 11, 21, 21], [50, 50, 60, 60], [12, 9, 19, 21]]
    labels, readers = [0, 0, 0, 1], ["R1", "R2", "R1", "R3"]
    fused, fused_labels = fuse_boxes(boxes, labels, readers, "wbf")
    assert fused == [[10.5, 10.5, 20.5, 20.5], [50.0, 50.0, 60.0, 60.0], [12.0, 9.0, 19.0, 21.0]]
    assert fused_labels == [0, 0, 1]
    majority, _ = fuse_boxes(boxes, labels, readers, "majority")
    assert majority == [[10.5, 10.5, 20.5, 20.5]]  # only the box two of three readers drew
    assert len(fuse_boxes(boxes, labels, readers, "union")[0]) == 4
    # three readers read the image; two found nothing: a box drawn by one reader is no majority
    assert fuse_boxes([[0, 0, 5, 5]], [0], ["R1"], "majority", n_readers=3) == ([], [])


def test_read_csv_names_file_column_and_line(tmp_path):
    path = tmp_path / "bbox.csv"
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Mass,1,2,3,4\nb.png\n")
    with pytest.raises(DatasetLayoutError, match=r"bbox\.csv:3: 1 fields"):
        read_csv(str(path), required=["Image Index", "x", "h"], positional=["Image Index", "Finding Label", "x", "y", "w", "h"])
    with pytest.raises(DatasetLayoutError, match=r"bbox\.csv: missing column\(s\) \['Patient ID'\]"):
        read_csv(str(path), required=["Patient ID"])


def test_harmonised_vector_takes_the_strongest_evidence():
    vec = harmonise_vector(["Pleural Effusion", "Effusion", "No Finding", "Nodule/Mass"], [0, 1, 0, -1])
    assert len(vec) == len(SHARED_LABELS)
    assert vec[SHARED_LABELS.index("Effusion")] == 1
    assert vec[SHARED_LABELS.index("Nodule")] == -1
    assert vec[SHARED_LABELS.index("Hernia")] == -1  # not annotated by this dataset
    data = {"name": "x", "tasks": {"classification": {"labels": ["Infiltrate"]}}, "training": [{"image": "a", "label": [1]}]}
    out = harmonise_datalist(data)
    assert out["training"][0]["label"][SHARED_LABELS.index("Infiltration")] == 1


def _list(tmp_path, name, splits):
    data = {"name": name, "tasks": {"classification": {"labels": ["x"]}}, "training": []}
    for split, entries in splits.items():
        prefix = "t" if split == "training" else ""
        data[split] = [{"id": f"{name}-{prefix}{i}", "image": img, "label": [0], "meta": {"source_id": src}}
                       for i, (img, src) in enumerate(entries)]
    return write_datalist(data, tmp_path / f"{name}.json")


def test_leakage_by_source_id_and_by_pixels(tmp_path):
    yy, xx = np.mgrid[0:64, 0:80]
    arr = (120 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0)).astype(np.uint8)  # smooth, like a radiograph
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray(arr).resize((160, 128), Image.BILINEAR).save(tmp_path / "a_big.png")  # same film, other size
    Image.fromarray(arr[::-1].copy()).save(tmp_path / "c.png")
    nih = _list(tmp_path, "nih", {"training": [("a.png", "00001_000.png"), ("c.png", "00002_000.png")]})
    det = _list(tmp_path, "chestx_det", {"test": [("c.png", "00002_000.png")]})
    rsna = _list(tmp_path, "rsna", {"validation": [("a_big.png", "uuid-1")]})
    lines = find_leakage([nih, det, rsna], pixels=True)
    assert any("nih.json: training nih-t1 is also in" in ln and "chestx_det.json: test chestx_det-0" in ln
               and "source_id 00002_000.png" in ln for ln in lines)
    assert any("training nih-t0 is also in" in ln and "rsna.json: validation rsna-0 (same pixels)" in ln for ln in lines)
    assert not any("training nih-t1 is also in" in ln and "rsna-0" in ln for ln in lines)  # the flipped film differs
    assert pixel_fingerprint(str(tmp_path / "a.png")) == pixel_fingerprint(str(tmp_path / "a_big.png"))
    with pytest.raises(ConfigError, match="leak from training into validation/test"):
        assert_no_leakage([nih, det])
    assert_no_leakage([nih])  # no held-out split: nothing leaks
    proc = subprocess.run([sys.executable, "-m", "cxrfx", "leakage", nih, det, "--pixels", "False"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "source_id 00002_000.png" in proc.stdout


def test_prepare_cli_lists_and_rejects_unknown(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cxrfx", "prepare", "--list"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0
    proc = subprocess.run([sys.executable, "-m", "cxrfx", "prepare", "nope", "--root", str(tmp_path), "--out",
                           str(tmp_path / "x.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "unknown dataset 'nope'" in proc.stderr
