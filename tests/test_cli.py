"""``python -m cxrfx``: phantom and demo end to end (tiny sizes), clean one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cxrfx", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


def test_phantom_command_writes_valid_datalists(tmp_path):
    out = tmp_path / "ph"
    proc = _cli("phantom", "--out", str(out), "--count", "3", "--size", "48", "--seed", "7")
    assert proc.returncode == 0, proc.stderr
    for name in ("phantom_cls", "phantom_det", "phantom_seg"):
        data = json.loads((out / name / "datalist.json").read_text())
        assert [len(data[s]) for s in ("training", "validation", "test")] == [1, 1, 1]
    proc = _cli("validate", *(str(out / n / "datalist.json") for n in ("phantom_cls", "phantom_det", "phantom_seg")))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bad_arguments_are_one_clean_line(tmp_path):
    proc = _cli("phantom", "--out", str(tmp_path / "x"), "--count", "2")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: count must be at least 3 (one image per split), got 2"


def test_demo_writes_overlays_and_summary(tmp_path):
    out = tmp_path / "demo"
    proc = _cli("demo", "--out", str(out), "--count", "4", "--size", "64", "--epochs", "1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = (out / "summary.md").read_text()
    assert "| phantom_det | DICOM 12-bit | 2 / 1 / 1 |" in summary
    assert "All datalists and files validated." in summary
    assert "| seg/phantom_seg/dice_fx |" in summary and "| mean of main scores |" in summary  # student + teacher
    assert (out / "foundation_x" / "models" / "model.pt").exists()
    assert (out / "predictions.png").stat().st_size > 0
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == ["phantom_cls_0003.png", "phantom_det_0003.png", "phantom_seg_0003.png"]
    assert (out / "overlays.png").stat().st_size > 0
