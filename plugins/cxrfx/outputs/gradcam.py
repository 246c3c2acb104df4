"""Grad-CAM heatmaps for the classification heads of a :class:`~cxrfx.networks.FoundationX`, and their overlays.

MONAI's :class:`monai.visualize.GradCAM` does the work. It hooks a module whose output is a (B, C, h, w)
map, but our Swin backbone's stages return token sequences that ``SwinTransformer.forward`` reshapes to
maps outside any module; :class:`StageMapClassifier` therefore runs the backbone and passes the last stage
map (stride 32; 7 x 7 at 224 px, the usual coarseness of Grad-CAM on a backbone's last block) through an
``nn.Identity`` named ``stage_map`` before the head. The backbone runs without autograd and the map is a
fresh leaf, so each class costs one backbone pass (reused for the next class of the same image) and a
backward pass through the pooling and the head only.

MONAI's default post-processing maps (min, max) to (1, 0) - it flips the map - so :func:`unit_scale`
(min, max) -> (0, 1) is used instead; an all-zero map (no positive evidence) stays 0.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.visualize import GradCAM
from PIL import Image
from torch import nn

from cxrfx.errors import ConfigError
from cxrfx.outputs.overlays import render_overlay

__all__ = ["StageMapClassifier", "unit_scale", "gradcam", "render_heatmap", "save_heatmap_overlay"]

# "jet"-like ramp: dark blue (no evidence) -> cyan -> yellow -> dark red (strongest)
_ANCHORS = np.array([0.0, 0.125, 0.375, 0.625, 0.875, 1.0])
_COLORS = np.array([(0, 0, 143), (0, 0, 255), (0, 255, 255), (255, 255, 0), (255, 0, 0), (128, 0, 0)], np.float32)


class StageMapClassifier(nn.Module):
    """``image -> logits`` of one classification head, exposing the last backbone stage map as ``stage_map``."""

    def __init__(self, model: nn.Module, head: str):
        super().__init__()
        heads = list(getattr(model, "cls_heads", {}) or {})
        if head not in heads:
            raise ConfigError(f"Grad-CAM: no classification head {head!r}; the model has {heads or 'none'}")
        self.model, self.head = model, head
        self.stage_map = nn.Identity()
        self._cache: tuple[torch.Tensor, list[torch.Tensor]] | None = None
        # MONAI's hook wrapper evaluates in eval mode and afterwards restores *this* module's mode to all
        # children: a fresh module is in train mode, which would leave the model training (drop path on)
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._cache is None or self._cache[0] is not x:  # same input object: reuse the backbone pass
            with torch.no_grad():
                self._cache = (x, self.model.forward_features(x))
        feats = self._cache[1]
        last = self.stage_map(feats[-1].detach().requires_grad_(True))
        return self.model.cls_heads[self.head](self.model.pooled_feature([*feats[:-1], last]))


def unit_scale(cam: torch.Tensor) -> torch.Tensor:
    """Per-sample (min, max) -> (0, 1); a constant map becomes all zeros."""
    flat = cam.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    scaled = (flat - lo) / (hi - lo).clamp_min(1e-12)
    return torch.where(hi - lo > 1e-12, scaled, torch.zeros_like(scaled)).reshape(cam.shape)


def gradcam(model: nn.Module, image: torch.Tensor, head: str, classes: Sequence[int]) -> dict[int, np.ndarray]:
    """Grad-CAM of ``classes`` of one head for one network input.

    Args:
        model: a FoundationX (any model with ``forward_features``, ``pooled_feature`` and ``cls_heads``).
        image: (1, 1, S, S) or (1, S, S) network input (preprocessed as for prediction).
        head: classification head name.
        classes: class indices of that head.

    Returns:
        ``{class index: (S, S) float32 heatmap in [0, 1]}`` at the network input size.
    """
    x = image if image.ndim == 4 else image[None]
    if x.shape[0] != 1:
        raise ConfigError(f"Grad-CAM takes one image at a time, got a batch of {x.shape[0]}")
    wrapper = StageMapClassifier(model, head)
    n = model.cls_heads[head].num_classes if hasattr(model.cls_heads[head], "num_classes") else None
    cam = GradCAM(nn_module=wrapper, target_layers="stage_map", postprocessing=unit_scale)
    x = x.to(next(model.parameters()).device)
    out = {}
    with torch.enable_grad():
        for c in classes:
            if n is not None and not 0 <= int(c) < n:
                raise ConfigError(f"Grad-CAM: class {c} out of range for head {head!r} ({n} classes)")
            out[int(c)] = cam(x, class_idx=int(c))[0, 0].detach().cpu().numpy().astype(np.float32)
    model.zero_grad(set_to_none=True)  # the backward passes left gradients on the head's weights
    return out


def render_heatmap(image: np.ndarray, heat: np.ndarray, caption: str = "", alpha: float = 0.6) -> np.ndarray:
    """RGB uint8 overlay of a [0, 1] heatmap (any size; resized bilinearly) on the (H, W) [0, 1] image.

    Colour weight grows with the heat, so regions without evidence show the plain radiograph.
    """
    base = render_overlay(image, caption=caption).astype(np.float32)
    h, w = np.asarray(image).shape
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != (h, w):
        heat = F.interpolate(torch.as_tensor(heat)[None, None], size=(h, w), mode="bilinear",
                             align_corners=False)[0, 0].numpy()
    heat = np.clip(heat, 0, 1)
    color = np.stack([np.interp(heat, _ANCHORS, _COLORS[:, k]) for k in range(3)], axis=-1)
    weight = (alpha * heat)[..., None]
    base[:h, :w] = (1 - weight) * base[:h, :w] + weight * color
    return base.astype(np.uint8)


def save_heatmap_overlay(path: str, image: np.ndarray, heat: np.ndarray, caption: str = "") -> str:
    """Write :func:`render_heatmap` as a PNG; returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(render_heatmap(image, heat, caption)).save(path)
    return path
