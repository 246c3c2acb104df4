"""Foundation X's segmentation branch exactly as the reference code builds and computes it (``upernet_fx``).

The published Foundation X checkpoints carry a UperNet-style decoder (``segmentation_PPN`` + ``segmentation_FPN``)
and one 3x3 head per dataset (``segmentation_heads.{k}``). Its structure differs from cxrfx's ``upernet`` type
(``heads/segmentation.py``), so the published weights need this separate type (REFERENCE §1.2):

- **PSP** on the last stage map (C channels): adaptive average pooling to bins 1/2/4/6, each a 1x1 conv (no bias) to
  ``C // 4`` + BatchNorm + ReLU, upsampled back **with ``align_corners=True``**; concatenated with the input; 3x3 conv
  (no bias) back to C + BatchNorm + ReLU + Dropout2d(0.1).
- **FPN fuse** at the width of stage 0 (``in_channels[0]``: 128 for Swin-B): stage 0 enters as it is (no lateral);
  stages 1, 2 and the PSP output pass a 1x1 conv *with bias and no norm*. Top-down is **pairwise, not cumulative**:
  level ``i`` is ``up(lateral[i + 1]) + lateral[i]`` (the coarser *lateral*, not the coarser merged map), then a 3x3
  smoothing conv (bias, no norm) that is **one conv shared by the three levels** (the reference's ``[conv] * 3``,
  REFERENCE §1.10 item 5; ``shared_smoothing=False`` gives one conv per level). The coarsest level is the PSP lateral
  itself. Every level is upsampled to stride 4 (``align_corners=True``), concatenated and fused by a 3x3 conv (no
  bias) + BatchNorm + ReLU.
- **Per-dataset head**: a 3x3 conv to the dataset's classes, bilinear upsampling to the input size
  (``align_corners=False``); logits out.

``load_checkpoint(model, path, source="foundation_x")`` maps every one of these tensors (``checkpoints.py``). Select
the type with ``FoundationX(..., head_types={"seg": "upernet_fx"})``. For training from scratch cxrfx's ``upernet``
stays the default (see ``docs/networks.md``, "Foundation X segmentation").

This module is written for cxrfx from the reference's description; it contains no reference code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cxrfx.networks.heads.registry import SegmentationHeadType, register_head
from cxrfx.networks.heads.segmentation import SegmentationHead

__all__ = ["FXUperNetDecoder", "FXUperNetHeads"]


class FXUperNetDecoder(nn.Module):
    """The reference's PSP + FPN fuse (module docstring): four stage maps -> one (B, in_channels[0], H/4, W/4) map.

    Args:
        in_channels: channels of the four stage maps (128/256/512/1024 for Swin-B); the FPN width is ``in_channels[0]``.
        pool_scales: PSP bins; each branch has ``in_channels[-1] // len(pool_scales)`` channels.
        shared_smoothing: one 3x3 smoothing conv for every level (the reference) or one per level.
        align_corners: of the PSP and FPN upsamplings (the reference: True).
        dropout: Dropout2d after the PSP bottleneck (the reference: 0.1).
    """

    def __init__(self, in_channels: Sequence[int], pool_scales: Sequence[int] = (1, 2, 4, 6),
                 shared_smoothing: bool = True, align_corners: bool = True, dropout: float = 0.1):
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        top, width = in_channels[-1], in_channels[0]
        branch = top // len(pool_scales)
        self.align_corners = bool(align_corners)
        self.psp_branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), nn.Conv2d(top, branch, 1, bias=False), nn.BatchNorm2d(branch),
                          nn.ReLU(inplace=True))
            for s in pool_scales)
        self.psp_bottleneck = nn.Sequential(
            nn.Conv2d(top + branch * len(pool_scales), top, 3, padding=1, bias=False), nn.BatchNorm2d(top),
            nn.ReLU(inplace=True), nn.Dropout2d(dropout))
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels[1:])
        levels = len(in_channels) - 1
        # smooth[k] acts on level levels - 1 - k (the reference builds its list from the coarsest merge down)
        self.smooth = nn.Conv2d(width, width, 3, padding=1) if shared_smoothing else nn.ModuleList(
            nn.Conv2d(width, width, 3, padding=1) for _ in range(levels))
        self.fuse = nn.Sequential(nn.Conv2d(len(in_channels) * width, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.out_channels = width

    def _up(self, x: torch.Tensor, size: list[int]) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)

    def _pair(self, lat: list[torch.Tensor], level: int) -> torch.Tensor:
        """Pairwise top-down: the coarser *lateral* upsampled onto this level's lateral, before smoothing."""
        return self._up(lat[level + 1], lat[level].shape[-2:]) + lat[level]

    def psp(self, top: torch.Tensor) -> torch.Tensor:
        size = top.shape[-2:]
        branches = [top]
        for branch in self.psp_branches:
            branches.append(self._up(branch(top), size))
        return self.psp_bottleneck(torch.cat(branches, dim=1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        # explicit loops over the ModuleLists: what torch.jit.script compiles (it cannot zip them or index them by
        # a variable). ``smooth`` is a conv or a list of convs (so for the checkpoints' keys); ``hasattr`` tells
        # them apart statically when scripting, whereas ``isinstance(.., nn.Conv2d)`` compares against one
        # compiled Conv2d type and is False for a conv of another configuration
        last = len(feats) - 1
        lat = [feats[0]]
        for k, conv in enumerate(self.lateral):
            lat.append(conv(self.psp(feats[last]) if k + 1 == last else feats[k + 1]))
        levels = len(lat) - 1
        merged: list[torch.Tensor] = []
        if hasattr(self.smooth, "weight"):
            for i in range(levels):
                merged.append(self.smooth(self._pair(lat, i)))
        else:
            for k, conv in enumerate(self.smooth):  # smooth[k] acts on level levels - 1 - k
                merged.insert(0, conv(self._pair(lat, levels - 1 - k)))
        size = merged[0].shape[-2:]
        outs = [merged[0]]
        for m in merged[1:]:
            outs.append(self._up(m, size))
        outs.append(self._up(lat[-1], size))
        return self.fuse(torch.cat(outs, dim=1))


@register_head("upernet_fx")
class FXUperNetHeads(SegmentationHeadType):
    """Foundation X's published segmentation branch (module docstring): one :class:`FXUperNetDecoder`
    (``seg_decoder``), a 3x3 :class:`~cxrfx.networks.heads.segmentation.SegmentationHead` per dataset.
    Options: ``shared_smoothing`` (reference: True), ``align_corners`` (reference: True), ``psp_dropout`` (0.1)."""

    shared_attributes = ("seg_decoder",)
    defaults = {"shared_smoothing": True, "align_corners": True, "psp_dropout": 0.1}

    def build_shared(self, stage_channels, options):
        return {"seg_decoder": FXUperNetDecoder(stage_channels, shared_smoothing=bool(options["shared_smoothing"]),
                                                align_corners=bool(options["align_corners"]),
                                                dropout=float(options["psp_dropout"]))}

    def build_head(self, model, num_classes, dropout, options):
        return SegmentationHead(model.seg_decoder.out_channels, num_classes, dropout)

    def shared_forward(self, model, feats):
        return model.seg_decoder(feats)
