"""Loading Ark / Foundation X / cxrfx checkpoints built here with the official key names and shapes."""

from __future__ import annotations

import argparse
import os

import pytest
import torch

from cxrfx.errors import CheckpointError
from cxrfx.networks import FX_CLASSIFICATION_HEADS, FoundationX, load_checkpoint
from cxrfx.networks.checkpoints import FX_SEGMENTATION_HEADS, NORMALIZATIONS, foundation_x_layout
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
               "chexpert": 14, "nih14": 14, "vindr_cxr": 6, "shenzhen": 1, "mimic_cxr_jpg": 14}
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

    model = _model(cls_heads={"nih14": 14, "vindr_cxr": 6, "mimic_cxr_jpg": 3, "ours": 2})
    report = load_checkpoint(model, path)
    assert report.source == "foundation_x [teacher_model]"
    assert report.missing_in("backbone.") == []
    own = model.state_dict()
    torch.testing.assert_close(own["cls_heads.nih14.fc.weight"], fx["backbone.0.classification_heads.7.weight"])
    torch.testing.assert_close(own["cls_heads.vindr_cxr.fc.bias"], fx["backbone.0.classification_heads.8.bias"])
    assert ("cls_heads.mimic_cxr_jpg.fc.weight", (14, 192), (3, 192)) in report.mismatched
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


# --- Foundation X reference fixtures (tests/fixtures/make_fx_seg_fixture.py; provenance inside the files) ---------

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
FX_CKPT, FX_REF = os.path.join(FIXTURES, "fx_tiny_ckpt.pth"), os.path.join(FIXTURES, "fx_tiny_reference.pt")
ATOL = 1e-4  # issue 17: our model loaded from the reference's weights gives the reference's outputs to <= 1e-4


@pytest.fixture(scope="module")
def fx_reference():
    return torch.load(FX_REF, weights_only=True)


def _fx_model(ref, **kwargs):
    cfg = ref["provenance"]["config"]
    backbone = {k: cfg[k] for k in ("embed_dim", "depths", "num_heads", "window_size")}
    return FoundationX("tiny", backbone_kwargs={**backbone, "drop_path_rate": 0.0}, **kwargs).eval()


def _gray(ref):
    return ref["image_u8"].float() / 255


def _assert_close(ours, theirs, what):
    diff = (ours - theirs).abs().max().item()
    assert ours.shape == theirs.shape and diff <= ATOL, f"{what}: max abs difference {diff:.2e}"


def test_fx_fixture_provenance(fx_reference):
    prov = fx_reference["provenance"]
    assert prov["repository"] == "https://github.com/jlianglab/Foundation_X" and len(prov["commit"]) == 40
    assert prov["file"] == "models/dino/swin_transformer_CyclicSegmentation.py"
    assert os.path.getsize(FX_CKPT) < 2_000_000 and os.path.getsize(FX_REF) < 2_000_000


def test_fx_checkpoint_maps_every_classification_and_segmentation_tensor(fx_reference):
    model = _fx_model(fx_reference, **foundation_x_layout("all"))
    report = load_checkpoint(model, FX_CKPT)
    assert report.missing == [] and not report.mismatched
    # only the localization branch (DINO, not built in cxrfx yet) stays unexpected
    assert report.unexpected and all(k.startswith(("backbone.0.Locnorm", "input_proj.", "transformer."))
                                     for k in report.unexpected)
    file_keys = torch.load(FX_CKPT, weights_only=True)["teacher_model"]
    seg = [k for k in file_keys if k.startswith("backbone.0.segmentation_")]
    decoder = [k for k in seg if not k.startswith("backbone.0.segmentation_heads.")]
    assert len(decoder) == 48 and len(seg) == 60  # PPN 30 + FPN 18, six heads x 2
    assert not set(seg) & (set(report.unexpected) | {k for k, _ in report.dropped})  # every one placed
    assert sorted(report.aliases) == [f"backbone.0.segmentation_FPN.smooth_conv.{i}.{p}" for i in (1, 2)
                                      for p in ("bias", "weight")]
    assert {k for k, _ in report.dropped} == {k for k in file_keys if k.startswith(("backbone.0.Segnorm", "backbone.0.head."))}
    assert len([k for k in report.loaded if k.startswith(("seg_decoder.", "seg_heads."))]) == 48 - 4 + 12
    assert len([k for k in report.loaded if k.startswith("cls_heads.")]) == 22
    assert any("segmentation_heads: 0 -> seg_heads.tbx11k" in m and "4 -> seg_heads.chestx_det" in m
               for m in report.mapping)
    assert any(m.startswith("localization:") and "DINO" in m for m in report.mapping)
    assert [k for k in report.loaded if k.startswith("task_inputs.")] == ["task_inputs.seg.bias", "task_inputs.seg.weight"]
    assert "dropped 10, aliases 4" in str(report)


def test_fx_segmentation_equals_reference(fx_reference):
    model = _fx_model(fx_reference, **foundation_x_layout("all"))
    load_checkpoint(model, FX_CKPT)
    x = _gray(fx_reference)
    with torch.no_grad():
        stages = model.forward_features(x, "seg")
        for i, (a, b) in enumerate(zip(stages, fx_reference["seg_stages"])):
            _assert_close(a, b, f"trunk stage {i} (segmentation contract)")
        _assert_close(model.seg_decoder.psp(fx_reference["seg_stages"][-1]), fx_reference["seg_psp"], "PSP")
        _assert_close(model.seg_decoder(list(fx_reference["seg_stages"])), fx_reference["seg_fused"], "FPN fuse")
        _assert_close(model.seg_decoder(stages), fx_reference["seg_fused"], "trunk + decoder")
        for i, name in enumerate(FX_SEGMENTATION_HEADS):
            logits = model(x, task="seg", head=name)
            assert logits.shape[-2:] == (224, 224)
            _assert_close(logits[..., ::3, ::3], fx_reference["seg_logits_every3"][i], f"seg head {name}")
        _assert_close(model(x, task="seg", head="candid_ptx"), fx_reference["seg_logits_head2_full"], "CANDID-PTX")


def test_fx_classification_and_localization_trunk_under_their_contracts(fx_reference):
    model = _fx_model(fx_reference, det_heads={"tbx11k": 1}, **foundation_x_layout("trained"))
    report = load_checkpoint(model, FX_CKPT)
    assert {k.split(".")[1] for k in report.loaded if k.startswith("task_inputs.")} == {"seg", "det"}
    x = _gray(fx_reference)
    with torch.no_grad():
        for i, name in enumerate(FX_CLASSIFICATION_HEADS):
            _assert_close(model(x, task="cls", head=name), fx_reference["cls_logits"][i], f"cls head {name}")
        _assert_close(model.pooled_feature(model.forward_features(x, "cls")), fx_reference["cls_pooled"], "pooled")
        for i, (a, b) in enumerate(zip(model.forward_features(x, "det"), fx_reference["det_stages"])):
            _assert_close(a, b, f"trunk stage {i} (localization contract)")
        # forward_all: one backbone pass per contract, the same outputs as the task-selective forward
        every = model.forward_all(x)
        torch.testing.assert_close(every["seg/chestx_det"], model(x, task="seg", head="chestx_det"))
        torch.testing.assert_close(every["cls/nih14"], model(x, task="cls", head="nih14"))


def test_fx_one_contract_for_every_task_is_what_the_per_task_fold_fixes(fx_reference):
    model = _fx_model(fx_reference, **foundation_x_layout("trained"))
    report = load_checkpoint(model, FX_CKPT, task_normalization={})
    assert not len(model.task_inputs) and not any(k.startswith("task_inputs.") for k in report.loaded)
    with torch.no_grad():
        stage0 = model.forward_features(_gray(fx_reference), "seg")[0]
    assert (stage0 - fx_reference["seg_stages"][0]).abs().max() > 0.1  # the chest X-ray fold is not the seg contract


def test_fx_loaded_model_round_trips_and_default_models_are_unchanged(fx_reference, tmp_path):
    layout = foundation_x_layout("trained")
    model = _fx_model(fx_reference, **layout)
    load_checkpoint(model, FX_CKPT)
    x = _gray(fx_reference)
    fresh = _fx_model(fx_reference, **layout)
    assert not any(k.startswith("task_inputs") for k in fresh.state_dict())  # default models: keys as before
    with torch.no_grad():
        torch.testing.assert_close(fresh.forward_features(x, "seg"), fresh.forward_features(x))
    fresh.load_state_dict(model.state_dict(), strict=True)  # the per-task contract travels in the state dict
    path = tmp_path / "ours.pt"
    torch.save({"teacher": model.state_dict()}, path)
    again = _fx_model(fx_reference, **layout)
    report = load_checkpoint(again, path)
    assert report.missing == [] and report.unexpected == []
    with torch.no_grad():
        for other in (fresh, again):
            torch.testing.assert_close(other(x, task="seg", head="siim_acr"), model(x, task="seg", head="siim_acr"))
    # Ark weights have one contract: loading them drops the corrections that belonged to the previous weights
    ark = tmp_path / "ark.pth"
    cfg = fx_reference["provenance"]["config"]
    torch.save(timm_swin_state_dict(cfg["embed_dim"], cfg["depths"], cfg["num_heads"], cfg["window_size"]), ark)
    load_checkpoint(again, ark)
    assert not len(again.task_inputs)


def test_fx_segmentation_needs_the_upernet_fx_type(fx_reference):
    model = _fx_model(fx_reference, seg_heads={"candid_ptx": 1}, cls_heads={"nih14": 14})
    report = load_checkpoint(model, FX_CKPT)
    assert "backbone.0.segmentation_PPN.bottleneck.0.weight" in report.unexpected
    assert report.missing_in("seg_decoder.") and any("upernet_fx" in m for m in report.mapping)


def test_fx_unshared_smoothing_loads_the_shared_conv_into_each_level(fx_reference):
    layout = foundation_x_layout("trained")
    shared = _fx_model(fx_reference, **layout)
    separate = _fx_model(fx_reference, head_options={"seg": {"shared_smoothing": False}}, **layout)
    load_checkpoint(shared, FX_CKPT)
    report = load_checkpoint(separate, FX_CKPT)
    assert report.missing == [] and not report.aliases and len(separate.seg_decoder.smooth) == 3
    x = _gray(fx_reference)
    with torch.no_grad():
        torch.testing.assert_close(separate(x, task="seg", head="chestx_det"), shared(x, task="seg", head="chestx_det"))


def test_fx_per_task_contract_trains_the_shared_conv_and_exports(fx_reference, tmp_path):
    from cxrfx.networks import TaskNet
    from cxrfx.networks.export import export_torchscript

    model = _fx_model(fx_reference, **foundation_x_layout("trained"))
    load_checkpoint(model, FX_CKPT)
    x = _gray(fx_reference)
    model(x, task="seg", head="siim_acr").sum().backward()  # the correction is a buffer: the shared conv learns
    assert model.backbone.patch_embed.proj.weight.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in model.task_inputs.parameters())
    traced = export_torchscript(TaskNet("seg", "candid_ptx", network=model), x, tmp_path / "seg.ts")
    with torch.no_grad():
        _assert_close(traced(x)[..., ::3, ::3], fx_reference["seg_logits_every3"][2], "TorchScript seg head")


def test_fx_equals_reference_at_512_px_where_windows_are_padded():
    ref = torch.load(os.path.join(FIXTURES, "fx_tiny_reference_512.pt"), weights_only=True)
    model = _fx_model(ref, det_heads={"tbx11k": 1}, **foundation_x_layout("all"))
    load_checkpoint(model, FX_CKPT)
    x = _gray(ref)
    with torch.no_grad():
        every = model.forward_all(x, tasks=("cls", "seg"))
        for i, name in enumerate(FX_CLASSIFICATION_HEADS):
            _assert_close(every[f"cls/{name}"], ref["cls_logits"][i], f"cls head {name} at 512 px")
        for i, name in enumerate(FX_SEGMENTATION_HEADS):
            assert every[f"seg/{name}"].shape[-2:] == (512, 512)
            _assert_close(every[f"seg/{name}"][..., ::7, ::7], ref["seg_logits_every7"][i], f"seg head {name} at 512 px")
        for a, b in zip(model.forward_features(x, "det")[2:], ref["det_stages_2_3"]):
            _assert_close(a, b, "localization-contract stage map at 512 px")
