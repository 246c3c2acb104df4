"""``python -m cxrfx predict`` / ``calibrate`` end to end on a tiny foundation_x bundle (weights built in-process)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from cxrfx.__main__ import main
from cxrfx.data.phantom.files import write_dicom, write_png
from cxrfx.errors import ConfigError, CXRFXError
from cxrfx.io import load_cxr
from cxrfx.metrics.calibration import save_thresholds, youden_threshold
from cxrfx.outputs.dicom_seg import read_dicom_seg
from cxrfx.predict import calibrate_bundle, predict

ROOT = Path(__file__).resolve().parents[1]
TINY = {"configs": "demo.json", "image_size": 64, "device": "cpu", "progress": False}
LABELS = ["nodule", "mass", "pneumothorax", "effusion", "cardiomegaly"]
HEADS = ["phantom_cls", "phantom_det", "phantom_seg"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """bundles/foundation_x's configs with tiny random weights (demo backbone) as models/model.pt."""
    root = tmp_path_factory.mktemp("bundle")
    shutil.copytree(ROOT / "bundles" / "foundation_x" / "configs", root / "configs")
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / "inference.json"), str(root / "configs" / "demo.json")])
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    with torch.no_grad():  # confident detection logits, so that boxes appear above the detector's 0.05 cut
        net.det_heads["phantom_det"].cls.cls_logits.bias.fill_(2.0)
    (root / "models").mkdir()
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder: two PNGs with the same name in different folders, a corrupt PNG, a two-image DICOM series
    (extension-less files, MONOCHROME1 and MONOCHROME2, different sizes)."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    (root / "sub").mkdir()
    (root / "series").mkdir()
    write_png(str(root / "a.png"), rng.random((56, 64)), 8)
    write_png(str(root / "sub" / "a.png"), rng.random((70, 64)), 16)
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated")
    for k, (shape, mono1) in enumerate((((60, 72), True), ((66, 50), False)), start=1):
        write_dicom(str(root / "series" / f"IM{k}"), rng.random(shape), uid_key=f"predict-{k}", monochrome1=mono1,
                    pixel_mm=0.2, magnification=1.1, patient_id="P", calibrated_spacing=True)
    return root


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_folder_with_corrupt_file_and_dicom_series(bundle, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["predict", str(bundle), str(inputs), str(out), "--config", "demo.json", "--image_size", "64",
              "--device", "cpu", "--gradcam"])
    assert info.value.code == 1  # one file failed
    captured = capsys.readouterr()
    assert f"error: skipped {inputs / 'bad.png'}: " in captured.err  # one line naming the file, as it happens
    assert "predict: 100%" in captured.err and "5/5" in captured.err  # the progress bar
    assert "4/5 image(s) predicted" in captured.out and "1 problem(s)" in captured.err
    stems = {"a", "sub__a", "series__IM1", "series__IM2"}
    assert {p.stem for p in out.glob("*.json")} == stems
    # probabilities: one row per image, head and label, with threshold and yes/no
    rows = _rows(out / "probabilities.csv")
    assert len(rows) == 4 * 3 * 5 and {r["positive"] for r in rows} <= {"yes", "no"}
    for r in rows:
        assert (float(r["probability"]) >= float(r["threshold"])) == (r["positive"] == "yes")
        assert r["threshold_source"] == "default" and r["head"] in HEADS and r["label"] in LABELS
    boxes = _rows(out / "boxes.csv")
    assert boxes and {b["class"] for b in boxes} <= {"nodule", "mass"}
    for stem in stems:
        record = json.loads((out / f"{stem}.json").read_text())
        image, meta = load_cxr(record["image"])
        for b in (b for b in boxes if b["image"] == record["image"]):
            assert 0 <= float(b["x1"]) <= float(b["x2"]) <= image.shape[1] + 1e-3
        png = np.asarray(Image.open(out / f"{stem}_phantom_seg_lung_left.png")) > 0
        nifti, nmeta = load_cxr(out / f"{stem}_phantom_seg_lung_left.nii.gz")
        assert png.shape == image.shape
        np.testing.assert_array_equal(nifti > 0, png)
        assert list(out.glob(f"{stem}_gradcam_phantom_cls_*.png"))
        assert (out / f"{stem}_overlay.png").exists()
        if stem.startswith("series"):
            assert nmeta["pixel_spacing"] == pytest.approx(meta["pixel_spacing"])  # DICOM PixelSpacing
            seg = read_dicom_seg(out / record["heads"]["seg/phantom_seg"]["dicom_seg"])
            src = pydicom.dcmread(record["image"], stop_before_pixels=True)
            assert (seg.sop_instance_uid, seg.series_instance_uid, seg.study_instance_uid) == (
                src.SOPInstanceUID, src.SeriesInstanceUID, src.StudyInstanceUID)
            assert list(seg.masks) == list(record["heads"]["seg/phantom_seg"]["masks"])
            for cls, name in record["heads"]["seg/phantom_seg"]["masks"].items():
                np.testing.assert_array_equal(seg.masks[cls], np.asarray(Image.open(out / name)) > 0)
        else:
            assert "dicom_seg" not in record["heads"]["seg/phantom_seg"]
    assert sum(png.any() for png in (np.asarray(Image.open(p)) for p in out.glob("series__*_phantom_seg_*.png"))) >= 2


def test_single_file_with_calibrated_thresholds(bundle, inputs, tmp_path):
    thresholds = {"phantom_cls": {"nodule": youden_threshold([0.0, 1.0], [0, 1]),  # 1.0: nothing reaches it
                                  "mass": youden_threshold([0.0, 0.2], [0, 1])}}  # 0.2
    thresholds["phantom_cls"]["pneumothorax"] = youden_threshold([0.1], [1])  # single class: default 0.5
    path = save_thresholds(tmp_path / "thresholds.json", thresholds)
    summary = predict(str(bundle), str(inputs / "a.png"), str(tmp_path / "out"), thresholds=path, **TINY)
    assert (summary.inputs, summary.written, summary.failures) == (1, 1, [])
    rows = {(r["head"], r["label"]): r for r in _rows(tmp_path / "out" / "probabilities.csv")}
    assert (rows["phantom_cls", "nodule"]["threshold"], rows["phantom_cls", "nodule"]["positive"]) == ("1.000000", "no")
    assert rows["phantom_cls", "mass"]["threshold_source"] == "youden_j"
    assert rows["phantom_cls", "mass"]["positive"] == ("yes" if float(rows["phantom_cls", "mass"]["probability"]) >= 0.2
                                                       else "no")
    assert rows["phantom_cls", "pneumothorax"]["threshold_source"] == "default (single_class)"
    assert rows["phantom_det", "nodule"]["threshold_source"] == "default"
    record = json.loads((tmp_path / "out" / "a.json").read_text())
    assert record["decisions"]["cls/phantom_cls"]["nodule"]["positive"] is False
    assert not list((tmp_path / "out").glob("*gradcam*")) and not list((tmp_path / "out").glob("*.dcm"))


def test_calibrate_then_predict_agree(bundle, inputs, tmp_path):
    """Calibrated thresholds are validation scores that predict reproduces, with the reported sensitivity."""
    fx = tmp_path / "fx"
    shutil.copytree(bundle, fx)
    images = [inputs / "a.png", inputs / "sub" / "a.png", inputs / "series" / "IM1", inputs / "series" / "IM2"]
    labels = [[1, 0, 1, -1, 1], [0, 1, 1, -1, 1], [1, 1, 0, -1, 1], [0, 0, 0, -1, 1]]
    datalist = {"name": "phantom_cls", "tasks": {"classification": {"labels": LABELS}}, "training": [],
                "validation": [{"id": f"v{i}", "image": str(p), "label": lab}
                               for i, (p, lab) in enumerate(zip(images, labels))]}
    (tmp_path / "dl.json").write_text(json.dumps(datalist))
    # the CLI path, writing <bundle>/models/thresholds.json
    main(["calibrate", str(fx), "--datalist", str(tmp_path / "dl.json"), "--config", "demo.json",
          "--image_size", "64", "--device", "cpu"])
    saved = json.loads((fx / "models" / "thresholds.json").read_text())
    entries = saved["heads"]["phantom_cls"]
    assert saved["criterion"] == "youden_j" and saved["split"] == "validation"
    assert entries["effusion"]["status"] == "no_labels" and entries["cardiomegaly"]["status"] == "single_class"
    summary = predict(str(fx), str(inputs), str(tmp_path / "out"), **TINY)  # picks up models/thresholds.json
    assert len(summary.failures) == 1
    rows = [r for r in _rows(tmp_path / "out" / "probabilities.csv") if r["head"] == "phantom_cls"]
    calibrated = [k for k, label in enumerate(LABELS) if entries[label]["status"] == "ok"]
    assert calibrated  # random weights: which labels separate depends on the seed (fixed)
    for k in calibrated:
        label, entry = LABELS[k], entries[LABELS[k]]
        mine = {r["image"]: r for r in rows if r["label"] == label}
        probs = [float(mine[str(p)]["probability"]) for p in images]
        assert min(abs(p - entry["threshold"]) for p in probs) < 1e-5  # a validation score, as predict sees it
        yes = np.array([mine[str(p)]["positive"] == "yes" for p in images])
        truth = np.array([lab[k] for lab in labels], bool)
        assert entry["sensitivity"] == pytest.approx(yes[truth].mean(), abs=1e-6)
        assert entry["specificity"] == pytest.approx(1 - yes[~truth].mean(), abs=1e-6)
        assert {r["threshold_source"] for r in mine.values()} == {"youden_j"}


def test_errors_name_the_problem(bundle, tmp_path, inputs):
    with pytest.raises(ConfigError, match="input not found"):
        predict(str(bundle), str(tmp_path / "missing"), str(tmp_path / "o"), **TINY)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images found"):
        predict(str(bundle), str(tmp_path / "empty"), str(tmp_path / "o"), **TINY)
    bare = tmp_path / "bare"
    shutil.copytree(bundle / "configs", bare / "configs")
    with pytest.raises(ConfigError, match=r"model\.pt: the bundle has no trained weights"):
        predict(str(bare), str(inputs / "a.png"), str(tmp_path / "o"), **TINY)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ConfigError, match=r"broken\.json: not a thresholds file"):
        predict(str(bundle), str(inputs / "a.png"), str(tmp_path / "o"), thresholds=str(broken), **TINY)
    (bare / "models").mkdir()
    (bare / "models" / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CXRFXError, match=r"model\.pt"):  # the checkpoint loader's own error, not MONAI's wrapper
        predict(str(bare), str(inputs / "a.png"), str(tmp_path / "o"), **TINY)
    with pytest.raises(ConfigError, match="bundle config not found"):
        predict(str(bundle), str(inputs / "a.png"), str(tmp_path / "o"), **{**TINY, "configs": "nope.json"})


def test_dangling_symlink_in_a_folder_is_named_not_skipped(bundle, inputs, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(inputs / "a.png", folder / "a.png")
    (folder / "gone.png").symlink_to(tmp_path / "moved_away.png")  # its target was moved or deleted
    summary = predict(str(bundle), str(folder), str(tmp_path / "o"), **TINY)
    assert (summary.inputs, summary.written) == (2, 1)
    assert summary.failures == [f"{folder / 'gone.png'}: broken symbolic link (its target "
                                f"{tmp_path / 'moved_away.png'} does not exist)"]
