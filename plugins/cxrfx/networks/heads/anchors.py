"""Detection anchors that travel with the model (the shapes fitted to a dataset's boxes: ``cxrfx.data.boxes``).

Why anchors live in the model: the right anchors depend on the training boxes (chest nodules are 5-30 px on a
512 px film, masses several times that), so ``finetune_det`` fits them to its datalist, as MONAI's lung-nodule
bundle derives its ``base_anchor_shapes`` from data. Stored as a buffer of :class:`DetectionAnchors`, the fitted
shapes are saved in every checkpoint (and TorchScript export); an inference config builds the network with
placeholder shapes of the same count and the weights file brings the real ones. :class:`ModelAnchorGenerator` is
MONAI's ``AnchorGenerator`` reading those shapes whenever it generates anchors.

Shapes are (extent along dim 0, extent along dim 1) = (height, width) in input pixels, per pyramid level, as
MONAI's ``'ij'`` anchors on (C, H, W) images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.apps.detection.utils.anchor_utils import AnchorGenerator
from torch import nn

__all__ = ["DetectionAnchors", "ModelAnchorGenerator", "default_anchor_shapes", "DEFAULT_ASPECT_RATIOS"]

DEFAULT_ASPECT_RATIOS = (0.5, 1.0, 2.0)  # width / height, as RetinaNet


def default_anchor_shapes(strides: Sequence[int], num_anchors: int = 6) -> list[list[list[float]]]:
    """RetinaNet-style shapes when no data is at hand: per level, sizes from 2 to 3 strides x ratios 1:2, 1:1, 2:1.

    ``num_anchors`` must be a multiple of 3 (sizes x the three ratios). With 6 and strides 8/16/32/64 these are
    the anchors cxrfx used before anchors were fitted (sizes 16/24 ... 128/192).
    """
    if num_anchors % len(DEFAULT_ASPECT_RATIOS):
        raise ValueError(f"num_anchors must be a multiple of {len(DEFAULT_ASPECT_RATIOS)}, got {num_anchors}")
    n_sizes = num_anchors // len(DEFAULT_ASPECT_RATIOS)
    factors = np.geomspace(2.0, 3.0, n_sizes) if n_sizes > 1 else np.array([2.5])
    shapes = []
    for stride in strides:
        level = []
        for ratio in DEFAULT_ASPECT_RATIOS:  # ratio-major, size-minor: MONAI's AnchorGenerator order
            for f in factors:
                size = f * stride
                level.append([round(size / np.sqrt(ratio), 2), round(size * np.sqrt(ratio), 2)])
        shapes.append(level)
    return shapes


class DetectionAnchors(nn.Module):
    """Anchor shapes per pyramid level as a buffer ``shapes`` (levels, anchors, 2), saved with the weights.

    Args:
        strides: the neck's level strides (e.g. 4/8/16/32).
        shapes: (height, width) per anchor per level; None: :func:`default_anchor_shapes` with ``num_anchors``.
        num_anchors: anchors per location when ``shapes`` is None.
    """

    def __init__(self, strides: Sequence[int], shapes: Sequence | None = None, num_anchors: int = 6):
        super().__init__()
        self.strides = tuple(int(s) for s in strides)
        shapes = default_anchor_shapes(self.strides, num_anchors) if shapes is None else shapes
        t = torch.as_tensor(np.asarray(shapes, dtype=np.float32))
        if t.ndim != 3 or t.shape[0] != len(self.strides) or t.shape[2] != 2:
            raise ValueError(f"anchor shapes must be (levels={len(self.strides)}, anchors, 2), got {tuple(t.shape)}")
        self.register_buffer("shapes", t)

    @property
    def num_anchors(self) -> int:
        return int(self.shapes.shape[1])

    def as_list(self) -> list[list[list[float]]]:
        """The shapes as nested lists (for configs, reports and ``propose_anchors``' output)."""
        return [[[round(float(v), 2) for v in a] for a in level] for level in self.shapes.tolist()]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before anchors were part of the model were trained with the default shapes: keep them
        state_dict.setdefault(prefix + "shapes", self.shapes.detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ModelAnchorGenerator(AnchorGenerator):
    """MONAI's ``AnchorGenerator`` whose cell anchors come from a model's :class:`DetectionAnchors` at every call,
    so shapes loaded from a checkpoint after the detector was built are the ones used."""

    def __init__(self, anchors: DetectionAnchors):
        super().__init__(sizes=[[1.0]] * len(anchors.strides), aspect_ratios=[[1.0]] * len(anchors.strides))
        self._anchors = [anchors]  # a list, not a submodule: the model owns the buffer, the detector only reads it
        self._set_cell_anchors()  # RetinaNetDetector reads num_anchors_per_location() when it is built

    @property
    def shapes(self) -> torch.Tensor:
        """The model's current (levels, anchors, 2) shapes."""
        return self._anchors[0].shapes

    def _set_cell_anchors(self) -> None:
        half = self.shapes.detach() / 2.0
        self.cell_anchors = [torch.cat([-h, h], dim=1) for h in half]  # [-d0/2, -d1/2, d0/2, d1/2] per anchor

    def forward(self, images: torch.Tensor, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        self._set_cell_anchors()
        return super().forward(images, feature_maps)
