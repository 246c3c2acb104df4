"""Few-shot fine-tuning on the phantom population: does Foundation X pretraining transfer? (the paper's claim)

The paper's downstream claim (Foundation X, WACV 2025: few-shot JSRT-clavicle Dice), measured where it can show:

1. Data. Two phantom populations of synthetic patients (``--pretrain_seed``, ``--downstream_seed``: disjoint
   patients, each with its own anatomy and appearance). The pretraining segmentation source keeps only ribs,
   pneumothorax and effusion, so the downstream organs (lungs, heart, clavicles) are a task no pretraining saw,
   as JSRT's organs were for Foundation X.
2. Pretraining with ``bundles/foundation_x`` (demo backbone, ``--size`` px), every arm with the same number of
   iterations: (b) classification only over the three datasets' labels (Ark's recipe); (c) Foundation X, the
   phantom Lock-Release cycle over labels, boxes and masks with the EMA teacher; (d) (c) without lock phases;
   (e) (c) without the teacher (no consistency term; the student is fine-tuned). Self-supervised arms
   (``bench/few_shot_ssl.py``), on the same images without their labels, each at about (c)'s CPU time: (g) DiRA,
   (h) Adam-v2, (i) DiRA then the Foundation X cycle (half the time each). (j) a plain detector pretraining on
   the boxes alone (``bench/few_shot_det.py``'s detection stage asks whether the other tasks add to it).
3. Fine-tuning ``bundles/finetune_seg`` (organs) on N training images chosen by seed (``--few_shot N
   --few_shot_seed s``; one seed's sets are nested) from (a) scratch and (b)-(e), (g)-(i), and (f) a MONAI UNet from
   scratch (what a user would pick instead) on the same images, pipeline and iterations, at the learning rate
   ``bench/quality_seg.py`` chose on validation (``common.MONAI_UNET_LR``); a second run 4x as long is scored on
   the way, so it can be compared at equal CPU time. Test-split ``dice_fx``.
4. Statistics: per shot count, paired differences over seeds (the same images and seed in both arms), the
   exact Wilcoxon signed-rank test (two-sided) and how many pairs favour each arm; declared before the runs.

    python bench/few_shot.py --out runs/few_shot --results docs/results.md   # runs: bench/results/few_shot.json

Every run is stored in ``--store`` (``bench/results/few_shot.json``, committed) as it completes (a cut run
resumes); the bulky run folders (phantoms, checkpoints, logs) go under ``--out``. Runs go seed by seed, so a
partial run covers every arm and shot count with fewer seeds. A pretraining whose checkpoint is gone (``--out``
lost with a machine) is run again, with the same seed, before further fine-tuning; finished runs are kept.
``--report_only`` rewrites the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

from few_shot_ssl import SSL_ARMS, SSL_CONFIGS, SSL_COST, ssl_overrides, unlabelled_datalist

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
ARMS = {"scratch": "(a) from scratch", "single_task": "(b) classification-only pretraining (Ark's recipe)",
        "foundation_x": "(c) Foundation X (Lock-Release + teacher)",
        "fx_no_lock": "(d) Foundation X without lock phases", "fx_no_teacher": "(e) Foundation X without teacher",
        "monai_unet": "(f) MONAI UNet from scratch",
        "ssl_dira": "(g) DiRA self-supervised (unlabelled images)",
        "ssl_adam": "(h) Adam-v2 self-supervised (unlabelled images)",
        "dira_fx": "(i) DiRA, then Foundation X",
        "det_only": "(j) localization-only pretraining"}
PRETRAINED = ("single_task", "foundation_x", "fx_no_lock", "fx_no_teacher", "ssl_dira", "ssl_adam", "dira_fx",
              "det_only")
# the paired comparisons the issues' goals are about, declared before the runs: (arm, against); the SSL issue's
# published direction: SSL beats scratch with few images, SSL + supervision beats either
COMPARISONS = (("foundation_x", "scratch"), ("foundation_x", "single_task"), ("foundation_x", "monai_unet"),
               ("foundation_x", "fx_no_lock"), ("foundation_x", "fx_no_teacher"),
               ("ssl_dira", "scratch"), ("ssl_adam", "scratch"), ("dira_fx", "ssl_dira"), ("dira_fx", "foundation_x"))
PRETRAIN_SEG_CLASSES = ["ribs", "pneumothorax", "effusion"]
ORGANS = ["lung_left", "lung_right", "heart", "clavicle_left", "clavicle_right"]
COMMON = {"num_workers": 0, "batch_size": 4, "progress_bar": False}


def fire_arg(value) -> str:
    """A value as ``python -m monai.bundle run`` (python-fire) reads it back, quoted for the shell."""
    if isinstance(value, (bool, int, float)) or value is None:
        return repr(value)
    text = f"'{value}'" if isinstance(value, str) else repr(value)
    return f'"{text}"' if not any(c in text for c in '"$`\\') else shlex.quote(text)


def command(call: dict) -> str:
    """The shell command equivalent to one in-process run (``bundle_run``'s record)."""
    files = "[" + ",".join(f"'configs/{c}'" for c in call["configs"]) + "]"
    parts = [f"(cd bundles/{call['bundle']} &&", "python -m monai.bundle run", "--config_file", f'"{files}"',
             "--bundle_root", fire_arg(call["root"])]
    for key, value in call["overrides"].items():
        parts += [f"--{key}", fire_arg(value)]
    return " ".join(parts) + ")"


def bundle_run(bundle: str, configs: list[str], root: Path, log: Path, **overrides) -> dict:
    """Run a bundle in this process (output to ``log``); returns what was run (see :func:`command`)."""
    from monai.bundle.scripts import run

    path = BUNDLES / bundle
    root.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    with open(log, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        os.chdir(path)
        try:
            run(config_file=[str(path / "configs" / c) for c in configs], meta_file=str(path / "configs" / "metadata.json"),
                logging_file=str(path / "configs" / "logging.conf"), bundle_root=str(root), **overrides)
        finally:
            os.chdir(cwd)
            _release_handlers_from(f)
    return {"bundle": bundle, "configs": configs, "root": str(root), "overrides": overrides}


class _CurrentStdout:
    """A stream that writes to whatever ``sys.stdout`` is at the time: the log of the run now going on."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


def _release_handlers_from(stream) -> None:
    """Rebind the logging handlers a run bound to ``stream`` (its log, about to close) to the current stdout.

    Left bound, every message of the next run in this process raised "I/O operation on closed file"; removed,
    MONAI's StatsHandler logger (created once per process, with its own handler and no propagation) logged
    nothing in later runs, and their "Metrics --" lines, the validation curve, were lost."""
    import logging

    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if getattr(handler, "stream", None) is stream:
                handler.setStream(_CurrentStdout())


def pretraining_metrics(log: Path) -> dict[str, float]:
    """The teacher's validation metrics at the end of a pretraining (its log's last "Metrics --" line): what the
    pretraining learned on its own tasks, e.g. ``cls/phantom_cls/auc``."""
    import re

    text = log.read_text(errors="replace") if log.exists() else ""
    lines = [line for line in text.splitlines() if "Metrics --" in line]
    if not lines:
        return {}
    return {name: float(value) for name, value in re.findall(r"teacher/([\w/]+): (-?[0-9.]+(?:e-?[0-9]+)?)", lines[-1])
            if name != "mean"}


def read_metrics(path: Path) -> dict[str, float]:
    """``MetricsSaver``'s metrics.csv as {name: value}."""
    metrics = {}
    for line in path.read_text().splitlines():
        name, _, value = line.partition(",")
        try:
            metrics[name] = float(value)
        except ValueError:
            continue
    return metrics


def validation_curve(log_text: str, interval: int, metric: str = "dice_fx") -> dict[int, float]:
    """{iteration: validation score} from a training log: one "Metrics -- ... val_<metric>: x" line per
    validation, every ``interval`` iterations (the bundle's ``val_interval``)."""
    import re

    values = [float(v) for v in re.findall(rf"Metrics --.*?val_{metric}: (-?[0-9.]+)", log_text)]
    return {interval * (k + 1): v for k, v in enumerate(values)}


def organ_scores(metrics: dict[str, float]) -> dict[str, float]:
    """{organ: test dice_fx} from an evaluation's metrics (``dice_fx_<channel>``, channels in ``ORGANS`` order)."""
    return {organ: metrics[f"student/seg/organs/dice_fx_{c}"] for c, organ in enumerate(ORGANS)
            if f"student/seg/organs/dice_fx_{c}" in metrics}


def _timed(fn, *args):
    start = time.process_time()
    result = fn(*args)
    return result, time.process_time() - start


def _clocks() -> tuple[float, float]:
    """This process's CPU seconds and the wall clock, read together."""
    return time.process_time(), time.perf_counter()


def _device_name() -> str:
    """Where the bundles train: the GPU's name, or "cpu"."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def pretraining_population(out: Path, args) -> dict[str, str]:
    """The pretraining population's datalists (built if needed), segmentation without the downstream organs."""
    from cxrfx.data.few_shot import few_shot_datalist
    from cxrfx.data.phantom import generate_phantom

    pre = out / "data" / "pretrain"
    generate_phantom(str(pre), count=args.pretrain_count, size=args.phantom_size, seed=args.pretrain_seed,
                     verbose=False)
    seg = few_shot_datalist(pre / "phantom_seg" / "datalist.json", pre / "phantom_seg_pretrain.json",
                            seg_classes=PRETRAIN_SEG_CLASSES, name="phantom_seg")
    return {"phantom_cls": str(pre / "phantom_cls" / "datalist.json"),
            "phantom_det": str(pre / "phantom_det" / "datalist.json"), "phantom_seg": seg}


def build_data(out: Path, args) -> dict:
    """Both populations, and the pretraining segmentation datalist without the downstream organs."""
    from cxrfx.data.phantom import generate_phantom

    down = out / "data" / "downstream"
    lists = pretraining_population(out, args)
    generate_phantom(str(down), count=args.downstream_count, size=args.phantom_size, seed=args.downstream_seed,
                     verbose=False, datasets=("phantom_seg",))
    pre = out / "data" / "pretrain"
    images = [lists["phantom_cls"], lists["phantom_det"], str(pre / "phantom_seg" / "datalist.json")]
    return {"pretrain": lists, "unlabelled": unlabelled_datalist(images, pre / "unlabelled.json"),
            "seg": str(down / "phantom_seg" / "datalist.json")}


def _cycle_length(sources: dict, schedule: list[dict], batch_size: int, size: int) -> int:
    from cxrfx.data.multitask import build_sources
    from cxrfx.engines.schedule import parse_schedule, resolve_lengths

    loaders = build_sources(sources, size=size, batch_size=batch_size, train=True)
    return sum(resolve_lengths(parse_schedule(schedule), {k: len(v) for k, v in loaders.items()}))


def backbone_settings(size: int) -> dict:
    """The demo backbone at ``size`` px: one attention window covers the last stage (size / 32)."""
    return {"image_size": size, "backbone_kwargs#window_size": size // 32}


def decoder_settings(channels: list[int] | None) -> dict:
    """Bundle overrides for a fine-tuning decoder of ``channels`` = (seg, psp) widths; {} for the bundle's own."""
    if channels is None:
        return {}
    return {"network_def#seg_channels": channels[0], "network_def#psp_channels": channels[1]}


def pretrain_specs(data: dict, out: Path, cycles: int, size: int, cost: dict[str, float] = SSL_COST,
                   task_lr_scale: dict[str, float] | None = None) -> dict[str, dict]:
    """The pretraining runs: (b)-(e) with the Foundation X cycle's number of iterations, the SSL arms at about its
    CPU time (``cost``: an SSL iteration's CPU time over a cycle iteration's, ``few_shot_ssl.SSL_COST``).
    ``task_lr_scale``: the trainer's per-task rate multipliers, passed explicitly so every pretraining record's
    call says them (None: the demo config's, unrecorded)."""
    from cxrfx.engines.schedule import expand_tasks, phantom_cycle

    lists = data["pretrain"]
    fx_sources = {"phantom_cls": {"datalist": lists["phantom_cls"], "tasks": ["cls"]},
                  "phantom_det": {"datalist": lists["phantom_det"], "tasks": ["cls", "det"]},
                  "phantom_seg": {"datalist": lists["phantom_seg"], "tasks": ["cls", "seg"]}}
    cls_sources = {k: {"datalist": v["datalist"], "tasks": ["cls"]} for k, v in fx_sources.items()}
    # (j): a plain detector pretraining on the boxes alone (one task: no shared parts to lock for)
    det_sources = {"phantom_det": {"datalist": lists["phantom_det"], "tasks": ["det"]}}
    schedules = {"foundation_x": phantom_cycle(), "fx_no_teacher": phantom_cycle(),
                 "fx_no_lock": [s for s in phantom_cycle() if s["phase"] != "lock"],
                 "single_task": expand_tasks([(k, "cls") for k in cls_sources]),
                 "det_only": [{"dataset": "phantom_det", "task": "det", "phase": "release", "epoch_fraction": 1.0}]}
    bs = COMMON["batch_size"]
    fx_iterations = cycles * _cycle_length(fx_sources, schedules["foundation_x"], bs, size)
    base = {**COMMON, **backbone_settings(size), "validate_data": False,
            "network_def#seg_heads": {"phantom_seg": len(PRETRAIN_SEG_CLASSES)},
            **({} if task_lr_scale is None else {"task_lr_scale": task_lr_scale})}
    specs = {}
    for arm in PRETRAINED:
        if arm in SSL_ARMS:
            specs[arm] = {"arm": arm, "root": str(out / "pretrain" / arm), "configs": SSL_CONFIGS,
                          "overrides": ssl_overrides(arm, {**base, "datasets": fx_sources, "schedule": phantom_cycle()},
                                                     data["unlabelled"], cycles, cost),
                          "key": SSL_ARMS[arm][1]}
            continue
        sources = {"single_task": cls_sources, "det_only": det_sources}.get(arm, fx_sources)
        epochs = max(1, round(fx_iterations / _cycle_length(sources, schedules[arm], bs, size)))
        overrides = {**base, "datasets": sources, "schedule": schedules[arm], "epochs": epochs, "val_interval": epochs}
        if arm == "fx_no_teacher":
            overrides["train#trainer#consistency_weight"] = 0.0
        specs[arm] = {"arm": arm, "root": str(out / "pretrain" / arm), "overrides": overrides,
                      "key": "student" if arm == "fx_no_teacher" else "teacher"}
    return specs


def pretrain(spec: dict) -> dict:
    """One foundation_x bundle run; returns where its weights are and what it cost."""
    import torch

    root = Path(spec["root"])
    start, cpu = time.perf_counter(), time.process_time()
    call = bundle_run("foundation_x", spec.get("configs", ["train.json", "demo.json"]), root, root / "train.log",
                      **spec["overrides"])
    state = torch.load(root / "models" / "last.pt", map_location="cpu", weights_only=True)
    return {"arm": spec["arm"], "checkpoint": str(root / "models" / "last.pt"), "key": spec["key"], "call": call,
            "iterations": int(state["trainer"]["iteration"]), "seconds": round(time.perf_counter() - start, 1),
            "cpu_seconds": round(time.process_time() - cpu, 1), "validation": pretraining_metrics(root / "train.log")}


def start_point(pretrained: dict | None) -> dict:
    """A fine-tuning bundle's overrides for its start: scratch, or a pretraining record's checkpoint and key."""
    if pretrained is None:
        return {"finetune": False}
    return {"finetune": True, "finetune_model_path": pretrained["checkpoint"], "finetune_key": pretrained["key"]}


def repo_relative(text: str) -> str:
    """Paths in generated docs relative to the repository (and the home folder as ~)."""
    return text.replace(str(ROOT) + os.sep, "").replace(str(Path.home()), "~")


def finetune(job: dict) -> dict:
    """Train then evaluate one (arm, shots, seed) through finetune_seg; test-split Dice and the cost."""
    root, log = Path(job["root"]), Path(job["root"]) / "run.log"
    start, cpu = time.perf_counter(), time.process_time()
    overrides = {**COMMON, **job["settings"], **start_point(job["pretrained"]), "few_shot": job["shots"],
                 "few_shot_seed": job["seed"], "seed": job["seed"], "source_datalist": job["datalist"],
                 "validate_data": False}
    logged = log.stat().st_size if log.exists() else 0
    train = bundle_run("finetune_seg", ["train.json", "demo.json"], root, log, **overrides)
    train_cpu, train_s = time.process_time() - cpu, time.perf_counter() - start
    with open(log, "rb") as f:  # this training's part of the log: the evaluation below appends its own line
        f.seek(logged)
        curve = validation_curve(f.read().decode(errors="replace"), job["settings"]["val_interval"])
    evaluate = bundle_run("finetune_seg", ["train.json", "demo.json", "evaluate.json"], root, log, **overrides)
    metrics = read_metrics(root / "eval" / "metrics.csv")
    return {**{k: job[k] for k in ("arm", "shots", "seed")},
            **{k: metrics.get(f"student/seg/organs/{k}", float("nan")) for k in ("dice_fx", "dice_global")},
            "per_organ": organ_scores(metrics), "val_curve": curve,
            "train_cpu_s": round(train_cpu, 1), "train_s": round(train_s, 1), "device": _device_name(),
            "seconds": round(time.perf_counter() - start, 1), "calls": [train, evaluate]}


def monai_unet(job: dict) -> dict:
    """(f): MONAI's UNet (1.6 M parameters, residual units) from scratch on the same few-shot images, pipeline,
    batch, loss (Dice + BCE) and iterations; held-out Dice also at 1/4, 1/2, 2x and 4x the iterations, with the
    CPU time spent by then, so it can be compared with the Foundation X arm at equal CPU time."""
    import torch
    from monai.networks.nets import UNet
    from monai.optimizers import WarmupCosineSchedule

    from cxrfx.data.few_shot import few_shot_datalist
    from cxrfx.data.multitask import build_sources
    from cxrfx.engines.losses import DiceBCELoss
    from cxrfx.metrics import dice_fx, dice_per_image

    settings, root = job["settings"], Path(job["root"])
    root.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as the bundles choose theirs
    torch.manual_seed(job["seed"])
    datalist = few_shot_datalist(job["datalist"], root / "finetune_datalist.json", shots=job["shots"],
                                 seed=job["seed"], seg_classes=ORGANS, name="organs")
    sources = {"organs": {"datalist": datalist, "tasks": ["seg"]}}
    size, batch = settings["image_size"], COMMON["batch_size"]
    loader = build_sources(sources, "training", size, batch, train=True, seed=job["seed"], cache_rate=1.0)["seg/organs"]
    test = build_sources(sources, "test", size, batch, train=False)["seg/organs"]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import MONAI_UNET_LR

    def run(total: int, points: list[int]) -> tuple[dict, int]:
        """Train a fresh UNet (same seed) with a schedule of ``total`` iterations; held-out Dice at ``points``."""
        torch.manual_seed(job["seed"])
        net = UNet(2, 1, len(ORGANS), channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2).to(device)
        optimizer = torch.optim.AdamW(net.parameters(), lr=MONAI_UNET_LR, weight_decay=1e-4)
        schedule = WarmupCosineSchedule(optimizer, warmup_steps=max(1, total // 20), t_total=total)
        loss_fn, done, curve = DiceBCELoss(), 0, {}
        trained = [0.0, 0.0]  # CPU and wall seconds spent training (evaluation is not training)
        since = _clocks()
        while done < total:
            for b in loader:
                net.train()
                loss = loss_fn(net(b["image"].to(device)), b["mask"].to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                done += 1
                if done in points:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    trained = [t + now - then for t, now, then in zip(trained, _clocks(), since)]
                    net.eval()
                    with torch.no_grad():
                        probs = [torch.sigmoid(net(t["image"].to(device))).cpu() for t in test]
                        masks = [t["mask"] for t in test]
                    probs, masks = torch.cat(probs), torch.cat(masks)
                    curve[done] = {"dice_fx": dice_fx(probs, masks),
                                   "per_organ": dict(zip(ORGANS, dice_per_image(probs, masks).mean(0).tolist())),
                                   "train_cpu_s": round(trained[0], 1), "train_s": round(trained[1], 1)}
                    since = _clocks()
                if done >= total:
                    break
        return curve, sum(p.numel() for p in net.parameters())

    # the headline: its own schedule of the arms' iterations, as every other arm; then a run 4x as long scored on
    # the way, for the comparison at equal CPU time (an early point of it is not a short run's end)
    iterations = settings["iterations"]
    at = run(iterations, [iterations])[0][iterations]
    points = sorted({max(1, iterations // 4), iterations // 2, iterations, 2 * iterations, 4 * iterations})
    curve, parameters = run(4 * iterations, points)
    return {**{k: job[k] for k in ("arm", "shots", "seed")}, "dice_fx": at["dice_fx"], "per_organ": at["per_organ"],
            "train_cpu_s": at["train_cpu_s"], "train_s": at["train_s"], "device": _device_name(),
            "curve": curve, "parameters": parameters, "lr": MONAI_UNET_LR}


def wilcoxon(diffs: list[float]) -> float:
    """Two-sided exact Wilcoxon signed-rank p-value of paired differences (NaN with fewer than 2 non-zero)."""
    from scipy.stats import wilcoxon as test

    nonzero = [d for d in diffs if d != 0]
    if len(nonzero) < 2:
        return float("nan")
    return float(test(nonzero, method="exact" if len(nonzero) <= 25 else "auto").pvalue)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(runs: list[dict], metric: str = "dice_fx") -> str:
    """Markdown: one row per arm, one column per shot count, mean ± std (sample) over seeds, seeds in brackets."""
    shots = sorted({r["shots"] for r in runs})
    lines = ["| start point | " + " | ".join(f"{n} images" for n in shots) + " |", "|---|" + "---|" * len(shots)]
    for arm, label in ARMS.items():
        cells = []
        for n in shots:
            values = [r[metric] for r in runs if r["arm"] == arm and r["shots"] == n]
            cells.append(f"{_mean_std(values)} ({len(values)})" if values else "–")
        if any(c != "–" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_cells(diffs: list[float]) -> str:
    """Table cells of paired differences: "mean | pairs favouring the first / the second | Wilcoxon p"."""
    return (f"{statistics.mean(diffs):+.3f} | {sum(d > 0 for d in diffs)} / {sum(d < 0 for d in diffs)} | "
            f"{wilcoxon(diffs):.3g}")


def paired(runs: list[dict], metric: str = "dice_fx", comparisons=COMPARISONS) -> str:
    """Markdown: the declared comparisons per shot count: mean paired difference, pairs favouring, Wilcoxon p."""
    by = {(r["arm"], r["shots"], r["seed"]): r[metric] for r in runs}
    lines = ["| comparison | images | pairs | mean difference | pairs favouring the first / second | Wilcoxon p |",
             "|---|---|---|---|---|---|"]
    for arm, other in comparisons:
        for n in sorted({r["shots"] for r in runs}):
            seeds = sorted(s for (a, k, s) in by if a == arm and k == n and (other, n, s) in by)
            if not seeds:
                continue
            diffs = [by[(arm, n, s)] - by[(other, n, s)] for s in seeds]
            lines.append(f"| {ARMS[arm][:3]} − {ARMS[other][:3]} | {n} | {len(diffs)} | {paired_cells(diffs)} |")
    return "\n".join(lines)


def _time_key(runs: list[dict]) -> str:
    """Training time as compared: CPU seconds on a CPU (robust to a shared machine), wall seconds on a GPU."""
    return "train_cpu_s" if all(r.get("device", "cpu") == "cpu" for r in runs) else "train_s"


def equal_cpu(runs: list[dict]) -> str:
    """(c) against (f) at equal training time: (f)'s curve point whose training time is nearest (c)'s (CPU
    seconds when every run was on a CPU, wall seconds otherwise)."""
    key = _time_key(runs)
    unit = "CPU s" if key == "train_cpu_s" else "wall s"
    lines = [f"| images | (c) training {unit} | (c) Dice | (f) at the nearest time: iterations, {unit}, Dice |",
             "|---|---|---|---|"]
    for n in sorted({r["shots"] for r in runs}):
        fx = [r for r in runs if r["arm"] == "foundation_x" and r["shots"] == n]
        unet = {r["seed"]: r for r in runs if r["arm"] == "monai_unet" and r["shots"] == n}
        pairs = [(r, unet[r["seed"]]) for r in fx if r["seed"] in unet]
        if not pairs:
            continue
        near = [min(u["curve"].items(), key=lambda kv: abs(kv[1][key] - r[key])) for r, u in pairs]
        lines.append(f"| {n} | {statistics.mean(r[key] for r, _ in pairs):.0f} | "
                     f"{_mean_std([r['dice_fx'] for r, _ in pairs])} | "
                     f"{statistics.mean(int(i) for i, _ in near):.0f}, "
                     f"{statistics.mean(p[key] for _, p in near):.0f}, "
                     f"{_mean_std([p['dice_fx'] for _, p in near])} |")
    return "\n".join(lines)


FIRST_ARMS = ("scratch", "single_task", "foundation_x", "monai_unet")


def job_order(seeds: list[int], shots: list[int], arms: list[str]) -> list[tuple[str, int, int]]:
    """The fine-tuning runs (arm, shots, seed) in the order the issue asks for: (a), (b), (c), (f) at 2 and 4
    images first, then (d) and (e) at those, then the larger shot counts; seed-major within each stage, so a cut
    run covers its stage's arms and shot counts with fewer seeds."""
    few, more = [n for n in shots if n <= 4], [n for n in shots if n > 4]
    stages = [(few, [a for a in arms if a in FIRST_ARMS]), (few, [a for a in arms if a not in FIRST_ARMS]),
              (more, list(arms))]
    return [(arm, n, seed) for stage_shots, stage_arms in stages for seed in seeds for n in stage_shots
            for arm in stage_arms]


def _work(fn, job: dict, threads: int) -> tuple[dict, float]:
    """One run in a worker process: its result and the CPU seconds it took there."""
    import torch

    torch.set_num_threads(threads)
    return _timed(fn, job)


def execute(tasks: list[dict], workers: int, threads: int, deadline: float | None, prepare, done,
            finished: set[str] = frozenset()) -> list[str]:
    """Run ``tasks`` (each ``{"key", "fn", "job", "after"}``; ``after``: the key of a task that must finish first,
    or None) in list order as far as their dependencies allow, ``workers`` at a time in processes of their own
    (in this process when 1). ``prepare(task)`` gives the job as the task starts; ``done(task, result,
    cpu_seconds)`` is called here as each finishes. No task starts after ``deadline`` (``time.monotonic()``).
    A task that fails is reported and its dependents skipped; returns the failed and skipped keys."""
    import traceback
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from multiprocessing import get_context

    pending, finished, failed = list(tasks), set(finished), []

    def next_ready() -> dict | None:
        for task in list(pending):
            if task["after"] is None or task["after"] in finished:
                pending.remove(task)
                return task
            if task["after"] in failed:  # its pretraining failed: it cannot run
                pending.remove(task)
                failed.append(task["key"])
        return None

    def record(task: dict, outcome) -> None:
        try:
            result, cpu = outcome()
        except Exception:  # noqa: BLE001 - one failed run must not lose the others; it is reported and listed
            print(f"FAILED {task['key']}:\n{traceback.format_exc()}", flush=True)
            failed.append(task["key"])
            return
        finished.add(task["key"])
        done(task, result, cpu)

    def late() -> bool:
        return deadline is not None and time.monotonic() > deadline

    if workers <= 1:
        while not late() and (task := next_ready()) is not None:
            record(task, lambda t=task: _work(t["fn"], prepare(t), threads))
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            running = {}
            while True:
                while len(running) < workers and not late() and (task := next_ready()) is not None:
                    running[pool.submit(_work, task["fn"], prepare(task), threads)] = task
                if not running:
                    break
                for future in wait(running, return_when=FIRST_COMPLETED)[0]:
                    record(running.pop(future), future.result)
    if pending:
        print(f"budget spent: {len(pending)} run(s) not started (run the same command again to go on)", flush=True)
    return failed


# what a pretraining depends on: a store may reuse another's pretrainings only where these agree
PRETRAINING_SETTINGS = ("size", "pretrain_cycles", "phantom_size", "pretrain_count", "pretrain_seed", "task_lr_scale")


def borrow_pretraining(summary: dict, other: dict, name: str) -> None:
    """Take ``other``'s pretrainings into ``summary`` (those it lacks), if they were made with the same
    pretraining settings: fine-tuning the same start points another way costs no second pretraining."""
    mine, theirs = summary["settings"], other.get("settings", {})
    differ = [k for k in PRETRAINING_SETTINGS if mine.get(k) != theirs.get(k)]
    if differ:
        raise SystemExit(f"--pretrained_from {name}: its pretrainings were made with other settings ("
                         + ", ".join(f"{k} {theirs.get(k)} here {mine.get(k)}" for k in differ) + ")")
    for arm, done in other.get("pretraining", {}).items():
        summary["pretraining"].setdefault(arm, done)


def add_population_arguments(parser: argparse.ArgumentParser, downstream_count: int) -> None:
    """The settings every stage of the benchmark shares: input size, the two populations, pretraining length."""
    parser.add_argument("--size", type=int, default=224, help="pretraining and fine-tuning input size")
    parser.add_argument("--pretrain_cycles", type=int, default=8)
    parser.add_argument("--phantom_size", type=int, default=256)
    parser.add_argument("--pretrain_count", type=int, default=96, help="images per pretraining dataset")
    parser.add_argument("--downstream_count", type=int, default=downstream_count, help="downstream images")
    parser.add_argument("--pretrain_seed", type=int, default=100)
    parser.add_argument("--downstream_seed", type=int, default=200)
    parser.add_argument("--task_lr_scale", type=parse_task_lr_scale, default=None,
                        help="the pretraining's learning-rate multiplier per task, a JSON object such as "
                             "'{\"det\": 0.1}' ('{}': one rate for every task; default: the foundation_x demo "
                             "config's). Recorded in the store, so a later change of demo.json cannot mix recipes")


def parse_task_lr_scale(text: str) -> dict[str, float]:
    """``--task_lr_scale``: a JSON object of positive numbers by task; refused with the reason otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({err.msg})") from None
    if not isinstance(value, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value.values()):
        raise argparse.ArgumentTypeError(f"{text!r} is not an object of positive numbers by task, e.g. "
                                         '\'{"det": 0.1}\'')
    return {task: float(v) for task, v in sorted(value.items())}


def demo_task_lr_scale() -> dict[str, float]:
    """The foundation_x demo config's per-task learning-rate multipliers (``task_lr_scale``; {} where it sets none)."""
    config = json.loads((BUNDLES / "foundation_x" / "configs" / "demo.json").read_text())
    return {task: float(v) for task, v in sorted(config.get("task_lr_scale", {}).items())}


def forget_lost_pretrainings(summary: dict, order: list[tuple[str, int, int]]) -> None:
    """Drop the pretraining records whose checkpoint is gone (run folders lost with a machine) when a run still to
    do needs them, so they are made again with the same seed; a record no run needs again is kept."""
    pending = {arm for arm, shots, seed in order if f"{arm}/{shots}/{seed}" not in summary["runs"]}
    for arm, done in list(summary["pretraining"].items()):
        if arm in pending and not Path(done["checkpoint"]).exists():
            print(f"pretrained {arm}: {done['checkpoint']} is gone; pretraining again (same seed)", flush=True)
            del summary["pretraining"][arm]


def reproduce_lines(summary: dict) -> list[str]:
    """A report's "Reproduce" block: every command that added runs to the store (``commands``; an older store's one
    ``command``), repository-relative, with the store's pretraining rates per task where the default differs now."""
    commands = summary.get("commands") or [summary["command"]]
    scale = summary.get("settings", {}).get("task_lr_scale")
    if scale is not None and scale != demo_task_lr_scale():  # made before the demo config's rates changed
        flag = " --task_lr_scale " + shlex.quote(json.dumps(scale))
        commands = [c if "--task_lr_scale" in c else c + flag for c in commands]
    return ["Reproduce (" + ("each command adds its arms and shot counts to the store and " if len(commands) > 1
                             else "") + "resumes where it stopped; `--report_only` rewrites this section):",
            "", "```bash", *(repo_relative(c) for c in commands), "```"]


def record_command(summary: dict, cmd: str) -> None:
    """Add ``cmd`` to the store's ``commands``: every distinct command that added runs to it (other arms or shot
    counts, a second machine), so the report can show how to reproduce all of its table, not only the last part.
    A store made before this list existed starts it with its one ``command``."""
    commands = summary.setdefault("commands", [summary["command"]] if summary.get("command") else [])
    if cmd not in commands:
        commands.append(cmd)


# how and where the runs are made, not what they measure: a store may be filled in several sessions
PER_RUN = ("out", "store", "results", "report_only", "seeds", "arms", "shots", "threads", "jobs", "budget_s",
           "pretrained_from")
OPTIONAL = ("val_interval", "backbone_lr", "head_lr")  # settings absent from stores made before they existed


def claim_store(summary: dict, store: Path, args, optional: tuple[str, ...], script: str, argv) -> None:
    """Check that ``store`` holds runs of these settings (or none), record them and the command, and take the
    pretrainings of ``--pretrained_from``; a store of other settings is refused."""
    if args.task_lr_scale is None:
        args.task_lr_scale = demo_task_lr_scale()  # stored as used: the demo config may change between sessions
    skip = OPTIONAL + tuple(optional)
    settings = {k: v for k, v in vars(args).items() if k not in PER_RUN and not (k in skip and v is None)}
    if summary.get("settings") not in (None, settings):
        raise SystemExit(f"{store} holds runs made with other settings ({summary['settings']}); use another --store")
    summary["settings"] = settings
    if args.pretrained_from:
        borrow_pretraining(summary, json.loads(Path(args.pretrained_from).read_text()), args.pretrained_from)
    cmd = " ".join([script, *(argv if argv is not None else sys.argv[1:])])
    record_command(summary, cmd)  # before ``command`` is replaced: an older store's one command is kept
    summary["command"] = cmd
    store.parent.mkdir(parents=True, exist_ok=True)


def session_saver(summary: dict, store: Path, workers: int):
    """Record this session in ``summary``; returns ``save(cpu_seconds)`` (adds the CPU time, updates the session's
    wall time, writes the store) and the session's start (``time.monotonic()``)."""
    session = {"device": _device_name(), "workers": workers, "wall_s": 0.0}
    summary.setdefault("sessions", []).append(session)
    began = time.monotonic()

    def save(cpu: float) -> None:
        summary["cpu_seconds"] = round(summary["cpu_seconds"] + cpu, 1)
        session["wall_s"] = round(time.monotonic() - began, 1)
        store.write_text(json.dumps(summary, indent=1))

    return save, began


def store_callbacks(summary: dict, save, metric: str):
    """``execute``'s ``prepare`` and ``done`` for a store: a fine-tuning run learns where its pretraining is when it
    starts; each finished pretraining or run goes into ``summary`` and ``save(cpu_seconds)`` is called at once."""

    def prepare(task: dict) -> dict:
        if task["key"].startswith("pretrain/"):
            return task["job"]
        return {**task["job"], "pretrained": summary["pretraining"].get(task["job"]["arm"])}

    def done(task: dict, result: dict, cpu: float) -> None:
        if task["key"].startswith("pretrain/"):
            summary["pretraining"][result["arm"]] = result
            print(f"pretrained {result['arm']}: {result['iterations']} iterations, {result['seconds']} s, "
                  f"{result['cpu_seconds']} CPU s, validation {result.get('validation', {})}", flush=True)
        else:
            summary["runs"][task["key"]] = result
            print(f"{task['key']}: {metric} {result[metric]:.3f} ({result['train_s']} s, "
                  f"{result['train_cpu_s']} CPU s)", flush=True)
        save(cpu)

    return prepare, done


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/few_shot")
    parser.add_argument("--results", default=None, help="markdown file to write the tables into")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--shots", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--iterations", type=int, default=200, help="fine-tuning iterations (batch 4)")
    add_population_arguments(parser, downstream_count=80)
    parser.add_argument("--val_interval", type=int, default=None,
                        help="validate every this many fine-tuning iterations (a curve; default: once, at the end)")
    parser.add_argument("--mode", default="full", choices=["full", "frozen", "warmup"])
    parser.add_argument("--backbone_lr", type=float, default=None,
                        help="fine-tuning learning rate of the backbone (default: the bundle's demo value)")
    parser.add_argument("--head_lr", type=float, default=None,
                        help="fine-tuning learning rate of the decoder and head (default: the bundle's demo value)")
    parser.add_argument("--decoder_channels", type=int, nargs=2, default=None, metavar=("SEG", "PSP"),
                        help="fine-tune with a UperNet decoder of these widths (default: the bundle's demo 32 64); other "
                             "widths leave most of the pretrained decoder out (its PSP pooling branches still load)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--store", default=str(Path(__file__).resolve().parent / "results" / "few_shot.json"),
                        help="the runs' results (JSON, resumable; outside --out so losing run folders loses no result)")
    parser.add_argument("--report_only", action="store_true", help="rewrite --results from --store")
    parser.add_argument("--pretrained_from", default=None,
                        help="another store whose pretrainings to fine-tune from (same pretraining settings), e.g. "
                             "the same start points fine-tuned with another --mode")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time, each in its own process (a GPU machine with many cores: 8-16)")
    parser.add_argument("--budget_s", type=float, default=None,
                        help="start no run after this many wall seconds (finished runs are kept; run again to go on)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    store = Path(args.store).resolve()
    summary = json.loads(store.read_text()) if store.exists() else {"pretraining": {}, "runs": {}, "cpu_seconds": 0.0}
    if not args.report_only:
        import torch

        torch.set_num_threads(args.threads)  # one thread: on a shared 2-core machine two spin and wait
        claim_store(summary, store, args, ("decoder_channels",), "python bench/few_shot.py", argv)
        out.mkdir(parents=True, exist_ok=True)
        forget_lost_pretrainings(summary, job_order(args.seeds, args.shots, args.arms))
        save, began = session_saver(summary, store, args.jobs)

        data, t = _timed(build_data, out, args)
        save(t)
        specs = pretrain_specs(data, out, args.pretrain_cycles, args.size, task_lr_scale=args.task_lr_scale)
        finetune_settings = {"iterations": args.iterations, "val_interval": args.val_interval or args.iterations,
                             "mode": args.mode,
                             **{k: getattr(args, k) for k in ("backbone_lr", "head_lr") if getattr(args, k) is not None},
                             **decoder_settings(args.decoder_channels),
                             **backbone_settings(args.size)}
        tasks, queued = [], set()
        for arm, shots, seed in job_order(args.seeds, args.shots, args.arms):
            if f"{arm}/{shots}/{seed}" not in summary["runs"]:
                if arm in PRETRAINED and arm not in summary["pretraining"] and arm not in queued:
                    queued.add(arm)  # each pretraining just before its first fine-tuning
                    tasks.append({"key": f"pretrain/{arm}", "fn": pretrain, "job": specs[arm], "after": None})
                job = {"arm": arm, "shots": shots, "seed": seed, "datalist": data["seg"], "settings": finetune_settings,
                       "pretrained": None, "root": str(out / "finetune" / f"{arm}_n{shots}_s{seed}")}
                tasks.append({"key": f"{arm}/{shots}/{seed}", "fn": monai_unet if arm == "monai_unet" else finetune,
                              "job": job, "after": f"pretrain/{arm}" if arm in PRETRAINED else None})

        deadline = None if args.budget_s is None else began + args.budget_s
        failed = execute(tasks, args.jobs, args.threads, deadline, *store_callbacks(summary, save, "dice_fx"),
                         finished={f"pretrain/{a}" for a in summary["pretraining"]})
    runs = list(summary["runs"].values())
    tables = {"seg": table(runs), "paired": paired(runs), "equal_cpu": equal_cpu(runs)}
    print(tables["seg"], tables["paired"], tables["equal_cpu"], f"CPU {summary['cpu_seconds'] / 3600:.2f} h", sep="\n\n")
    if args.results:
        write_report(Path(args.results), summary, tables)
    if not args.report_only and failed:
        raise SystemExit(f"{len(failed)} run(s) failed: {', '.join(failed)} (their logs are under {out})")


def _sessions(summary: dict) -> str:
    """Where the runs were made: "; sessions: NVIDIA H200, 12 runs at a time, 9.0 min wall; ..." (none recorded
    before the store kept them: then the shared 2-core machine, one run at a time)."""
    parts = [f"{s['device']}, {s['workers']} run(s) at a time, {s['wall_s'] / 60:.1f} min wall"
             for s in summary.get("sessions", [])]
    return "; sessions: " + "; ".join(parts) if parts else ""


BEGIN, END = "<!-- few_shot.py: begin (generated) -->", "<!-- few_shot.py: end -->"


def pretraining_command(summary: dict, arm: str) -> str:
    """``arm``'s pretraining as a shell command, repository-relative, with the store's per-task rates where its
    recorded call predates passing them (it ran with the demo config's of its day, which the store says)."""
    call = summary["pretraining"][arm]["call"]
    scale = summary["settings"].get("task_lr_scale")
    if scale is not None and "task_lr_scale" not in call["overrides"]:
        call = {**call, "overrides": {**call["overrides"], "task_lr_scale": scale}}
    return repo_relative(command(call))


def pretraining_rates(settings: dict) -> str:
    """" Pretraining learning rate per task: cls × 0.1, ..." (or "one rate for every task") for a report's settings
    sentence; "" where the store does not say."""
    scale = settings.get("task_lr_scale")
    if scale is None:
        return ""
    text = ", ".join(f"{task} × {v:g}" for task, v in sorted(scale.items())) or "one rate for every task"
    return f" Pretraining learning rate per task (`task_lr_scale`): {text}."


def _ssl_part(arm: str, done: dict) -> str:
    """" (3 DiRA epochs, then 4 cycles)" for an SSL arm's pretraining record, "" for the others."""
    if arm not in SSL_ARMS:
        return ""
    recipe = {"dira": "DiRA", "adam_v2": "Adam-v2"}[SSL_ARMS[arm][0]]
    overrides = done["call"]["overrides"]
    ssl, cycles = overrides["ssl_warmup_epochs"], overrides["epochs"] - overrides["ssl_warmup_epochs"]
    return f" ({ssl} {recipe} epoch(s) of one cycle's length" + (f", then {cycles} cycles)" if cycles else ")")


def write_report(path: Path, summary: dict, tables: dict) -> None:
    """Put the generated part (command, budget, tables, example bundle commands) between the markers of
    ``path``, keeping any hand-written text around them. Paths are shown relative to the repository."""
    s, pre, runs = summary["settings"], summary["pretraining"], list(summary["runs"].values())

    rel = repo_relative

    lines = [BEGIN, "", *reproduce_lines(summary), "",
             f"Spent so far: {summary['cpu_seconds'] / 3600:.2f} CPU-hours (data, pretraining, fine-tuning){_sessions(summary)}."
             f" Populations: pretraining seed {s['pretrain_seed']} ({s['pretrain_count']} images per "
             f"dataset), downstream seed {s['downstream_seed']} ({s['downstream_count']} images), disjoint patients, "
             f"rendered at {s['phantom_size']} px. Pretraining and fine-tuning at {s['size']} px, demo backbone; "
             f"fine-tuning mode `{s['mode']}`, {s['iterations']} iterations of batch {COMMON['batch_size']} in every "
             "arm." + pretraining_rates(s), "",
             "Pretraining ((b)-(e): the same iterations; the SSL arms: about (c)'s CPU time):", ""]
    for arm in PRETRAINED:
        if arm in pre:
            lines.append(f"- {ARMS[arm]}: {pre[arm]['iterations']} iterations{_ssl_part(arm, pre[arm])}, "
                         f"{pre[arm]['seconds'] / 60:.1f} min wall, {pre[arm]['cpu_seconds'] / 60:.1f} CPU-min, "
                         f"fine-tuned from its {pre[arm]['key']}")
    lines += ["", f"### Segmentation: test Dice (`dice_fx`), 5 organs, {s['size']} px", "",
              "Mean ± sample standard deviation over seeds (number of seeds in brackets); each seed draws its own "
              "training images and training randomness, the same in every arm.", "", tables["seg"], "",
              "Paired over seeds (declared before the runs; exact two-sided Wilcoxon signed-rank test):", "",
              tables["paired"], "", "(c) against (f) at equal training CPU time:", "", tables["equal_cpu"], ""]
    example = next((r for r in runs if r["arm"] == "foundation_x" and "calls" in r), None)
    if example:
        lines += ["One fine-tuning run of (c) and its pretraining, as shell commands (the script runs the same "
                  "bundles in-process):", "", "```bash", *(rel(command(c)) for c in example["calls"]),
                  pretraining_command(summary, "foundation_x"), "```", ""]
    lines.append(END)
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + "\n".join(lines) + text[text.index(END) + len(END):]
    else:
        text = (text or "# Results\n\n") + "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    main()
