"""Standard MONAI transform chains per task: load, normalise, resize to the network size, augment.

Outputs per item: ``image`` (1, S, S) in [0, 1]; cls: ``label`` float (C,) with -1 kept for unknown;
seg: ``mask`` (C, S, S) {0, 1}; det: ``boxes`` (N, 4) ``[r1, c1, r2, c2]`` (MONAI axis order) + ``box_labels``.
No left-right flips for classification and segmentation: chest anatomy is lateralised (the heart is on the
patient's left, and several segmentation classes are "left"/"right"), so a flip would teach the wrong anatomy.
Detection is the exception: a lesion looks the same on either side, so boxes get MONAI's box-aware zoom (scale
jitter, the boxes clipped to the image) and a left-right flip, which doubles the lesion positions a few
hundred training images show (the lung-nodule bundle flips all axes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms import (
    Compose, EnsureTyped, RandAdjustContrastd, RandAffined, RandGaussianNoised, SelectItemsd,
)

from monai.apps.detection.transforms.dictionary import ClipBoxToImaged, RandFlipBoxd, RandZoomBoxd

from cxrfx.data.transforms import BoxesToArrayAxesd, ResizeWithBoxesd
from cxrfx.io.transforms import LoadCXRd, LoadMaskd, NormalizeCXRd

__all__ = ["task_transforms", "KEEP_KEYS"]

KEEP_KEYS = {"cls": ("image", "label"), "seg": ("image", "mask"), "det": ("image", "boxes", "box_labels")}


def task_transforms(task: str, size: int = 224, mask_classes: Sequence[str] | None = None, train: bool = False,
                    normalize: str = "range") -> Compose:
    """Transforms for one task's items (``task`` in cls / seg / det), square ``size`` output."""
    keys = ["image"]
    chain = [LoadCXRd("image"), NormalizeCXRd("image", mode=normalize)]
    if task == "cls":
        chain.append(EnsureTyped("label", data_type="tensor", dtype=torch.float32, track_meta=False))
    elif task == "seg":
        if not mask_classes:
            raise ValueError("segmentation transforms need mask_classes")
        chain.append(LoadMaskd("mask", mask_classes))
        keys.append("mask")
    elif task == "det":
        chain.append(BoxesToArrayAxesd("boxes", label_keys="box_labels"))
    else:
        raise ValueError(f"task must be cls, seg or det, got {task!r}")
    chain.append(ResizeWithBoxesd("image", (size, size), mask_keys="mask" if task == "seg" else (),
                                  box_keys="boxes" if task == "det" else ()))
    if train:
        if task == "det":
            chain += [RandZoomBoxd("image", "boxes", "image", prob=0.5, min_zoom=0.9, max_zoom=1.15, keep_size=True),
                      ClipBoxToImaged("boxes", "box_labels", "image", remove_empty=True),
                      RandFlipBoxd("image", "boxes", "image", prob=0.5, spatial_axis=1)]
        else:  # small geometric jitter
            chain.append(RandAffined(keys, prob=0.5, rotate_range=0.12, scale_range=0.08, translate_range=0.04 * size,
                                     mode=["bilinear"] + ["nearest"] * (len(keys) - 1), padding_mode="zeros"))
        chain += [RandAdjustContrastd("image", prob=0.3, gamma=(0.8, 1.25)),
                  RandGaussianNoised("image", prob=0.2, std=0.01)]
    chain.append(EnsureTyped(keys, data_type="tensor", track_meta=False))
    # only this task's keys: a dataset's other annotations (e.g. mask paths when training its labels) stay out
    chain.append(SelectItemsd([*KEEP_KEYS[task], "id", "dataset"], allow_missing_keys=True))
    return Compose(chain)
