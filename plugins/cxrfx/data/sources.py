"""What a bundle trains on, split into a description and an explicit preparation step.

A bundle config describes its data without touching the disk (:func:`phantom_datasets`: paths only), builds it
in ``initialize`` (:func:`prepare_phantom`), and turns it into loaders under the Model Zoo's property names
(:func:`task_loaders`: ``train#dataset#data`` / ``validate#dataset#data`` are the datasets mapping). So reading
or checking a config never starts a minutes-long phantom build, and a user who points the config at other data
never gets one.

The paper's recipe (``configs/paper.json``) reads its datasets from one folder of ``python -m cxrfx prepare``
datalists (:func:`paper_datasets`: the datasets mapping and every head size, from the datalists themselves), and
its dry run writes a tiny stand-in of that folder (:func:`write_stand_in`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence

import numpy as np

from cxrfx.data.datalist import read_datalist, write_datalist
from cxrfx.data.multitask import build_sources
from cxrfx.errors import ConfigError

__all__ = ["PHANTOM_TASKS", "phantom_datasets", "prepare_phantom", "task_loaders", "paper_datasets",
           "schedule_tasks", "write_stand_in", "TASK_KEYS"]

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
    from filelock import FileLock  # a dependency of torch

    from cxrfx.data.phantom.writer import generate_phantom

    logging.getLogger("cxrfx.data").info(f"phantom under {root} ({count} images per dataset, {size} px, seed {seed})")
    os.makedirs(os.path.dirname(root), exist_ok=True)
    # every process of a torchrun job (every node, on a shared folder) gets here before the process group exists:
    # one builds, the others wait and then find the build up to date
    with FileLock(root + ".lock"):
        generate_phantom(root, count=count, size=size, seed=seed, verbose=False)
    return True


def task_loaders(data: Mapping[str, Mapping], split: str = "training", **kwargs) -> dict:
    """``{"<task>/<dataset>": DataLoader}`` of ``data`` (the datasets mapping) for ``split``: ``build_sources``
    with the datasets under the name the Model Zoo's workflow properties read (``train#dataset#data``).
    ``kwargs``: ``build_sources``'s (size, batch_size, num_workers, train, seed, distributed, ...)."""
    return build_sources(data, split=split, **kwargs)


# schedule task -> the datalist's ``tasks`` entry and the field that names its classes
TASK_KEYS = {"cls": ("classification", "labels"), "det": ("detection", "classes"), "seg": ("segmentation", "classes")}


def _step_fields(step) -> tuple[str, str]:
    if isinstance(step, Mapping):
        return str(step["dataset"]), str(step["task"])
    return str(step.dataset), str(step.task)


def schedule_tasks(schedule: Sequence) -> dict[str, list[str]]:
    """``{dataset: [tasks]}`` in the order a schedule (step dicts or ``Step`` objects) first names them."""
    tasks: dict[str, list[str]] = {}
    for step in schedule:
        dataset, task = _step_fields(step)
        if task not in tasks.setdefault(dataset, []):
            tasks[dataset].append(task)
    return tasks


def paper_datasets(datalists_dir: str | os.PathLike, schedule: Sequence, stand_in: str | os.PathLike | None = None,
                   stand_in_images: int = 4, stand_in_size: int = 64) -> dict:
    """The datasets a schedule trains on, read from one folder of ``python -m cxrfx prepare`` datalists.

    Dataset ``NAME`` of the schedule is ``<datalists_dir>/NAME.json`` (``prepare NAME ... --out
    <datalists_dir>/NAME.json``; the names are the adapters', e.g. ``mimic_cxr_jpg``). Returns
    ``{"datasets": {name: {"datalist", "tasks"}}, "cls_heads": {name: n}, "det_heads": ..., "seg_heads": ...,
    "datalists_dir": folder}``: the head sizes are the number of classification labels / detection classes /
    segmentation classes each datalist declares, so they are typed nowhere. Every missing file or task is
    reported at once, with the command that makes it.

    ``stand_in``: a folder; the datalists are then a tiny synthetic stand-in written there first
    (:func:`write_stand_in`), for a dry run of the whole cycle without the data.
    """
    wanted = schedule_tasks(schedule)
    if stand_in is not None:
        datalists_dir = write_stand_in(stand_in, wanted, images=stand_in_images, size=stand_in_size)
    folder = os.path.abspath(os.fspath(datalists_dir))
    out: dict = {"datasets": {}, "cls_heads": {}, "det_heads": {}, "seg_heads": {}, "datalists_dir": folder}
    problems = []
    for name, tasks in wanted.items():
        path = os.path.join(folder, f"{name}.json")
        if not os.path.isfile(path):
            problems.append(f"{path}: missing (python -m cxrfx prepare {name} --root <{name} as downloaded> "
                            f"--out {path})")
            continue
        data = read_datalist(path)
        if data.get("name") != name:
            logging.getLogger("cxrfx.data").warning(f"{path}: the datalist calls itself {data.get('name')!r}, the "
                                                    f"schedule {name!r}; heads and metrics use {name!r}")
        for task in tasks:
            if task == "ssl":  # self-supervised steps read images only: any datalist serves, no head to size
                continue
            if task not in TASK_KEYS:
                problems.append(f"{path}: the schedule names task {task!r} for {name}; known: "
                                f"{', '.join([*TASK_KEYS, 'ssl'])}")
                continue
            section, field = TASK_KEYS[task]
            if section not in data["tasks"]:
                hint = " (prepare nih14 with --bbox True)" if (name, task) == ("nih14", "det") else ""
                problems.append(f"{path}: no {section} task, which the schedule trains ({task}/{name}){hint}")
                continue
            out[f"{task}_heads"][name] = len(data["tasks"][section][field])
        out["datasets"][name] = {"datalist": path, "tasks": list(tasks)}
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) with the datalists under {folder}:\n  " + "\n  ".join(problems))
    logging.getLogger("cxrfx.data").info(
        f"{len(out['datasets'])} datalists from {folder}; heads read from them: "
        + "; ".join(f"{task} {out[f'{task}_heads']}" for task in TASK_KEYS if out[f"{task}_heads"]))
    return out


def _stand_in_classes() -> dict[str, dict[str, list[str]]]:
    """The class names each paper dataset's adapter writes (detection classes read from the data at prepare time
    are the published ones), so the stand-in has the real datalists' shapes."""
    from cxrfx.data.adapters import candid_ptx, chestx_det, chexpert, mimic_cxr_jpg, nih14, rsna_pneumonia, tbx11k
    from cxrfx.data.adapters import shenzhen, vindr_cxr

    return {
        "chexpert": {"cls": list(chexpert.LABELS)},
        "nih14": {"cls": list(nih14.LABELS), "det": list(nih14.BOX_CLASSES)},
        "vindr_cxr": {"cls": [*vindr_cxr.KAGGLE_CLASSES, vindr_cxr.NO_FINDING], "det": list(vindr_cxr.KAGGLE_CLASSES)},
        "shenzhen": {"cls": list(shenzhen.LABELS), "seg": ["lungs"]},
        "mimic_cxr_jpg": {"cls": list(mimic_cxr_jpg.LABELS)},
        "tbx11k": {"cls": list(tbx11k.LABELS),
                   "det": ["ActiveTuberculosis", "ObsoletePulmonaryTuberculosis", "PulmonaryTuberculosis"]},
        "node21": {"cls": ["nodule"], "det": ["nodule"]},
        "candid_ptx": {"cls": list(candid_ptx.CLASSES), "det": list(candid_ptx.CLASSES),
                       "seg": list(candid_ptx.CLASSES)},
        "rsna_pneumonia": {"cls": list(rsna_pneumonia.LABELS), "det": list(rsna_pneumonia.BOX_CLASSES)},
        "chestx_det": {"cls": list(chestx_det.FINDINGS), "det": list(chestx_det.FINDINGS),
                       "seg": list(chestx_det.FINDINGS)},
        "siim_acr": {"cls": ["Pneumothorax"], "det": ["pneumothorax"], "seg": ["pneumothorax"]},
    }


def write_stand_in(out_dir: str | os.PathLike, tasks: Mapping[str, Sequence[str]], images: int = 4, size: int = 64,
                   seed: int = 0) -> str:
    """A tiny synthetic stand-in for a folder of prepared datalists: ``<out_dir>/datalists/NAME.json`` for each
    dataset of ``tasks`` (``{name: [cls|det|seg, ...]}``), each with ``images`` training and 2 validation images
    (8-bit PNG, ``size`` px: noise with a bright blob), multi-hot labels, a box per image over the blob and
    per-class mask PNGs, under the class names the dataset's adapter writes (a generic class for any other
    dataset). Schema-checked on writing. Replaces what an earlier call wrote there; returns the datalists folder.
    Nothing here is data to learn from: it exercises the wiring (loaders, heads, losses, phases, teacher).

    Every process of a ``torchrun`` dry run calls this before the process group exists: one writes (under a file
    lock), the others find a complete stand-in of the same parameters (its marker file, written last) and leave
    it alone, so no process deletes files another is reading.
    """
    from filelock import FileLock  # a dependency of torch

    if images < 2:
        raise ConfigError(f"the stand-in needs at least 2 training images per dataset (BatchNorm), got {images}")
    folder = os.path.join(os.path.abspath(os.fspath(out_dir)), "datalists")
    params = {"tasks": {k: list(v) for k, v in tasks.items()}, "images": images, "size": size, "seed": seed}
    marker = os.path.join(folder, ".stand_in_params")  # not *.json: the folder lists datalists
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with FileLock(folder + ".lock"):
        try:
            with open(marker, encoding="utf-8") as f:
                if json.load(f) == params:
                    return folder
        except (OSError, ValueError):
            pass
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        _write_stand_in(folder, tasks, images, size, seed)
        with open(marker, "w", encoding="utf-8") as f:
            json.dump(params, f)
    return folder


def _write_stand_in(folder: str, tasks: Mapping[str, Sequence[str]], images: int, size: int, seed: int) -> None:
    from cxrfx.data.phantom.files import write_mask_png, write_png

    known = _stand_in_classes()
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for name, wanted in tasks.items():
        classes = known.get(name, {})
        if not set(wanted) - {"ssl"}:  # self-supervised only: an unlabelled datalist, as prepare image_folder writes
            _write_unlabelled_stand_in(folder, name, images, size, rng)
            continue
        sections = {}
        for task in [t for t in wanted if t != "ssl"]:
            section, field = TASK_KEYS[task]
            sections[section] = {field: list(classes.get(task, [f"{name}_{task}"]))}
        if "segmentation" in sections:
            sections["segmentation"]["mask_format"] = "per_class"
        if "classification" not in sections:  # every datalist the cycle trains on carries labels
            sections["classification"] = {"labels": list(classes.get("cls", [f"{name}_cls"]))}
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        splits = {}
        for split, count in (("training", images), ("validation", 2)):
            items = []
            for i in range(count):
                stem = f"{name}/{split}_{i}"
                cy, cx = (int(v) for v in rng.integers(size // 4, 3 * size // 4, 2))
                r = max(2, size // 8)
                blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                write_png(os.path.join(folder, f"{stem}.png"),
                          np.clip(0.3 + 0.1 * rng.standard_normal((size, size)) + 0.5 * blob, 0, 1), bits=8)
                labels = sections["classification"]["labels"]
                # alternating 0 / 1 per label: every split has positives and negatives of every label
                item = {"image": f"{stem}.png", "id": f"{name}_{split}_{i}", "patient_id": f"{name}_p{split}{i}",
                        "label": [(i + k) % 2 for k in range(len(labels))]}
                if "detection" in sections:
                    item["boxes"] = [[float(cx - r), float(cy - r), float(cx + r + 1), float(cy + r + 1)]]
                    item["box_labels"] = [i % len(sections["detection"]["classes"])]
                if "segmentation" in sections:
                    seg_classes = sections["segmentation"]["classes"]
                    present = [seg_classes[i % len(seg_classes)], seg_classes[0]]
                    item["mask"] = {}
                    for k, cls in enumerate(dict.fromkeys(present)):
                        path = f"{stem}_mask{k}.png"
                        write_mask_png(os.path.join(folder, path), blob if k == 0 else ~blob & (yy < size // 3))
                        item["mask"][cls] = path
                items.append(item)
            splits[split] = items
        write_datalist({"name": name, "schema_version": 1, "box_mode": "xyxy", "tasks": sections,
                        "description": f"synthetic stand-in for {name} (cxrfx dry run; not data)", **splits},
                       os.path.join(folder, f"{name}.json"))


def _write_unlabelled_stand_in(folder: str, name: str, images: int, size: int, rng) -> None:
    from cxrfx.data.phantom.files import write_png

    os.makedirs(os.path.join(folder, name), exist_ok=True)
    splits = {}
    for split, count in (("training", images), ("validation", 2)):
        splits[split] = []
        for i in range(count):
            stem = f"{name}/{split}_{i}"
            write_png(os.path.join(folder, f"{stem}.png"), np.clip(0.4 + 0.1 * rng.standard_normal((size, size)), 0, 1),
                      bits=8)
            splits[split].append({"image": f"{stem}.png", "id": f"{name}_{split}_{i}"})
    write_datalist({"name": name, "schema_version": 1, "kind": "unlabelled", "tasks": {},
                    "description": f"synthetic unlabelled stand-in for {name} (cxrfx dry run; not data)", **splits},
                   os.path.join(folder, f"{name}.json"))
