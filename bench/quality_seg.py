"""Segmentation quality: finetune_seg's network against the one a user would pick instead, on the phantom's organs.

Arms, trained from scratch on the same images with the same pipeline (``cxrfx.data.multitask.build_sources``:
the seg chain of ``cxrfx.data.pipelines`` — resize to ``--size``, small affine jitter, contrast, noise; no flips),
the same batch (8, ``configs/train.json``'s), iterations, Dice + BCE loss (``cxrfx.engines.losses.DiceBCELoss``),
AdamW (weight decay 1e-4), warm-up (1/20) + cosine and gradient clipping at 1:

- ``upernet``: ``bundles/finetune_seg`` as it stands (``configs/train.json`` + ``configs/demo.json``'s backbone:
  Swin embed 32, depths 2/2/2/2, convolutional stem, window ``size // 32``; UperNet 32 / PSP 64): its
  ``network``, ``schedule``, ``train#optimizer`` and ``train#lr_scheduler`` parsed from the bundle, trained by the
  components its ``train#trainer`` wires (``MultiTaskTrainer`` + ``LockReleaseHandler`` in the default ``warmup``
  mode — the new head alone for the first 20 % of the iterations, then everything; clipping 1, no AMP); the
  bundle's learning rates (backbone 3e-4, decoder + head 1e-3, demo.json's: the small backbone from scratch).
- ``unetpp``: the same with the UNet++ head (``network_def#head_types = {"seg": "unetpp"}``, 32 channels at stride
  4, deep supervision; evaluation averages the three outputs).
- ``monai_unet``: ``monai.networks.nets.UNet(spatial_dims=2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
  num_res_units=2, norm="batch")`` — the configuration of MONAI's spleen tutorial and ``spleen_ct_segmentation``
  bundle, the UNet a MONAI user starts from — in a plain loop with the same loaders, loss and schedule; AdamW
  ``--unet-lr`` on every parameter from the first iteration (no warm-up mode: it has no pretrained part). Its
  default, 3e-3, was picked on the validation split among 3e-4, 1e-3, 3e-3 and 1e-2 (1e-3, MONAI's usual, leaves
  the clavicles unlearnt at 400 iterations).

Variants (``--set KEY=JSON`` bundle overrides for the finetune_seg arms, or another ``--unet-lr``) are stored apart
under ``"variants"`` and reported in a settings table beside the defaults.

Evaluation of the last iterate (nothing selects a model) on the validation and test splits, sigmoid > 0.5:
``dice_fx`` and ``dice_global`` (``cxrfx.metrics``) per class and their mean over the organs, and HD95 in pixels of
the ``--size`` grid (``monai.metrics.compute_hausdorff_distance``, percentile 95) over the image-class pairs where
both masks are non-empty (pairs with an empty prediction are counted apart, as ``missed``). Also parameters,
process CPU seconds per iteration and wall iterations per second.

Every finished (arm, iterations, seed) is stored in ``--results`` at once, so a cut run resumes where it stopped.
The arms are compared at equal iterations. ``--device cuda --workers N`` trains on a GPU with N loader processes
(the stored runs were made so, on one H200); each run records its device and whether other runs shared the
machine (``--concurrent``), and only runs that had it alone fill the speed columns. On CPU the per-iteration
figures of a shared machine say only roughly what an iteration costs (CPU time counts threads' waiting when the
cores are oversubscribed). A run to be left out goes under ``"excluded"`` in the results file with its reason; it
is listed beside the table and run again. Every invocation ends by writing the tables into docs/results.md and
bundles/finetune_seg/docs/README.md between this script's markers (``--report-only``: from the stored runs alone,
without building the data).

    nice -n 19 python bench/quality_seg.py --threads 1        # resumes; ~10 min per run on one busy CPU core
    python bench/quality_seg.py --device cuda --workers 4      # the stored runs: ~25 s per run on an H200
    python bench/quality_seg.py --device cuda --arms upernet unetpp --set backbone_lr=1e-3 head_lr=3e-3
    python bench/quality_seg.py --report-only                  # tables from the stored runs
    python bench/quality_seg.py --quick --data /tmp/qs --results /tmp/qs.json --doc /tmp/r.md --readme /tmp/R.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUNDLE = ROOT / "bundles" / "finetune_seg"
sys.path.insert(0, str(HERE))

from common import MONAI_UNET_LR as UNET_LR  # noqa: E402
from common import mean_std as _ms  # noqa: E402
from common import write_between  # noqa: E402

CLASSES = ["lung_left", "lung_right", "heart", "clavicle_left", "clavicle_right"]
SHORT = {"lung_left": "L lung", "lung_right": "R lung", "heart": "heart", "clavicle_left": "L clav.",
         "clavicle_right": "R clav."}
BEGIN, END = "<!-- quality_seg.py: begin (generated) -->", "<!-- quality_seg.py: end -->"
README_BEGIN = "<!-- quality_seg.py: performance (generated) -->"
README_END = "<!-- quality_seg.py: performance end -->"
ARMS = ["upernet", "unetpp", "monai_unet"]
ARM_TEXT = {"upernet": "finetune_seg default (Swin demo backbone + UperNet)",
            "unetpp": "finetune_seg + UNet++ head", "monai_unet": "MONAI UNet (spleen-bundle config)"}


def build_data(out: Path, count: int, size: int, seed: int) -> str:
    """The phantom's segmentation dataset (synthetic patients) and its 5-organ datalist (as finetune_seg makes it)."""
    from cxrfx.data.few_shot import few_shot_datalist
    from cxrfx.data.phantom.writer import generate_phantom

    generate_phantom(str(out), count=count, size=size, seed=seed, datasets=("phantom_seg",), verbose=False)
    # written aside, then moved in place: runs started side by side on the same --data never read half a file
    part = few_shot_datalist(out / "phantom_seg" / "datalist.json", out / f"organs_datalist.{os.getpid()}.json",
                             shots=None, seg_classes=CLASSES, name="organs")
    final = out / "organs_datalist.json"
    os.replace(part, final)
    selection = Path(str(part)[:-len(".json")] + ".selection.json")
    if selection.exists():
        os.replace(selection, out / "organs_datalist.selection.json")
    return str(final)


def bundle_parser(size: int, batch: int, iterations: int, seed: int, workdir: str, head: str, device: str = "cpu",
                  overrides: dict | None = None):
    """finetune_seg's configs (train.json + demo.json) with this benchmark's size, batch, iterations and head.

    Only the bundle's settings are read from it (``network``, ``schedule``, ``train#optimizer``,
    ``train#lr_scheduler``); the loaders are built here, the same for every arm.
    """
    from monai.bundle import ConfigParser

    configs = BUNDLE / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "demo.json")])
    parser.update({"bundle_root": str(BUNDLE), "output_dir": workdir, "ckpt_dir": os.path.join(workdir, "models"),
                   "image_size": size, "batch_size": batch, "iterations": iterations, "seed": seed,
                   "device": f"$torch.device('{device}')", "backbone_kwargs#window_size": size // 32})
    if head != "upernet":  # the bundle's head_type setting where it has one
        parser.update({"head_type": head} if parser.get("head_type") else {"network_def#head_types": {"seg": head}})
    parser.update(dict(overrides or {}))
    return parser


def train_loader(datalist: str, size: int, batch: int, seed: int, workers: int = 0):
    """The training loader every arm reads: the seg pipeline with augmentation, images cached in memory (the
    augmentation of each sample is seeded by the sampler, so ``workers`` does not change what is read)."""
    from cxrfx.data.multitask import build_sources

    return build_sources({"organs": {"datalist": datalist, "tasks": ["seg"]}}, "training", size, batch, train=True,
                         seed=seed, cache_rate=1.0, num_workers=workers)


def monai_unet():
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=len(CLASSES), channels=(16, 32, 64, 128, 256),
                strides=(2, 2, 2, 2), num_res_units=2, norm="batch")


def resolution_ceiling(datalist: str, size: int, stride: int = 4) -> dict:
    """Test-split Dice of a perfect stride-``stride`` output: the masks averaged over ``stride``² blocks, upsampled
    bilinearly to ``size`` (the decoders' output path) and thresholded at 0.5, against the masks themselves."""
    from torch.nn.functional import avg_pool2d, interpolate

    from cxrfx.data.multitask import build_sources
    from cxrfx.metrics import dice_per_image

    loader = build_sources({"organs": {"datalist": datalist, "tasks": ["seg"]}}, "test", size, 8,
                           train=False)["seg/organs"]
    masks = torch.cat([b["mask"].float() for b in loader])
    up = interpolate(avg_pool2d(masks, stride), size=masks.shape[-2:], mode="bilinear", align_corners=False)
    scores = dice_per_image(up.clamp(0, 1), masks)
    return {"stride": stride, "dice_fx": float(scores.mean()),
            "per_class": {c: float(scores[:, i].mean()) for i, c in enumerate(CLASSES)}}


def step_costs(size: int, batch: int, rounds: int) -> dict:
    """Median CPU seconds of one training step per arm (forward, the arm's loss, backward, AdamW) on one fixed random
    batch, on one thread (``time.thread_time``: other jobs on the machine do not inflate it, and a single thread
    does not spin-wait), the arms timed in alternating rounds after one warm-up step each."""
    from cxrfx.engines.losses import DiceBCELoss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(batch, 1, size, size, generator=gen)
        y = (torch.rand(batch, len(CLASSES), size, size, generator=gen) > 0.5).float()
        steps = {}
        for arm in ARMS:
            if arm == "monai_unet":
                net, loss_fn = monai_unet(), DiceBCELoss()
                loss = (lambda n, f: lambda: f(n(x), y))(net, loss_fn)
            else:
                with tempfile.TemporaryDirectory() as workdir:
                    net = bundle_parser(size, batch, 10, 0, workdir, arm).get_parsed_content("network_def")
                criterion = net.head_type("seg").criterion(net, net.default_head)
                loss = (lambda n, c: lambda: c(n(x), x, {"mask": y}))(net, criterion)
            optimizer = torch.optim.AdamW(net.parameters(), 1e-4)

            def step(loss=loss, optimizer=optimizer, net=net):
                net.train()
                optimizer.zero_grad(set_to_none=True)
                loss().backward()
                optimizer.step()
            steps[arm] = step
        times: dict[str, list[float]] = {arm: [] for arm in ARMS}
        for r in range(rounds + 1):
            for arm, step in steps.items():
                start = time.thread_time()
                step()
                if r:  # round 0 warms up
                    times[arm].append(time.thread_time() - start)
    finally:
        torch.set_num_threads(threads)
    return {"size": size, "batch": batch, "rounds": rounds, "threads": 1,
            "cpu_s": {arm: round(statistics.median(t), 2) for arm, t in times.items()},
            "load_average": round(os.getloadavg()[0], 2)}


def n_params(net: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in net.parameters()))


def train(arm: str, datalist: str, size: int, batch: int, seed: int, iterations: int, unet_lr: float,
          device: str = "cpu", workers: int = 0, overrides: dict | None = None) -> dict:
    """Train one arm from scratch for ``iterations``; returns its timings and held-out scores."""
    from monai.utils import set_determinism

    set_determinism(seed=seed)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as workdir:
        losses: list[float] = []
        if arm in ("upernet", "unetpp"):
            from ignite.engine import Events
            from monai.handlers import LrScheduleHandler

            from cxrfx.engines import LockReleaseHandler, MultiTaskTrainer

            # the bundle's train#trainer, built from the same cxrfx components with the bundle's settings
            parser = bundle_parser(size, batch, iterations, seed, workdir, arm, device, overrides)
            net = parser.get_parsed_content("network")
            optimizer = parser.get_parsed_content("train#optimizer")
            lr_scheduler = parser.get_parsed_content("train#lr_scheduler")
            lock_release = LockReleaseHandler(parser.get_parsed_content("schedule"),
                                              train_loader(datalist, size, batch, seed, workers), net)
            trainer = MultiTaskTrainer(device=torch.device(device), max_epochs=1, network=net, optimizer=optimizer,
                                       lock_release=lock_release, clip_grad_norm=1.0, amp=False, nonfinite="skip",
                                       train_handlers=[LrScheduleHandler(lr_scheduler, print_lr=False,
                                                                         epoch_level=False)])
            trainer.add_event_handler(Events.ITERATION_COMPLETED,
                                      lambda e: losses.append(float(e.state.output["loss"])))
            params = {"total": n_params(net), "backbone": n_params(net.backbone)}
            cpu0, wall0 = time.process_time(), time.perf_counter()
            trainer.run()
            done = trainer.state.iteration
        else:
            from monai.optimizers import WarmupCosineSchedule

            from cxrfx.engines.losses import DiceBCELoss

            net = monai_unet().to(device)
            params = {"total": n_params(net), "backbone": 0}
            loader = train_loader(datalist, size, batch, seed, workers)["seg/organs"]
            optimizer = torch.optim.AdamW(net.parameters(), unet_lr, weight_decay=1e-4)
            schedule = WarmupCosineSchedule(optimizer, warmup_steps=max(1, iterations // 20), t_total=iterations)
            loss_fn = DiceBCELoss()
            cpu0, wall0, done, epoch = time.process_time(), time.perf_counter(), 0, 0
            while done < iterations:
                loader.sampler.set_epoch(epoch)
                for b in loader:
                    net.train()
                    loss = loss_fn(net(b["image"].to(device)), b["mask"].to(device).float())
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                    optimizer.step()
                    schedule.step()
                    losses.append(float(loss.detach()))
                    done += 1
                    if done >= iterations:
                        break
                epoch += 1
        cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
        result = {"iterations": done, "params": params, "train_cpu_s": round(cpu_s, 1),
                  "train_wall_s": round(wall_s, 1), "cpu_s_per_it": round(cpu_s / max(done, 1), 3),
                  "it_per_s_wall": round(done / max(wall_s, 1e-9), 3),
                  "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                  "device": torch.cuda.get_device_name(0) if str(device).startswith("cuda") else "cpu",
                  "workers": workers, "threads": torch.get_num_threads(),
                  "final_loss": round(float(np.mean(losses[-20:])), 4) if losses else float("nan")}
        for split in ("validation", "test"):
            result[split] = evaluate(net, datalist, split, size, batch, device)
    return result


def evaluate(net, datalist: str, split: str, size: int, batch: int, device: str = "cpu") -> dict:
    from monai.metrics import compute_hausdorff_distance

    from cxrfx.data.multitask import build_sources
    from cxrfx.metrics import dice_global, dice_per_image

    loader = build_sources({"organs": {"datalist": datalist, "tasks": ["seg"]}}, split, size, batch,
                           train=False)["seg/organs"]
    probs, masks = [], []
    net.eval()
    with torch.no_grad():
        for b in loader:
            probs.append(torch.sigmoid(net(b["image"].to(device))).float().cpu())
            masks.append(b["mask"].float())
    p, t = torch.cat(probs), torch.cat(masks)
    per_image = dice_per_image(p, t)  # (N, C), empty / empty = 1 (dice_fx's convention)
    pred, gt = (p > 0.5).float(), (t > 0.5).float()
    both = (pred.flatten(2).sum(-1) > 0) & (gt.flatten(2).sum(-1) > 0)
    missed = (pred.flatten(2).sum(-1) == 0) & (gt.flatten(2).sum(-1) > 0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about the empty masks excluded below
        hd = compute_hausdorff_distance(pred, gt, include_background=True, percentile=95).numpy()
    hd = np.where(both.numpy(), hd, np.nan)
    r = {"images": int(p.shape[0]), "dice_fx": float(per_image.mean()),
         "dice_global": float(np.mean([dice_global(p[:, [c]], t[:, [c]]) for c in range(p.shape[1])])),
         "hd95": float(np.nanmean(hd)) if np.isfinite(hd).any() else float("nan"),
         "missed": int(missed.sum()), "per_class": {}}
    for c, name in enumerate(CLASSES):
        col = hd[:, c]
        r["per_class"][name] = {"dice_fx": float(per_image[:, c].mean()),
                                "dice_global": dice_global(p[:, [c]], t[:, [c]]),
                                "hd95": float(np.nanmean(col)) if np.isfinite(col).any() else float("nan"),
                                "missed": int(missed[:, c].sum())}
    return r


# -------------------------------------------------------------------------------------------- report

def where(results: dict) -> str:
    """The machines the stored runs trained on, in words."""
    kinds = sorted({(r.get("device", "cpu"), bool(r.get("concurrent"))) for r in results.values()})
    words = []
    for device, concurrent in kinds:
        n = sum(r.get("device", "cpu") == device and bool(r.get("concurrent")) == concurrent for r in results.values())
        text = f"{n} runs on one {device} GPU" if device != "cpu" else f"{n} runs on CPU cores shared with other jobs"
        words.append(text + (", 2 to 6 runs of this script side by side" if concurrent else ", alone"))
    return "; ".join(words) or "nothing yet"


def _speed(runs: list[dict], key: str) -> str:
    """Mean over the runs that had the machine alone (a variant's settings do not change an iteration's cost)."""
    alone = [r[key] for r in runs if not r.get("concurrent")]
    return f"{statistics.mean(alone):.2f}" if alone else "—"


def _runs(results: dict, arm: str, iterations: int) -> list[dict]:
    return [r for r in results.values() if r["arm"] == arm and r["iterations_budget"] == iterations]


def variants_report(results: dict, variants: dict) -> list[str]:
    """Settings next to the defaults (learning rates, mode, longer runs): validation and test scores per group."""
    groups: dict = {}
    for r in [*results.values(), *variants.values()]:
        groups.setdefault((r["iterations_budget"], ARMS.index(r["arm"]), r.get("variant") or "default"), []).append(r)
    lines = ["**Settings next to the defaults** (the default rows repeat the tables above; a MONAI UNet learning rate "
             "is picked on the validation split)", "",
             "| iterations | arm | setting | n | val dice_fx | test dice_fx | test clavicles dice_fx | "
             "test HD95 (px) |",
             "|---|---|---|---|---|---|---|---|"]
    for (it, arm, variant), runs in sorted(groups.items()):
        name = ARMS[arm]
        if variant == "default" and name == "monai_unet":
            variant = f"default (unet_lr={runs[0].get('settings', {}).get('unet_lr', UNET_LR):g})"
        clav = [statistics.mean(r["test"]["per_class"][c]["dice_fx"] for c in CLASSES if c.startswith("clavicle"))
                for r in runs]
        lines.append(f"| {it} | {name} | {variant} | {len(runs)} | {_ms([r['validation']['dice_fx'] for r in runs])} | "
                     f"{_ms([r['test']['dice_fx'] for r in runs])} | {_ms(clav)} | "
                     f"{_ms([r['test']['hd95'] for r in runs], 1)} |")
    return lines + [""]


def check_report(results: dict, checks: dict) -> list[str]:
    """One line: each re-run next to the stored run with the same key (test dice_fx, where each ran)."""
    pairs = [f"{key} {r['test']['dice_fx']:.3f} on {_device(r)} vs {results[key]['test']['dice_fx']:.3f} on "
             f"{_device(results[key])}" for key, r in sorted(checks.items()) if key in results]
    return ["Same runs on another machine (test `dice_fx`): " + "; ".join(pairs) + ".", ""] if pairs else []


def _device(r: dict) -> str:
    return r.get("device", "cpu") if r.get("device", "cpu") != "cpu" else f"CPU ({r.get('threads', 2)} thread(s))"


def report(results: dict, meta: dict, excluded: dict | None = None, variants: dict | None = None,
           step_cost: dict | None = None, checks: dict | None = None) -> tuple[str, str]:
    """(the docs/results.md section, the finetune_seg README table)."""
    # a budget gets the arm tables once every arm has a run at it (the others are in the settings table)
    budgets = sorted(it for it in {r["iterations_budget"] for r in results.values()}
                     if all(_runs(results, arm, it) for arm in ARMS))
    same_cost = {**results, **(variants or {})}
    lines = [BEGIN, "", f"Phantom `phantom_seg` seed {meta['phantom_seed']}, {meta['count']} images (synthetic "
             f"patients; {meta['splits']['training']} training / {meta['splits']['validation']} validation / "
             f"{meta['splits']['test']} test) rendered at {meta['phantom_size']} px, resized to {meta['size']} × "
             f"{meta['size']}; generator version {meta['generator_version']}. Organs: " + ", ".join(CLASSES) +
             f". Batch {meta['batch']}, trained from scratch, last iterate scored. mean ± std over seeds; `n` = seeds "
             f"run. Trained on: {where(same_cost)} (settings table included). Speed columns (training only, the "
             "in-memory cache filled before): runs that had the machine to themselves; `CPU s / it` is this "
             "process's CPU time (all threads, not the loader workers'). The arms are compared at equal iterations.",
             "", "Reproduce: `python bench/quality_seg.py --device cuda --workers 4` (resumes; on CPU `--threads 1` "
             "instead: about 10 minutes per run on one core of a busy machine); settings: `--arms monai_unet "
             "--unet-lr 1e-3`, `--arms upernet unetpp --set backbone_lr=1e-3 head_lr=3e-3` or `--set "
             "'mode=\"full\"'`, `--iterations 1200 --seeds 0`; CPU check: `--check --threads 1 --seeds 0 --arms "
             "monai_unet upernet`; `--report-only` rewrites this.", ""]
    for it in budgets:
        lines += [f"**Budget: {it} iterations** (test split; validation `dice_fx` in the last column)", "",
                  "| arm | n | parameters (M) | CPU s / it | wall it / s | dice_fx | dice_global | HD95 (px) | "
                  "missed masks | final loss | val dice_fx |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for arm in ARMS:
            runs = _runs(results, arm, it)
            if not runs:
                continue
            lines.append(
                f"| {arm} | {len(runs)} | {runs[0]['params']['total'] / 1e6:.2f} | "
                f"{_speed(_runs(same_cost, arm, it), 'cpu_s_per_it')} | "
                f"{_speed(_runs(same_cost, arm, it), 'it_per_s_wall')} | "
                f"{_ms([r['test']['dice_fx'] for r in runs])} | {_ms([r['test']['dice_global'] for r in runs])} | "
                f"{_ms([r['test']['hd95'] for r in runs], 1)} | "
                f"{statistics.mean(r['test']['missed'] for r in runs):.1f} | "
                f"{_ms([r['final_loss'] for r in runs])} | {_ms([r['validation']['dice_fx'] for r in runs])} |")
        lines += ["", "Per organ, test split: `dice_fx` / HD95 (px)", "",
                  "| arm | " + " | ".join(SHORT[c] for c in CLASSES) + " |", "|---|" + "---|" * len(CLASSES)]
        for arm in ARMS:
            runs = _runs(results, arm, it)
            if runs:
                lines.append(f"| {arm} | " + " | ".join(
                    f"{_ms([r['test']['per_class'][c]['dice_fx'] for r in runs])} / "
                    f"{_ms([r['test']['per_class'][c]['hd95'] for r in runs], 1)}" for c in CLASSES) + " |")
        ceiling = meta.get("ceiling")
        if ceiling:
            lines += ["", f"A perfect stride-{ceiling['stride']} output (the test masks averaged over "
                      f"{ceiling['stride']} × {ceiling['stride']} blocks, upsampled bilinearly as the UperNet and "
                      f"UNet++ outputs are, thresholded at 0.5) scores `dice_fx` {ceiling['dice_fx']:.3f} ("
                      + ", ".join(f"{SHORT[c]} {v:.3f}" for c, v in ceiling["per_class"].items()) + ")."]
        cost = step_cost
        if cost:
            lines += ["", f"One training step on CPU (batch {cost['batch']}, {cost['size']} px, one thread, thread CPU "
                      f"time, median of {cost['rounds']} alternating rounds; load average {cost['load_average']}): "
                      + ", ".join(f"{arm} {cost['cpu_s'][arm]:.2f} s" for arm in ARMS if arm in cost["cpu_s"]) + "."]
        per_seed = []
        for seed in sorted({r["seed"] for r in results.values()}):
            got = {arm: results.get(f"{arm}/{it}/{seed}") for arm in ARMS}
            if sum(v is not None for v in got.values()) >= 2:
                per_seed.append(f"seed {seed}: " + ", ".join(f"{arm} {v['test']['dice_fx']:.3f}"
                                                             for arm, v in got.items() if v))
        if per_seed:
            lines += ["", "Test `dice_fx` per seed (paired: same images, same augmentation order): "
                      + "; ".join(per_seed) + "."]
        lines.append("")
    if variants:
        lines += variants_report(results, variants)
    if checks:
        lines += check_report(results, checks)
    for key, r in (excluded or {}).items():
        lines += [f"Left out of the table: `{key}` (test dice_fx {r['test']['dice_fx']:.3f}): {r['reason']}", ""]
    lines.append(END)

    shown = {k: r for k, r in results.items() if r["iterations_budget"] in budgets}
    table = [README_BEGIN, "", f"Phantom organs, {meta['splits']['training']} training images of synthetic patients, "
             f"{meta['size']} px, batch {meta['batch']}; test split ({meta['splits']['test']} images), mean ± std over "
             f"seeds (`bench/quality_seg.py`; {where(shown)}):", "",
             "| network | iterations | n | parameters (M) | test dice_fx | test dice_global | HD95 (px) |",
             "|---|---|---|---|---|---|---|"]
    for it in budgets:
        for arm in ARMS:
            runs = _runs(results, arm, it)
            if runs:
                table.append(f"| {ARM_TEXT[arm]} | {it} | {len(runs)} | {runs[0]['params']['total'] / 1e6:.2f} | "
                             f"{_ms([r['test']['dice_fx'] for r in runs])} | "
                             f"{_ms([r['test']['dice_global'] for r in runs])} | "
                             f"{_ms([r['test']['hd95'] for r in runs], 1)} |")
    table += ["", README_END]
    return "\n".join(lines), "\n".join(table)


def publish(stored: dict, doc: Path, readme: Path) -> None:
    """Both generated sections from the stored runs."""
    doc_text, readme_text = report(stored["runs"], stored["meta"], stored.get("excluded"), stored.get("variants"),
                                   stored.get("step_cost"), stored.get("device_check"))
    write_between(doc, doc_text, BEGIN, END, "# Segmentation quality (`bench/quality_seg.py`)")
    write_between(readme, readme_text, README_BEGIN, README_END, "### Against MONAI's UNet")
    print(doc_text)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.expanduser("~/.cache/cxrfx/bench/quality_seg"))
    ap.add_argument("--count", type=int, default=264)
    ap.add_argument("--phantom-size", type=int, default=256)
    ap.add_argument("--phantom-seed", type=int, default=1016)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--unet-lr", type=float, default=UNET_LR)
    ap.add_argument("--results", default=str(HERE / "results" / "quality_seg.json"))
    ap.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    ap.add_argument("--readme", default=str(BUNDLE / "docs" / "README.md"))
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]; the runs record where they ran")
    ap.add_argument("--workers", type=int, default=0, help="data-loader worker processes (augmentation)")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (on cores shared with other jobs 1 is faster: threads spin-wait for each "
                         "other)")
    ap.add_argument("--concurrent", action="store_true",
                    help="mark the runs as sharing the machine with other runs of this script: their times are "
                         "kept out of the speed columns")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=JSON",
                    help="bundle overrides for the finetune_seg arms (e.g. backbone_lr=1e-3 mode='\"full\"'); "
                         "with --set or a --unet-lr other than the default the runs are a variant, stored apart")
    ap.add_argument("--step-cost", type=int, default=0, metavar="ROUNDS",
                    help="also time one training step per arm on one CPU thread, median of ROUNDS rounds (stored)")
    ap.add_argument("--check", action="store_true",
                    help="store the (default-setting) runs under 'device_check': the same runs on another device or "
                         "thread count, each compared with its stored counterpart in a line of the report")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 6 images at 64 px, 64 px input, batch 2, 2 iterations, seed 0 (overrides those)")
    a = ap.parse_args(argv)
    if a.quick:
        a.count, a.phantom_size, a.size, a.batch, a.iterations, a.seeds = 6, 64, 64, 2, 2, [0]
    torch.set_num_threads(a.threads)
    results_path = Path(a.results)
    stored = json.loads(results_path.read_text()) if results_path.exists() else {"meta": {}, "runs": {}}
    if a.report_only and stored["meta"]:
        return publish(stored, Path(a.doc), Path(a.readme))
    datalist = build_data(Path(a.data), a.count, a.phantom_size, a.phantom_seed)
    items = json.load(open(datalist))
    meta = {"phantom_seed": a.phantom_seed, "count": a.count, "phantom_size": a.phantom_size, "size": a.size,
            "batch": a.batch,
            "splits": {s: len(items[s]) for s in ("training", "validation", "test")},
            "generator_version": json.load(open(Path(a.data) / "phantom.json"))["params"]["generator_version"]}
    same = ("phantom_seed", "count", "phantom_size", "size", "batch", "generator_version")
    if stored["meta"] and {k: stored["meta"].get(k) for k in same} != {k: meta[k] for k in same}:
        print("stored runs are of another setting: starting afresh")
        stored = {"meta": {}, "runs": {}}
    meta["ceiling"] = resolution_ceiling(datalist, a.size)
    stored["meta"] = meta
    for key in stored.get("excluded", {}):
        stored["runs"].pop(key, None)  # set aside with its reason: run it again
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in a.set)}
    variant = ",".join([f"unet_lr={a.unet_lr:g}"] * (a.unet_lr != UNET_LR) + a.set)
    table = stored.setdefault("variants", {}) if variant else stored["runs"]
    if a.check:
        table = stored.setdefault("device_check", {})
    if not a.report_only:
        for seed in a.seeds:  # seed-major: a cut session leaves every arm with the same seeds
            for arm in a.arms:
                if variant and (arm == "monai_unet") != (a.unet_lr != UNET_LR):
                    continue  # a variant changes either the bundle's settings or the UNet's learning rate
                key = f"{arm}/{a.iterations}/{seed}" + (f"/{variant}" if variant else "")
                if key in table:
                    continue
                print(f"{key} ...", flush=True)
                r = train(arm, datalist, a.size, a.batch, seed, a.iterations, a.unet_lr, a.device, a.workers,
                          overrides)
                r.update(arm=arm, seed=seed, iterations_budget=a.iterations, concurrent=a.concurrent,
                         variant=variant, settings=overrides if arm != "monai_unet" else {"unet_lr": a.unet_lr})
                table[key] = r
                results_path.parent.mkdir(parents=True, exist_ok=True)
                results_path.write_text(json.dumps(stored, indent=1, default=float))
                print(f"{key}: test dice_fx {r['test']['dice_fx']:.3f}, dice_global {r['test']['dice_global']:.3f}, "
                      f"HD95 {r['test']['hd95']:.1f} px, {r['iterations']} it, {r['train_wall_s']:.0f} s wall, "
                      f"{r['cpu_s_per_it']:.2f} CPU s/it", flush=True)
    if a.step_cost and not a.report_only:
        stored["step_cost"] = step_costs(a.size, a.batch, a.step_cost)
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(stored, indent=1, default=float))
    publish(stored, Path(a.doc), Path(a.readme))


if __name__ == "__main__":
    main()
