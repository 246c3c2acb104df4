"""Object-CXR (JF Healthcare, MIDL 2020 challenge): foreign objects on frontal chest X-rays -> datalist.

Layout (the challenge release)::

    <root>/train.csv   <root>/train/<image_name>.jpg      8,000 images (4,000 with objects)
    <root>/dev.csv     <root>/dev/<image_name>.jpg        1,000 images (500 with objects); the test set is withheld

CSV header ``image_name,annotation`` (the challenge README shows ``image_path``; both are accepted, and only the
file name of the value is used). ``annotation`` is empty for an image without foreign objects, else
``;``-separated shapes ``TYPE x1 y1 x2 y2 ...`` in pixels of the JPEG (origin top-left, x = column):

- ``0 x1 y1 x2 y2`` rectangle (upper-left and lower-right corners);
- ``1 x1 y1 x2 y2`` ellipse, given by its bounding box;
- ``2 x1 y1 x2 y2 ... xn yn`` polygon (at least three points).

Tasks: classification ``foreign_object`` (1 when the image has any shape, else 0); detection, class
``foreign_object``, one box per shape (the rectangle / the ellipse's box / the polygon's bounding box, clipped to
the image); segmentation, class ``foreign_object``: the union of the shapes rasterised with PIL like the
challenge's own drawing code (rectangle and ellipse filled with their boundary pixels, polygons via
:func:`common.polygon_mask`), one PNG per positive image; negative images get an empty mask mapping.
Box coordinates are kept as annotated (continuous pixel coordinates), so the mask of a rectangle covers the
pixels ``x1..x2`` inclusive while its box ends at ``x2``.

Splits: official ``train`` -> training, ``dev`` -> validation (test withheld, so empty). There are no patient
ids, so ``split="random"`` is image level. No view metadata (all frontal): ``views`` is refused.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

from cxrfx.data.adapters import common, register
from cxrfx.data.adapters.base import AdapterInfo, DatasetAdapter
from cxrfx.errors import ConfigError, DatasetLayoutError

__all__ = ["ObjectCXRAdapter", "parse_annotation"]

CLASS = "foreign_object"
_PARTS = (("train.csv", "train", "training"), ("dev.csv", "dev", "validation"))
_TYPES = {"0": "rectangle", "1": "ellipse", "2": "polygon"}


def parse_annotation(text: str) -> list[tuple[str, list[float]]]:
    """``"0 1 2 3 4;2 ..."`` -> ``[("rectangle", [1, 2, 3, 4]), ("polygon", [...])]``; raises ValueError."""
    shapes = []
    for piece in text.split(";"):
        tokens = piece.split()
        if not tokens:
            continue  # empty annotation or a trailing ';'
        kind = _TYPES.get(tokens[0])
        if kind is None:
            raise ValueError(f"shape type {tokens[0]!r} is not 0 (rectangle), 1 (ellipse) or 2 (polygon)")
        try:
            coords = [float(v) for v in tokens[1:]]
        except ValueError:
            raise ValueError(f"non-numeric coordinate in shape {piece.strip()!r}") from None
        if not all(np.isfinite(coords)):
            raise ValueError(f"non-finite coordinate in shape {piece.strip()!r}")
        if kind in ("rectangle", "ellipse"):
            if len(coords) != 4:
                raise ValueError(f"{kind} needs 4 coordinates x1 y1 x2 y2, got {len(coords)} in {piece.strip()!r}")
        elif len(coords) < 6 or len(coords) % 2:
            raise ValueError(f"polygon needs an even number (>= 6) of coordinates, got {len(coords)} in "
                             f"{piece.strip()!r}")
        shapes.append((kind, coords))
    return shapes


def _shape_box(kind: str, coords: list[float]) -> list[float]:
    xs, ys = coords[0::2], coords[1::2]
    return [min(xs), min(ys), max(xs), max(ys)]


def _shape_mask(kind: str, coords: list[float], height: int, width: int) -> np.ndarray:
    x1, y1, x2, y2 = _shape_box(kind, coords)
    if kind == "ellipse":
        return common.ellipse_mask([x1, y1, x2, y2], height, width)
    if kind == "rectangle":
        return common.polygon_mask([[(x1, y1), (x2, y1), (x2, y2), (x1, y2)]], height, width)
    return common.polygon_mask([list(zip(coords[0::2], coords[1::2]))], height, width)


def _image_size(path: str) -> tuple[int, int]:
    """(height, width) from the image header."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception as exc:  # PIL raises several kinds for broken files
        raise DatasetLayoutError(f"{path}: cannot read the image header ({type(exc).__name__}: {exc})") from None
    return int(height), int(width)


@register
class ObjectCXRAdapter(DatasetAdapter):
    info = AdapterInfo(
        name="object_cxr",
        tasks=("classification", "detection", "segmentation"),
        source="Object-CXR challenge (JF Healthcare, MIDL 2020): github.com/jfhealthcare/object-CXR, training and "
               "dev sets via the Google Drive link in its README",
        license="not clearly stated by the provider (research use; check the challenge terms)",
        description="10k frontal CXRs from Chinese township hospitals, foreign objects as rectangles/ellipses/polygons"
                    " (-> boxes and masks); official split train -> training, dev -> validation (test withheld); "
                    "no patient ids, so split=random is image level",
        official_split=True,
        views=False,
    )

    def build(self, root: str, out_dir: str, split: str = "official", seed: int = 0,
              views: list[str] | None = None, **options: Any) -> dict:
        if options:
            raise ConfigError(f"object_cxr takes no options, got {sorted(options)}")
        if views:
            raise ConfigError(f"object_cxr has no view-position metadata (all images are frontal), so it cannot be "
                              f"filtered by views={list(views)}; leave views unset")
        mask_dir = os.path.join(out_dir, "object_cxr_masks")
        official: dict[str, list[dict]] = {s: [] for s in common.SPLIT_NAMES}
        for csv_name, folder, split_name in _PARTS:
            csv_path = common.require_file(root, csv_name, what=f"Object-CXR {folder} annotations")
            image_dir = common.require_dir(root, folder, what=f"Object-CXR {folder} images")
            rows = common.read_csv(csv_path, required=["image_name", "annotation"], rename={"image_path": "image_name"})
            seen: dict[str, int] = {}
            for line, row in rows:
                official[split_name].append(self._item(csv_path, line, row, folder, image_dir, out_dir, mask_dir,
                                                       seen))
        if split == "official":
            splits = official
        else:
            splits = common.assign_splits(official["training"] + official["validation"], seed)
        tasks = {
            "classification": {"labels": [CLASS], "description": "1 when the image has at least one annotated "
                                                                 "foreign object"},
            "detection": {"classes": [CLASS], "description": "bounding box of each annotated shape"},
            "segmentation": {"classes": [CLASS], "mask_format": "per_class",
                             "description": "union of the annotated rectangles, ellipses and polygons"},
        }
        return common.datalist(self.info.name, tasks, splits, self.info.description, self.info.license,
                               self.info.source)

    @staticmethod
    def _item(csv_path: str, line: int, row: dict[str, str], folder: str, image_dir: str, out_dir: str,
              mask_dir: str, seen: dict[str, int]) -> dict:
        source_id = row["image_name"]
        name = os.path.basename(source_id.replace("\\", "/"))
        if not name:
            raise common.row_error(csv_path, line, "empty image_name")
        if name in seen:
            raise common.row_error(csv_path, line, f"image {name!r} is listed twice (also line {seen[name]})")
        seen[name] = line
        image = os.path.join(image_dir, name)
        if not os.path.isfile(image):
            raise common.row_error(csv_path, line, f"image {image} not found")
        try:
            shapes = parse_annotation(row["annotation"])
        except ValueError as exc:
            raise common.row_error(csv_path, line, f"annotation: {exc}") from None
        stem = os.path.splitext(name)[0]
        item: dict[str, Any] = {"id": f"{folder}/{stem}", "image": common.rel(image, out_dir),
                                "label": [1 if shapes else 0], "boxes": [], "box_labels": [], "mask": {},
                                "meta": {"source_id": source_id, "source_split": folder}}
        if shapes:
            height, width = _image_size(image)
            union = np.zeros((height, width), dtype=bool)
            dropped = 0
            for kind, coords in shapes:
                x1, y1, x2, y2 = _shape_box(kind, coords)
                box = [max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)]
                if box[0] < box[2] and box[1] < box[3]:
                    item["boxes"].append([round(v, 3) for v in box])
                    item["box_labels"].append(0)
                else:
                    dropped += 1  # zero-area shape, or one entirely outside the image
                union |= _shape_mask(kind, coords, height, width)
            item["meta"]["shapes"] = [kind for kind, _ in shapes]
            if dropped:
                item["meta"]["dropped_boxes"] = dropped
            if union.any():
                path = common.write_mask(os.path.join(mask_dir, folder, f"{stem}_{CLASS}.png"), union)
                item["mask"] = {CLASS: common.rel(path, out_dir)}
        return item
