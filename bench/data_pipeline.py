"""Figure 4 — data pipeline: images/s of the training input pipeline (16-bit DICOM and PNG of 1024–3000 px,
2 workers: decode + normalisation + resize + augmentation) ÷ images/s of the training step at the demo
configuration (tiny Swin, 96 px, batch 4, release step with the teacher). ≥ 1 means loading is never the
bottleneck. Measured without a cache (every pass decodes) and with ``cache_dir`` (MONAI PersistentDataset:
later passes read the decoded, resized image).

    .venv/bin/python bench/data_pipeline.py [--images 16] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import zoom

from common import emit, interleaved_medians, machine
from cxrfx.data.datalist import load_datalist
from cxrfx.data.multitask import build_sources
from cxrfx.data.phantom import phantom_sources
from cxrfx.data.phantom.files import write_dicom
from cxrfx.engines import LockReleaseHandler, MultiTaskTrainer, TeacherHandler, build_optimizer
from cxrfx.io import load_cxr
from cxrfx.networks import FoundationX

SIZES = [(3000, 2500), (2048, 2048), (1024, 1280), (2800, 2300)]
DEMO = {"embed_dim": 32, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8), "window_size": 6, "drop_path_rate": 0.1}


def make_images(root: Path, n: int) -> Path:
    """n radiographs (phantom renders scaled up, with noise), alternating 16-bit DICOM and 16-bit PNG."""
    sources = phantom_sources(str(root / "phantom"), count=8, size=256)
    base = [load_cxr(r["image"])[0] for r in load_datalist(sources["phantom_cls"]["datalist"], "training")]
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        img = zoom(base[i % len(base)], (h / base[0].shape[0], w / base[0].shape[1]), order=1)
        img = np.clip((img - img.min()) / (np.ptp(img) + 1e-6) + rng.normal(0, 0.005, img.shape), 0, 1)
        path = root / (f"img{i:03d}.dcm" if i % 2 == 0 else f"img{i:03d}.png")
        if path.suffix == ".dcm":  # 12 bits stored in 16, as DX detectors write them
            write_dicom(str(path), img, uid_key=f"bench{i}", monochrome1=False, pixel_mm=0.143, magnification=1.0,
                        patient_id=f"P{i}", calibrated_spacing=False)
        else:
            Image.fromarray((img * 65535).astype(np.uint16)).save(path)
        items.append({"image": path.name, "label": [int(rng.integers(0, 2)) for _ in range(5)]})
    datalist = root / "datalist.json"
    datalist.write_text(json.dumps({"name": "bench", "tasks": {"classification": {"labels": list("abcde")}},
                                    "training": items}))
    return datalist


def pipeline_rate(loader) -> float:
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["image"])
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    root = Path(tempfile.mkdtemp())
    datalist = make_images(root, a.images)
    spec = {"bench": {"datalist": str(datalist), "tasks": ["cls"]}}
    plain = build_sources(spec, size=96, batch_size=4, num_workers=a.workers)["cls/bench"]
    uncached = pipeline_rate(plain)
    cached_loader = build_sources(spec, size=96, batch_size=4, num_workers=a.workers,
                                  cache_dir=str(root / "cache"))["cls/bench"]
    first = pipeline_rate(cached_loader)  # fills the cache
    cached = pipeline_rate(cached_loader)

    # the training step at the demo configuration (phantom seg source, release phase, teacher on)
    sources = phantom_sources(str(root / "phantom"), count=8, size=256)
    loaders = build_sources({"phantom_seg": {**sources["phantom_seg"], "tasks": ["seg"]}}, size=96, batch_size=4)
    torch.manual_seed(0)
    net = FoundationX("tiny", backbone_kwargs=DEMO, seg_heads={"phantom_seg": 8}, seg_channels=32, psp_channels=64)
    teacher = TeacherHandler(net, momentum=0.8)
    lr = LockReleaseHandler([{"dataset": "phantom_seg", "task": "seg", "iterations": 100}], loaders, net)
    trainer = MultiTaskTrainer("cpu", 1, net, build_optimizer(net), lr, teacher=teacher.teacher)
    trainer.state.device, trainer.state.cxrfx_step = torch.device("cpu"), lr.steps[0]
    batch = next(iter(loaders["seg/phantom_seg"]))
    step_s = interleaved_medians({"step": lambda: trainer._iteration(trainer, batch)}, a.repeats)["step"]
    train_rate = len(batch["image"]) / step_s
    emit({"machine": machine(), "images": a.images, "workers": a.workers, "source_sizes": SIZES,
          "pipeline_images_per_s": round(uncached, 2), "cache_fill_images_per_s": round(first, 2),
          "cached_pipeline_images_per_s": round(cached, 2), "train_images_per_s": round(train_rate, 2),
          "ratio_uncached": round(uncached / train_rate, 3), "ratio_cached": round(cached / train_rate, 3)})


if __name__ == "__main__":
    main()
