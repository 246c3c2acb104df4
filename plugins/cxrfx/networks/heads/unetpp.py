"""UNet++ segmentation heads on the Swin stages (Zhou, Rahman Siddiquee, Tajbakhsh, Liang, DLMIA 2018 / TMI 2020).

The same lab's decoder: nested, dense skip pathways between encoder and decoder. With the four backbone stages
as the encoder column ``X[i][0]`` (strides 4, 8, 16, 32; projected to ``channels * 2**i``), every node
``X[i][j] = block(cat(X[i][0..j-1], up(X[i+1][j-1])))`` (two 3x3 conv + BN + ReLU). The shared decoder
(``seg_decoder``) returns the top row ``X[0][1..3]`` (stride 4); each dataset's head has one 3x3 conv per
top-row node (deep supervision, the paper's ``L = 1..3`` outputs). Training returns every supervised output
stacked, (B, 3, C, H, W), and the loss averages over them; evaluation returns their mean logits, (B, C, H, W)
(the paper's "accurate mode" averages the branches). The consistency feature is the top row.

Registered as the ``"unetpp"`` head type: ``FoundationX(seg_heads=..., head_types={"seg": "unetpp"},
head_options={"seg": {"channels": 32}})``; ``finetune_seg`` selects it with ``head_type``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cxrfx.networks.heads.registry import SegmentationHeadType, TensorLoss, register_head
from cxrfx.networks.heads.segmentation import conv_bn_relu

__all__ = ["UNetPlusPlusDecoder", "DeepSupervisionHead", "UNetPlusPlusHeads"]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(cin, cout, 3), conv_bn_relu(cout, cout, 3))


class UNetPlusPlusDecoder(nn.Module):
    """Nested dense decoder over the four backbone stages; returns the top row ``[X[0][1], X[0][2], X[0][3]]``.

    Args:
        in_channels: channels of the four stage maps.
        channels: width of the stride-4 row; row ``i`` has ``channels * 2**i``.
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 32):
        super().__init__()
        depth = len(in_channels)
        self.widths = [channels * 2**i for i in range(depth)]
        self.project = nn.ModuleList([conv_bn_relu(c, w, 1) for c, w in zip(in_channels, self.widths)])
        # nodes[j-1][i] is X[i][j] for j >= 1, i <= depth-1-j: inputs X[i][0..j-1] and up(X[i+1][j-1])
        self.nodes = nn.ModuleList(
            nn.ModuleList(_block(self.widths[i] * j + self.widths[i + 1], self.widths[i]) for i in range(depth - j))
            for j in range(1, depth)
        )
        self.out_channels = channels

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        # explicit loops over the (nested) ModuleLists and list concatenation: what torch.jit.script compiles
        grid: list[list[torch.Tensor]] = []  # grid[i][j] = X[i][j]
        for i, proj in enumerate(self.project):
            grid.append([proj(feats[i])])
        for col, column in enumerate(self.nodes):
            j = col + 1
            for i, node in enumerate(column):
                below = F.interpolate(grid[i + 1][j - 1], size=grid[i][0].shape[-2:], mode="bilinear",
                                      align_corners=False)
                grid[i].append(node(torch.cat(grid[i][:j] + [below], dim=1)))
        return grid[0][1:]


class DeepSupervisionHead(nn.Module):
    """One dataset's head: a 3x3 conv to ``num_classes`` per supervised node, bilinear upsampling to ``size``."""

    def __init__(self, in_channels: int, num_classes: int, outputs: int = 3, dropout: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout)
        self.convs = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=1) for _ in range(outputs))

    def forward(self, row: list[torch.Tensor], size: list[int]) -> torch.Tensor:
        size = [int(s) for s in size]  # eager callers pass a torch.Size
        outs: list[torch.Tensor] = []
        for k, conv in enumerate(self.convs):  # not zip: TorchScript loops over a ModuleList only like this
            outs.append(F.interpolate(conv(self.dropout(row[k])), size=size, mode="bilinear", align_corners=False))
        logits = torch.stack(outs, dim=1)
        return logits if self.training else logits.mean(dim=1)


class _DeepSupervisionLoss(nn.Module):
    """The segmentation loss averaged over the supervised outputs (B, K, C, H, W); a (B, C, H, W) output as is."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim == target.ndim:
            return self.loss(logits, target)
        return torch.stack([self.loss(logits[:, k], target) for k in range(logits.shape[1])]).mean()


@register_head("unetpp")
class UNetPlusPlusHeads(SegmentationHeadType):
    """UNet++ (module docstring). Options: ``channels`` (stride-4 width)."""

    shared_attributes = ("seg_decoder",)
    defaults = {"channels": 32}

    def build_shared(self, stage_channels, options):
        return {"seg_decoder": UNetPlusPlusDecoder(stage_channels, int(options["channels"]))}

    def build_head(self, model, num_classes, dropout, options):
        return DeepSupervisionHead(model.seg_decoder.out_channels, num_classes, len(model.seg_decoder.nodes), dropout)

    def shared_forward(self, model, feats):
        return model.seg_decoder(feats)

    def criterion(self, model, head, loss=None):
        base = super().criterion(model, head, loss)
        return TensorLoss(_DeepSupervisionLoss(base.loss), base.key)
