"""``make demo`` / ``cxrfx demo``: the main job end to end on the embedded phantom.

1. Build the phantom (three datasets, three annotation kinds and file formats; sizes from ``demo.json``),
   validate it, draw overlays from the files through the training loaders.
2. Foundation X pretraining with ``bundles/foundation_x`` (``train.json`` + ``demo.json``: small Swin with the
   convolutional stem, 128 px) over phantom_cls / phantom_det / phantom_seg: Lock-Release cycle, EMA teacher,
   consistency losses.
3. Student and teacher on the held-out test split (:mod:`cxrfx.demo_report`): AUC per label, Dice per class,
   AP50, each with a 95% bootstrap interval; predictions beside the ground truth, ROC curves, the learning
   curve; inference (all heads) on held-out DICOM images through the bundle's ``inference.json``.
4. ``summary.md``: data table, the test tables, the pictures, one line per task against its baseline (from the
   benchmarks' stored results), CPU and wall time.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from cxrfx.data.datalist import load_datalist, read_datalist
from cxrfx.data.phantom.writer import PHANTOM_DATASETS, generate_phantom
from cxrfx.data.validate import validate_datalist
from cxrfx.errors import CXRFXError
from cxrfx.io.transforms import LoadCXRd, LoadMaskd, NormalizeCXRd
from cxrfx.outputs.overlays import contact_sheet, save_overlay

__all__ = ["run_demo", "analyse", "demo_settings", "summary_table", "default_bundle"]


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


def demo_settings(bundle: str | None = None) -> dict:
    """``demo.json``'s phantom size and count (what ``make demo`` builds when not told otherwise)."""
    with open(os.path.join(bundle or default_bundle(), "configs", "demo.json"), encoding="utf-8") as f:
        demo = json.load(f)
    return {"count": int(demo.get("phantom_count", 64)), "size": int(demo.get("phantom_size", 256))}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_demo(out: str = "runs/demo", count: int | None = None, size: int | None = None, seed: int = 0,
             overlays: int = 4, train: bool = True, bundle: str | None = None, epochs: int | None = None,
             n_boot: int = 1000) -> dict:
    """Build and check the phantom, pretrain Foundation X on it, score it on the test split, infer, draw and
    summarise under ``out``. ``count`` / ``size``: the phantom (default: ``demo.json``'s); ``epochs``: cycles."""
    start, cpu0 = time.perf_counter(), time.process_time() + _children_cpu()
    out = os.path.abspath(out)
    bundle = bundle or default_bundle()
    settings = demo_settings(bundle)
    count = settings["count"] if count is None else count
    size = settings["size"] if size is None else size
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
    contact_sheet(paths, os.path.join(out, "overlays.png"), columns=overlays)
    data_s = time.perf_counter() - start
    report = (f"# cxrfx demo\n\nNumbers and pictures on the **phantom** (synthetic patients made from one CT, "
              f"findings inserted by a program): they show that the machinery learns, not how it would do on "
              f"real radiographs. Nothing here is clinical.\n\n"
              f"Phantom: {summary['params']}, images {summary['image_shape'][1]} x "
              f"{summary['image_shape'][0]} px (W x H), detector pixel {summary['pixel_mm']:.3f} mm.\n"
              f"Generation: {summary['seconds']:.1f} s (CT load and preparation {summary['setup_seconds']:.1f} s; "
              f"{summary.get('workers', 1)} rendering process(es)).\n"
              f"All datalists and files validated.\n\n{summary_table(summary)}\n\n"
              f"Data overlays: [overlays.png](overlays.png)\n")
    if train:
        root = os.path.join(out, "foundation_x")
        os.makedirs(root, exist_ok=True)
        common = {"dataset_dir": phantom_dir, "phantom_count": count, "phantom_size": size}
        if epochs:
            common["epochs"] = epochs
        t0 = time.perf_counter()
        print("demo: pretraining Foundation X on the phantom (bundles/foundation_x, demo override) ...", flush=True)
        _bundle_run(bundle, ["train.json", "demo.json"], root, os.path.join(out, "train.log"), **common)
        train_s = time.perf_counter() - t0
        print("demo: student and teacher on the test split ...", flush=True)
        report += analyse(out, bundle, common, n_boot=n_boot)
        print("demo: inference on held-out DICOM images ...", flush=True)
        predictions = os.path.join(root, "eval", "predictions")
        _bundle_run(bundle, ["inference.json", "demo.json"], root, os.path.join(out, "inference.log"),
                    **common, input_path=os.path.join(phantom_dir, "phantom_det", "datalist.json"),
                    output_dir=predictions)
        pred_overlays = sorted(os.path.join(predictions, f) for f in os.listdir(predictions)
                               if f.endswith("_overlay.png"))
        contact_sheet(pred_overlays[:8], os.path.join(out, "predictions.png"), columns=4)
        report += ("\nInference through the bundle's `inference.json` (test DICOMs, every head, as `cxrfx predict` "
                   "writes it): [predictions.png](predictions.png), files in `foundation_x/eval/predictions/`.\n")
        summary["train_seconds"] = round(train_s, 1)
    wall, cpu = time.perf_counter() - start, time.process_time() + _children_cpu() - cpu0
    report += (f"\n## Time\n\nWall {wall:.0f} s (data {data_s:.0f} s"
               + (f", pretraining {summary['train_seconds']:.0f} s" if train else "")
               + f"); CPU {cpu:.0f} s (this process and the bundle runs it started) on "
               f"{len(os.sched_getaffinity(0))} usable cores, load average {os.getloadavg()[0]:.1f} at the end.\n")
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(report)
    print(report)
    print(f"demo finished in {wall:.1f} s (CPU {cpu:.1f} s)")
    summary.update(wall_seconds=round(wall, 1), cpu_seconds=round(cpu, 1))
    return summary


def analyse(out: str, bundle: str, overrides: dict, n_boot: int = 1000, figures_dir: str | None = None) -> str:
    """Score a trained demo run under ``out`` (``foundation_x/models/last.pt``, ``train.log``) on the test split,
    write the pictures (``figures_dir``, default ``out``) and ``scores.json``; returns the summary's markdown."""
    from cxrfx.demo_report import (
        baseline_lines, bundle_parser, read_learning_curve, score_tables, test_predictions, write_figures,
    )

    root = os.path.join(out, "foundation_x")
    figures_dir = figures_dir or out
    parser = bundle_parser(bundle, ["train.json", "demo.json"], bundle_root=root, **overrides)
    preds = test_predictions(parser, os.path.join(root, "models", "last.pt"))
    tables = {m: score_tables(p, n_boot=n_boot) for m, p in preds.items()}
    curve = read_learning_curve(os.path.join(out, "train.log"))
    pictures = write_figures(preds["teacher"], curve, figures_dir)
    with open(os.path.join(out, "scores.json"), "w", encoding="utf-8") as f:
        json.dump({m: t[1] for m, t in tables.items()} | {"learning_curve": curve}, f, indent=1)
    rel = {k: os.path.relpath(v, out) for k, v in pictures.items()}
    cycles = max(curve) if curve else 0
    md = (f"\n## Foundation X pretraining (demo override)\n\n{cycles} Lock-Release cycles; logs in `*.log`, "
          f"checkpoints in `foundation_x/models` (`last.pt`: student and teacher after the last cycle, scored "
          f"below; `model.pt`: the best teacher on validation).\n\n"
          f"### Test split (held out), teacher, with 95% bootstrap intervals over images\n\n"
          f"Classification AUC per label (each head on its own dataset's test images; pooled: all of them):\n\n"
          f"{tables['teacher'][0]}\n"
          f"### Student (the weights being trained; the teacher is their EMA)\n\n{tables['student'][0]}\n"
          f"### Pictures\n\n")
    captions = {"predictions": "test films, ground truth | prediction (mask contours; boxes: truth green, found "
                               "orange), finding probabilities under each (* = true); ribs not drawn",
                "roc": "ROC curves per label, every classification head's test images pooled",
                "learning_curve": "validation score of the teacher after each cycle (learning curve)"}
    for key, path in rel.items():
        caption = captions.get(key, f"ROC curves per label, {key[4:]} test images")
        md += f"- [{os.path.basename(path)}]({path}): {caption}\n"
    md += ("\n### Against the baselines (the benchmarks' latest stored results, not re-run here)\n\n"
           + "\n".join(baseline_lines(os.path.abspath(os.path.join(bundle, "..", "..")))) + "\n")
    return md
