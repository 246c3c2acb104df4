"""Boxes and masks stay on the same pixels as the image through load, resize, flip, crop and rotate.

The image is non-square and asymmetric, so a swapped (H, W) or a wrong flip axis cannot pass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.apps.detection.transforms.dictionary import BoxToMaskd, ClipBoxToImaged, MaskToBoxd, RandFlipBoxd
from monai.transforms import Compose, Flipd, Rotated, SpatialCropd
from PIL import Image

from cxrfx.data.transforms import BoxesToArrayAxesd, BoxesToXYd, ResizeWithBoxesd
from cxrfx.io import LoadCXRd, LoadMaskd, NormalizeCXRd

H, W = 60, 100
BLOCK = (10, 20, 70, 90)  # rows 10..19, columns 70..89: top right of a wide image
BOX_XY = [70.0, 10.0, 90.0, 20.0]


@pytest.fixture
def item(tmp_path):
    img = np.full((H, W), 20, np.uint8)
    r1, r2, c1, c2 = BLOCK
    img[r1:r2, c1:c2] = 250
    Image.fromarray(img).save(tmp_path / "img.png")
    Image.fromarray(((img > 100) * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    return {"image": str(tmp_path / "img.png"), "mask": {"block": str(tmp_path / "mask.png")},
            "boxes": [BOX_XY], "box_labels": [0]}


def _box_pixels_match(image: torch.Tensor, box_xy, tol: int = 1):
    """The bright block fills the box (eroded by tol) and nothing bright lies outside it (dilated by tol)."""
    img = image[0].numpy()
    x1, y1, x2, y2 = (int(round(float(v))) for v in box_xy)
    inner = img[y1 + tol:y2 - tol, x1 + tol:x2 - tol]
    assert inner.size > 0 and inner.min() > 0.8, (box_xy, inner)
    outside = img.copy()
    outside[max(0, y1 - tol):y2 + tol, max(0, x1 - tol):x2 + tol] = 0
    assert outside.max() < 0.3, box_xy


def test_load_keeps_height_and_width(item):
    d = Compose([LoadCXRd(), NormalizeCXRd(mode="minmax"), LoadMaskd("mask", ["block"])])(item)
    assert tuple(d["image"].shape) == (1, H, W)
    _box_pixels_match(d["image"], BOX_XY, tol=0)
    assert torch.equal(d["mask"][0] > 0, d["image"][0] > 0.5)


def test_box_follows_resize_and_flip(item):
    pipeline = Compose([
        LoadCXRd(), NormalizeCXRd(mode="minmax"), LoadMaskd("mask", ["block"]), BoxesToArrayAxesd("boxes"),
        ResizeWithBoxesd("image", spatial_size=(90, 50), mask_keys="mask", box_keys="boxes"),
        RandFlipBoxd(image_keys=["image", "mask"], box_keys="boxes", box_ref_image_keys="image", prob=1.0,
                     spatial_axis=1),
        BoxesToXYd("boxes"),
    ])
    d = pipeline(item)
    assert tuple(d["image"].shape) == (1, 90, 50)
    box = d["boxes"][0].tolist()
    # 100 -> 50 columns halves x; 60 -> 90 rows scales y by 1.5; the left-right flip mirrors x in 50
    assert box == pytest.approx([50 - 45.0, 15.0, 50 - 35.0, 30.0])
    _box_pixels_match(d["image"], box)
    rows, cols = np.nonzero(d["mask"][0].numpy() > 0.5)
    assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == tuple(int(v) for v in box)


def test_box_follows_crop_and_vertical_flip(item):
    pipeline = Compose([
        LoadCXRd(), NormalizeCXRd(mode="minmax"), BoxesToArrayAxesd("boxes"),
        BoxToMaskd(box_keys="boxes", box_mask_keys="box_mask", label_keys="box_labels", box_ref_image_keys="image",
                   min_fg_label=0),
        SpatialCropd(["image", "box_mask"], roi_start=(5, 50), roi_end=(60, 100)),
        Flipd(["image", "box_mask"], spatial_axis=0),
        MaskToBoxd(box_keys="boxes", box_mask_keys="box_mask", label_keys="box_labels", min_fg_label=0),
        ClipBoxToImaged(box_keys="boxes", label_keys="box_labels", box_ref_image_keys="image"),
        BoxesToXYd("boxes"),
    ])
    d = pipeline(item)
    assert tuple(d["image"].shape) == (1, 55, 50)
    box = d["boxes"][0].tolist()
    assert box == pytest.approx([20.0, 55 - 15.0, 40.0, 55 - 5.0])
    _box_pixels_match(d["image"], box)


def test_box_follows_rotation(item):
    pipeline = Compose([
        LoadCXRd(), NormalizeCXRd(mode="minmax"), BoxesToArrayAxesd("boxes"),
        BoxToMaskd(box_keys="boxes", box_mask_keys="box_mask", label_keys="box_labels", box_ref_image_keys="image",
                   min_fg_label=0),
        Rotated(["image", "box_mask"], angle=np.radians(90), keep_size=False, mode=["bilinear", "nearest"]),
        MaskToBoxd(box_keys="boxes", box_mask_keys="box_mask", label_keys="box_labels", min_fg_label=0),
        BoxesToXYd("boxes"),
    ])
    d = pipeline(item)
    assert tuple(d["image"].shape) == (1, W, H)
    _box_pixels_match(d["image"], d["boxes"][0].tolist())


def test_empty_boxes_keep_shape():
    d = BoxesToArrayAxesd("boxes")({"boxes": []})
    assert tuple(d["boxes"].shape) == (0, 4)


def test_detection_training_pipeline_keeps_boxes_on_their_pixels(item):
    """The det training chain (box-aware zoom, clip, left-right flip, intensity) over many random draws."""
    from cxrfx.data.pipelines import task_transforms

    pipeline = task_transforms("det", size=64, train=True)
    centres, widths = [], []
    for seed in range(24):
        pipeline.set_random_state(seed)
        d = pipeline({**item, "mask": None})
        assert tuple(d["image"].shape) == (1, 64, 64) and d["box_labels"].tolist() == [0]
        r1, c1, r2, c2 = d["boxes"][0].tolist()  # MONAI axis order
        _box_pixels_match(d["image"], [c1, r1, c2, r2], tol=2)
        centres.append((c1 + c2) / 2)
        widths.append(c2 - c1)
    assert min(centres) < 32 < max(centres)  # flipped in some draws, not in others
    assert max(widths) - min(widths) > 1.5  # and zoomed


def test_detection_training_pipeline_accepts_an_image_without_boxes(item):
    from cxrfx.data.pipelines import task_transforms

    pipeline = task_transforms("det", size=64, train=True)
    for seed in range(6):
        pipeline.set_random_state(seed)
        d = pipeline({**item, "boxes": [], "box_labels": []})
        assert tuple(d["boxes"].shape) == (0, 4) and len(d["box_labels"]) == 0
