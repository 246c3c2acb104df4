"""Loading Ark / Foundation X / cxrfx checkpoints built here with the official key names and shapes."""

from __future__ import annotations

import argparse

import pytest
import torch

from cxrfx.errors import CheckpointError
from cxrfx.networks import FX_CLASSIFICATION_HEADS, FoundationX, load_checkpoint
from cxrfx.networks.checkpoints import NORMALIZATIONS
from cxrfx.networks.swin import SwinTransformer

TINY = {"embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 3, 6), "window_size": 7}


def timm_swin_state_dict(embed_dim, depths, num_heads, window_size, img_size=224, num_classes=1000, seed=0):
    """Every tensor of a timm 0.5 ``swin_*_patch4_window*`` state dict, written from its layout (not our model)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def t(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"] = t(embed_dim, 3, 4, 4), t(embed_dim)
    sd["patch_embed.norm.weight"], sd["patch_embed.norm.bias"] = 1 + t(embed_dim), t(embed_dim)
    res = img_size // 4
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        dim = embed_dim * 2**i
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            sd[p + "norm1.weight"], sd[p + "norm1.bias"] = 1 + t(dim), t(dim)
            sd[p + "attn.relative_position_bias_table"] = t((2 * window_size - 1) ** 2, heads)
            sd[p + "attn.relative_position_index"] = torch.randint(0, 10, (window_size**2, window_size**2))
            sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"] = t(3 * dim, dim), t(3 * dim)
            sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"] = t(dim, dim), t(dim)
            sd[p + "norm2.weight"], sd[p + "norm2.bias"] = 1 + t(dim), t(dim)
            sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = t(4 * dim, dim), t(4 * dim)
            sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = t(dim, 4 * dim), t(dim)
            if j % 2 == 1 and res > window_size:
                sd[p + "attn_mask"] = torch.zeros((res // window_size) ** 2, window_size**2, window_size**2)
        if i < len(depths) - 1:
            sd[f"layers.{i}.downsample.reduction.weight"] = t(2 * dim, 4 * dim)
            sd[f"layers.{i}.downsample.norm.weight"], sd[f"layers.{i}.downsample.norm.bias"] = 1 + t(4 * dim), t(4 * dim)
            res //= 2
    last = embed_dim * 2 ** (len(depths) - 1)
    sd["norm.weight"], sd["norm.bias"] = 1 + t(last), t(last)
    sd["head.weight"], sd["head.bias"] = t(num_classes, last), t(num_classes)
    return sd


def reference_features(trunk_sd, cfg, gray, normalization, shift_rule="always"):
    """A 3-channel Swin whose weights are set directly, fed the gray image replicated and normalised."""
    ref = SwinTransformer(in_chans=3, drop_path_rate=0.0, shift_rule=shift_rule, **cfg).eval()
    own = ref.state_dict()
    for k, v in trunk_sd.items():
        if k in own:
            own[k].copy_(v)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATIONS[normalization])
    with torch.no_grad():
        return ref((gray.repeat(1, 3, 1, 1) - mean) / std)


def _model(cfg=TINY, **heads):
    return FoundationX("tiny", backbone_kwargs={**cfg, "drop_path_rate": 0.0}, **heads).eval()


def _check_every_trunk_tensor_placed(model, trunk_sd):
    own = model.state_dict()
    for k, v in trunk_sd.items():
        if k.startswith("patch_embed.proj.") or k.endswith(("attn_mask", "relative_position_index")) or k.startswith("head"):
            continue
        torch.testing.assert_close(own["backbone." + k], v, msg=k)


@pytest.mark.parametrize("wrapped", [False, True])
def test_ark_teacher_loads_every_trunk_tensor(tmp_path, wrapped):
    sd = timm_swin_state_dict(**TINY)
    extra = {"projector.0.weight": torch.randn(1376, 192), "omni_heads.0.weight": torch.randn(14, 1376)}
    path = tmp_path / "ark.pth.tar"
    torch.save({"teacher": {**sd, **extra}, "epoch": 200} if wrapped else {**sd, **extra}, path)
    model = _model(cls_heads={"nih14": 14})
    report = load_checkpoint(model, path)
    assert report.source == ("ark [teacher]" if wrapped else "ark")
    assert report.missing_in("backbone.") == []
    assert {"head.weight", "head.bias", "projector.0.weight", "omni_heads.0.weight"} <= set(report.unexpected)
    assert any("imagenet normalisation folded" in a for a in report.adapted)
    # timm 0.5 leaves stage 4 (7x7 at 224 px, window 7) unshifted: the loaded model follows it
    assert model.backbone.shift_rule == "timm" and any("shift_rule" in a for a in report.adapted)
    _check_every_trunk_tensor_placed(model, sd)
    gray = torch.rand(2, 1, 224, 224)
    with torch.no_grad():
        ours = model.forward_features(gray)
    ref = reference_features(sd, TINY, gray, "imagenet", shift_rule="timm")
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)


def test_foundation_x_checkpoint_loads_trunk_and_matching_heads(tmp_path):
    trunk = timm_swin_state_dict(**TINY, seed=1)
    trunk.pop("head.weight"), trunk.pop("head.bias")
    fx = {f"backbone.0.{k}": v for k, v in trunk.items()}
    classes = {"tbx11k": 1, "node21": 1, "candid_ptx": 1, "rsna_pneumonia": 3, "chestx_det": 13, "siim_acr": 1,
               "chexpert": 14, "nih14": 14, "vindr_cxr": 6, "shenzhen": 1, "mimic": 14}
    for k, name in enumerate(FX_CLASSIFICATION_HEADS):
        fx[f"backbone.0.classification_heads.{k}.weight"] = torch.randn(classes[name], 192)
        fx[f"backbone.0.classification_heads.{k}.bias"] = torch.randn(classes[name])
    fx["backbone.0.Locnorm1.weight"] = torch.ones(48)
    fx["backbone.0.segmentation_heads.0.weight"] = torch.randn(1, 128, 3, 3)
    fx["transformer.encoder.layers.0.linear1.weight"] = torch.randn(2048, 256)
    fx["input_proj.0.0.weight"] = torch.randn(256, 48, 1, 1)
    student = {k: torch.zeros_like(v) for k, v in fx.items()}
    path = tmp_path / "ckpt_E844_TH3.pth"
    torch.save({"model": student, "teacher_model": fx, "optimizer": {"state": {}}, "epoch": 844}, path)

    model = _model(cls_heads={"nih14": 14, "vindr_cxr": 6, "mimic": 3, "ours": 2})
    report = load_checkpoint(model, path)
    assert report.source == "foundation_x [teacher_model]"
    assert report.missing_in("backbone.") == []
    own = model.state_dict()
    torch.testing.assert_close(own["cls_heads.nih14.fc.weight"], fx["backbone.0.classification_heads.7.weight"])
    torch.testing.assert_close(own["cls_heads.vindr_cxr.fc.bias"], fx["backbone.0.classification_heads.8.bias"])
    assert ("cls_heads.mimic.fc.weight", (14, 192), (3, 192)) in report.mismatched
    assert "cls_heads.ours.fc.weight" in report.missing
    for k in ("backbone.0.Locnorm1.weight", "transformer.encoder.layers.0.linear1.weight", "input_proj.0.0.weight",
              "backbone.0.segmentation_heads.0.weight", "backbone.0.classification_heads.0.weight"):
        assert k in report.unexpected
    _check_every_trunk_tensor_placed(model, trunk)
    gray = torch.rand(1, 1, 224, 224)
    with torch.no_grad():
        logits = model(gray, task="cls", head="nih14")
        ref_feats = reference_features(trunk, TINY, gray, "cxr")
        ref_pooled = torch.nn.functional.layer_norm(ref_feats[-1].flatten(2).transpose(1, 2), (192,),
                                                    trunk["norm.weight"], trunk["norm.bias"]).mean(1)
        ref_logits = ref_pooled @ fx["backbone.0.classification_heads.7.weight"].T + fx["backbone.0.classification_heads.7.bias"]
    torch.testing.assert_close(logits, ref_logits, atol=2e-4, rtol=1e-4)
    student_report = load_checkpoint(_model(), path, key="model")
    assert student_report.source == "foundation_x [model]"


def test_base_ark_checkpoint_round_trip(tmp_path):
    cfg = {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32), "window_size": 7}
    sd = timm_swin_state_dict(**cfg)
    path = tmp_path / "ark6_teacher_ep200_swinb_projector1376_mlp.pth.tar"
    torch.save({"teacher": sd}, path)
    model = FoundationX("base", backbone_kwargs={"drop_path_rate": 0.0}).eval()
    report = load_checkpoint(model, path, strict=True)
    assert report.missing_in("backbone.") == []
    expected = sum(1 for k in sd if not k.endswith(("attn_mask", "relative_position_index")) and not k.startswith("head"))
    assert len([k for k in report.loaded if k.startswith("backbone.")]) == expected == 327
    _check_every_trunk_tensor_placed(model, sd)
    gray = torch.rand(1, 1, 224, 224)
    with torch.no_grad():
        ours = model.forward_features(gray)[-1]
    ref = reference_features(sd, cfg, gray, "imagenet", shift_rule="timm")[-1]
    torch.testing.assert_close(ours, ref, atol=5e-4, rtol=1e-4)


def test_other_window_size_interpolates_bias_tables(tmp_path):
    path = tmp_path / "ark.pth"
    torch.save(timm_swin_state_dict(**TINY), path)
    model = _model({**TINY, "window_size": 4})
    report = load_checkpoint(model, path)
    assert report.missing_in("backbone.") == [] and not report.mismatched
    assert any("(169, 1) -> (49, 1)" in a for a in report.adapted)
    assert model.backbone.layers[0].blocks[0].attn.relative_position_bias_table.shape == (49, 1)


def test_sum_adaptation_equals_replicated_gray(tmp_path):
    sd = timm_swin_state_dict(**TINY)
    path = tmp_path / "ark.pth"
    torch.save(sd, path)
    model = _model()
    load_checkpoint(model, path, adapt="sum")
    w = model.backbone.patch_embed.proj.weight
    torch.testing.assert_close(w, sd["patch_embed.proj.weight"].sum(1, keepdim=True))


def test_cxrfx_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    a = _model(cls_heads={"x": 2}, seg_heads={"s": 1})
    path = tmp_path / "ours.pt"
    torch.save({"teacher": a.state_dict(), "student": {}, "iteration": 3}, path)
    b = _model(cls_heads={"x": 2}, seg_heads={"s": 1})
    report = load_checkpoint(b, path)
    assert report.source == "cxrfx [teacher]" and report.missing == [] and report.unexpected == []
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x, "seg"), b(x, "seg"))


def test_refusals(tmp_path):
    model = _model()
    unrelated = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.randn(3, 3)}, unrelated)
    with pytest.raises(CheckpointError, match="cannot tell the checkpoint's layout"):
        load_checkpoint(model, unrelated)
    mismatched = tmp_path / "big.pt"
    torch.save(timm_swin_state_dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7), mismatched)
    with pytest.raises(CheckpointError, match=r"backbone architecture differs: \d+ backbone tensors"):
        load_checkpoint(_model({**TINY, "embed_dim": 48}), mismatched)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"decoder.weight": torch.randn(2, 2)}}, foreign)
    with pytest.raises(CheckpointError, match="refusing an empty load"):
        load_checkpoint(model, foreign, source="cxrfx")
    pickled = tmp_path / "pickled.pth"
    torch.save({"teacher": timm_swin_state_dict(**TINY), "args": argparse.Namespace(lr=0.1)}, pickled)
    with pytest.raises(CheckpointError, match="refused: this file holds pickled Python objects.*allow_pickle=True"):
        load_checkpoint(model, pickled)
    assert load_checkpoint(model, pickled, allow_pickle=True).missing_in("backbone.") == []
    with pytest.raises(CheckpointError, match="missing.pt: file not found"):
        load_checkpoint(model, tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: refused: not a readable PyTorch checkpoint"):
        load_checkpoint(model, tmp_path / "junk.pt")
