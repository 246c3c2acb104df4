"""Sine position embeddings of DINO: of every map cell (encoder) and of every query box (decoder)."""

from __future__ import annotations

import math

import torch

__all__ = ["sine_map_embedding", "sine_box_embedding", "inverse_sigmoid"]


def _interleave(angles: torch.Tensor) -> torch.Tensor:
    """sin of the even, cos of the odd frequencies, interleaved (the DETR family's layout)."""
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


def sine_map_embedding(height: int, width: int, channels: int, temperature: float = 20.0,
                       device=None, dtype=torch.float32) -> torch.Tensor:
    """(1, channels, H, W) embedding of an unpadded map: row then column halves, coordinates (i + 1) / size
    scaled to 2 pi (DINO's ``PositionEmbeddingSineHW`` with ``normalize=True``; Foundation X: temperature 20)."""
    feats = channels // 2
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + 1e-6) * 2 * math.pi
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + 1e-6) * 2 * math.pi
    dim_t = torch.arange(feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / feats)
    pos_y = _interleave(y[:, None] / dim_t)[:, None, :].expand(height, width, feats)
    pos_x = _interleave(x[:, None] / dim_t)[None, :, :].expand(height, width, feats)
    return torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1).unsqueeze(0).to(dtype)


def sine_box_embedding(boxes: torch.Tensor, channels: int) -> torch.Tensor:
    """(..., 4) boxes (cx, cy, w, h) in [0, 1] -> (..., 4 * channels / 2): the embeddings of y, x, w, h in that
    order (DINO's ``gen_sineembed_for_position``, where ``channels`` = d_model = 256 gives 128 per coordinate)."""
    feats = channels // 2
    dim_t = torch.arange(feats, dtype=torch.float32, device=boxes.device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / feats)
    emb = [_interleave(boxes[..., i, None] * (2 * math.pi) / dim_t) for i in (1, 0, 2, 3)]
    return torch.cat(emb, dim=-1)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """logit(x) with x clamped to [0, 1] and both x and 1 - x kept above ``eps`` (DETR's)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
