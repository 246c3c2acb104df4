"""Keeping boxes aligned with (C, H, W) images through MONAI's spatial transforms.

Datalists store boxes as ``[x1, y1, x2, y2]`` with x = column (COCO-like). MONAI's box transforms index
box coordinates by spatial axis, so on our (C, H, W) tensors they expect ``[row1, col1, row2, col2]``.
:class:`BoxesToArrayAxesd` converts on the way in, :class:`BoxesToXYd` on the way out; in between
use MONAI's box transforms (``RandFlipBoxd``, ``RandZoomBoxd``, ``RandRotateBox90d``, ``ClipBoxToImaged``,
``RandCropBoxByPosNegLabeld``; for small-angle rotations ``BoxToMaskd`` -> ``Rotated`` -> ``MaskToBoxd``)
and :class:`ResizeWithBoxesd` here.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.apps.detection.transforms.array import ResizeBox
from monai.config import KeysCollection
from monai.transforms import MapTransform, Resize

__all__ = ["BoxesToArrayAxesd", "BoxesToXYd", "ResizeWithBoxesd", "as_box_tensor"]

_SWAP = [1, 0, 3, 2]


def as_box_tensor(boxes: Any) -> torch.Tensor:
    """Boxes as a float32 (N, 4) tensor; an empty list becomes shape (0, 4)."""
    t = torch.as_tensor(np.asarray(boxes, dtype=np.float32) if not torch.is_tensor(boxes) else boxes,
                        dtype=torch.float32)
    return t.reshape(-1, 4)


class BoxesToArrayAxesd(MapTransform):
    """``[x1, y1, x2, y2]`` (x = column) -> ``[r1, c1, r2, c2]``, MONAI's spatial-axis order for (C, H, W).

    Boxes become float32 (N, 4) tensors; ``label_keys`` (e.g. ``box_labels``) become int64 (N,) tensors,
    as MONAI's box transforms expect.
    """

    def __init__(self, keys: KeysCollection = "boxes", label_keys: KeysCollection = "box_labels",
                 allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys)
        self.label_keys = [label_keys] if isinstance(label_keys, str) else list(label_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = as_box_tensor(d[key])[:, _SWAP]
        for key in self.label_keys:
            if key in d:
                d[key] = torch.as_tensor(np.asarray(d[key], dtype=np.int64)).reshape(-1)
        return d


class BoxesToXYd(BoxesToArrayAxesd):
    """Inverse of :class:`BoxesToArrayAxesd`: ``[r1, c1, r2, c2]`` -> ``[x1, y1, x2, y2]`` (the same swap)."""


class ResizeWithBoxesd(MapTransform):
    """Resize images (area / bilinear), masks (nearest) and boxes (exact scaling) to ``spatial_size``.

    Boxes must be in array-axis order (after :class:`BoxesToArrayAxesd`); their source size is read from
    ``ref_key`` before it is resized.
    """

    def __init__(self, keys: KeysCollection = "image", spatial_size: Sequence[int] = (224, 224),
                 mask_keys: KeysCollection = (), box_keys: KeysCollection = (), ref_key: str = "image",
                 image_mode: str = "area", allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.mask_keys = [mask_keys] if isinstance(mask_keys, str) else list(mask_keys)
        self.box_keys = [box_keys] if isinstance(box_keys, str) else list(box_keys)
        self.ref_key = ref_key
        self.resize_image = Resize(self.spatial_size, mode=image_mode, anti_aliasing=False)
        self.resize_mask = Resize(self.spatial_size, mode="nearest")
        self.resize_box = ResizeBox(self.spatial_size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        src_size = tuple(int(s) for s in d[self.ref_key].shape[1:])
        for key in self.box_keys:
            if key in d:
                d[key] = self.resize_box(as_box_tensor(d[key]), src_spatial_size=src_size)
        for key in self.key_iterator(d):
            d[key] = self.resize_image(d[key])
        for key in self.mask_keys:
            if key in d:
                d[key] = self.resize_mask(d[key])
        return d
