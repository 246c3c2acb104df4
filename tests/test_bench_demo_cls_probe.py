"""bench/demo_cls_probe.py: the demo's classification path alone, its backbone variants and their table."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _module():
    sys.path.insert(0, str(ROOT / "bench"))  # the probe imports common from beside it
    return importlib.import_module("demo_cls_probe")


@pytest.mark.parametrize("variant", ["", "w64", "patch", "conv2", "conv4", "flat_head"])
def test_every_variant_builds_a_trainable_five_label_classifier(variant):
    probe = _module()
    torch.manual_seed(0)
    net, forward = probe.build_network("fx_demo", variant)
    x = torch.rand(2, 1, 128, 128)
    logits = forward(x)
    assert logits.shape == (2, 5)
    logits.sum().backward()
    # every parameter the forward uses gets a gradient: the replaced stages are wired in, not bypassed
    unused = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    stages = [type(layer).__name__ for layer in net.backbone.layers]
    n_conv = probe.CONV_STAGES.get(variant, 0)
    assert stages == ["_ConvStage"] * n_conv + ["BasicLayer"] * (4 - n_conv)
    if variant == "w64":
        assert net.backbone.num_features == [64, 128, 256, 512]
    if variant == "flat_head":  # a linear layer over the 4x4 last-stage map: it sees where, not only what
        assert net.cls_heads["c"].fc.in_features == 256 * 16
        assert net.pooled_feature(net.forward_features(x)).shape == (2, 256 * 16)


def test_variants_are_checked_and_the_table_names_them():
    probe = _module()
    with pytest.raises(ValueError, match="unknown variant 'conv9'"):
        probe.build_network("fx_demo", "conv9")
    with pytest.raises(ValueError, match="unknown arm"):
        probe.build_network("resnet", "")
    auc = dict.fromkeys(probe.LABELS, 0.5)
    row = {"train_cpu_s": 60.0, "final_loss": 0.5, "train_auc": auc, "test_auc": {**auc, "effusion": 0.91}}
    text = probe.report({"fx_demo/596/800/4/0.00025/yes/conv4": row, "densenet121/596/800/4/0.001/yes": row})
    lines = text.splitlines()
    assert lines[4].startswith("| fx_demo conv4 | 596 | 800 × 4 | 0.00025 | yes | 0.500 |")
    assert "0.50 / 0.91" in lines[4] and lines[5].startswith("| densenet121 | 596 |")
    # every probe row names a known arm and variant (a typo would fail only after half an hour of runs)
    assert {r[0] for r in probe.RUNS} == {"fx_demo", "densenet121"}
    assert {r[6] for r in probe.RUNS if len(r) > 6} <= {*probe.VARIANTS, *probe.CONV_STAGES, "flat_head"}
