"""Ark's exact forward: our Swin with ``shift_rule="timm"`` against timm 0.5's own Swin (``ark_timm05_tiny.pt``).

The fixture is written by ``tests/fixtures/make_ark_timm05_fixture.py`` from a local copy of timm 0.5.4 (the version
Ark was trained with; no timm code is stored here): tiny timm ``SwinTransformer`` models with every tensor random,
their state dicts, two gray images and timm's stage maps / pooled features on them under Ark's input contract.
"""

from __future__ import annotations

import os

import pytest
import torch

from cxrfx.networks import FoundationX, load_checkpoint
from cxrfx.networks.checkpoints import NORMALIZATIONS
from cxrfx.networks.swin import SwinTransformer

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "ark_timm05_tiny.pt")
FX_CKPT = os.path.join(os.path.dirname(__file__), "fixtures", "fx_tiny_ckpt.pth")
TOL = 1e-5


@pytest.fixture(scope="module")
def timm05():
    return torch.load(FIXTURE, weights_only=True)


def _backbone_kwargs(cfg):
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k != "img_size"}


def _ours(ref, shift_rule):
    """A 3-channel backbone holding the timm model's tensors, set directly (the loader is tested separately)."""
    model = SwinTransformer(in_chans=3, drop_path_rate=0.0, shift_rule=shift_rule,
                            **_backbone_kwargs(ref["config"])).eval()
    own = model.state_dict()
    for k, v in ref["state_dict"].items():
        if k not in own:
            continue
        if v.shape != own[k].shape:
            # timm built this block's table for a window shrunk to its map (shape (2s-1)^2): its entries are those of
            # the same offsets, the centre of our table for the full window; the rest is never read there
            s, t = int(v.shape[0] ** 0.5), int(own[k].shape[0] ** 0.5)
            c = (t - s) // 2
            table = own[k].view(t, t, -1)
            table.normal_()
            table[c:c + s, c:c + s] = v.view(s, s, -1)
            continue
        own[k].copy_(v)
    return model


def _input(ref):
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATIONS["imagenet"])
    return (ref["images"].float().div(255).unsqueeze(1).repeat(1, 3, 1, 1) - mean) / std


def _stage_errors(ref, shift_rule):
    model = _ours(ref, shift_rule)
    with torch.no_grad():
        stages = model(_input(ref))
        pooled = model.pooled(stages[-1])
    errs = [(a - b).abs().max().item() for a, b in zip(stages, ref["stages"])]
    return errs, (pooled - ref["pooled"]).abs().max().item()


def test_fixture_provenance(timm05):
    prov = timm05["provenance"]
    assert prov["reference"].startswith("timm 0.5.4 timm/models/swin_transformer.py, sha256 ")
    # what timm built (window, shift) per block: stage 4 of the square model and stages 3-4 of the other unshifted
    assert timm05["square"]["blocks_window_shift"] == [(7, 0), (7, 3)] * 3 + [(7, 0), (7, 0)]
    assert timm05["shrunk"]["blocks_window_shift"] == [(8, 0), (8, 4)] * 2 + [(8, 0), (8, 0), (4, 0), (4, 0)]
    assert [tuple(s.shape[-2:]) for s in timm05["shrunk"]["stages"]] == [(32, 64), (16, 32), (8, 16), (4, 8)]


def test_timm_rule_equals_timm05_at_every_stage_224(timm05):
    errs, pooled = _stage_errors(timm05["square"], "timm")
    assert max(errs) <= TOL and pooled <= TOL, (errs, pooled)
    # without the rule stage 4 (7x7, window 7) shifts where timm does not: stages 1-3 stay equal, stage 4 differs
    errs, pooled = _stage_errors(timm05["square"], "always")
    assert max(errs[:3]) <= TOL
    assert errs[3] > 0.1 and pooled > 1e-2, (errs, pooled)


def test_timm_rule_shrinks_the_window_on_smaller_non_square_maps(timm05):
    # 128 x 256 px, window 8: stage 3 (8 x 16) unshifted, stage 4 (4 x 8) unshifted in 4 x 4 windows
    errs, pooled = _stage_errors(timm05["shrunk"], "timm")
    assert max(errs) <= TOL and pooled <= TOL, (errs, pooled)
    errs, _ = _stage_errors(timm05["shrunk"], "always")
    assert max(errs[:2]) <= TOL and min(errs[2:]) > 0.1, errs


def test_ark_load_sets_the_rule_and_equals_timm05_from_gray(timm05, tmp_path):
    ref = timm05["square"]
    path = tmp_path / "ark.pth.tar"
    torch.save({"teacher": ref["state_dict"]}, path)
    model = FoundationX("tiny", backbone_kwargs={**_backbone_kwargs(ref["config"]), "drop_path_rate": 0.0}).eval()
    assert model.backbone.shift_rule == "always"
    report = load_checkpoint(model, path, source="ark")
    assert model.backbone.shift_rule == "timm"
    assert any(a.startswith("backbone.shift_rule: 'timm' (timm 0.5, as Ark") for a in report.adapted), report.adapted
    assert "backbone.shift_rule: 'timm'" in str(report)
    assert not report.missing_in("backbone.") and not report.mismatched
    gray = ref["images"].float().div(255).unsqueeze(1)  # our contract: [0, 1] gray; the fold does Ark's
    with torch.no_grad():
        stages = model.forward_features(gray)
        pooled = model.backbone.pooled(stages[-1])
    assert max((a - b).abs().max().item() for a, b in zip(stages, ref["stages"])) <= TOL
    assert (pooled - ref["pooled"]).abs().max() <= TOL


def test_foundation_x_load_sets_the_always_rule(tmp_path):
    # Foundation X's own trunk is the detection Swin, which always shifts (and pads): a model set to timm's rule
    # (e.g. after an Ark load) is set back, and the report says so
    embed = torch.load(FX_CKPT, weights_only=True)["teacher_model"]["backbone.0.patch_embed.proj.weight"].shape[0]
    cfg = {"embed_dim": embed, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4), "window_size": 7}
    model = FoundationX("tiny", backbone_kwargs={**cfg, "shift_rule": "timm", "drop_path_rate": 0.0})
    report = load_checkpoint(model, FX_CKPT, source="foundation_x")
    assert model.backbone.shift_rule == "always"
    assert any(a.startswith("backbone.shift_rule: 'always' (the detection Swin") for a in report.adapted)
    # a cxrfx file holds no rule: the model keeps its own
    path = tmp_path / "ours.pt"
    torch.save(model.state_dict(), path)
    other = FoundationX("tiny", backbone_kwargs={**cfg, "shift_rule": "timm"})
    report = load_checkpoint(other, path, source="cxrfx")
    assert other.backbone.shift_rule == "timm" and not any("shift_rule" in a for a in report.adapted)


def test_timm_rule_scripts(timm05):
    ref = timm05["shrunk"]
    model = _ours(ref, "timm")
    scripted = torch.jit.script(model)
    x = _input(ref)
    with torch.no_grad():
        for a, b in zip(scripted(x), ref["stages"]):
            assert (a - b).abs().max() <= TOL
