"""Fine-tuning datalists: a few training images chosen reproducibly, and a subset of the classes.

:func:`few_shot_datalist` reads any schema-valid datalist (from ``cxrfx prepare`` or the phantom) and writes a
new one beside the run: ``training`` restricted to ``shots`` items chosen by ``seed``, ``validation`` and
``test`` kept whole, segmentation classes / detection classes restricted to the ones asked for. Paths become
absolute, so the new file works from anywhere. The choice is recorded twice: in the datalist's ``source``
field and in a ``<name>.selection.json`` file beside it (seed, shots, the chosen ids, the source file).

Selection: items are ordered by ``id`` (else image path), then shuffled by ``numpy.random.default_rng(seed)``;
the first ``shots`` are taken. So a seed always picks the same items whatever the file's order, and for one
seed the 2-shot set is inside the 4-shot set, inside the 8-shot set (nested few-shot curves).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxrfx.data.datalist import SPLITS, read_datalist, resolve_items, write_datalist
from cxrfx.errors import ConfigError

__all__ = ["select_few_shot", "restrict_classes", "few_shot_datalist", "selection_path"]


def _order_key(item: Mapping[str, Any]) -> str:
    return str(item.get("id") or item["image"])


def select_few_shot(items: Sequence[Mapping[str, Any]], shots: int | None, seed: int = 0,
                    where: str = "datalist") -> list[int]:
    """Indices (into ``items``) of ``shots`` items chosen by ``seed`` (see module docstring); None: all."""
    if shots is None:
        return list(range(len(items)))
    shots = int(shots)
    if shots < 1:
        raise ConfigError(f"{where}: few_shot must be a positive number of training images, got {shots}")
    if shots > len(items):
        raise ConfigError(f"{where}: few_shot asks for {shots} training images but only {len(items)} are eligible")
    order = sorted(range(len(items)), key=lambda i: _order_key(items[i]))
    perm = np.random.default_rng(int(seed)).permutation(len(order))
    return [order[i] for i in perm[:shots]]


def _restrict_item(item: dict, seg_keep: Sequence[str] | None, det_map: Mapping[int, int] | None) -> dict:
    item = dict(item)
    item.pop("dataset", None)  # added by resolve_items; not a datalist field
    if seg_keep is not None and isinstance(item.get("mask"), Mapping):
        item["mask"] = {k: v for k, v in item["mask"].items() if k in seg_keep}
    if det_map is not None and "boxes" in item:
        kept = [(b, det_map[int(c)]) for b, c in zip(item["boxes"], item["box_labels"]) if int(c) in det_map]
        item["boxes"] = [list(b) for b, _ in kept]
        item["box_labels"] = [c for _, c in kept]
    return item


def _task(tasks: dict, task: str, classes: Sequence[str], where: str) -> dict:
    """The datalist's ``task`` entry, after checking that it exists and knows every class asked for."""
    entry = tasks.get(task)
    if entry is None:
        raise ConfigError(f"{where}: classes given for {task} but the datalist has no {task} task")
    unknown = [c for c in classes if c not in entry["classes"]]
    if unknown:
        raise ConfigError(f"{where}: unknown {task} classes {unknown}; the datalist has {entry['classes']}")
    return entry


def restrict_classes(data: Mapping[str, Any], seg_classes: Sequence[str] | None = None,
                     det_classes: Sequence[str] | None = None, where: str = "datalist") -> tuple[dict, tuple, dict]:
    """The datalist's ``tasks`` with only the given classes, and how to rewrite items.

    Returns (tasks, segmentation classes kept or None, {old detection label: new label} or None). Order is the
    order asked for: the network's output channels / class indices follow it.
    """
    tasks = json.loads(json.dumps(data["tasks"]))
    seg_keep, det_map = None, None
    if seg_classes is not None:
        seg = _task(tasks, "segmentation", seg_classes, where)
        if seg["mask_format"] != "per_class" and list(seg_classes) != list(seg["classes"]):
            raise ConfigError(f"{where}: choosing segmentation classes needs mask_format 'per_class' (one file per "
                              f"class); this datalist uses {seg['mask_format']!r} masks")
        seg["classes"] = list(seg_classes)
        seg_keep = tuple(seg_classes)
    if det_classes is not None:
        det = _task(tasks, "detection", det_classes, where)
        det_map = {det["classes"].index(c): i for i, c in enumerate(det_classes)}
        det["classes"] = list(det_classes)
    return tasks, seg_keep, det_map


def selection_path(out: str | os.PathLike) -> str:
    """Where :func:`few_shot_datalist` records its choice: ``<out without .json>.selection.json``."""
    out = os.fspath(out)
    return (out[:-5] if out.endswith(".json") else out) + ".selection.json"


def few_shot_datalist(datalist: str | os.PathLike, out: str | os.PathLike, shots: int | None = None, seed: int = 0,
                      seg_classes: Sequence[str] | None = None, det_classes: Sequence[str] | None = None,
                      annotated_only: bool = False, name: str | None = None) -> str:
    """Write the fine-tuning datalist ``out`` from ``datalist``; returns ``out``.

    Args:
        shots: training images to keep (None: all). validation / test are always kept whole.
        seed: which images (reproducible; different seeds give different sets).
        seg_classes / det_classes: classes to keep, in this order (None: all).
        annotated_only: draw the training images among those with at least one box of the kept detection
            classes (few-shot detection counts annotated images; a 2-shot set of negatives teaches nothing).
        name: the new datalist's ``name`` (default: the source's).

    Raises:
        DatalistError: the source datalist is invalid. ConfigError: impossible request (named in the message).
    """
    datalist, out = os.fspath(datalist), os.fspath(out)
    data = read_datalist(datalist)
    base = os.path.dirname(os.path.abspath(datalist))
    tasks, seg_keep, det_map = restrict_classes(data, seg_classes, det_classes, where=datalist)
    splits = {s: [_restrict_item(it, seg_keep, det_map) for it in resolve_items(data, s, base)] for s in SPLITS}
    pool = splits["training"]
    if annotated_only:
        if "detection" not in tasks:
            raise ConfigError(f"{datalist}: annotated_only needs a detection task")
        pool = [it for it in pool if it.get("boxes")]
    chosen = select_few_shot(pool, shots, seed, where=datalist)
    splits["training"] = [pool[i] for i in chosen]
    ids = [_order_key(it) for it in splits["training"]]
    what = "all" if shots is None else f"{len(ids)} (seed {seed})"
    new = {k: v for k, v in data.items() if k not in SPLITS}
    new.update({"name": name or data["name"], "tasks": tasks, **splits,
                "source": f"cxrfx.data.few_shot from {os.path.abspath(datalist)}: training images {what} of "
                          f"{len(pool)}{' annotated' if annotated_only else ''}; ids {ids}"})
    write_datalist(new, out)
    record = {"source": os.path.abspath(datalist), "shots": shots, "seed": int(seed), "annotated_only": annotated_only,
              "eligible": len(pool), "training_ids": ids,
              "seg_classes": list(seg_keep) if seg_keep is not None else None,
              "det_classes": list(det_classes) if det_classes is not None else None,
              "counts": {s: len(splits[s]) for s in SPLITS}}
    with open(selection_path(out), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    return out
