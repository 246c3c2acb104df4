"""TBX11K (Liu et al., CVPR 2020): 3-way classification (healthy / sick but not TB / TB) + TB boxes -> datalist.

Layout of the release::

    <root>/TBX11K/imgs/{health,sick,tb,test,extra}/*.png      512x512 8-bit RGB PNGs
    <root>/TBX11K/annotations/json/TBX11K_{train,val}.json     COCO: images, annotations (bbox [x, y, w, h]),
                                                               categories (ActiveTuberculosis,
                                                               ObsoletePulmonaryTuberculosis, PulmonaryTuberculosis)
    <root>/TBX11K/lists/TBX11K_{train,val}.txt                 image paths relative to imgs/ ("tb/tb0003.png")

(``--root`` may be the ``TBX11K`` folder itself.) The class comes from the image's folder (``health`` ->
healthy, ``sick`` -> sick_but_non_tb, ``tb`` -> tb); the label is multi-hot with exactly one 1. Detection classes
are the COCO categories in id order, names read from the JSON. The image set of a split is its list file when
present, else the JSON's images. An image absent from the JSON has no TB box: healthy and sick images get an
empty box list (a negative), a TB image gets no ``boxes`` key (not annotated). The released ``tb/tb1199.png``
has no boxes although it is in ``tb/``: it is kept for classification without ``boxes``.

Splits: ``official`` = train -> training, val -> validation (the official test labels are withheld, evaluated
online, so the test set is not in the datalist; Foundation X reports on the official val set: option
``val_as="test"`` puts val in test and carves a validation set out of train, image level, with ``seed``).
``random`` = patient-level random split of train + val; TBX11K has no patient ids, so each image is its own
patient. Leakage: TBX11K contains Montgomery and Shenzhen images (in ``imgs/extra``, not in the TBX11K lists).
"""

from __future__ import annotations

import json
import os
from typing import Any

from cxrfx.data.adapters import common, register
from cxrfx.data.adapters.base import AdapterInfo, DatasetAdapter
from cxrfx.data.adapters.common import refuse_views
from cxrfx.data.adapters.siim_acr import warn_missing
from cxrfx.errors import ConfigError, DatasetLayoutError

__all__ = ["TBX11KAdapter"]

LABELS = ["healthy", "sick_but_non_tb", "tb"]
_FOLDER_CLASS = {"health": 0, "healthy": 0, "sick": 1, "tb": 2}
_SPLITS = (("train", "training"), ("val", "validation"))

_INFO = AdapterInfo(
    name="tbx11k",
    tasks=("classification", "detection"),
    source="TBX11K (Liu et al., CVPR 2020; mmcheng.net/tb, Kaggle mirror 'tbx11k')",
    license="CC BY-NC-SA 2.0 (per the dataset's COCO files / torchxrayvision)",
    description="TBX11K: healthy / sick-non-TB / TB classification + COCO TB boxes; official train/val split "
                "(test labels withheld); contains Montgomery/Shenzhen images (leakage)",
    official_split=True,
    views=False,
)


def _base_dir(root: str) -> str:
    for cand in (root, os.path.join(root, "TBX11K"), os.path.join(root, "tbx11k")):
        if os.path.isdir(os.path.join(cand, "imgs")):
            return cand
    return common.require_dir(root, "imgs", what="TBX11K images, imgs/{health,sick,tb}")


def _load_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise common.row_error(path, exc.lineno, f"not valid JSON ({exc.msg})") from None
    except OSError as exc:
        raise DatasetLayoutError(f"{path}: cannot open ({exc.strerror})") from None


def _norm_rel(name: str) -> str:
    name = name.strip().replace("\\", "/").lstrip("./")
    return name[len("imgs/"):] if name.startswith("imgs/") else name


def _coco(path: str) -> tuple[dict[str, dict], dict[int, str]]:
    """COCO file -> ({relative image path: {"size": (h, w) | None, "anns": [(bbox, category_id)]}}, categories)."""
    data = _load_json(path)
    if not isinstance(data, dict):
        raise DatasetLayoutError(f"{path}: expected a COCO object with 'images', 'annotations', 'categories'")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetLayoutError(f"{path}: COCO key {key!r} missing or not a list")
    categories: dict[int, str] = {}
    for k, cat in enumerate(data["categories"]):
        try:
            categories[int(cat["id"])] = str(cat["name"])
        except (KeyError, TypeError, ValueError):
            raise DatasetLayoutError(f"{path}: categories[{k}] needs an integer 'id' and a 'name'") from None
    by_id: dict[Any, str] = {}
    images: dict[str, dict] = {}
    for k, img in enumerate(data["images"]):
        try:
            rel_name = _norm_rel(str(img["file_name"]))
            by_id[img["id"]] = rel_name
        except (KeyError, TypeError):
            raise DatasetLayoutError(f"{path}: images[{k}] needs 'id' and 'file_name'") from None
        size = (int(img["height"]), int(img["width"])) if "height" in img and "width" in img else None
        images[rel_name] = {"size": size, "anns": []}
    for k, ann in enumerate(data.get("annotations") or []):
        try:
            rel_name = by_id[ann["image_id"]]
            x, y, w, h = (float(v) for v in ann["bbox"])
            cat = int(ann["category_id"])
        except KeyError as exc:
            raise DatasetLayoutError(f"{path}: annotations[{k}] refers to a missing key or image {exc}") from None
        except (TypeError, ValueError):
            raise DatasetLayoutError(f"{path}: annotations[{k}] bbox must be 4 numbers [x, y, w, h]") from None
        if cat not in categories:
            raise DatasetLayoutError(f"{path}: annotations[{k}] has category_id {cat} not in categories")
        images[rel_name]["anns"].append(([x, y, x + w, y + h], cat))
    return images, categories


def _read_list(path: str) -> list[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return [(n, _norm_rel(line)) for n, line in enumerate(f, start=1) if line.strip()]
    except OSError as exc:
        raise DatasetLayoutError(f"{path}: cannot open ({exc.strerror})") from None


@register
class TBX11KAdapter(DatasetAdapter):
    info = _INFO

    def build(self, root: str, out_dir: str, split: str = "official", seed: int = 0,
              views: list[str] | None = None, **options: Any) -> dict:
        val_as = options.pop("val_as", "validation")
        missing_policy = options.pop("missing", "skip")
        if options:
            raise ConfigError(f"tbx11k: unknown option(s) {sorted(options)}; known: val_as, missing")
        if val_as not in ("validation", "test"):
            raise ConfigError(f"tbx11k: val_as must be 'validation' or 'test', got {val_as!r}")
        if missing_policy not in ("skip", "error"):
            raise ConfigError(f"tbx11k: missing must be 'skip' or 'error', got {missing_policy!r}")
        refuse_views(self.info.name, views)
        base = _base_dir(root)
        img_root = os.path.join(base, "imgs")

        # COCO files first: the detection class list must be known before the items are built
        cocos, cat_names = {}, {}
        for part, _ in _SPLITS:
            path = common.require_file(base, "annotations", "json", f"TBX11K_{part}.json",
                                       what="TBX11K COCO annotations")
            images, cats = _coco(path)
            for cid, cname in cats.items():
                if cat_names.setdefault(cid, cname) != cname:
                    raise DatasetLayoutError(f"{path}: category {cid} is {cname!r} here but {cat_names[cid]!r} in "
                                             "the other split's file")
            cocos[part] = (path, images)
        cat_ids = sorted(cat_names)
        classes = [cat_names[c] for c in cat_ids]
        cat_index = {c: k for k, c in enumerate(cat_ids)}

        by_split: dict[str, list[dict]] = {}
        missing: list[str] = []
        for part, split_name in _SPLITS:
            json_path, images = cocos[part]
            list_path = os.path.join(base, "lists", f"TBX11K_{part}.txt")
            if os.path.isfile(list_path):
                entries = [(list_path, n, name) for n, name in _read_list(list_path)]
            else:
                entries = [(json_path, None, name) for name in images]
            items = []
            for src, line, rel_name in entries:
                folder = rel_name.split("/", 1)[0].lower() if "/" in rel_name else ""
                if folder not in _FOLDER_CLASS:
                    message = (f"cannot tell the class of {rel_name!r}: expected a path under health/, sick/ or tb/ "
                               "relative to imgs/")
                    raise common.row_error(src, line, message) if line else DatasetLayoutError(f"{src}: {message}")
                image_path = os.path.join(img_root, *rel_name.split("/"))
                if not os.path.isfile(image_path):
                    if missing_policy == "error":
                        message = f"image {image_path} not found"
                        raise common.row_error(src, line, message) if line else DatasetLayoutError(f"{src}: {message}")
                    missing.append(rel_name)
                    continue
                cls = _FOLDER_CLASS[folder]
                image_id = os.path.splitext(os.path.basename(rel_name))[0]
                label = [0, 0, 0]
                label[cls] = 1
                item: dict[str, Any] = {"id": image_id, "image": common.rel(image_path, out_dir),
                                        "patient_id": image_id, "label": label}
                meta: dict[str, Any] = {"source_id": rel_name, "official_split": part}
                coco = images.get(rel_name)
                anns = coco["anns"] if coco else []
                if coco and coco["size"]:
                    meta["original_size"] = list(coco["size"])
                boxes, box_labels, dropped = [], [], 0
                for box, cat in anns:
                    if box[2] > box[0] and box[3] > box[1]:
                        boxes.append([round(v, 4) for v in box])
                        box_labels.append(cat_index[cat])
                    else:
                        dropped += 1
                if dropped:
                    meta["dropped_empty_boxes"] = dropped
                if boxes or cls != 2:
                    item["boxes"], item["box_labels"] = boxes, box_labels
                else:
                    meta["note"] = "TB image without TB boxes: not annotated for detection"
                item["meta"] = meta
                items.append(item)
            by_split[split_name] = items

        total = sum(len(v) for v in by_split.values())
        if total == 0:
            raise DatasetLayoutError(f"{img_root}: none of the listed images was found; is --root the unpacked "
                                     "TBX11K folder?")
        warn_missing(self.info.name, missing, img_root)

        if split == "random":
            splits = common.assign_splits(by_split["training"] + by_split["validation"], seed)
        elif val_as == "test":
            carved = common.assign_splits(by_split["training"], seed, fractions=(0.9, 0.1, 0.0))
            splits = {"training": carved["training"], "validation": carved["validation"] + carved["test"],
                      "test": by_split["validation"]}
        else:
            splits = {"training": by_split["training"], "validation": by_split["validation"], "test": []}

        tasks = {
            "classification": {"labels": list(LABELS),
                               "description": "one-hot over the image's folder: health, sick (not TB), tb"},
            "detection": {"classes": classes,
                          "description": "TB areas from the COCO files (bbox [x, y, w, h] converted to xyxy)"},
        }
        return common.datalist(self.info.name, tasks, splits, self.info.description, self.info.license,
                               self.info.source)
