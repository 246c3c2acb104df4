"""What a bundle trains on, split into a description and an explicit preparation step.

A bundle config describes its data without touching the disk (:func:`phantom_datasets`: paths only), builds it
in ``initialize`` (:func:`prepare_phantom`), and turns it into loaders under the Model Zoo's property names
(:func:`task_loaders`: ``train#dataset#data`` / ``validate#dataset#data`` are the datasets mapping). So reading
or checking a config never starts a minutes-long phantom build, and a user who points the config at other data
never gets one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from cxrfx.data.multitask import build_sources

__all__ = ["PHANTOM_TASKS", "phantom_datasets", "prepare_phantom", "task_loaders"]

# the tasks each phantom dataset is trained on: labels everywhere, boxes in phantom_det, masks in phantom_seg
PHANTOM_TASKS = {"phantom_cls": ["cls"], "phantom_det": ["cls", "det"], "phantom_seg": ["cls", "seg"]}


def phantom_datasets(root: str | os.PathLike) -> dict[str, dict]:
    """The phantom's datasets under ``root`` as a bundle's ``datasets`` mapping (``{name: {"datalist", "tasks"}}``),
    without building anything: :func:`prepare_phantom` does that."""
    root = os.fspath(root)
    return {name: {"datalist": os.path.join(root, name, "datalist.json"), "tasks": list(tasks)}
            for name, tasks in PHANTOM_TASKS.items()}


def _datalists(data) -> list[str]:
    if isinstance(data, (str, os.PathLike)):
        return [os.fspath(data)]
    if isinstance(data, Mapping):
        return [os.fspath(spec["datalist"]) for spec in data.values()
                if isinstance(spec, Mapping) and "datalist" in spec]
    return [os.fspath(d) for d in data]


def prepare_phantom(data, root: str | os.PathLike, count: int = 64, size: int = 256, seed: int = 0) -> bool:
    """Build the phantom under ``root`` (or check the one there has these parameters) when ``data`` reads from it.

    ``data``: the bundle's datasets mapping, a datalist path, or a list of paths. Only datalists at the phantom's
    own places (``<root>/phantom_cls|det|seg/datalist.json``) count, so a config pointed at other data builds
    nothing. Returns True when the phantom is used (``generate_phantom`` builds it if missing or made with other
    parameters, and leaves an up-to-date one alone).
    """
    root = os.path.abspath(os.fspath(root))
    own = {os.path.join(root, name, "datalist.json") for name in PHANTOM_TASKS}
    if not any(os.path.abspath(p) in own for p in _datalists(data)):
        return False
    from cxrfx.data.phantom.writer import generate_phantom

    logging.getLogger("cxrfx.data").info(f"phantom under {root} ({count} images per dataset, {size} px, seed {seed})")
    generate_phantom(root, count=count, size=size, seed=seed, verbose=False)
    return True


def task_loaders(data: Mapping[str, Mapping], split: str = "training", **kwargs) -> dict:
    """``{"<task>/<dataset>": DataLoader}`` of ``data`` (the datasets mapping) for ``split``: ``build_sources``
    with the datasets under the name the Model Zoo's workflow properties read (``train#dataset#data``).
    ``kwargs``: ``build_sources``'s (size, batch_size, num_workers, train, seed, distributed, ...)."""
    return build_sources(data, split=split, **kwargs)
