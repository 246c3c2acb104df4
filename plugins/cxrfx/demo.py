"""``make demo`` / ``cxrfx demo``: the main job end to end on the embedded phantom.

1. Build the phantom (three datasets, three annotation kinds and file formats), validate it, draw overlays
   from the files through the training loaders.
2. Foundation X pretraining with ``bundles/foundation_x`` (``train.json`` + ``demo.json``: small network, 96 px)
   over phantom_cls / phantom_det / phantom_seg: Lock-Release cycle, EMA teacher, consistency losses.
3. Evaluation of student and teacher on the held-out test split, and inference (all heads) on held-out
   DICOM images: JSON / CSV / mask PNGs / overlays.
4. A summary: data table, metrics table (student and teacher), timings.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time

from cxrfx.data.datalist import load_datalist, read_datalist
from cxrfx.data.phantom.writer import PHANTOM_DATASETS, generate_phantom
from cxrfx.data.validate import validate_datalist
from cxrfx.errors import CXRFXError
from cxrfx.io.transforms import LoadCXRd, LoadMaskd, NormalizeCXRd
from cxrfx.outputs.overlays import contact_sheet, save_overlay

__all__ = ["run_demo", "summary_table", "metrics_table", "default_bundle"]


def default_bundle() -> str:
    """``bundles/foundation_x`` of the repository this package is installed from (editable install)."""
    return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "bundles", "foundation_x"))


def summary_table(summary: dict) -> str:
    """Markdown table of a phantom build summary."""
    from cxrfx.data.phantom.render import LABELS

    head = "| dataset | format | train / val / test | " + " | ".join(LABELS) + " | boxes | MB | seconds |"
    rows = [head, "|" + "---|" * (len(LABELS) + 6)]
    formats = {"phantom_cls": "16-bit PNG", "phantom_det": "DICOM 12-bit", "phantom_seg": "8-bit PNG + masks"}
    for name, info in summary["datasets"].items():
        s = info["splits"]
        counts = " | ".join(str(info["label_counts"][lab]) for lab in LABELS)
        rows.append(f"| {name} | {formats.get(name, '')} | {s['training']} / {s['validation']} / {s['test']} | "
                    f"{counts} | {info['boxes']} | {info['bytes'] / 1e6:.1f} | {info['seconds']:.1f} |")
    return "\n".join(rows)


def metrics_table(metrics: dict[str, float]) -> str:
    """Markdown table: one row per (task, dataset, metric), student and teacher columns."""
    rows = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 4 and parts[0] in ("student", "teacher"):
            rows.setdefault("/".join(parts[1:]), {})[parts[0]] = value
        elif len(parts) == 2 and parts[1] == "mean":
            rows.setdefault("mean of main scores", {})[parts[0]] = value
    lines = ["| task / dataset / metric | student | teacher |", "|---|---|---|"]
    for name, v in sorted(rows.items(), key=lambda kv: (kv[0] == "mean of main scores", kv[0])):
        fmt = (lambda x: "n/a" if x is None or x != x else f"{x:.3f}")
        lines.append(f"| {name} | {fmt(v.get('student'))} | {fmt(v.get('teacher'))} |")
    return "\n".join(lines)


def _overlays(datalist_path: str, out_dir: str, limit: int) -> list[str]:
    data = read_datalist(datalist_path)
    items = load_datalist(datalist_path, "test")[:limit]
    tasks = data["tasks"]
    labels = tasks["classification"]["labels"]
    box_classes = tasks.get("detection", {}).get("classes", [])
    seg_classes = tasks.get("segmentation", {}).get("classes", [])
    load = LoadCXRd("image")
    load_mask = LoadMaskd("mask", seg_classes) if seg_classes else None
    normalize = NormalizeCXRd("image")
    paths = []
    for item in items:
        d = normalize(load(item))
        masks = None
        if load_mask is not None and "mask" in d:
            d = load_mask(d)
            masks = {c: d["mask"][k].numpy() > 0.5 for k, c in enumerate(seg_classes)}
        findings = [lab for lab, v in zip(labels, item.get("label", [])) if v == 1] or ["no finding"]
        meta = d["image"].meta
        caption = f"{item['id']}\n{meta['cxr_format']} {meta['cxr_photometric']}\n" + "\n".join(findings)
        out = os.path.join(out_dir, f"{item['id']}.png")
        save_overlay(out, d["image"][0].numpy(), masks=masks, boxes=item.get("boxes", []),
                     box_names=[box_classes[b] for b in item.get("box_labels", [])], caption=caption,
                     class_colors=seg_classes)
        paths.append(out)
    return paths


def _bundle_run(bundle: str, configs: list[str], bundle_root: str, log_path: str, **overrides) -> None:
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
            json.dumps([os.path.join(bundle, "configs", c) for c in configs]),
            "--meta_file", os.path.join(bundle, "configs", "metadata.json"),
            "--logging_file", os.path.join(bundle, "configs", "logging.conf"), "--bundle_root", bundle_root]
    for key, value in overrides.items():
        args += [f"--{key}", json.dumps(value)]
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, cwd=bundle)
    if proc.returncode != 0:
        with open(log_path, encoding="utf-8") as log:
            tail = "".join(log.readlines()[-15:])
        raise CXRFXError(f"bundle run {configs} failed (exit {proc.returncode}); log {log_path}:\n{tail}")


def _read_metrics(path: str) -> dict[str, float]:
    metrics = {}
    with open(path, encoding="utf-8") as f:
        for row in csv.reader(f):
            if len(row) == 2:
                try:
                    metrics[row[0]] = float(row[1])
                except ValueError:
                    continue
    return metrics


def run_demo(out: str = "runs/demo", count: int = 64, size: int = 256, seed: int = 0, overlays: int = 4,
             train: bool = True, bundle: str | None = None, epochs: int | None = None) -> dict:
    """Build and check the phantom, pretrain Foundation X on it, evaluate, infer, and summarise under ``out``."""
    start = time.perf_counter()
    out = os.path.abspath(out)
    phantom_dir = os.path.join(out, "phantom")
    summary = generate_phantom(phantom_dir, count=count, size=size, seed=seed)
    problems = []
    for name in PHANTOM_DATASETS:
        problems += validate_datalist(os.path.join(phantom_dir, name, "datalist.json"))
    if problems:
        raise CXRFXError("the phantom failed validation:\n" + "\n".join(problems))
    overlay_dir = os.path.join(out, "overlays")
    paths = []
    for name in PHANTOM_DATASETS:
        paths += _overlays(os.path.join(phantom_dir, name, "datalist.json"), overlay_dir, overlays)
    sheet = contact_sheet(paths, os.path.join(out, "overlays.png"), columns=overlays)
    report = (f"# cxrfx demo\n\nPhantom: {summary['params']}, images {summary['image_shape'][1]} x "
              f"{summary['image_shape'][0]} px (W x H), detector pixel {summary['pixel_mm']:.3f} mm.\n"
              f"Generation: {summary['seconds']:.1f} s (CT load and preparation {summary['setup_seconds']:.1f} s).\n"
              f"All datalists and files validated.\n\n{summary_table(summary)}\n\nData overlays: {sheet}\n")
    if train:
        bundle = bundle or default_bundle()
        root = os.path.join(out, "foundation_x")
        os.makedirs(root, exist_ok=True)
        common = {"dataset_dir": phantom_dir, "phantom_count": count, "phantom_size": size}
        if epochs:
            common["epochs"] = epochs
        t0 = time.perf_counter()
        print("demo: pretraining Foundation X on the phantom (bundles/foundation_x, demo override) ...", flush=True)
        _bundle_run(bundle, ["train.json", "demo.json"], root, os.path.join(out, "train.log"), **common)
        train_s = time.perf_counter() - t0
        print("demo: evaluating student and teacher on the test split ...", flush=True)
        _bundle_run(bundle, ["train.json", "demo.json", "evaluate.json"], root, os.path.join(out, "evaluate.log"),
                    **common, **{"validate#dataset#split": "test", "output_dir": os.path.join(root, "eval", "test")})
        metrics = _read_metrics(os.path.join(root, "eval", "test", "metrics.csv"))
        print("demo: inference on held-out DICOM images ...", flush=True)
        predictions = os.path.join(root, "eval", "predictions")
        _bundle_run(bundle, ["inference.json", "demo.json"], root, os.path.join(out, "inference.log"),
                    **common, input_path=os.path.join(phantom_dir, "phantom_det", "datalist.json"),
                    output_dir=predictions)
        pred_overlays = sorted(os.path.join(predictions, f) for f in os.listdir(predictions) if f.endswith("_overlay.png"))
        pred_sheet = contact_sheet(pred_overlays[:8], os.path.join(out, "predictions.png"), columns=4)
        report += (f"\n## Foundation X pretraining (demo override)\n\nTraining: {train_s:.0f} s; logs in {out}/*.log; "
                   f"checkpoints in {root}/models (model.pt = best teacher on validation).\n\n"
                   f"Test split (held out), student and teacher:\n\n{metrics_table(metrics)}\n\n"
                   f"Prediction overlays (test DICOMs, all heads): {pred_sheet}\n")
        summary["metrics"] = metrics
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(report)
    print(report)
    print(f"demo finished in {time.perf_counter() - start:.1f} s")
    return summary
