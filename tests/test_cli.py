"""``python -m cxrfx``: phantom end to end (tiny sizes), clean one-line errors (the demo: tests/test_demo.py)."""

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
