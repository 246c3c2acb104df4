"""Datalists: one JSON file per dataset, validated by ``datalist.schema.json`` shipped beside this module.

A datalist names the dataset, its tasks with their label / class names, and its ``training`` /
``validation`` / ``test`` items. Each item has ``image`` and, per annotated task, ``label`` (multi-hot,
-1 unknown), ``boxes`` + ``box_labels`` (``[x1, y1, x2, y2]``, x = column, y = row, pixel edges, in the
stored image) and ``mask`` (see the schema's ``mask_format``). An item without a task's key is
"not annotated for that task" (e.g. NIH images outside the box subset); an empty ``boxes`` list is a
negative. Paths are relative to the datalist's folder, or absolute.

An *unlabelled* datalist (``"kind": "unlabelled"``, empty ``tasks``) lists images only, for self-supervised
pretraining; :func:`folder_datalist` writes one for a folder of radiographs (``python -m cxrfx prepare
image_folder``), decoding every file first so that a bad one is named before a run starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import reprlib
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jsonschema

from cxrfx.errors import DatalistError

__all__ = [
    "SPLITS", "SCHEMA_PATH", "load_schema", "check_datalist", "read_datalist", "resolve_items", "load_datalist",
    "write_datalist", "item_name", "read_json", "is_unlabelled", "folder_datalist",
    "image_folder_datalist",
]

SPLITS = ("training", "validation", "test")
SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "datalist.schema.json")
_SHORT = reprlib.Repr()  # how a schema problem quotes a wrong value: a whole datalist would hide the problem
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxlist, _SHORT.maxdict = 2, 60, 4, 3


@lru_cache(maxsize=1)
def load_schema() -> dict:
    """The datalist JSON schema (draft 2020-12)."""
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return json.load(f)


def item_name(split: str, index: int, item: Mapping[str, Any]) -> str:
    """How problems refer to an item: ``training[3] (id=abc)``."""
    ident = item.get("id") if isinstance(item, Mapping) else None
    return f"{split}[{index}]" + (f" (id={ident})" if ident else "")


def _schema_problems(data: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(load_schema())
    problems = []
    for err in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path).lstrip(".")
        # jsonschema starts its messages with the offending value: shorten that value, keep what is wrong with it
        message = err.message.replace(repr(err.instance), _SHORT.repr(err.instance), 1)
        message = message if len(message) < 200 else message[:200] + "..."
        problems.append(f"{where or '<root>'}: {message}")
    return problems


def _item_problems(data: Mapping[str, Any]) -> list[str]:
    """Checks the schema cannot express: lengths against the class lists, box geometry, duplicates."""
    tasks = data["tasks"]
    labels = tasks.get("classification", {}).get("labels")
    classes = tasks.get("detection", {}).get("classes")
    seg = tasks.get("segmentation")
    problems: list[str] = []
    seen_ids: dict[str, str] = {}
    seen_images: dict[str, str] = {}
    for split in SPLITS:
        for i, item in enumerate(data.get(split, [])):
            name = item_name(split, i, item)
            if "label" in item:
                if labels is None:
                    problems.append(f"{name}: has 'label' but the datalist declares no classification task")
                elif len(item["label"]) != len(labels):
                    problems.append(f"{name}: label has {len(item['label'])} entries, expected {len(labels)} {labels}")
            if "boxes" in item or "box_labels" in item:
                boxes, box_labels = item.get("boxes"), item.get("box_labels")
                if classes is None:
                    problems.append(f"{name}: has boxes but the datalist declares no detection task")
                elif boxes is None or box_labels is None:
                    problems.append(f"{name}: 'boxes' and 'box_labels' must be given together")
                elif len(boxes) != len(box_labels):
                    problems.append(f"{name}: {len(boxes)} boxes but {len(box_labels)} box_labels")
                else:
                    for j, (box, cls) in enumerate(zip(boxes, box_labels)):
                        if not (box[0] < box[2] and box[1] < box[3]):
                            problems.append(f"{name}: box {j} {box} is empty or not [x1, y1, x2, y2] with x1<x2, y1<y2")
                        if cls >= len(classes):
                            problems.append(f"{name}: box_labels[{j}] = {cls} but there are {len(classes)} classes")
            if "mask" in item:
                if seg is None:
                    problems.append(f"{name}: has 'mask' but the datalist declares no segmentation task")
                elif seg["mask_format"] == "per_class" and not isinstance(item["mask"], Mapping):
                    problems.append(f"{name}: mask_format is per_class, so 'mask' must map class name -> file")
                elif seg["mask_format"] == "index" and not isinstance(item["mask"], str):
                    problems.append(f"{name}: mask_format is index, so 'mask' must be one file path")
                elif isinstance(item["mask"], Mapping):
                    unknown = sorted(set(item["mask"]) - set(seg["classes"]))
                    if unknown:
                        problems.append(f"{name}: mask names unknown classes {unknown}; known: {seg['classes']}")
            if "id" in item:
                if item["id"] in seen_ids:
                    problems.append(f"{name}: duplicate id, also {seen_ids[item['id']]}")
                seen_ids.setdefault(item["id"], name)
            if item["image"] in seen_images:
                problems.append(f"{name}: image {item['image']!r} is listed twice (also {seen_images[item['image']]})")
            seen_images.setdefault(item["image"], name)
    return problems


def check_datalist(data: Any) -> list[str]:
    """All problems of a datalist's content (schema, then consistency); no file is opened."""
    problems = _schema_problems(data)
    if problems:
        return problems  # consistency checks assume the schema holds
    return _item_problems(data)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON (a NaN or infinite number was written by a non-standard encoder)")


def read_json(path: str | os.PathLike) -> Any:
    """A datalist file's JSON content, unchecked; :class:`DatalistError` naming the file when it cannot be read:
    missing, empty, not UTF-8 (with the line), not JSON (with line and column), or holding ``NaN`` /
    ``Infinity``, which Python's json accepts but a box or label can never mean."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DatalistError(path, ["file not found"]) from None
    except OSError as exc:
        raise DatalistError(path, [f"cannot read file ({exc.strerror or exc})"]) from None
    if not raw.strip():
        raise DatalistError(path, [f"empty file ({len(raw)} bytes), expected a JSON datalist"])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DatalistError(path, [f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at line {line}; "
                                   "save the datalist as UTF-8"]) from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise DatalistError(path, [f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]) from None
    except ValueError as exc:
        raise DatalistError(path, [f"not valid JSON: {exc}"]) from None


def read_datalist(path: str | os.PathLike) -> dict:
    """Read and check a datalist file; raises :class:`DatalistError` listing every problem."""
    path = os.fspath(path)
    data = read_json(path)
    problems = check_datalist(data)
    if problems:
        raise DatalistError(path, problems)
    return data


def _resolve(base_dir: str, value: Any) -> Any:
    if isinstance(value, str):
        return value if os.path.isabs(value) else os.path.normpath(os.path.join(base_dir, value))
    if isinstance(value, Mapping):
        return {k: _resolve(base_dir, v) for k, v in value.items()}
    return value


def resolve_items(data: Mapping[str, Any], split: str, base_dir: str | os.PathLike) -> list[dict]:
    """Items of one split with ``image`` and ``mask`` paths made absolute; adds ``dataset``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    base_dir = os.path.abspath(os.fspath(base_dir))
    items = []
    for item in data.get(split, []):
        out = dict(item)
        out["image"] = _resolve(base_dir, item["image"])
        if "mask" in item:
            out["mask"] = _resolve(base_dir, item["mask"])
        out["dataset"] = data["name"]
        items.append(out)
    return items


def load_datalist(path: str | os.PathLike, split: str = "training") -> list[dict]:
    """Read, check and resolve one split of a datalist file: ready for a MONAI ``Dataset``."""
    data = read_datalist(path)
    return resolve_items(data, split, os.path.dirname(os.path.abspath(os.fspath(path))))


def write_datalist(data: Mapping[str, Any], path: str | os.PathLike) -> str:
    """Check and write a datalist atomically (temporary file + rename); returns the path."""
    path = os.fspath(path)
    problems = check_datalist(data)
    if problems:
        raise DatalistError(path, problems)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def is_unlabelled(data: Mapping[str, Any]) -> bool:
    """Whether a datalist lists images only (``"kind": "unlabelled"``)."""
    return data.get("kind") == "unlabelled"


def _split_of(key: str, seed: int, validation_fraction: float) -> str:
    # a stable hash of the file's path: adding images to the folder never moves an old image to another split
    rank = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64
    return "validation" if rank < validation_fraction else "training"


def folder_datalist(folder: str | os.PathLike, out: str | os.PathLike, **kwargs) -> str:
    """Write the unlabelled datalist of :func:`image_folder_datalist` to ``out``; returns ``out``."""
    out = os.fspath(out)
    return write_datalist(image_folder_datalist(folder, os.path.dirname(os.path.abspath(out)), **kwargs), out)


def image_folder_datalist(folder: str | os.PathLike, out_dir: str | os.PathLike, name: str | None = None,
                          validation_fraction: float = 0.0, seed: int = 0, skip_bad: bool = False,
                          description: str = "") -> dict:
    """An unlabelled datalist listing every radiograph under ``folder``, paths relative to ``out_dir``.

    Files are found as ``cxrfx.io.list_images`` finds them (extension or first bytes) and each is decoded with
    ``load_cxr``: an unreadable file is a :class:`DatalistError` naming it and the reason, or, with
    ``skip_bad``, left out (and named in the datalist's description). ``validation_fraction`` of the images
    (by a seeded hash of their path) go to ``validation``.
    """
    from cxrfx.data.validate import check_item_files
    from cxrfx.errors import CXRReadError
    from cxrfx.io.loader import list_images

    folder, out_dir = os.path.abspath(os.fspath(folder)), os.path.abspath(os.fspath(out_dir))
    if not os.path.isdir(folder):
        raise DatalistError(folder, ["not a folder of images"])
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    try:
        files = list_images(folder)
    except CXRReadError as exc:
        raise DatalistError(folder, [str(exc)]) from None
    splits: dict[str, list] = {"training": [], "validation": []}
    bad = []
    for path in files:
        problems = check_item_files({"image": path})
        if problems:
            bad += [f"{path}: {p}" for p in problems]
            continue
        key = os.path.relpath(path, folder)
        splits[_split_of(key, seed, validation_fraction)].append(
            {"image": os.path.relpath(path, out_dir), "id": key.replace(os.sep, "/")})
    if bad and not skip_bad:
        raise DatalistError(folder, bad + ["fix or remove these files, or pass skip_bad to leave them out"])
    if not splits["training"]:
        raise DatalistError(folder, ["no readable image found" + (f" ({len(bad)} unreadable)" if bad else "")])
    name = name or re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(folder.rstrip(os.sep))) or "images"
    data = {"name": name, "schema_version": 1,
            "kind": "unlabelled", "description": description or f"unlabelled images under {folder}",
            "tasks": {}, "training": splits["training"]}
    if splits["validation"]:
        data["validation"] = splits["validation"]
    if bad:
        data["description"] += f"; {len(bad)} unreadable file(s) left out: " + "; ".join(bad[:5])
    problems = check_datalist(data)
    if problems:
        raise DatalistError(folder, problems)
    return data
