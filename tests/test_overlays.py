"""Overlay rendering: masks filled and outlined in their class colour, boxes drawn on the right pixels."""

from __future__ import annotations

import numpy as np

from cxrfx.outputs.overlays import PALETTE, render_overlay


def test_overlay_colours_masks_and_boxes():
    image = np.zeros((40, 60), np.float32)
    mask = np.zeros((40, 60), bool)
    mask[5:15, 40:55] = True
    rgb = render_overlay(image, masks={"a": np.zeros_like(mask), "b": mask}, boxes=[[2, 20, 12, 30]],
                         box_names=["b"], caption="x", class_colors=["a", "b"])
    assert rgb.shape[0] >= 40 and rgb.shape[1] > 60 and rgb.shape[2] == 3
    assert tuple(rgb[5, 40]) == PALETTE[1]  # outline of "b" in the second palette colour
    inner = rgb[10, 47].astype(int)
    assert inner[0] > 0 and tuple(inner) != PALETTE[1]  # filled, blended with the dark image
    assert tuple(rgb[20, 2]) == PALETTE[1] and tuple(rgb[29, 11]) == PALETTE[1]  # box corners, pixel edges
    assert tuple(rgb[25, 6]) == (0, 0, 0)  # inside the box untouched
    assert rgb[30:, :60].max() == 0 and rgb[:, :40].max() > 0
