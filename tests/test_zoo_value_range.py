"""``network_data_format`` value ranges are what the network is given and gives: each bundle's inference
pre-processing and ``network_def`` run on a probe image (``checks_runner._check_value_ranges``, part of the
packager's checks), and a range that is not true is reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cxrfx.packaging import checks_runner

ROOT = Path(__file__).resolve().parents[1]
TINY = {"embed_dim": 24, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 3, 6], "window_size": 4, "stem": "conv"}


def _bundle(tmp_path, name, edit=None):
    """A copy of the bundle's configs with a tiny backbone (the check builds network_def), ``edit`` applied to
    its metadata."""
    bundle = tmp_path / name
    shutil.copytree(ROOT / "bundles" / name / "configs", bundle / "configs")
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["backbone_kwargs"] = TINY
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    if edit:
        meta = json.loads((bundle / "configs" / "metadata.json").read_text())
        edit(meta["network_data_format"])
        (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    (tmp_path / "work").mkdir()
    return bundle


def _check(bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(bundle)  # the runner works from the bundle root
    report = {"problems": []}
    checks_runner._check_value_ranges(str(bundle), str(tmp_path / "work"), report)
    return report


@pytest.mark.parametrize("name", ["foundation_x", "finetune_seg", "finetune_det"])
def test_declared_ranges_are_what_the_network_sees_and_gives(name, tmp_path, monkeypatch):
    report = _check(_bundle(tmp_path, name), tmp_path, monkeypatch)
    assert report["problems"] == []
    assert report["value_ranges"]["image"] == (0.0, 1.0)  # NormalizeCXR's contract, both ends reached
    low, high = report["value_ranges"]["pred"]
    assert low < 0 < high  # logits: a probability range [0, 1] would not be true


def _set(side, key, value):
    def edit(fmt):
        fmt[side][key]["value_range"] = value
    return edit


@pytest.mark.parametrize("edit, expected", [
    (_set("outputs", "pred", [0, 1]), "outside the declared output range"),
    (_set("inputs", "image", [0, 255]), "wider than what the pre-processing gives"),
    (_set("inputs", "image", [0, 0.5]), "outside the declared input range"),
])
def test_untrue_ranges_are_reported(edit, expected, tmp_path, monkeypatch):
    report = _check(_bundle(tmp_path, "finetune_seg", edit), tmp_path, monkeypatch)
    assert len(report["problems"]) == 1 and expected in report["problems"][0]


def test_an_empty_range_is_refused(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"outputs\.pred\.value_range must be \[MIN, MAX\], found \[\]"):
        _check(_bundle(tmp_path, "finetune_seg", _set("outputs", "pred", [])), tmp_path, monkeypatch)
