"""Detection quality: finetune_det's detector against the one a user would pick instead, on a phantom made for it.

Arms, trained from scratch on the same images with the same pipeline (the bundles' ``build_sources``: resize to
``--size``, box-aware zoom and left-right flip, contrast and noise), batch, iterations or CPU budget, AdamW,
warm-up + cosine and gradient clipping at 1:

- ``cxrfx``: the network ``bundles/finetune_det`` builds (``configs/train.json`` + ``configs/demo.json``'s
  backbone: Swin embed 32, depths 2/2/2/2, convolutional stem, window 8 at 256 px), its anchors fitted to the
  training boxes and its detector settings; the bundle's learning rates.
- ``monai``: MONAI's ``RetinaNet`` with a ResNet-18 FPN, set up as MONAI's lung-nodule bundle sets up its detector
  (``det_baseline.py``), base anchor shapes from the same boxes; AdamW 1e-3.

Data: the phantom (``--count 792``: 554 training, 119 validation, 119 test images) plus, by default
(``--extra-train 1800``), every image of a second phantom build of other patients (seed + 1) for training; the
held-out validation + test images (238, about 150 lesions) are scored. A learning curve showed the detector starved
of data (184 training images: held-out AP50 0.035 in 15 CPU-minutes; 784: 0.34; 1984: 0.43 at 800 iterations) and
80 held-out images with 50 lesions (the earlier setting) left a seed-to-seed spread of 0.26-0.58.

Two budgets per seed: ``--iterations`` (400) and ``--budget-minutes`` (15) of training, counted as process CPU
time / torch threads so that other jobs on the machine do not move it; a budget run's warm-up + cosine follows the
fraction of the budget spent (``BudgetSchedule``) and ends when it is spent. On the shared 2-core machine use
``--threads 1``: two threads per process ran 5-20x slower there. Evaluation on the held-out
validation + test splits (no model selection uses them): AP50 per class and overall, ``map40_fx``, COCO mAP,
FROC (sensitivity at 1/8 ... 8 false positives per image, IoU >= 0.2 as NODE21, and its mean, the CPM), and per
conspicuity bin of the lesions' CNR (phantom ``meta.lesions``; < 1 subtle, 1-3 moderate, > 3 conspicuous) the
AP50 (lesions outside the bin ignored) and the sensitivity at 1 false positive per image.

Every run also keeps an exponential moving average of its weights (``--ema 0.99``, with TensorFlow's warm-up ramp
``min(m, (1 + t) / (10 + t))``) and scores it beside its last iterate: a paired measurement of whether averaged
(teacher-style) weights detect better than the last iterate of a cosine schedule.

Every finished (arm, budget, seed) is stored in ``--results`` at once, so a cut run resumes where it stopped;
several processes may fill one results file (it is rewritten under a lock): one per core, e.g. ``--arms cxrfx``
and ``--arms monai``. Runs of another setting (phantom, training set, threads) are kept under ``"superseded"``.
The CPU budget holds only on otherwise idle cores: on an oversubscribed machine the threads' waiting counts as
CPU time (a run got 246 iterations instead of 578). Such a run goes under ``"excluded"`` in the results file with
its reason; it is reported beside the table and run again. A run measured again once the machine was quiet goes
under ``"replaced"`` (the first measurement with its reason, also reported beside the table).
``--report`` writes the tables into docs/results.md between this script's markers.

    python bench/quality_det.py --threads 1 --seeds 0 1 2   # about 35 CPU-min per seed (both arms, time budget)
    python bench/quality_det.py --report-only                  # tables from the stored runs
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import mean_std as _ms  # noqa: E402
from common import write_between  # noqa: E402

BINS = {"subtle": (-np.inf, 1.0), "moderate": (1.0, 3.0), "conspicuous": (3.0, np.inf)}
BEGIN, END = "<!-- quality_det.py: begin (generated) -->", "<!-- quality_det.py: end -->"
README_BEGIN = "<!-- quality_det.py: performance (generated) -->"
README_END = "<!-- quality_det.py: performance end -->"
ARM_TEXT = {"cxrfx": "this bundle (demo backbone)",
            "monai": "MONAI RetinaNet, ResNet-18 FPN (the lung-nodule bundle's recipe)"}


def build_phantom(out: Path, count: int, size: int, seed: int) -> str:
    from cxrfx.data.phantom.writer import generate_phantom

    generate_phantom(str(out), count=count, size=size, seed=seed, datasets=("phantom_det",), verbose=False)
    return str(out / "phantom_det" / "datalist.json")


def _bundle_parser():
    """finetune_det's train.json + demo.json, as the cxrfx arm trains with them."""
    from monai.bundle import ConfigParser

    configs = ROOT / "bundles" / "finetune_det" / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "demo.json")])
    return parser


def cxrfx_arm(datalist: str, size: int, workdir: str, overrides: dict | None = None):
    """(network, detector, optimizer) as bundles/finetune_det builds them with its demo backbone; ``overrides``:
    bundle config overrides on top (``bench/det_tuning.py``'s variants)."""
    from cxrfx.engines import build_optimizer
    from cxrfx.networks.heads.detection import build_detector

    parser = _bundle_parser()
    parser.update({"bundle_root": str(ROOT / "bundles" / "finetune_det"), "output_dir": workdir,
                   "image_size": size, "source_datalist": datalist, "backbone_kwargs#window_size": size // 32,
                   **(overrides or {})})
    net = parser.get_parsed_content("network_def")
    optimizer = build_optimizer(net, backbone_lr=parser["backbone_lr"], head_lr=parser["head_lr"], weight_decay=1e-4)
    head = parser["dataset_name"]
    return net, lambda: build_detector(net, head), lambda: build_detector(net, head, score_thresh=0.02), optimizer


def monai_arm(datalist: str, size: int, workdir: str, overrides: dict | None = None):
    if overrides:
        raise ValueError(f"the monai arm is MONAI's own recipe and takes no bundle overrides, got {overrides}")
    from det_baseline import monai_retinanet

    from cxrfx.data.boxes import box_sizes, fit_anchor_shapes

    hw = box_sizes(datalist, size)["hw"]
    base = [[h, w] for h, w in fit_anchor_shapes(hw, [4], 3, 0.5, 100)[0]]
    net, det = monai_retinanet(2, base)
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-4)
    return net, lambda: det, lambda: det, optimizer


ARMS = {"cxrfx": cxrfx_arm, "monai": monai_arm}
# The cxrfx arm's recipe before bench/det_tuning.py: runs stored without a recipe were trained with it.
EARLIER_RECIPE = {"head_lr": 1e-3, "backbone_lr": 3e-4, "drop_path_rate": 0.1}


def cxrfx_recipe() -> dict:
    """The learning rates and stochastic depth the cxrfx arm trains with (finetune_det's train.json + demo.json)."""
    parser = _bundle_parser()
    return {"head_lr": float(parser["head_lr"]), "backbone_lr": float(parser["backbone_lr"]),
            "drop_path_rate": float(parser["backbone_kwargs"]["drop_path_rate"])}


def retire_other_recipes(stored: dict, recipe: dict, previous: dict | None) -> None:
    """Move the cxrfx runs, curves and re-measurements of another recipe than ``recipe`` under ``"superseded"``
    (with that recipe in its setting): the bundle's recipe changed, so they no longer measure it. The baseline's
    runs stay: its recipe is MONAI's and did not change."""
    old = previous or EARLIER_RECIPE
    moved = {kind: {k: r for k, r in stored.get(kind, {}).items()  # keys of all three kinds start with the arm
                    if k.startswith("cxrfx/") and r.get("recipe", old) != recipe}
             for kind in ("runs", "curves", "replaced")}
    if not any(moved.values()):
        return
    for kind, entries in moved.items():
        for key in entries:
            del stored[kind][key]
    print(f"cxrfx runs of the recipe {old} kept under 'superseded'; the bundle's is now {recipe}")
    stored.setdefault("superseded", []).append({"meta": {**stored["meta"], "cxrfx_recipe": old},
                                                **{k: v for k, v in moved.items() if v}})


def cpu_seconds() -> float:
    """Process CPU time spread over the cores this run uses: wall seconds on quiet cores."""
    return time.process_time() / max(1, torch.get_num_threads())


def with_extra_training(datalist: str, extra: str) -> str:
    """A datalist with ``datalist``'s validation and test splits and its training split plus every image of
    ``extra`` (another phantom build: other patients), written beside ``datalist``; image paths relative."""
    base, more = json.load(open(datalist)), json.load(open(extra))
    here, there = Path(datalist).resolve().parent, Path(extra).resolve().parent
    added = [{**it, "id": f"extra_{it['id']}", "image": os.path.relpath(there / it["image"], here)}
             for split in ("training", "validation", "test") for it in more[split]]
    out = here / f"datalist_plus{len(added)}.json"
    out.write_text(json.dumps({**base, "training": base["training"] + added}, indent=1))
    return str(out)


class BudgetSchedule:
    """Warm-up (the first 5 %) then cosine to zero, over the fraction of a CPU budget spent: the shape of MONAI's
    ``WarmupCosineSchedule`` for a run whose length is a time, not an iteration count."""

    def __init__(self, optimizer, budget_s: float, warmup: float = 0.05):
        self.optimizer, self.budget_s, self.warmup = optimizer, budget_s, warmup
        self.base = [g["lr"] for g in optimizer.param_groups]
        self.step(0.0)

    def factor(self, used_s: float) -> float:
        progress = min(1.0, max(0.0, used_s / self.budget_s))
        if progress < self.warmup:
            return max(progress / self.warmup, 1e-3)
        return 0.5 * (1.0 + math.cos(math.pi * (progress - self.warmup) / (1.0 - self.warmup)))

    def step(self, used_s: float) -> None:
        f = self.factor(used_s)
        for group, base in zip(self.optimizer.param_groups, self.base):
            group["lr"] = base * f


def train(arm: str, datalist: str, size: int, batch: int, seed: int, iterations: int | None,
          budget_s: float | None, eval_at: list[int] | None = None, on_point=None, save_to: Path | None = None,
          ema: tuple[float, ...] = (), overrides: dict | None = None) -> dict:
    """One run; with ``ema`` momenta, an exponential moving average of the weights per momentum is kept (its
    update counted in the training budget) and scored beside the last iterate under ``result["ema"]["<m>"]``."""
    from monai.optimizers import WarmupCosineSchedule

    from cxrfx.data.multitask import build_sources
    from cxrfx.engines.teacher import ema_update
    from cxrfx.networks.heads.detection import detection_loss

    torch.manual_seed(seed)
    np.random.seed(seed)
    with tempfile.TemporaryDirectory() as workdir:
        net, train_detector, eval_detector, optimizer = ARMS[arm](datalist, size, workdir, overrides)
    sources = {"lesions": {"datalist": datalist, "tasks": ["det"]}}
    loader = build_sources(sources, "training", size, batch, train=True, seed=seed, cache_rate=1.0)["det/lesions"]
    detector = train_detector()
    # A CPU budget drives the same warm-up + cosine shape by the fraction of the budget spent, not by an iteration
    # count guessed from the first (slower) iterations, which ended such runs at 12-13 of their 15 minutes.
    total = iterations or 10**9
    schedule = (WarmupCosineSchedule(optimizer, warmup_steps=max(1, total // 20), t_total=total)
                if budget_s is None else BudgetSchedule(optimizer, budget_s))
    averages = {m: copy.deepcopy(net).requires_grad_(False) for m in ema}
    start_cpu, start_wall, done, losses, points = cpu_seconds(), time.perf_counter(), 0, [], {}
    while done < total:
        for batch_data in loader:
            net.train()
            images = batch_data["image"]
            targets = [{"boxes": torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.as_tensor(lab, dtype=torch.long).reshape(-1)}
                       for b, lab in zip(batch_data["boxes"], batch_data["box_labels"])]
            if arm == "cxrfx":
                loss = sum(detection_loss(detector, images, net(images, task="det"), targets).values())
            else:
                detector.train()
                loss = sum(detector(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            for m, average in averages.items():  # TensorFlow's ramp: early updates weigh more than m allows
                ema_update(average, net, min(m, (1 + done) / (10 + done)), buffers="copy")
            used = cpu_seconds() - start_cpu
            if budget_s is not None:
                schedule.step(used)
            else:
                schedule.step()
            losses.append(float(loss.detach()))
            done += 1
            if eval_at and done in eval_at and done < total:  # a learning curve: held-out scores on the way
                points[done] = {"train_cpu_s": round(cpu_seconds() - start_cpu, 1),
                                **evaluate(net, eval_detector(), datalist, size, batch)}
                if on_point is not None:  # stored at once: a cut run keeps the points it reached
                    on_point(points)
            used = cpu_seconds() - start_cpu
            if done >= total or (budget_s is not None and used >= budget_s):
                total = done
                break
    if save_to is not None:  # the trained weights, so a larger held-out set can score this run again later
        save_to.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), save_to)
    result = {"iterations": done, "train_cpu_s": round(cpu_seconds() - start_cpu, 1),
              "train_wall_s": round(time.perf_counter() - start_wall, 1),
              "final_loss": round(float(np.mean(losses[-20:])), 4)}
    result.update(evaluate(net, eval_detector(), datalist, size, batch))
    if averages:
        result["ema"] = {}
        last = copy.deepcopy(net.state_dict())
        for m, average in averages.items():  # the arm's own detector, on the averaged weights
            net.load_state_dict(average.state_dict())
            result["ema"][f"{m:g}"] = evaluate(net, eval_detector(), datalist, size, batch)
            if save_to is not None:
                torch.save(average.state_dict(), save_to.with_name(f"{save_to.stem}_ema{m:g}.pt"))
        net.load_state_dict(last)
    if eval_at:
        points[done] = {"train_cpu_s": result["train_cpu_s"], **{k: v for k, v in result.items() if k != "points"}}
        result["points"] = points
    return result


def evaluate(net, detector, datalist: str, size: int, batch: int) -> dict:
    from cxrfx.data.multitask import build_sources
    from cxrfx.metrics import FX_IOU_THRESHOLDS, coco_ap, froc, lesion_hits, restrict_to_lesions, sensitivity_at

    items = json.load(open(datalist))
    cnr = {it["id"]: [les["cnr"] for les in it.get("meta", {}).get("lesions", [])]
           for split in ("validation", "test") for it in items[split]}
    sources = {"lesions": {"datalist": datalist, "tasks": ["det"]}}
    preds, gts, cnrs = [], [], []
    net.eval()
    detector.eval()
    with torch.no_grad():
        for split in ("validation", "test"):
            loader = build_sources(sources, split, size, batch, train=False, cache_rate=0.0)["det/lesions"]
            for b in loader:
                for out in detector(b["image"]):
                    preds.append({"boxes": out["boxes"].numpy(), "scores": out["labels_scores"].numpy(),
                                  "labels": out["labels"].numpy()})
                for boxes, labels, item_id in zip(b["boxes"], b["box_labels"], b["id"]):
                    gts.append({"boxes": np.asarray(boxes, float).reshape(-1, 4),
                                "labels": np.asarray(labels, int).reshape(-1)})
                    cnrs.append(np.asarray(cnr[item_id], float))
    coco = coco_ap(preds, gts, [0.5])
    curve = froc(preds, gts)
    threshold_1fp = curve["thresholds"][curve["fp_rates"].index(1.0)]
    scores = lesion_hits(preds, gts)["lesion_scores"]
    r = {"ap50": coco["map"], "ap50_per_class": coco["per_category"],
         "map40_fx": float(coco_ap(preds, gts, FX_IOU_THRESHOLDS)["per_threshold"][0]),
         "coco_map": coco_ap(preds, gts)["map"], "froc": curve["sensitivity"], "cpm": curve["cpm"],
         "lesions": curve["n_lesions"], "images": len(gts), "bins": {}}
    for name, (lo, hi) in BINS.items():
        select = [(c >= lo) & (c < hi) for c in cnrs]
        n = int(sum(s.sum() for s in select))
        entry = {"lesions": n, "sens_1fp": sensitivity_at(scores, threshold_1fp, select)}
        entry["ap50"] = coco_ap(*restrict_to_lesions(preds, gts, select), [0.5])["map"] if n else float("nan")
        r["bins"][name] = entry
    select = [c >= 1.0 for c in cnrs]  # the goal: moderate and conspicuous together
    r["ap50_visible"] = coco_ap(*restrict_to_lesions(preds, gts, select), [0.5])["map"]
    return r


# -------------------------------------------------------------------------------------------- report

def replaced_report(replaced: dict | None, setting: str = "") -> list[str]:
    where = f" ({setting})" if setting else ""
    return [f"Measured again{where}: `{key}` first gave AP50 {r['ap50']:.3f}, CPM {r['cpm']:.3f} in "
            f"{r['iterations']} iterations ({r['reason']}); the table holds the later run.\n"
            for key, r in (replaced or {}).items()]


DEFAULT_ITERATIONS, DEFAULT_MINUTES = 400, 15.0


def budget_label(kind: str, size: float) -> str:
    """A run's budget as stored in its key: ``"iterations"`` / ``"time"`` at the defaults (400 iterations, 15
    CPU-minutes), ``"iterations1600"`` / ``"time30"`` otherwise, so a table at another budget sits beside them."""
    default = DEFAULT_ITERATIONS if kind == "iterations" else DEFAULT_MINUTES
    return kind if size == default else f"{kind}{size:g}"


def budget_size(label: str) -> tuple[str, float]:
    """(kind, size) of a budget label: ("time", 15.0) for ``"time"``, ("iterations", 1600.0) for
    ``"iterations1600"``."""
    kind = "iterations" if label.startswith("iterations") else "time"
    rest = label[len(kind):]
    return kind, float(rest) if rest else float(DEFAULT_ITERATIONS if kind == "iterations" else DEFAULT_MINUTES)


def budget_order(label: str) -> tuple[bool, float]:
    kind, size = budget_size(label)
    return kind != "iterations", size


def budget_title(label: str, short: bool = False) -> str:
    kind, size = budget_size(label)
    if kind == "iterations":
        return f"{size:g} it" if short else f"{size:g} iterations"
    return f"{size:g} CPU-min" if short else f"{size:g} CPU-minutes"


def ema_report(results: dict, budgets: list[str]) -> list[str]:
    """Last iterate against exponential moving averages of the weights, scored in the same runs (paired)."""
    momenta = sorted({m for r in results.values() for m in r.get("ema", {})}, key=float)
    lines = ["**Weight averaging** (an exponential moving average of the weights kept during each run, its update "
             "counted in the budget, scored on the same held-out images as the run's last iterate; paired "
             "differences over seeds)", "",
             "| budget | arm | n | AP50 last iterate | " + " | ".join(
                 f"AP50 EMA {m} | Δ EMA {m} | AP50 CNR ≥ 1 EMA {m} | CPM EMA {m}" for m in momenta) + " |",
             "|---|---|---|---|" + "---|---|---|---|" * len(momenta)]
    for budget in budgets:
        for arm in ARMS:
            runs = [r for r in results.values() if r["arm"] == arm and r["budget"] == budget and "ema" in r]
            if not runs:
                continue
            cells = []
            for m in momenta:
                pairs = [(r["ema"][m], r) for r in runs if m in r["ema"]]
                cells.append(f"{_ms([e['ap50'] for e, _ in pairs])} | "
                             f"{_ms([e['ap50'] - r['ap50'] for e, r in pairs])} | "
                             f"{_ms([e['ap50_visible'] for e, _ in pairs])} | {_ms([e['cpm'] for e, _ in pairs])}")
            title = budget_title(budget, short=True)
            lines.append(f"| {title} | {arm} | {len(runs)} | {_ms([r['ap50'] for r in runs])} | "
                         + " | ".join(cells) + " |")
    return lines + [""]


def curve_report(curves: dict, setting: str = "") -> list[str]:
    """The learning-curve study: held-out scores by training-set size and iterations (mean ± std over seeds)."""
    where = f"; {setting}" if setting else ""
    lines = [f"**Learning curve and training-set size**{where} (one run per seed scored on the way; the learning-rate "
             "schedule is the full run's, so an early point is not a shorter run's end; CPU minutes since the start, "
             "the scoring of earlier points included)", "",
             "| arm | training images | iterations | train CPU min | n | AP50 | AP50 CNR ≥ 1 | CPM (FROC) | "
             + " | ".join(f"sens. at 1 FP {b}" for b in BINS) + " |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(BINS)]
    groups: dict = {}
    for r in curves.values():
        arm = r["arm"] + (" (run cut short)" if r.get("partial") else "")
        for it, p in r["points"].items():
            groups.setdefault((arm, r["train_images"], int(it)), []).append(p)
    for (arm, n_train, it), ps in sorted(groups.items()):
        lines.append(f"| {arm} | {n_train} | {it} | {statistics.mean(p['train_cpu_s'] for p in ps) / 60:.1f} | "
                     f"{len(ps)} | {_ms([p['ap50'] for p in ps])} | "
                     f"{_ms([p['ap50_visible'] for p in ps])} | {_ms([p['cpm'] for p in ps])} | "
                     + " | ".join(_ms([p['bins'][b]['sens_1fp'] for p in ps]) for b in BINS) + " |")
    return lines + [""]


def report(results: dict, meta: dict, excluded: dict | None = None, curves: dict | None = None,
           superseded: list | None = None, replaced: dict | None = None, commands: list | None = None) -> str:
    budgets = sorted({r["budget"] for r in results.values()}, key=budget_order)
    lines = [BEGIN, "", f"Phantom `phantom_det` seed {meta['phantom_seed']}, {meta['count']} images at "
             f"{meta['size']} px (generator version {meta['generator_version']}), trained on "
             f"{meta.get('train_images', '?')} images (its training split plus, where more, every image of a second "
             f"build of other patients, seed + 1); evaluated on the {meta['eval_images']} validation + test images "
             f"({meta['eval_lesions']} lesions: " + ", ".join(f"{meta['bin_counts'][b]} {b}" for b in BINS) +
             "). Batch 8, trained from scratch. mean ± std over seeds; `n` = seeds run."
             + (" cxrfx learning rates (the bundle's demo recipe, chosen with `bench/det_tuning.py`): {head_lr:g} "
                "heads / {backbone_lr:g} backbone, stochastic depth {drop_path_rate:g}."
                .format(**meta["cxrfx_recipe"]) if "cxrfx_recipe" in meta else ""), "",
             "Reproduce (resumes; `--report-only` rewrites this): " +
             "; ".join(f"`{c.replace(str(Path.home()), '~')}`"
                       for c in commands or ["python bench/quality_det.py --threads 1 --seeds 0 1 2"]) +
             ".", ""]
    for budget in budgets:
        title = budget_title(budget)
        if budget_size(budget)[0] == "time":
            title += f" ({meta.get('threads', 2)} torch thread(s); process CPU time / threads)"
        lines += [f"**Budget: {title}**", "",
                  "| arm | n | iterations | train wall min | AP50 | AP50 nodule | AP50 mass | map40_fx | COCO mAP | "
                  "AP50 CNR ≥ 1 | CPM (FROC) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for arm in ARMS:
            runs = [r for r in results.values() if r["arm"] == arm and r["budget"] == budget]
            if not runs:
                continue
            pc = [r["ap50_per_class"] for r in runs]
            lines.append(f"| {arm} | {len(runs)} | {round(statistics.mean(r['iterations'] for r in runs))} | "
                         f"{statistics.mean(r['train_wall_s'] for r in runs) / 60:.1f} | "
                         f"{_ms([r['ap50'] for r in runs])} | "
                         f"{_ms([p.get('0', p.get(0, float('nan'))) for p in pc])} | "
                         f"{_ms([p.get('1', p.get(1, float('nan'))) for p in pc])} | "
                         f"{_ms([r['map40_fx'] for r in runs])} | {_ms([r['coco_map'] for r in runs])} | "
                         f"{_ms([r['ap50_visible'] for r in runs])} | {_ms([r['cpm'] for r in runs])} |")
        lines += ["", "| arm | FROC: sensitivity at " + " / ".join(["1/8", "1/4", "1/2", "1", "2", "4", "8"]) +
                  " FP per image | " + " | ".join(f"{b}: AP50 / sens. at 1 FP" for b in BINS) + " |",
                  "|---|---|" + "---|" * len(BINS)]
        for arm in ARMS:
            runs = [r for r in results.values() if r["arm"] == arm and r["budget"] == budget]
            if not runs:
                continue
            froc_cells = " / ".join(f"{statistics.mean(r['froc'][i] for r in runs):.2f}" for i in range(7))
            bins = " | ".join(f"{_ms([r['bins'][b]['ap50'] for r in runs])} / "
                              f"{_ms([r['bins'][b]['sens_1fp'] for r in runs])}" for b in BINS)
            lines.append(f"| {arm} | {froc_cells} | {bins} |")
        lines.append("")
    per_seed = []
    for budget in budgets:
        for seed in sorted({r["seed"] for r in results.values()}):
            pair = {arm: results.get(f"{arm}/{budget}/{seed}") for arm in ARMS}
            if all(pair.values()):
                per_seed.append(f"{budget_title(budget, short=True)} seed {seed}: cxrfx "
                                f"{pair['cxrfx']['ap50']:.3f} vs monai {pair['monai']['ap50']:.3f}")
    if per_seed:
        lines += ["AP50 per seed (paired): " + "; ".join(per_seed) + ".", ""]
    if any("ema" in r for r in results.values()):
        lines += ema_report(results, budgets)
    if curves:
        lines += curve_report(curves)
    for key, r in (excluded or {}).items():
        lines += [f"Left out of the table: `{key}` (AP50 {r['ap50']:.3f}, CPM {r['cpm']:.3f}, {r['iterations']} "
                  f"iterations): {r['reason']}", ""]
    lines += replaced_report(replaced)
    for old in superseded or []:
        m, runs = old["meta"], old.get("runs", {})
        setting = (f"{m.get('train_images', 184)} training images, {m.get('eval_images', '?')} held-out images, "
                   f"{m.get('threads', 2)} thread(s), {m['budget_minutes']:g} min budget")
        if "cxrfx_recipe" in m:
            setting += ", cxrfx learning rates {head_lr:g} heads / {backbone_lr:g} backbone".format(**m["cxrfx_recipe"])
        cells = [f"{arm} {budget} {_ms([r['ap50'] for r in runs.values() if (r['arm'], r['budget']) == (arm, budget)])}"
                 f" (n={sum((r['arm'], r['budget']) == (arm, budget) for r in runs.values())})"
                 for arm in ARMS for budget in sorted({r["budget"] for r in runs.values()}, key=budget_order)
                 if any((r["arm"], r["budget"]) == (arm, budget) for r in runs.values())]
        if cells:
            lines += [f"Earlier setting ({setting}), held-out AP50: " + "; ".join(cells) + ".", ""]
        if old.get("curves"):
            lines += curve_report(old["curves"], f"earlier setting: {setting}")
        lines += replaced_report(old.get("replaced"), f"earlier setting: {setting}")
    lines.append(END)
    return "\n".join(lines)


def readme_table(results: dict, meta: dict) -> str:
    """The bundle README's performance table: each budget, both arms, mean ± std over seeds."""
    budgets = sorted({r["budget"] for r in results.values()},  # the time budget first: the bundle's headline
                     key=lambda b: (not budget_order(b)[0], budget_order(b)[1]))
    lines = [README_BEGIN, "", f"From scratch on the {meta['size']} px phantom (`bench/quality_det.py`; "
             f"{meta.get('train_images', '?')} training images of synthetic patients, {meta['eval_images']} held-out "
             f"images with {meta['eval_lesions']} lesions, {meta['bin_counts']['subtle']} of them subtle), "
             f"{meta.get('threads', 2)} CPU thread(s), demo backbone; mean ± std over seeds:", "",
             "| budget | detector | seeds | iterations | AP50 | AP50, lesions with CNR ≥ 1 | FROC CPM |",
             "|---|---|---|---|---|---|---|"]
    for budget in budgets:
        title = budget_title(budget)
        for arm in ARMS:
            runs = [r for r in results.values() if r["arm"] == arm and r["budget"] == budget]
            if runs:
                lines.append(f"| {title} | {ARM_TEXT[arm]} | {len(runs)} | "
                             f"{round(statistics.mean(r['iterations'] for r in runs))} | "
                             f"{_ms([r['ap50'] for r in runs])} | {_ms([r['ap50_visible'] for r in runs])} | "
                             f"{_ms([r['cpm'] for r in runs])} |")
    return "\n".join(lines + ["", README_END])


def write_report(doc: Path, text: str, readme: Path | None = None, table: str | None = None) -> None:
    write_between(doc, text, BEGIN, END, "## Detection quality (bench/quality_det.py)")
    if readme is not None and table is not None:
        write_between(readme, table, README_BEGIN, README_END, "## Performance")


def publish(stored: dict, meta: dict, doc: Path, readme: Path) -> None:
    """Both generated sections (docs/results.md, the bundle README's table) from the stored runs."""
    text = report(stored["runs"], meta, stored.get("excluded"), stored.get("curves"), stored.get("superseded"),
                  stored.get("replaced"), stored.get("commands"))
    write_report(doc, text, readme, readme_table(stored["runs"], meta))
    print(text)


def read_store(path: Path) -> dict:
    """The results file as it is now (written by atomic renames: a read never sees half a file)."""
    return json.loads(path.read_text()) if path.exists() else {"meta": {}, "runs": {}}


@contextlib.contextmanager
def locked_store(path: Path):
    """The results file, read and (if the block ends normally) rewritten under an exclusive lock: runs of several
    processes (one per core) go into one file without one overwriting another's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]  # hash() differs between processes
    with open(Path(tempfile.gettempdir()) / f"cxrfx_quality_det_{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored = read_store(path)
        yield stored
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(stored, indent=1, default=float))
        tmp.replace(path)


def to_run(results: Path, keys) -> Iterator[str]:
    """The ``keys`` not yet in the results file's runs, each announced as it starts (checked just before it runs,
    so processes sharing the file skip what another one finished meanwhile)."""
    for key in keys:
        if key not in read_store(results)["runs"]:
            print(f"{key} ...", flush=True)
            yield key


SAME_SETTING = ("phantom_seed", "count", "size", "generator_version", "train_images", "threads")


def adopt_setting(stored: dict, meta: dict) -> None:
    """Make ``meta`` the stored setting. Runs, curves and re-measurements of another setting (held-out set,
    training set, threads) move under ``"superseded"`` with the setting they were measured in, so they are
    neither mixed into the new tables nor lost; runs listed as ``"excluded"`` are dropped to be run again."""
    old = stored.get("meta") or {}
    if old and {k: old.get(k) for k in SAME_SETTING} != {k: meta[k] for k in SAME_SETTING}:
        moved = {k: stored.pop(k) for k in ("runs", "curves", "replaced", "excluded", "commands") if stored.get(k)}
        if moved.get("runs") or moved.get("curves"):
            print("stored runs are of another setting: kept under 'superseded', the table starts afresh")
            stored.setdefault("superseded", []).append({"meta": old, **moved})
        stored["runs"], stored["excluded"] = {}, {}
    stored["meta"] = meta
    stored.setdefault("runs", {})
    for key in stored.get("excluded", {}):
        stored["runs"].pop(key, None)  # a run measured on an oversubscribed machine: run it again


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.expanduser("~/.cache/cxrfx/bench/quality_det"))
    ap.add_argument("--models", default=os.path.expanduser("~/.cache/cxrfx/bench/quality_det_models"),
                    help="where each run's trained weights are saved (<arm>_<budget>_<seed>.pt)")
    ap.add_argument("--count", type=int, default=792,
                    help="phantom images (70 / 15 / 15 %% training / validation / test): 792 hold out 238 images")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--phantom-seed", type=int, default=1015)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--budgets", nargs="+", default=["iterations", "time"], choices=["iterations", "time"])
    ap.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS)
    ap.add_argument("--budget-minutes", type=float, default=DEFAULT_MINUTES,
                    help="the CPU budget; other than 15, its runs form a table of their own (keys 'time30', ...)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--results", default=str(HERE / "results" / "quality_det.json"))
    ap.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    ap.add_argument("--readme", default=str(ROOT / "bundles" / "finetune_det" / "docs" / "README.md"),
                    help="the bundle README whose performance table is written from the same runs")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (the CPU budget is CPU time / threads; on a shared machine use 1)")
    ap.add_argument("--curve", type=int, nargs="+", default=None,
                    help="learning-curve study instead of the arm table: iterations at which the held-out set is "
                         "scored during one run of max(CURVE) iterations (arms and seeds as given)")
    ap.add_argument("--ema", type=float, nargs="*", default=[0.99],
                    help="momenta of weight averages kept during each run and scored beside its last iterate (the "
                         "warm-up ramp caps the momentum at (1 + t) / (10 + t): 0.989 after 850 iterations, so a "
                         "larger m changes nothing in runs of this length)")
    ap.add_argument("--extra-train", type=int, default=1800,
                    help="add every image of another phantom build of this many images (seed + 1, other patients) "
                         "to the training split; held-out images unchanged (0: the phantom's own 184 only)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    results_path = Path(a.results)
    if a.report_only:  # the stored runs with the setting they were measured in, whatever this command line says
        stored = json.loads(results_path.read_text())
        return publish(stored, stored["meta"], Path(a.doc), Path(a.readme))
    datalist = build_phantom(Path(a.data), a.count, a.size, a.phantom_seed)
    train_list = datalist
    if a.extra_train:
        extra = build_phantom(Path(f"{a.data}_extra{a.extra_train}"), a.extra_train, a.size, a.phantom_seed + 1)
        train_list = with_extra_training(datalist, extra)
    n_train = len(json.load(open(train_list))["training"])
    items = json.load(open(datalist))
    held_out = [it for split in ("validation", "test") for it in items[split]]
    cnrs = np.array([les["cnr"] for it in held_out for les in it.get("meta", {}).get("lesions", [])])
    meta = {"phantom_seed": a.phantom_seed, "count": a.count, "size": a.size, "train_images": n_train,
            "iterations": a.iterations, "budget_minutes": a.budget_minutes, "threads": a.threads,
            "eval_images": len(held_out), "eval_lesions": len(cnrs), "ema": list(a.ema),
            "generator_version": json.load(open(Path(a.data) / "phantom.json"))["params"]["generator_version"],
            "bin_counts": {b: int(((cnrs >= lo) & (cnrs < hi)).sum()) for b, (lo, hi) in BINS.items()}}
    command = " ".join(["python bench/quality_det.py", *(argv if argv is not None else sys.argv[1:])])
    recipe = meta["cxrfx_recipe"] = cxrfx_recipe()
    with locked_store(results_path) as stored:
        previous = (stored.get("meta") or {}).get("cxrfx_recipe")
        adopt_setting(stored, meta)
        retire_other_recipes(stored, recipe, previous)
        if command not in stored.setdefault("commands", []):  # what made this file's runs, for its report
            stored["commands"].append(command)
    models = Path(a.models)
    if a.curve:
        for seed in a.seeds:
            for arm in a.arms:
                key = f"{arm}/{max(a.curve)}/train{n_train}/{seed}"
                curve = read_store(results_path).get("curves", {}).get(key)
                if curve is not None and not curve.get("partial"):
                    continue
                print(f"curve {key} ...", flush=True)

                def keep(points, key=key, arm=arm, seed=seed):
                    with locked_store(results_path) as stored:
                        stored.setdefault("curves", {})[key] = {"arm": arm, "seed": seed, "train_images": n_train,
                                                                "partial": True, "points": dict(points)}

                r = train(arm, train_list, a.size, a.batch, seed, max(a.curve), None, eval_at=sorted(a.curve),
                          on_point=keep, save_to=models / f"{key.replace('/', '_')}.pt")
                r.update(arm=arm, seed=seed, train_images=n_train, **({"recipe": recipe} if arm == "cxrfx" else {}))
                with locked_store(results_path) as stored:
                    stored.setdefault("curves", {})[key] = r
                for it, p in sorted(r["points"].items(), key=lambda kv: int(kv[0])):
                    print(f"  {it} it: AP50 {p['ap50']:.3f}, CNR>=1 {p['ap50_visible']:.3f}, CPM {p['cpm']:.3f}")
    else:
        for kind in a.budgets:
            budget = budget_label(kind, a.iterations if kind == "iterations" else a.budget_minutes)
            for key in to_run(results_path, [f"{arm}/{budget}/{seed}" for seed in a.seeds for arm in a.arms]):
                arm, seed = key.split("/")[0], int(key.split("/")[-1])
                r = train(arm, train_list, a.size, a.batch, seed,
                          a.iterations if kind == "iterations" else None,
                          a.budget_minutes * 60 if kind == "time" else None,
                          save_to=models / f"{key.replace('/', '_')}.pt", ema=tuple(a.ema))
                r.update(arm=arm, budget=budget, seed=seed, **({"recipe": recipe} if arm == "cxrfx" else {}))
                with locked_store(results_path) as stored:
                    stored["runs"][key] = r
                    stored.get("excluded", {}).pop(key, None)
                print(f"{key}: AP50 {r['ap50']:.3f}, CNR>=1 {r['ap50_visible']:.3f}, CPM {r['cpm']:.3f}, "
                      f"{r['iterations']} it, {r['train_wall_s']:.0f} s" +
                      "".join(f"; EMA {m}: AP50 {e['ap50']:.3f}" for m, e in r.get("ema", {}).items()),
                      flush=True)
    publish(read_store(results_path), meta, Path(a.doc), Path(a.readme))


if __name__ == "__main__":
    main()
