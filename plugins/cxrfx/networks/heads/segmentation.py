"""UperNet segmentation decoder shared by all datasets, and one small head per dataset.

Decoder (Xiao et al., ECCV 2018, as Foundation X builds it): pyramid pooling (bins 1/2/4/6) on the last
stage, FPN top-down fusion of all four stages (un-normed), every level upsampled to stride 4 and fused by a
3x3 conv. Per-dataset head: 3x3 conv to that dataset's classes, bilinear upsampling to the input size;
logits out (apply a sigmoid: classes may overlap).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cxrfx.networks.heads.registry import SegmentationHeadType, register_head

__all__ = ["UperNetDecoder", "SegmentationHead", "UperNetHeads"]


def conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class UperNetDecoder(nn.Module):
    """PSP + FPN fusion of the backbone's stage maps into one (B, channels, H/4, W/4) map.

    Args:
        in_channels: channels of the four stage maps (e.g. 128/256/512/1024 for Swin-B).
        channels: FPN width (128 in Foundation X).
        psp_channels: PSP bottleneck width (1024 in Foundation X).
        pool_scales: PSP bins.
        shared_smoothing: one 3x3 smoothing conv for all FPN levels, as the reference code builds it
            (``[conv] * 3``, REFERENCE §1.10 item 5); default: one conv per level.
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 128, psp_channels: int = 1024,
                 pool_scales: Sequence[int] = (1, 2, 4, 6), psp_branch_channels: int = 256,
                 shared_smoothing: bool = False, dropout: float = 0.1):
        super().__init__()
        top = in_channels[-1]
        self.psp_pools = nn.ModuleList(
            [nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_bn_relu(top, psp_branch_channels, 1)) for s in pool_scales]
        )
        self.psp_bottleneck = conv_bn_relu(top + len(pool_scales) * psp_branch_channels, psp_channels, 3)
        self.psp_dropout = nn.Dropout2d(dropout)
        self.lateral = nn.ModuleList([conv_bn_relu(c, channels, 1) for c in in_channels[:-1]])
        self.lateral.append(conv_bn_relu(psp_channels, channels, 1))
        self.shared_smoothing = bool(shared_smoothing)
        n_smooth = 1 if shared_smoothing else len(in_channels) - 1
        self.smooth = nn.ModuleList([conv_bn_relu(channels, channels, 3) for _ in range(n_smooth)])
        self.fuse = conv_bn_relu(len(in_channels) * channels, channels, 3)
        self.out_channels = channels

    def psp(self, top: torch.Tensor) -> torch.Tensor:
        size = top.shape[-2:]
        branches = [top]
        for pool in self.psp_pools:
            branches.append(F.interpolate(pool(top), size=size, mode="bilinear", align_corners=False))
        return self.psp_dropout(self.psp_bottleneck(torch.cat(branches, dim=1)))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        # explicit loops over the ModuleLists (TorchScript cannot zip or index them by a variable)
        last = len(self.lateral) - 1
        lat: list[torch.Tensor] = []
        for i, conv in enumerate(self.lateral):
            lat.append(conv(self.psp(feats[i]) if i == last else feats[i]))
        for i in range(len(lat) - 1, 0, -1):  # top-down
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="bilinear",
                                                    align_corners=False)
        outs: list[torch.Tensor] = []
        if self.shared_smoothing:
            for i in range(len(lat) - 1):
                outs.append(self.smooth[0](lat[i]))
        else:
            for i, smooth in enumerate(self.smooth):
                outs.append(smooth(lat[i]))
        outs.append(lat[-1])
        size = outs[0].shape[-2:]
        fused = [outs[0]]
        for o in outs[1:]:
            fused.append(F.interpolate(o, size=size, mode="bilinear", align_corners=False))
        return self.fuse(torch.cat(fused, dim=1))


class SegmentationHead(nn.Module):
    """Dropout2d (optional) -> 3x3 conv to ``num_classes`` -> bilinear upsampling to ``size``: logits."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout)
        self.conv = nn.Conv2d(in_channels, num_classes, 3, padding=1)

    def forward(self, fused: torch.Tensor, size: list[int]) -> torch.Tensor:
        logits = self.conv(self.dropout(fused))
        return F.interpolate(logits, size=[int(s) for s in size], mode="bilinear", align_corners=False)


@register_head("upernet")
class UperNetHeads(SegmentationHeadType):
    """Foundation X's segmentation branch: one :class:`UperNetDecoder` (``seg_decoder``) shared by every dataset,
    a :class:`SegmentationHead` per dataset. Options: decoder ``channels`` and ``psp_channels``, the reference
    code's ``shared_smoothing``."""

    shared_attributes = ("seg_decoder",)
    defaults = {"channels": 128, "psp_channels": 1024, "shared_smoothing": False}

    def build_shared(self, stage_channels, options):
        return {"seg_decoder": UperNetDecoder(stage_channels, options["channels"], options["psp_channels"],
                                              shared_smoothing=options["shared_smoothing"])}

    def build_head(self, model, num_classes, dropout, options):
        return SegmentationHead(model.seg_decoder.out_channels, num_classes, dropout)

    def shared_forward(self, model, feats):
        return model.seg_decoder(feats)
