"""Choosing the demo's learning rates per task without looking at the demo's test split.

``make demo`` pretrains Foundation X (``bundles/foundation_x``, ``configs/demo.json``) on a small phantom and
scores it on that phantom's test split (15 images per dataset). At the demo's rates (backbone 1e-3, heads 2e-3)
segmentation learns and detection does not (test AP50 0.055); one run at a tenth of the rates lifted detection
and cost segmentation Dice (``docs/results.md``). The tasks share the backbone but not the step size they
tolerate, which ``task_lr_scale`` (``cxrfx.engines.MultiTaskTrainer``) addresses.

This script trains the demo as ``make demo`` does (the same phantom: ``demo.json``'s count and size, seed 0; the
same configs) with recipe variants and training seeds, and scores the teacher after the last cycle on a **tuning
phantom of other patients** (``--tuning-seed``, every split of it: ~5x the demo's test split), never on the
demo's own test images: a variant picked here is judged afresh by ``make demo`` / ``bench/demo_quality.py``.

Every finished (variant, seed) is stored in ``--results`` at once (several processes may share it, one per
core); ``--report-only`` writes the table into docs/results.md between this script's markers.

    python bench/demo_tuning.py --variants shared_high det_tenth --seeds 0 1 &
    python bench/demo_tuning.py --variants shared_low det_cls_tenth --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "plugins"))

from common import mean_std, write_between  # noqa: E402
from quality_det import locked_store, read_store, to_run  # noqa: E402

DEFAULT_RESULTS = HERE / "results" / "demo_tuning.json"


def markers(results: Path) -> tuple[str, str, str]:
    """The doc section of a results file: begin and end markers and the heading made with a new section. The
    default file's section is the learning-rate study; another file (another phantom size or cycle count) has
    its own section, named after the file."""
    name = "demo_tuning.py" if Path(results).name == DEFAULT_RESULTS.name else f"demo_tuning.py ({Path(results).stem})"
    heading = ("# Demo learning rates per task (`bench/demo_tuning.py`)" if name == "demo_tuning.py"
               else f"# Demo settings: `{Path(results).stem}` (`bench/demo_tuning.py`)")
    return f"<!-- {name}: begin (generated) -->", f"<!-- {name}: end -->", heading


BUNDLE = ROOT / "bundles" / "foundation_x"
SPLITS = ("training", "validation", "test")


# Each variant is a whole recipe on top of train.json + demo.json (so it means the same whatever demo.json's
# default is): the shared rates of the backbone and the heads, and the per-task multipliers.
def _recipe(backbone_lr: float, head_lr: float, **scales: float) -> dict:
    return {"backbone_lr": backbone_lr, "head_lr": head_lr, "task_lr_scale": dict(scales)}


def _longer_detection(recipe: dict, release_epochs: float) -> dict:
    """``recipe`` with demo.json's cycle, its localization release step ``release_epochs`` epochs long."""
    schedule = json.loads((BUNDLE / "configs" / "demo.json").read_text())["schedule"]
    schedule = [{**step, "epoch_fraction": release_epochs} if (step["task"], step["phase"]) == ("det", "release")
                else step for step in schedule]
    return {**recipe, "schedule": schedule}


VARIANTS = {
    "shared_high": _recipe(1e-3, 2e-3),  # demo.json before this study
    "shared_low": _recipe(1e-4, 3e-4),  # the 2026-12-05 probe's lower rates, every task
    "det_tenth": _recipe(1e-3, 2e-3, det=0.1),
    "det_twentieth": _recipe(1e-3, 2e-3, det=0.05),
    "det_cls_tenth": _recipe(1e-3, 2e-3, det=0.1, cls=0.1),
    "det_fiftieth": _recipe(1e-3, 2e-3, det=0.02),
    "det_twentieth_cls_tenth": _recipe(1e-3, 2e-3, det=0.05, cls=0.1),
    # the same rates, localization release two epochs per cycle instead of one (~260 more iterations in all)
    "det_twentieth_cls_tenth_det2": _longer_detection(_recipe(1e-3, 2e-3, det=0.05, cls=0.1), 2.0),
    "det_tenth_cls_tenth_det2": _longer_detection(_recipe(1e-3, 2e-3, det=0.1, cls=0.1), 2.0),
    "det_tenth_cls_tenth_det3": _longer_detection(_recipe(1e-3, 2e-3, det=0.1, cls=0.1), 3.0),
}


def merged_predictions(parser, checkpoint: str) -> dict:
    """The teacher's predictions on every split of the datasets in ``parser``, one record per head."""
    from cxrfx.demo_report import test_predictions

    merged: dict = {}
    for split in SPLITS:
        for key, rec in test_predictions(parser, checkpoint, models=("teacher",), split=split)["teacher"].items():
            if key not in merged:
                merged[key] = rec
                continue
            for field, value in rec.items():
                if field == "names":
                    continue
                if isinstance(value, np.ndarray):
                    merged[key][field] = np.concatenate([merged[key][field], value])
                else:
                    merged[key][field] = list(merged[key][field]) + list(value)
    return merged


def summarise(scores: dict) -> dict:
    """The figures the demo's goals name: detection AP50, lungs and heart Dice, pooled classification AUCs."""
    det = next(iter(scores["det"].values()))
    seg = scores["seg"]
    return {"det_ap50": float(det["ap50"] if isinstance(det, dict) else det),
            "lung_left": seg["lung_left"]["dice"], "lung_right": seg["lung_right"]["dice"],
            "heart": seg["heart"]["dice"],
            "clavicles": (seg["clavicle_left"]["dice"] + seg["clavicle_right"]["dice"]) / 2,
            "cls_auc": {name: per["pooled"]["auc"] for name, per in scores["cls"].items()}}


def run_one(name: str, seed: int, phantom: str, tuning: str, work: Path, settings: dict) -> dict:
    from cxrfx.demo import _bundle_run, _children_cpu
    from cxrfx.demo_report import bundle_parser, score_tables

    out = work / f"{name}_{seed}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    common = {"dataset_dir": phantom, "phantom_count": settings["count"], "phantom_size": settings["size"],
              "image_size": settings["size"]}
    if settings.get("epochs"):
        common["epochs"] = settings["epochs"]
    t0, c0 = time.perf_counter(), _children_cpu()
    _bundle_run(str(BUNDLE), ["train.json", "demo.json"], str(out), str(out / "train.log"), **common, seed=seed,
                **VARIANTS[name])
    train_s, train_cpu = time.perf_counter() - t0, _children_cpu() - c0
    parser = bundle_parser(str(BUNDLE), ["train.json", "demo.json"], bundle_root=str(out), dataset_dir=tuning,
                           image_size=settings["size"])
    preds = merged_predictions(parser, str(out / "models" / "last.pt"))
    _, scores = score_tables(preds, n_boot=20)  # the intervals are not used: only the point values
    shutil.rmtree(out / "models", ignore_errors=True)  # checkpoints are not kept: the scores are the result
    return {"variant": name, "seed": seed, **summarise(scores), "train_wall_s": round(train_s, 1),
            "train_cpu_s": round(train_cpu, 1),
            "eval_images": {k: len(v["ids"]) for k, v in preds.items()},
            "eval_boxes": int(sum(len(t["boxes"]) for t in preds["det/phantom_det"]["truth"]))}


def report(stored: dict, results: Path = DEFAULT_RESULTS) -> str:
    meta, runs = stored["meta"], stored["runs"]
    begin, end, _ = markers(results)
    cycles = f", {meta['epochs']} cycles" if meta.get("epochs") else ""
    setting = f" --count {meta['count']}" + (f" --epochs {meta['epochs']}" if meta.get("epochs") else "")
    if Path(results).name != DEFAULT_RESULTS.name:
        setting += f" --results bench/results/{Path(results).name}"
    variants = sorted({r["variant"] for r in runs.values()}, key=list(VARIANTS).index)
    lines = [begin, "", f"The demo's pretraining (`bundles/foundation_x`, `train.json` + `demo.json`, its phantom: "
             f"{meta['count']} images per dataset at {meta['size']} px, seed 0, as `make demo` builds it) with each "
             f"recipe{cycles}; the teacher after the last cycle scored on a tuning phantom of other patients (seed "
             f"{meta['tuning_seed']}, every split: {meta['eval_images']} images per dataset, {meta['eval_boxes']} "
             "boxes), not on the demo's test split. mean ± std over training seeds.", "",
             f"Reproduce (resumes): `python bench/demo_tuning.py{setting} --variants " + " ".join(variants)
             + " --seeds 0 1`",
             "", "| variant | backbone / head rate | per-task scale | n | det AP50 | lungs L / R Dice | heart Dice "
             "| clavicles Dice | cls AUC (mean of labels) | AP50 per seed | train wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, recipe in VARIANTS.items():
        rs = sorted((r for r in runs.values() if r["variant"] == name), key=lambda r: r["seed"])
        if not rs:
            continue
        scales = ", ".join(f"{k} × {v:g}" for k, v in recipe["task_lr_scale"].items()) or "—"
        if "schedule" in recipe:
            release = next(step["epoch_fraction"] for step in recipe["schedule"]
                           if (step["task"], step["phase"]) == ("det", "release"))
            scales += f"; det release {release:g} epochs per cycle"
        lines.append(
            f"| {name} | {recipe['backbone_lr']:g} / {recipe['head_lr']:g} | {scales} | {len(rs)} | "
            f"{mean_std([r['det_ap50'] for r in rs])} | {mean_std([r['lung_left'] for r in rs])} / "
            f"{mean_std([r['lung_right'] for r in rs])} | {mean_std([r['heart'] for r in rs])} | "
            f"{mean_std([r['clavicles'] for r in rs])} | "
            f"{mean_std([float(np.mean(list(r['cls_auc'].values()))) for r in rs])} | "
            + " / ".join(f"{r['det_ap50']:.3f}" for r in rs)
            + f" | {np.mean([r['train_wall_s'] for r in rs]):.0f} |")
    return "\n".join(lines + ["", end])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.expanduser("~/.cache/cxrfx/bench/demo_phantom"),
                    help="the demo's phantom (built here as make demo builds it)")
    ap.add_argument("--tuning-data", default=os.path.expanduser("~/.cache/cxrfx/bench/demo_tuning_phantom"))
    ap.add_argument("--tuning-seed", type=int, default=1040)
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/cxrfx/bench/demo_tuning_runs"))
    ap.add_argument("--count", type=int, help="images per dataset of both phantoms (default: demo.json's)")
    ap.add_argument("--size", type=int, help="phantom and network size (default: demo.json's)")
    ap.add_argument("--epochs", type=int, help="Lock-Release cycles (default: demo.json's)")
    ap.add_argument("--variants", nargs="+", default=["det_tenth"], choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--results", default=str(DEFAULT_RESULTS),
                    help="runs of one setting (count, size, cycles); a file of another name has its own doc section")
    ap.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args(argv)
    results = Path(a.results)
    if not a.report_only:
        from cxrfx.data.phantom import generate_phantom
        from cxrfx.demo import demo_settings

        settings = demo_settings(str(BUNDLE))
        settings = {"count": a.count or settings["count"], "size": a.size or settings["size"], "epochs": a.epochs}
        # generate_phantom leaves an up-to-date build alone; the demo phantom is seed 0, as make demo's
        generate_phantom(a.data, count=settings["count"], size=settings["size"], seed=0, verbose=False)
        generate_phantom(a.tuning_data, count=settings["count"], size=settings["size"], seed=a.tuning_seed,
                         verbose=False)
        meta = {"count": settings["count"], "size": settings["size"], "epochs": a.epochs, "tuning_seed": a.tuning_seed}
        with locked_store(results) as stored:
            if stored.get("meta") and {k: stored["meta"][k] for k in meta} != meta:
                raise SystemExit(f"{results} holds runs of another setting ({stored['meta']}); use another --results")
        for key in to_run(results, [f"{name}/{seed}" for seed in a.seeds for name in a.variants]):
            name, seed = key.split("/")[0], int(key.split("/")[1])
            r = run_one(name, seed, a.data, a.tuning_data, Path(a.work), settings)
            with locked_store(results) as stored:
                stored["meta"] = {**meta, "eval_images": r["eval_images"]["det/phantom_det"],
                                  "eval_boxes": r["eval_boxes"]}
                stored["runs"][key] = r
            print(f"{key}: det AP50 {r['det_ap50']:.3f}, lungs {r['lung_left']:.3f} / {r['lung_right']:.3f}, "
                  f"heart {r['heart']:.3f}, cls {r['cls_auc']}, {r['train_wall_s']:.0f} s", flush=True)
    text = report(read_store(results), results)
    write_between(a.doc, text, *markers(results))
    print(text)


if __name__ == "__main__":
    main()
