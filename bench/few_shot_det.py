"""Few-shot detection on the phantom population: the transfer claim's detection stage (``bench/few_shot.py``'s
protocol, with ``bundles/finetune_det``).

1. Data. The pretraining population of ``bench/few_shot.py`` (same settings, so the same patients and the same
   pretraining recipe), and a downstream ``phantom_det`` population of other patients (``--downstream_seed``):
   nodules and masses with boxes.
2. Pretraining, as ``bench/few_shot.py``: (b) classification only (Ark's recipe), (c) Foundation X (Lock-Release
   cycle over labels, boxes and masks, EMA teacher), (d) (c) without lock phases, (e) (c) without the teacher,
   and (j) a plain detector pretraining on the boxes alone (release steps only: with one task there are no
   shared parts to lock for), every arm the same number of iterations. The pretraining population's
   ``phantom_det`` boxes are the same two classes as downstream (the paper's localization datasets share classes
   with its downstream ones too), so (c)-(e) and (j) start with a trained localization branch and head, (b) with a
   backbone only. (c) against (j) asks whether the other tasks add to a pretrained detector's transfer.
3. Fine-tuning ``bundles/finetune_det`` at the detection issue's rates (its demo recipe: 2.5e-4 heads, 7.5e-5
   backbone, AdamW) on N training images with lesions, chosen by seed (``few_shot``; one seed's sets are
   nested), (a) from scratch and from (b)-(e), the same iterations, batch and anchors in every arm. Anchors: fitted
   once to the pretraining population's boxes (a few-shot set of two images has too few boxes to fit them, and a
   pretrained head's regression is learnt against the pretraining's anchors), the head named ``phantom_det`` so a
   pretrained head loads. Score: test-split AP50 (nodules and masses, IoU 0.5, the bundles' ``ap50``) of the final
   model, and ``map40_fx`` (the paper's mAP over IoU 0.4-0.75).
4. Statistics, declared before the runs: per shot count, differences paired by seed (same images, same training
   randomness), the exact two-sided Wilcoxon signed-rank test and how many pairs favour each arm; 8 seeds.

    python bench/few_shot_det.py --jobs 2 --budget_s 3600 --results docs/results.md

Every run is stored in ``--store`` (``bench/results/few_shot_det.json``) as it completes; a cut run resumes, and a
pretraining whose checkpoint is gone is run again with the same seed. ``--report_only`` rewrites the tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from few_shot import (  # noqa: E402
    ARMS, COMMON, _timed, add_population_arguments, backbone_settings, bundle_run, claim_store, command, execute,
    forget_lost_pretrainings, job_order, paired, pretrain, pretrain_specs, pretraining_command, pretraining_population,
    pretraining_rates, read_metrics, repo_relative, reproduce_lines, session_saver, start_point, store_callbacks,
    table, validation_curve, _device_name,
)

ROOT = Path(__file__).resolve().parents[1]
DET_ARMS = ("scratch", "single_task", "foundation_x", "fx_no_lock", "fx_no_teacher", "det_only")
COMPARISONS = (("foundation_x", "scratch"), ("foundation_x", "single_task"), ("foundation_x", "fx_no_lock"),
               ("foundation_x", "fx_no_teacher"), ("single_task", "scratch"), ("foundation_x", "det_only"),
               ("det_only", "scratch"))
HEAD = "phantom_det"  # the pretraining's detection head name: a fine-tuning head of that name loads its weights
STRIDES = (4, 8, 16, 32)
BEGIN, END = "<!-- few_shot_det.py: begin (generated) -->", "<!-- few_shot_det.py: end -->"


def build_data(out: Path, args) -> dict:
    """The pretraining population (as ``bench/few_shot.py``) and the downstream detection population."""
    from cxrfx.data.phantom import generate_phantom

    down = out / "data" / "downstream"
    generate_phantom(str(down), count=args.downstream_count, size=args.phantom_size, seed=args.downstream_seed,
                     verbose=False, datasets=("phantom_det",))
    return {"pretrain": pretraining_population(out, args), "unlabelled": None,
            "det": str(down / "phantom_det" / "datalist.json")}


def pretraining_anchors(data: dict, size: int) -> list:
    """Anchor shapes fitted to the pretraining population's training boxes: what every arm fine-tunes with."""
    from cxrfx.data.boxes import anchor_shapes_for

    shapes = anchor_shapes_for(data["pretrain"]["phantom_det"], size, STRIDES, 3)
    if shapes is None:
        raise SystemExit("the pretraining population has too few boxes to fit anchors; raise --pretrain_count")
    return shapes


def finetune_overrides(job: dict) -> dict:
    """``finetune_det``'s overrides for one (arm, shots, seed): the start point, the few-shot set, the shared
    anchors and head name."""
    return {**COMMON, **job["settings"], **start_point(job["pretrained"]), "few_shot": job["shots"],
            "few_shot_seed": job["seed"], "seed": job["seed"], "source_datalist": job["datalist"],
            "validate_data": False, "dataset_name": HEAD}


def det_scores(metrics: dict[str, float]) -> dict[str, float]:
    """The student's test ``ap50`` and ``map40_fx`` from an evaluation's metrics (NaN when missing)."""
    return {name: metrics.get(f"student/det/{HEAD}/{name}", float("nan")) for name in ("ap50", "map40_fx")}


def finetune(job: dict) -> dict:
    """Train then evaluate one (arm, shots, seed) through finetune_det; test-split AP50 and the cost."""
    root, log = Path(job["root"]), Path(job["root"]) / "run.log"
    start, cpu = time.perf_counter(), time.process_time()
    overrides = finetune_overrides(job)
    logged = log.stat().st_size if log.exists() else 0
    train = bundle_run("finetune_det", ["train.json", "demo.json"], root, log, **overrides)
    train_cpu, train_s = time.process_time() - cpu, time.perf_counter() - start
    with open(log, "rb") as f:  # this training's part of the log (a rerun appends)
        f.seek(logged)
        text = f.read().decode(errors="replace")
    evaluate = bundle_run("finetune_det", ["train.json", "demo.json", "evaluate.json"], root, log, **overrides)
    scores = det_scores(read_metrics(root / "eval" / "metrics.csv"))
    interval = job["settings"]["val_interval"]
    return {**{k: job[k] for k in ("arm", "shots", "seed")}, **scores,
            "val_curve": {str(k): v for k, v in validation_curve(text, interval, "ap50").items()},
            "loaded": "start point: scratch" not in text, "train_cpu_s": round(train_cpu, 1),
            "train_s": round(train_s, 1), "device": _device_name(), "seconds": round(time.perf_counter() - start, 1),
            "calls": [train, evaluate]}


def curve_table(runs: list[dict]) -> str:
    """Markdown: validation AP50 per arm and shot count at each validation (mean over seeds); "" without curves."""
    import statistics

    runs = [r for r in runs if len(r.get("val_curve", {})) > 1]
    points = sorted({int(i) for r in runs for i in r["val_curve"]})
    if not points:
        return ""
    lines = ["| start point | images | " + " | ".join(f"it {i}" for i in points) + " |",
             "|---|---|" + "---|" * len(points)]
    for arm in DET_ARMS:
        for n in sorted({r["shots"] for r in runs if r["arm"] == arm}):
            mine = [r["val_curve"] for r in runs if r["arm"] == arm and r["shots"] == n]
            cells = [statistics.mean(c[k] for c in mine if k in c) if any(k in c for c in mine) else None
                     for k in map(str, points)]
            lines.append(f"| {ARMS[arm]} | {n} ({len(mine)} seeds) | "
                         + " | ".join("–" if v is None else f"{v:.3f}" for v in cells) + " |")
    return "\n".join(lines)


def write_report(path: Path, summary: dict, tables: dict) -> None:
    """The generated section (command, budget, tables) between this script's markers in ``path``."""
    from common import write_section

    s, pre = summary["settings"], summary["pretraining"]

    lines = [*reproduce_lines(summary), "",
             f"Spent so far: {summary['cpu_seconds'] / 3600:.2f} CPU-hours (data, pretraining, fine-tuning). "
             f"Populations: pretraining seed {s['pretrain_seed']} ({s['pretrain_count']} images per dataset), "
             f"downstream `phantom_det` seed {s['downstream_seed']} ({s['downstream_count']} images; test split "
             f"{summary.get('test_images', '?')} images, {summary.get('test_boxes', '?')} lesions), rendered at "
             f"{s['phantom_size']} px. Pretraining and fine-tuning at {s['size']} px, demo backbone; fine-tuning "
             f"mode `{s['mode']}`, learning rates {s.get('backbone_lr', 7.5e-5):g} backbone / "
             f"{s.get('head_lr', 2.5e-4):g} localization branch and head, "
             f"{s['iterations']} iterations of batch {COMMON['batch_size']} in every arm, "
             "anchors fitted to the pretraining boxes; scored: "
             + (f"the checkpoint with the best validation AP50 (validation every {s['val_interval']} iterations)."
                if s.get("val_interval") else "the final model.") + pretraining_rates(s), "",
             "Pretraining (the same iterations in every arm):", ""]
    for arm in DET_ARMS:
        if arm in pre:
            val = pre[arm].get("validation", {})
            learnt = ", ".join(f"{k} {v:.3f}" for k, v in sorted(val.items()) if k.startswith("det/"))
            lines.append(f"- {ARMS[arm]}: {pre[arm]['iterations']} iterations, {pre[arm]['cpu_seconds'] / 60:.1f} "
                         f"CPU-min, fine-tuned from its {pre[arm]['key']}"
                         + (f"; its own validation at the end: {learnt}" if learnt else ""))
    curves = curve_table(list(summary["runs"].values()))
    lines += ["", "Test AP50 (nodules and masses), mean ± sample standard deviation over seeds (seeds in brackets):",
              "", tables["ap50"], "", "Test `map40_fx`, same runs:", "", tables["map40_fx"], "",
              "AP50 paired over seeds (declared before the runs; exact two-sided Wilcoxon signed-rank test):", "",
              tables["paired"], ""]
    if curves:
        lines += ["Validation AP50 along the fine-tuning (mean over seeds):", "", curves, ""]
    example = next((r for r in summary["runs"].values() if r["arm"] == "foundation_x" and "calls" in r), None)
    if example and "foundation_x" in pre:
        lines += ["One fine-tuning run of (c) and its pretraining, as shell commands (the script runs the same "
                  "bundles in-process):", "", "```bash", *(repo_relative(command(c)) for c in example["calls"]),
                  pretraining_command(summary, "foundation_x"), "```"]
    write_section(path, "few_shot_det.py", "\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/few_shot_det")
    parser.add_argument("--results", default=None, help="markdown file to write the tables into")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--shots", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--arms", nargs="+", default=list(DET_ARMS), choices=list(DET_ARMS))
    parser.add_argument("--iterations", type=int, default=300, help="fine-tuning iterations (batch 4)")
    add_population_arguments(parser, downstream_count=200)
    parser.add_argument("--mode", default="full", choices=["full", "frozen", "warmup"])
    parser.add_argument("--backbone_lr", type=float, default=None,
                        help="fine-tuning learning rate of the backbone (default: finetune_det's demo value, 7.5e-5)")
    parser.add_argument("--head_lr", type=float, default=None,
                        help="fine-tuning learning rate of the localization branch and head (default: 2.5e-4)")
    parser.add_argument("--val_interval", type=int, default=None,
                        help="validate every this many iterations (a curve), and score the checkpoint the validation "
                             "chose instead of the final one (default: once, at the end: the final model)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--store", default=str(Path(__file__).resolve().parent / "results" / "few_shot_det.json"))
    parser.add_argument("--report_only", action="store_true", help="rewrite --results from --store")
    parser.add_argument("--pretrained_from", default=None,
                        help="another store whose pretrainings to fine-tune from (same pretraining settings), e.g. "
                             "the same start points fine-tuned with another --val_interval")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process")
    parser.add_argument("--budget_s", type=float, default=None,
                        help="start no run after this many wall seconds (finished runs are kept; run again to go on)")
    args = parser.parse_args(argv)
    out, store = Path(args.out).resolve(), Path(args.store).resolve()
    summary = json.loads(store.read_text()) if store.exists() else {"pretraining": {}, "runs": {}, "cpu_seconds": 0.0}
    failed: list[str] = []
    if not args.report_only:
        failed = run(args, argv, out, store, summary)
    runs = list(summary["runs"].values())
    tables = {"ap50": table(runs, "ap50"), "map40_fx": table(runs, "map40_fx"),
              "paired": paired(runs, "ap50", COMPARISONS)}
    print(tables["ap50"], tables["paired"], f"CPU {summary['cpu_seconds'] / 3600:.2f} h", sep="\n\n")
    if args.results:
        write_report(Path(args.results), summary, tables)
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed: {', '.join(failed)} (their logs are under {out})")


def run(args, argv, out: Path, store: Path, summary: dict) -> list[str]:
    """Data, the pretrainings the runs need, then the fine-tunings, ``--jobs`` at a time; returns the failed keys."""
    import torch

    from cxrfx.data.datalist import read_datalist

    torch.set_num_threads(args.threads)
    claim_store(summary, store, args, (), "python bench/few_shot_det.py", argv)
    out.mkdir(parents=True, exist_ok=True)
    order = job_order(args.seeds, args.shots, list(args.arms))
    forget_lost_pretrainings(summary, order)
    save, began = session_saver(summary, store, args.jobs)

    data, t = _timed(build_data, out, args)
    test = read_datalist(data["det"])["test"]
    summary["test_images"], summary["test_boxes"] = len(test), sum(len(it.get("boxes", [])) for it in test)
    save(t)
    specs = pretrain_specs(data, out, args.pretrain_cycles, args.size, task_lr_scale=args.task_lr_scale)
    finetune_settings = {"iterations": args.iterations, "val_interval": args.val_interval or args.iterations,
                         "mode": args.mode,
                         **{k: getattr(args, k) for k in ("backbone_lr", "head_lr") if getattr(args, k) is not None},
                         "det_anchors": pretraining_anchors(data, args.size), **backbone_settings(args.size)}
    tasks, queued = [], set()
    for arm, shots, seed in order:
        if f"{arm}/{shots}/{seed}" in summary["runs"]:
            continue
        if arm != "scratch" and arm not in summary["pretraining"] and arm not in queued:
            queued.add(arm)  # each pretraining just before its first fine-tuning
            tasks.append({"key": f"pretrain/{arm}", "fn": pretrain, "job": specs[arm], "after": None})
        job = {"arm": arm, "shots": shots, "seed": seed, "datalist": data["det"], "settings": finetune_settings,
               "pretrained": None, "root": str(out / "finetune" / f"{arm}_n{shots}_s{seed}")}
        tasks.append({"key": f"{arm}/{shots}/{seed}", "fn": finetune, "job": job,
                      "after": None if arm == "scratch" else f"pretrain/{arm}"})

    deadline = None if args.budget_s is None else began + args.budget_s
    return execute(tasks, args.jobs, args.threads, deadline, *store_callbacks(summary, save, "ap50"),
                   finished={f"pretrain/{a}" for a in summary["pretraining"]})


if __name__ == "__main__":
    main()
