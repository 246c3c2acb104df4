"""DINO's input side, shared by every dataset: per-level LayerNorm and projection of the Swin stages (the neck)
and the deformable encoder over the four levels.

Names follow the reference so that checkpoints map directly: ``norms.{i}`` (Foundation X's ``Locnorm{i+1}``),
``input_proj.{i}.{0: conv, 1: GroupNorm}``, ``level_embed``, ``layers.{i}.{self_attn, norm1, linear1, linear2,
norm2}`` (DINO's ``transformer.encoder.layers``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cxrfx.networks.heads.detection import LayerNorm2d
from cxrfx.networks.heads.dino.attention import MSDeformAttn
from cxrfx.networks.heads.dino.position import sine_map_embedding

__all__ = ["DINONeck", "DeformableEncoderLayer", "DeformableEncoder", "flatten_levels", "level_shapes"]


def level_shapes(levels: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
    return [(int(x.shape[-2]), int(x.shape[-1])) for x in levels]


def flatten_levels(levels: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, C, H_l, W_l) maps -> (B, sum H_l W_l, C), level after level, row-major (DINO's token order)."""
    return torch.cat([x.flatten(2).transpose(1, 2) for x in levels], dim=1)


class DINONeck(nn.Module):
    """Swin stages 1-3 (strides 8/16/32): LayerNorm each, then a 1x1 conv + GroupNorm(32) to ``hidden_dim``; a
    stride-64 level from the *normed* stage-3 map by a 3x3 stride-2 conv + GroupNorm (Foundation X's localization
    input, REFERENCE §1.2)."""

    def __init__(self, stage_channels: Sequence[int], hidden_dim: int = 256, stages: Sequence[int] = (1, 2, 3),
                 extra_levels: int = 1, groups: int = 32):
        super().__init__()
        self.stages = tuple(int(s) for s in stages)
        chans = [int(stage_channels[s]) for s in self.stages]
        self.norms = nn.ModuleList(LayerNorm2d(c) for c in chans)
        proj = [nn.Sequential(nn.Conv2d(c, hidden_dim, 1), nn.GroupNorm(groups, hidden_dim)) for c in chans]
        in_ch = chans[-1]
        for _ in range(extra_levels):
            proj.append(nn.Sequential(nn.Conv2d(in_ch, hidden_dim, 3, stride=2, padding=1),
                                      nn.GroupNorm(groups, hidden_dim)))
            in_ch = hidden_dim
        self.input_proj = nn.ModuleList(proj)
        for seq in self.input_proj:
            nn.init.xavier_uniform_(seq[0].weight)
            nn.init.zeros_(seq[0].bias)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        normed = [norm(feats[s]) for norm, s in zip(self.norms, self.stages)]
        levels = [proj(x) for proj, x in zip(self.input_proj, normed)]
        extra = normed[-1]
        for proj in self.input_proj[len(normed):]:
            extra = proj(extra if len(levels) == len(normed) else levels[-1])
            levels.append(extra)
        return levels


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then a ReLU FFN; post-norm."""

    def __init__(self, d_model: int = 256, d_ffn: int = 2048, dropout: float = 0.0, n_levels: int = 4,
                 n_heads: int = 8, n_points: int = 4):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src, pos, reference_points, shapes, padding_mask=None):
        src = self.norm1(src + self.dropout(self.self_attn(src + pos, reference_points, src, shapes, padding_mask)))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout(ffn))


class DeformableEncoder(nn.Module):
    """The shared encoder: adds position + level embeddings and runs ``num_layers`` deformable layers.
    Input and output: the levels as (B, C, H_l, W_l) maps (the output is also the teacher's consistency feature)."""

    def __init__(self, d_model: int = 256, num_layers: int = 6, d_ffn: int = 2048, dropout: float = 0.0,
                 n_levels: int = 4, n_heads: int = 8, n_points: int = 4, pos_temperature: float = 20.0):
        super().__init__()
        self.d_model, self.pos_temperature = d_model, pos_temperature
        self.level_embed = nn.Parameter(torch.randn(n_levels, d_model))
        self.layers = nn.ModuleList(DeformableEncoderLayer(d_model, d_ffn, dropout, n_levels, n_heads, n_points)
                                    for _ in range(num_layers))
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()

    def position(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, S, C) position + level embedding of every token."""
        pos = [sine_map_embedding(h, w, self.d_model, self.pos_temperature, x.device, x.dtype).flatten(2)
               .transpose(1, 2) + self.level_embed[i].view(1, 1, -1) for i, (x, (h, w))
               in enumerate(zip(levels, level_shapes(levels)))]
        return torch.cat(pos, dim=1).expand(levels[0].shape[0], -1, -1)

    @staticmethod
    def reference_points(shapes, device, dtype=torch.float32) -> torch.Tensor:
        """(1, S, L, 2): each token's cell centre (x, y) in [0, 1], the same for every level (no padding)."""
        refs = []
        for h, w in shapes:
            ys, xs = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, dtype=dtype, device=device) / h,
                                    torch.linspace(0.5, w - 0.5, w, dtype=dtype, device=device) / w, indexing="ij")
            refs.append(torch.stack((xs.reshape(-1), ys.reshape(-1)), -1))
        return torch.cat(refs, 0)[None, :, None].expand(-1, -1, len(shapes), -1)

    def forward(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        shapes = level_shapes(levels)
        src, pos = flatten_levels(levels), self.position(levels)
        refs = self.reference_points(shapes, src.device, src.dtype).expand(src.shape[0], -1, -1, -1)
        for layer in self.layers:
            src = layer(src, pos, refs, shapes)
        out, start = [], 0
        for (h, w), x in zip(shapes, levels):
            out.append(src[:, start:start + h * w].transpose(1, 2).reshape(x.shape[0], -1, h, w))
            start += h * w
        return out
