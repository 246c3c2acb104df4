"""Multi-scale deformable attention (Zhu et al., Deformable DETR, 2021) in plain PyTorch.

Each query reads ``n_points`` bilinearly sampled values per head and per feature level around its reference point
(or inside its reference box) and averages them with learned weights. DINO ships this as a CUDA extension with a
PyTorch fallback; here the sampling is one ``F.grid_sample`` per level (``align_corners=False``, zero padding: the
extension's semantics), so it runs on any device without a compiled op.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["multi_scale_deformable_attention", "MSDeformAttn"]


def multi_scale_deformable_attention(value: torch.Tensor, spatial_shapes: list[tuple[int, int]],
                                     sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum of values sampled at fractional locations of several maps.

    Args:
        value: (B, S, M, D): the flattened maps of every level (S = sum of H*W), M heads of D channels.
        spatial_shapes: (H, W) of each level, in the order of ``value``.
        sampling_locations: (B, Q, M, L, P, 2) (x, y) in [0, 1] of each level (0: the first pixel's outer edge).
        attention_weights: (B, Q, M, L, P), normalised over L * P.

    Returns:
        (B, Q, M * D).
    """
    b, _, m, d = value.shape
    _, q, _, levels, points, _ = sampling_locations.shape
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] with align_corners=False
    sampled = []
    start = 0
    for level, (h, w) in enumerate(spatial_shapes):
        # (B, H*W, M, D) -> (B*M, D, H, W)
        v = value[:, start:start + h * w].permute(0, 2, 3, 1).reshape(b * m, d, h, w)
        start += h * w
        # (B, Q, M, P, 2) -> (B*M, Q, P, 2)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (B*M, D, Q, L*P) weighted by (B*M, 1, Q, L*P)
    weights = attention_weights.transpose(1, 2).reshape(b * m, 1, q, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(b, m * d, q).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Deformable attention over ``n_levels`` maps: offsets and weights predicted from the query.

    Parameter names follow Deformable DETR / DINO (``sampling_offsets``, ``attention_weights``, ``value_proj``,
    ``output_proj``) so that their checkpoints map one to one.

    Args:
        d_model: channels of queries and values.
        n_levels, n_heads, n_points: feature levels, attention heads, sampling points per head and level.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's initialisation: the points of head h start on a ring in direction 2*pi*h/n_heads, at
        distances 1..n_points (cells, or quarter box sizes); uniform attention."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value_in: torch.Tensor,
                spatial_shapes: list[tuple[int, int]], padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            query: (B, Q, C).
            reference_points: (B, Q, L, 2) points (x, y) or (B, Q, L, 4) boxes (cx, cy, w, h), in [0, 1].
            value_in: (B, S, C) flattened maps of all levels.
            spatial_shapes: (H, W) per level.
            padding_mask: (B, S), True where ``value_in`` is padding (its values are zeroed).
        """
        b, q, _ = query.shape
        value = self.value_proj(value_in)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(b, value.shape[1], self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(b, q, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(b, q, self.n_heads, self.n_levels * self.n_points)
        weights = F.softmax(weights, -1).view(b, q, self.n_heads, self.n_levels, self.n_points)
        if reference_points.shape[-1] == 2:  # offsets in cells of each level
            normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:  # offsets in half box sizes, spread over the points
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"reference points must end in 2 or 4 values, got {tuple(reference_points.shape)}")
        out = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)
        return self.output_proj(out)
