"""Per-dataset classification heads on the pooled backbone feature (Foundation X / Ark style)."""

from __future__ import annotations

import torch
from torch import nn

from cxrfx.networks.heads.registry import ClassificationHeadType, register_head

__all__ = ["ClassificationHead", "LinearClassificationHeads"]


class ClassificationHead(nn.Module):
    """Dropout (optional, for MC-dropout) -> Linear(in_features, num_classes); returns logits.

    The input is the pooled feature: the backbone's final ``norm`` over the last stage's tokens, then
    global average pooling (see :meth:`SwinTransformer.pooled`), shared by every dataset's head.
    """

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(pooled))


@register_head("linear")
class LinearClassificationHeads(ClassificationHeadType):
    """Foundation X / Ark: a linear layer per dataset on the pooled backbone feature; nothing shared."""

    def build_head(self, model, num_classes, dropout, options):
        return ClassificationHead(model.backbone.num_features[-1], num_classes, dropout)
