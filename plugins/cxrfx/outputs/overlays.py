"""Overlay PNGs: a radiograph with its masks (filled + outlined), boxes and a caption."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

__all__ = ["render_overlay", "save_overlay", "contact_sheet", "PALETTE"]

PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
]


def render_overlay(image: np.ndarray, masks: Mapping[str, np.ndarray] | None = None,
                   boxes: Sequence[Sequence[float]] = (), box_names: Sequence[str] = (),
                   caption: str = "", alpha: float = 0.3, class_colors: Sequence[str] = ()) -> np.ndarray:
    """RGB uint8 (H, W + legend, 3) overlay of an (H, W) image scaled to [0, 1].

    ``boxes`` are [x1, y1, x2, y2] (x = column, pixel edges). Colours follow ``class_colors`` order when
    given (so a class keeps its colour across images), else the order of ``masks``.
    """
    gray = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    rgb = np.repeat((gray * 255)[..., None], 3, axis=2)
    order = list(class_colors) or list(masks or {})
    color_of = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(order)}
    for name, mask in (masks or {}).items():
        m = np.asarray(mask).astype(bool)
        if not m.any():
            continue
        color = np.array(color_of.get(name, PALETTE[len(color_of) % len(PALETTE)]), np.float32)
        rgb[m] = (1 - alpha) * rgb[m] + alpha * color
        edge = m & ~ndimage.binary_erosion(m)
        rgb[edge] = color
    canvas = Image.fromarray(rgb.astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for box, name in zip(boxes, list(box_names) + [""] * len(boxes)):
        x1, y1, x2, y2 = (float(v) for v in box)
        color = color_of.get(name, (255, 255, 0))
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=color, width=1)
        if name:
            draw.text((x1, max(0, y1 - 11)), name, fill=color)
    legend = [(n, color_of[n]) for n in (masks or {}) if np.asarray(masks[n]).any()]
    width = canvas.width + (130 if legend or caption else 0)
    out = Image.new("RGB", (width, max(canvas.height, 14 * (len(legend) + caption.count("\n") + 2))), (0, 0, 0))
    out.paste(canvas, (0, 0))
    draw = ImageDraw.Draw(out)
    y = 2
    for line in caption.splitlines():
        draw.text((canvas.width + 4, y), line, fill=(255, 255, 255))
        y += 12
    for name, color in legend:
        draw.text((canvas.width + 4, y), name, fill=color)
        y += 12
    return np.asarray(out)


def save_overlay(path: str, image: np.ndarray, **kwargs) -> str:
    """Write :func:`render_overlay` to ``path`` (PNG); returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(render_overlay(image, **kwargs)).save(path)
    return path


def contact_sheet(paths: Sequence[str], out_path: str, columns: int = 4) -> str:
    """Tile several overlay PNGs into one image."""
    images = [Image.open(p).convert("RGB") for p in paths]
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    w = max(i.width for i in images)
    h = max(i.height for i in images)
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (w * min(columns, len(images)), h * rows))
    for k, im in enumerate(images):
        sheet.paste(im, ((k % columns) * w, (k // columns) * h))
    sheet.save(out_path)
    return out_path
