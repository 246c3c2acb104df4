"""Swin v1 backbone: shapes, padding, parameter counts, and window attention against a naive reference."""

from __future__ import annotations

import pytest
import torch

from cxrfx.networks.swin import SwinTransformer, SwinTransformerBlock, swin

SMALL = {"embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 3, 6), "window_size": 4}


def test_stage_maps_have_strides_4_to_32_for_any_multiple_of_32():
    model = SwinTransformer(in_chans=1, **SMALL).eval()
    for h, w in ((64, 96), (128, 64), (96, 160)):
        with torch.no_grad():
            feats = model(torch.rand(2, 1, h, w))
        assert [tuple(f.shape) for f in feats] == [
            (2, 24 * 2**i, h // 2 ** (i + 2), w // 2 ** (i + 2)) for i in range(4)
        ]
        assert tuple(model.pooled(feats[-1]).shape) == (2, 192)


def test_base_matches_the_reference_parameter_count():
    """Swin-B trunk incl. final norm: 86.74 M (REFERENCE §1.4) with 3 input channels."""
    model = swin("base", in_chans=3)
    assert sum(p.numel() for p in model.parameters()) == 86_743_224
    assert model.num_features == [128, 256, 512, 1024]
    with pytest.raises(ValueError, match="unknown Swin size"):
        swin("huge")


def _naive_block_attention(block: SwinTransformerBlock, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Textbook shifted-window attention (slice-built mask, explicit softmax), no padding needed."""
    ws, shift = block.window, block.shift
    b, _, c = x.shape
    heads = block.attn.num_heads
    y = block.norm1(x).view(b, h, w, c)
    if shift:
        y = torch.roll(y, (-shift, -shift), (1, 2))
    img = torch.zeros(h, w)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[hs, wsl] = cnt
            cnt += 1
    out = torch.zeros_like(y)
    coords = [(r, s) for r in range(ws) for s in range(ws)]
    for i0 in range(0, h, ws):
        for j0 in range(0, w, ws):
            win = y[:, i0:i0 + ws, j0:j0 + ws].reshape(b, ws * ws, c)
            qkv = block.attn.qkv(win).reshape(b, ws * ws, 3, heads, c // heads)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
            logits = torch.einsum("bnhd,bmhd->bhnm", q, k) / (c // heads) ** 0.5
            table = block.attn.relative_position_bias_table
            bias = torch.stack([torch.stack([table[(a[0] - bb[0] + ws - 1) * (2 * ws - 1) + (a[1] - bb[1] + ws - 1)]
                                             for bb in coords]) for a in coords])  # (N, N, heads)
            logits = logits + bias.permute(2, 0, 1)
            if shift:
                region = img[i0:i0 + ws, j0:j0 + ws].reshape(-1)
                logits = logits + (region[:, None] != region[None, :]).float() * -100.0
            attn = logits.softmax(-1)
            o = torch.einsum("bhnm,bmhd->bnhd", attn, v).reshape(b, ws * ws, c)
            out[:, i0:i0 + ws, j0:j0 + ws] = block.attn.proj(o).reshape(b, ws, ws, c)
    if shift:
        out = torch.roll(out, (shift, shift), (1, 2))
    x = x + out.reshape(b, h * w, c)
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("shift", [0, 2])
def test_window_attention_matches_a_naive_implementation(shift):
    torch.manual_seed(0)
    block = SwinTransformerBlock(dim=12, num_heads=3, window=4, shift=shift, mlp_ratio=2.0, qkv_bias=True, drop=0.0,
                                 attn_drop=0.0, drop_path=0.0).eval()
    torch.nn.init.normal_(block.attn.relative_position_bias_table, std=1.0)  # make the bias matter
    h, w = 8, 12
    x = torch.randn(2, h * w, 12)
    from cxrfx.networks.swin import shifted_window_mask

    mask = shifted_window_mask(h, w, 4, 2, x.device)
    with torch.no_grad():
        ours = block(x, (h, w), mask)
        ref = _naive_block_attention(block, x, h, w)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_output_and_gradients():
    torch.manual_seed(0)
    plain = SwinTransformer(in_chans=1, drop_path_rate=0.0, **SMALL).train()
    ckpt = SwinTransformer(in_chans=1, drop_path_rate=0.0, use_checkpoint=True, **SMALL).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(2, 1, 64, 64)
    outs = [m(x)[-1].square().mean() for m in (plain, ckpt)]
    for out in outs:
        out.backward()
    torch.testing.assert_close(outs[0], outs[1])
    g_plain = plain.layers[2].blocks[1].attn.qkv.weight.grad
    g_ckpt = ckpt.layers[2].blocks[1].attn.qkv.weight.grad
    torch.testing.assert_close(g_plain, g_ckpt, atol=1e-6, rtol=1e-5)


def test_conv_stem_keeps_the_stage_strides_and_the_trunk_names():
    patch = SwinTransformer(in_chans=1, **SMALL)
    conv = SwinTransformer(in_chans=1, stem="conv", **SMALL).eval()
    with torch.no_grad():
        feats = conv(torch.rand(2, 1, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(2, 24 * 2**i, 64 // 2 ** (i + 2), 96 // 2 ** (i + 2)) for i in range(4)]
    # only the embedding differs: the trunk's parameter names (and so trunk weights) are shared
    trunk = {k for k in patch.state_dict() if not k.startswith("patch_embed.")}
    assert trunk == {k for k in conv.state_dict() if not k.startswith("patch_embed.")}
    assert any(k.startswith("patch_embed.stem.") for k in conv.state_dict())
    # unlike the 4x4 linear embedding, the stem's tokens overlap: the last pixel of patch (0, 0) also moves (1, 1)
    x = torch.zeros(1, 1, 64, 64)
    y = x.clone()
    y[0, 0, 3, 3] = 1.0
    with torch.no_grad():
        diff = (conv.patch_embed(y) - conv.patch_embed(x)).abs().sum(1)[0]
    assert diff[1, 1] > 0 and diff[0, 0] > 0 and diff[3, 3] == 0
    with pytest.raises(ValueError, match="stem must be"):
        SwinTransformer(stem="resnet", **SMALL)
    with pytest.raises(ValueError, match="power-of-two"):
        SwinTransformer(stem="conv", patch_size=3, **SMALL)


def test_timm_shift_rule_skips_the_shift_only_where_one_window_covers_the_map():
    torch.manual_seed(0)
    cfg = {**SMALL, "window_size": 4}
    model = SwinTransformer(in_chans=1, **cfg).eval()
    x = torch.rand(1, 1, 128, 128)  # stage maps 32, 16, 8, 4: only the last fits in one 4x4 window
    with torch.no_grad():
        always = model(x)
        model.shift_rule = "timm"
        timm_rule = model(x)
        for blk in model.layers[3].blocks:  # what timm 0.5 does there: every block unshifted
            blk.shift = 0
        unshifted = model(x)
    for i in range(3):
        assert torch.equal(always[i], timm_rule[i])
    assert (always[3] - timm_rule[3]).abs().max() > 1e-3
    assert torch.allclose(timm_rule[3], unshifted[3], atol=1e-6)
    with pytest.raises(ValueError, match="shift_rule"):
        model.shift_rule = "never"
