"""A detection :class:`FoundationX` whose plain ``forward(image)`` is one tensor: what bundles export.

MONAI's ``verify_net_in_out`` and ``ckpt_export`` need ``image -> pred`` with a tensor ``pred`` whose dim 1 is
the declared channel count; a RetinaNet head gives per-level lists. :class:`DenseDetectionNet` is a
:class:`FoundationX` (same parameters and state-dict keys, so training checkpoints load unchanged) whose
default forward returns ``(B, K + 4, N)``: for each of the N anchors, K class logits then 4 box deltas, anchors
in the order MONAI's ``RetinaNetDetector`` uses (level by level, then row, column, anchor). Calls with an
explicit ``task`` behave exactly as :class:`FoundationX` (training, evaluation, ``build_detector``).
:func:`split_dense` undoes the packing, e.g. to decode a TorchScript model's output with ``build_detector``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cxrfx.networks.foundation_x import FoundationX, _ScriptedDet
from cxrfx.networks.heads.detection import BOX_KEY, CLS_KEY

__all__ = ["DenseDetectionNet", "flatten_maps", "split_dense"]


def flatten_maps(maps: list[torch.Tensor], num_anchors: int) -> torch.Tensor:
    """Per-level (B, A*C, H, W) maps -> (B, sum(H*W*A), C), as ``RetinaNetDetector._reshape_maps``."""
    out = []
    for m in maps:
        b, _, h, w = m.shape
        out.append(m.view(b, num_anchors, -1, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * num_anchors, -1))
    return torch.cat(out, dim=1)


def split_dense(dense: torch.Tensor, level_shapes: Sequence[tuple[int, int]], num_anchors: int,
                num_classes: int) -> dict[str, list[torch.Tensor]]:
    """(B, K + 4, N) -> ``{"classification": [(B, A*K, H, W)...], "box_regression": [(B, A*4, H, W)...]}``."""
    b = dense.shape[0]
    flat = dense.transpose(1, 2)
    out: dict[str, list[torch.Tensor]] = {CLS_KEY: [], BOX_KEY: []}
    start = 0
    for h, w in level_shapes:
        n = h * w * num_anchors
        chunk = flat[:, start:start + n]
        start += n
        for key, part in ((CLS_KEY, chunk[..., :num_classes]), (BOX_KEY, chunk[..., num_classes:])):
            c = part.shape[-1]
            out[key].append(part.reshape(b, h, w, num_anchors, c).permute(0, 3, 4, 1, 2).reshape(b, num_anchors * c, h, w))
    if start != flat.shape[1]:
        raise ValueError(f"level shapes {list(level_shapes)} cover {start} anchors, the tensor has {flat.shape[1]}")
    return out


class _ScriptedDense(_ScriptedDet):
    """The packed ``(B, K + 4, N)`` output of :class:`DenseDetectionNet` for ``torch.jit.script``."""

    def __init__(self, model: FoundationX, head: str | None):
        super().__init__(model, "det", head)
        self.num_anchors = int(self.head.num_anchors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = self.head(self.shared(self.features(x)))
        packed = torch.cat([flatten_maps(out["classification"], self.num_anchors),
                            flatten_maps(out["box_regression"], self.num_anchors)], dim=2)
        return packed.transpose(1, 2).contiguous()


class DenseDetectionNet(FoundationX):
    """:class:`FoundationX` (same arguments; ``default_task`` "det") with a single-tensor default output."""

    def __init__(self, *args, default_task: str = "det", **kwargs):
        super().__init__(*args, default_task=default_task, **kwargs)
        if self.default_task != "det" or not len(self.det_heads):
            raise ValueError("DenseDetectionNet needs detection heads and default_task 'det'")

    def __prepare_scriptable__(self):
        """``torch.jit.script`` (the Model Zoo's ``ckpt_export``): the default head's packed output."""
        return _ScriptedDense(self, self.default_head)

    def forward(self, x: torch.Tensor, task: str | None = None, head: str | None = None,
                return_features: bool = False):
        if task is not None:
            return super().forward(x, task=task, head=head, return_features=return_features)
        name = self._head("det", head or self.default_head)
        out = super().forward(x, task="det", head=name)
        anchors = self.det_heads[name].num_anchors
        packed = torch.cat([flatten_maps(out[CLS_KEY], anchors), flatten_maps(out[BOX_KEY], anchors)], dim=2)
        return packed.transpose(1, 2).contiguous()
