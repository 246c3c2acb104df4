"""Every bundle's ``network_def`` scripts (``torch.jit.script``: what the Model Zoo's ``ckpt_export`` and
``verify_bundle.py`` run) and the scripted model computes what the eager one does; TaskNet and the other tasks too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from cxrfx.networks import FoundationX, TaskNet

ROOT = Path(__file__).resolve().parents[1]
TINY = {"embed_dim": 24, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 3, 6], "window_size": 4, "stem": "conv"}


def _as_list(out):
    return [out] if isinstance(out, torch.Tensor) else list(out)


@pytest.mark.parametrize("bundle, overrides", [
    ("foundation_x", {}), ("finetune_seg", {}), ("finetune_det", {}),
    # finetune_seg's other segmentation head types (``head_type``), so any of them can be submitted
    ("finetune_seg", {"head_type": "unetpp"}), ("finetune_seg", {"head_type": "upernet_fx"}),
    ("finetune_seg", {"head_type": "upernet_fx", "network_def#head_options": {"seg": {"shared_smoothing": False}}}),
], ids=["foundation_x", "finetune_seg", "finetune_det", "finetune_seg-unetpp", "finetune_seg-upernet_fx",
        "finetune_seg-upernet_fx-per_level_smoothing"])
def test_every_bundle_network_def_scripts_and_equals_eager(bundle, overrides, tmp_path):
    parser = ConfigParser()
    parser.read_config([str(ROOT / "bundles" / bundle / "configs" / n) for n in ("inference.json", "demo.json")])
    parser["bundle_root"] = str(tmp_path)
    parser["backbone_kwargs"] = {**TINY, "drop_path_rate": 0.1}
    for key, value in overrides.items():
        parser[key] = value
    net = parser.get_parsed_content("network_def").eval()
    scripted = torch.jit.script(net)
    torch.jit.save(scripted, str(tmp_path / "model.ts"))
    loaded = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        want = _as_list(net(x))
        for got in (scripted(x), loaded(x)):
            for g, w in zip(_as_list(got), want, strict=True):
                torch.testing.assert_close(g, w, rtol=0, atol=1e-5)


@pytest.mark.parametrize("task", ["cls", "seg", "det"])
def test_task_net_scripts_for_every_task(task):
    model = FoundationX("tiny", cls_heads={"a": 3}, seg_heads={"b": 2}, det_heads={"c": 2}, backbone_kwargs=TINY,
                        seg_channels=16, psp_channels=32, det_channels=16, det_strides=(8, 16, 32)).eval()
    net = TaskNet(task, network=model).eval()
    scripted = torch.jit.script(net)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        for g, w in zip(_as_list(scripted(x)), _as_list(net(x)), strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-5)
