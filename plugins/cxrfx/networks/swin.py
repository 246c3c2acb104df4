"""Swin Transformer v1 for 2D images, in the original Microsoft module layout (plain PyTorch).

The module tree and parameter names are those of the reference implementations (timm 0.5
``swin_base_patch4_window7_224``, the Swin detection backbone used by DINO and Foundation X):
``patch_embed.proj``, ``layers.{i}.blocks.{j}.{norm1,attn.qkv,attn.proj,attn.relative_position_bias_table,
norm2,mlp.fc1,mlp.fc2}``, ``layers.{i}.downsample.{norm,reduction}`` at the end of stages 0-2 and the
final ``norm``. So Ark and Foundation X weights load without renaming (see ``checkpoints.py``).

As in the detection backbone, feature maps whose size is not a multiple of the window are padded inside
each block, so any input that is a multiple of 32 works (224, 512, ...). Attention runs through
``torch.nn.functional.scaled_dot_product_attention`` with the relative-position bias (and the shifted-
window mask) as an additive mask. ``forward`` returns the four stage maps (strides 4/8/16/32), un-normed;
``norm`` is applied by the classification path.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from torch import nn

__all__ = ["ConvStem", "SwinTransformer", "SWIN_CONFIGS", "swin"]

SWIN_CONFIGS = {
    "tiny": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)},
    "small": {"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24)},
    "base": {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32)},
    "large": {"embed_dim": 192, "depths": (2, 2, 18, 2), "num_heads": (6, 12, 24, 48)},
}


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at eval)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def relative_position_index(window: int, table_window: int = -1,
                            device: torch.device | None = None) -> torch.Tensor:
    """(window², window²) index into the ((2t-1)², heads) bias table of a ``table_window`` t (default: ``window``),
    as in Swin v1. A window smaller than the table's reads the entries of its own offsets (the table's centre)."""
    t = window if table_window < 0 else table_window
    i = torch.arange(window * window, device=device)
    row, col = torch.div(i, window, rounding_mode="floor"), i % window
    return (row[:, None] - row[None, :] + (t - 1)) * (2 * t - 1) + (col[:, None] - col[None, :] + (t - 1))


def _jit_unused(fn):
    """``torch.jit.unused`` (the function stays Python; scripting compiles only its signature) with the annotations
    evaluated: scripting cannot read the strings that ``from __future__ import annotations`` leaves on it."""
    fn.__annotations__ = typing.get_type_hints(fn)
    return torch.jit.unused(fn)


@_jit_unused
def _is_exporting() -> bool:
    """``torch.compiler.is_exporting()``, kept out of TorchScript (it reads a Python global that scripting cannot);
    a scripted model never exports, so its forward skips this call (``torch.jit.is_scripting()`` first)."""
    return torch.compiler.is_exporting()


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias."""

    def __init__(self, dim: int, window: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.window, self.num_heads = window, num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, window: int = -1) -> torch.Tensor:
        """x: (B, nW, N, C) windows of side ``window`` (default: the built one); mask: (nW, N, N) additive or None."""
        b, nw, n, c = x.shape
        if window < 0 or window == self.window:
            index = self.relative_position_index
        else:  # a window shrunk to a small map (timm 0.5 rule): the same offsets' entries of the learned table
            index = relative_position_index(window, self.window, self.relative_position_bias_table.device)
        qkv = self.qkv(x).reshape(b * nw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        # (B*nW, heads, N, hd) attention with a (B*nW, heads, N, N) mask: the layout torch.export / ONNX
        # handle for every size (5D or batch-folded-into-heads layouts break on size-1 dims when exported).
        q, k, v = (t.reshape(b * nw, self.num_heads, n, -1) for t in qkv.unbind(0))
        bias = self.relative_position_bias_table[index.reshape(-1)]
        bias = bias.reshape(n, n, self.num_heads).permute(2, 0, 1).unsqueeze(0)  # (1, heads, N, N)
        attn_mask = bias if mask is None else (bias + mask.unsqueeze(1)).repeat(b, 1, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype),
                                             dropout_p=self.attn_drop if self.training else 0.0)
        out = out.transpose(1, 2)
        if not torch.jit.is_scripting() and _is_exporting():
            # CPU SDPA returns a layout fake tensors do not reproduce: copy explicitly (torch.export only)
            out = out.clone(memory_format=torch.contiguous_format)
        return self.proj_drop(self.proj(out.reshape(b, nw, n, c)))


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float, qkv_bias: bool,
                 drop: float, attn_drop: float, drop_path: float):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], mask: torch.Tensor | None,
                shifted: bool = True, window: int = -1) -> torch.Tensor:
        """``shifted=False`` / ``window``: the stage's timm 0.5 rule (no shift; the window shrunk to the map)."""
        h, w = hw
        b, _, c = x.shape
        ws = self.window if window < 0 else window
        shift = self.shift if shifted else 0
        shortcut = x
        x = self.norm1(x).reshape(b, h, w, c)
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        if pad_b or pad_r:  # pad after the norm, as the reference detection backbone does
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        if shift:
            x = torch.roll(x, (-shift, -shift), dims=(1, 2))
        windows = x.reshape(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, -1, ws * ws, c)
        windows = self.attn(windows, mask if shift else None, ws)
        x = windows.reshape(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if shift:
            x = torch.roll(x, (shift, shift), dims=(1, 2))
        x = x[:, :h, :w, :].reshape(b, h * w, c)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _shift_regions(size: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """Region id along one axis: [0, size - window) -> 0, [size - window, size - shift) -> 1, the rest -> 2."""
    i = torch.arange(size, device=device)
    return (i >= size - window).long() + (i >= size - shift).long()


def shifted_window_mask(hp: int, wp: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """(nW, N, N) additive mask (0 / -100) keeping shifted windows from mixing wrapped-around regions.

    Regions along each axis: [0, size - window), [size - window, size - shift), [size - shift, size).
    Built from comparisons (no in-place slice writes) so that it traces, scripts and exports to ONNX.
    """
    img = _shift_regions(hp, window, shift, device)[:, None] * 3 + _shift_regions(wp, window, shift, device)[None, :]
    win = img.view(hp // window, window, wp // window, window).permute(0, 2, 1, 3).reshape(-1, window * window)
    diff = win[:, None, :] - win[:, :, None]
    return torch.zeros(diff.shape, device=device).masked_fill(diff != 0, -100.0)


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (order x0, x1, x2, x3 as in Swin v1) -> LayerNorm -> Linear(4C, 2C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        h, w = hw
        b, _, c = x.shape
        x = x.reshape(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.reshape(b, -1, 4 * c)))


class BasicLayer(nn.Module):
    """One Swin stage: ``depth`` blocks (alternating shift) and an optional PatchMerging at the end."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float, qkv_bias: bool,
                 drop: float, attn_drop: float, drop_path: Sequence[float], downsample: bool, use_checkpoint: bool):
        super().__init__()
        self.window, self.shift = window, window // 2
        self.use_checkpoint = use_checkpoint
        self.shift_rule = "always"  # set by SwinTransformer
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, num_heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio, qkv_bias,
                                 drop, attn_drop, drop_path[i])
            for i in range(depth)
        ])
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        ws, shifted = self.window, True
        if self.shift_rule == "timm" and min(hw) <= ws:
            # timm 0.5 (SwinTransformerBlock.__init__, Ark's Swin) where the map's shorter side fits in one window:
            # no shift, and the window shrinks to that side (7x7 at 224 px with window 7: no shift in stage 4).
            # Decided here from the actual map, so every input size follows the rule.
            ws, shifted = min(hw), False
        hp, wp = -(-hw[0] // ws) * ws, -(-hw[1] // ws) * ws
        mask = shifted_window_mask(hp, wp, ws, self.shift, x.device) if len(self.blocks) > 1 and shifted else None
        for i, blk in enumerate(self.blocks):
            if self.use_checkpoint and self.training and x.requires_grad and not torch.jit.is_scripting():
                x = self._checkpointed(i, x, hw, mask, shifted, ws)
            else:
                x = blk(x, hw, mask, shifted, ws)
        if self.downsample is None:
            return x, x, hw
        return x, self.downsample(x, hw), ((hw[0] + 1) // 2, (hw[1] + 1) // 2)

    @_jit_unused
    def _checkpointed(self, i: int, x: torch.Tensor, hw: tuple[int, int], mask: torch.Tensor | None,
                      shifted: bool, window: int) -> torch.Tensor:
        """Block ``i`` under gradient checkpointing (training only; not part of a scripted model)."""
        return checkpoint.checkpoint(self.blocks[i], x, hw, mask, shifted, window, use_reentrant=False)


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the bottom and right of (B, C, H, W) so that H and W are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple)) if h % multiple or w % multiple else x


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_chans: int, dim: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_to_multiple(x, self.patch)
        return self.proj(x)


class ConvStem(nn.Module):
    """Convolutional patch embedding (Xiao et al., "Early convolutions help transformers see better", 2021):
    ``log2(patch)`` 3×3 stride-2 convolutions (BatchNorm, ReLU), then a 1×1 projection to ``dim``. Trained from
    scratch it keeps the pixel-level detail a single 4×4 linear patch embedding averages away (small, faint
    lesions for the stride-4 detection level). Not in the published checkpoints: those use ``PatchEmbed``."""

    def __init__(self, patch: int, in_chans: int, dim: int):
        super().__init__()
        if patch < 2 or patch & (patch - 1):
            raise ValueError(f"a convolutional stem needs a power-of-two patch size >= 2, got {patch}")
        self.patch = patch
        layers, ch = [], in_chans
        for i in range(patch.bit_length() - 1):
            out = dim // 2 ** (patch.bit_length() - 2 - i)
            layers += [nn.Conv2d(ch, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            ch = out
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(ch, dim, kernel_size=1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_to_multiple(x, self.patch)
        return self.proj(self.stem(x))


class SwinTransformer(nn.Module):
    """Swin v1 backbone returning the four stage feature maps (B, C_i, H/2^(i+2), W/2^(i+2)).

    Args:
        in_chans: input channels (1 for our grayscale contract; 3-channel checkpoints are adapted on load).
        embed_dim, depths, num_heads, window_size, patch_size, mlp_ratio: the architecture
            (see :data:`SWIN_CONFIGS`).
        drop_path_rate: stochastic depth at the last block (linear from 0); reference default 0.2.
        use_checkpoint: gradient checkpointing per block (saves memory when training).
        stem: ``"patch"`` (Swin's 4×4 linear patch embedding; the published weights) or ``"conv"``
            (:class:`ConvStem`, for backbones trained from scratch on small, faint findings).
        shift_rule: ``"always"``: every odd block shifts its windows, maps smaller than the window are padded
            (the detection backbone of DINO and Foundation X, ``swin_transformer_CyclicSegmentation.py``);
            ``"timm"``: timm 0.5's rule, which Ark was trained with: in a stage whose map's shorter side is no
            larger than the window, no block shifts and the window shrinks to that side (stage 4 at 224 px with
            window 7). Decided per forward from the map size. Settable later (:attr:`shift_rule`);
            ``load_checkpoint`` sets ``"timm"`` for Ark weights and ``"always"`` for Foundation X weights.
    """

    __jit_unused_properties__ = ["shift_rule", "stride"]  # Python-side settings, not part of a scripted forward

    def __init__(self, in_chans: int = 1, embed_dim: int = 128, depths: Sequence[int] = (2, 2, 18, 2),
                 num_heads: Sequence[int] = (4, 8, 16, 32), window_size: int = 7, patch_size: int = 4,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.2, use_checkpoint: bool = False, stem: str = "patch",
                 shift_rule: str = "always"):
        super().__init__()
        if stem not in ("patch", "conv"):
            raise ValueError(f"stem must be 'patch' or 'conv', got {stem!r}")
        self.in_chans, self.window_size, self.patch_size = in_chans, window_size, patch_size
        self.num_features = [embed_dim * 2**i for i in range(len(depths))]
        self.patch_embed = (PatchEmbed if stem == "patch" else ConvStem)(patch_size, in_chans, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # also under a meta device
        self.layers = nn.ModuleList([
            BasicLayer(self.num_features[i], depths[i], num_heads[i], window_size, mlp_ratio, qkv_bias, drop_rate,
                       attn_drop_rate, dpr[sum(depths[:i]):sum(depths[:i + 1])], i < len(depths) - 1, use_checkpoint)
            for i in range(len(depths))
        ])
        self.norm = nn.LayerNorm(self.num_features[-1])
        self.shift_rule = shift_rule
        self.apply(self._init_weights)

    @property
    def shift_rule(self) -> str:
        return self._shift_rule

    @shift_rule.setter
    def shift_rule(self, rule: str) -> None:
        if rule not in ("always", "timm"):
            raise ValueError(f"shift_rule must be 'always' or 'timm', got {rule!r}")
        self._shift_rule = rule
        for layer in self.layers:
            layer.shift_rule = rule

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def stride(self) -> int:
        return self.patch_size * 2 ** (len(self.layers) - 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        hw = (x.shape[2], x.shape[3])
        x = self.pos_drop(self.patch_embed.norm(x.flatten(2).transpose(1, 2)))
        outs = []
        for layer in self.layers:
            out, x, next_hw = layer(x, hw)
            outs.append(out.transpose(1, 2).reshape(out.shape[0], out.shape[2], hw[0], hw[1]))
            hw = next_hw
        return outs

    def pooled(self, last: torch.Tensor) -> torch.Tensor:
        """Final ``norm`` over the last stage's tokens, then global average pooling: (B, C)."""
        return self.norm(last.flatten(2).transpose(1, 2)).mean(dim=1)


def swin(size: str = "base", **kwargs) -> SwinTransformer:
    """A Swin v1 of a named size (tiny / small / base / large); ``kwargs`` override the config."""
    if size not in SWIN_CONFIGS:
        raise ValueError(f"unknown Swin size {size!r}; choose from {sorted(SWIN_CONFIGS)}")
    return SwinTransformer(**{**SWIN_CONFIGS[size], **kwargs})
