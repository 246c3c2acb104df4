"""Few-shot fine-tuning on the phantom: from scratch vs single-task pretraining vs Foundation X pretraining.

The paper's downstream claim (Foundation X, WACV 2025: few-shot JSRT-clavicle Dice, VinDr localization), on
what a 2-core CPU allows. Every step runs a bundle (in-process, through ``monai.bundle.scripts.run``, the
function ``python -m monai.bundle run`` calls; the equivalent command of every run is stored in the results):

1. Data. Pretraining phantom (seed 0) and a separate downstream phantom (seed 1): different renders of the same
   CT. The pretraining segmentation source keeps only ribs, pneumothorax and effusion, so the downstream organs
   (lungs, heart, clavicles) are a task no pretraining saw, as JSRT was for Foundation X.
2. Pretraining with ``bundles/foundation_x`` (tiny Swin), both with the same number of iterations and the EMA
   teacher: (b) single-task = classification only over the three datasets' labels (Ark's recipe);
   (c) Foundation X = the phantom Lock-Release cycle over labels, boxes and masks.
3. Fine-tuning with ``bundles/finetune_seg`` (organs) and ``bundles/finetune_det`` (nodules and masses) on N
   training images chosen by seed (``--few_shot N --few_shot_seed s``), from (a) scratch, (b) and (c) (the
   teacher of ``last.pt``), all with the same iterations, learning rates and mode; test-split Dice / AP50.

    python bench/few_shot.py --out runs/few_shot --results docs/results.md

Writes ``<out>/results.json`` (every run: arm, shots, seed, metrics, the bundle calls) and the tables into
``--results`` (``--report_only`` rewrites them from an earlier results.json).
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
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
ARMS = {"scratch": "(a) from scratch", "single_task": "(b) single-task pretraining (classification only)",
        "foundation_x": "(c) Foundation X pretraining (Lock-Release + teacher)"}
PRETRAIN_SEG_CLASSES = ["ribs", "pneumothorax", "effusion"]
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
    return {"bundle": bundle, "configs": configs, "root": str(root), "overrides": overrides}


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


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _timed(fn, *args):
    start = time.process_time()
    result = fn(*args)
    return result, time.process_time() - start


def build_data(out: Path, pretrain_count: int, downstream_count: int, size: int) -> dict:
    """Both phantoms, and the pretraining segmentation datalist without the downstream organs."""
    from cxrfx.data.few_shot import few_shot_datalist
    from cxrfx.data.phantom import generate_phantom

    pre, down = out / "data" / "pretrain", out / "data" / "downstream"
    generate_phantom(str(pre), count=pretrain_count, size=size, seed=0, verbose=False)
    generate_phantom(str(down), count=downstream_count, size=size, seed=1, verbose=False,
                     datasets=("phantom_det", "phantom_seg"))
    seg = few_shot_datalist(pre / "phantom_seg" / "datalist.json", pre / "phantom_seg_pretrain.json",
                            seg_classes=PRETRAIN_SEG_CLASSES, name="phantom_seg")
    return {"pretrain": {"phantom_cls": str(pre / "phantom_cls" / "datalist.json"),
                         "phantom_det": str(pre / "phantom_det" / "datalist.json"), "phantom_seg": seg},
            "seg": str(down / "phantom_seg" / "datalist.json"), "det": str(down / "phantom_det" / "datalist.json")}


def _cycle_length(sources: dict, schedule: list[dict], batch_size: int) -> int:
    from cxrfx.data.multitask import build_sources
    from cxrfx.engines.schedule import parse_schedule, resolve_lengths

    loaders = build_sources(sources, batch_size=batch_size, train=True)
    return sum(resolve_lengths(parse_schedule(schedule), {k: len(v) for k, v in loaders.items()}))


def pretrain_specs(data: dict, out: Path, cycles: int, image_size: int) -> list[dict]:
    """The two pretraining runs, with the same number of iterations."""
    from cxrfx.engines.schedule import expand_tasks, phantom_cycle

    lists = data["pretrain"]
    fx_sources = {"phantom_cls": {"datalist": lists["phantom_cls"], "tasks": ["cls"]},
                  "phantom_det": {"datalist": lists["phantom_det"], "tasks": ["cls", "det"]},
                  "phantom_seg": {"datalist": lists["phantom_seg"], "tasks": ["cls", "seg"]}}
    cls_sources = {k: {"datalist": v["datalist"], "tasks": ["cls"]} for k, v in fx_sources.items()}
    cls_schedule = expand_tasks([(k, "cls") for k in cls_sources])
    bs = COMMON["batch_size"]
    fx_iterations = cycles * _cycle_length(fx_sources, phantom_cycle(), bs)
    cls_epochs = max(1, round(fx_iterations / _cycle_length(cls_sources, cls_schedule, bs)))
    base = {**COMMON, "image_size": image_size, "validate_data": False,
            "network_def#seg_heads": {"phantom_seg": len(PRETRAIN_SEG_CLASSES)}}
    return [
        {"arm": "foundation_x", "root": out / "pretrain" / "foundation_x",
         "overrides": {**base, "datasets": fx_sources, "epochs": cycles, "val_interval": cycles}},
        {"arm": "single_task", "root": out / "pretrain" / "single_task",
         "overrides": {**base, "datasets": cls_sources, "schedule": cls_schedule, "epochs": cls_epochs,
                       "val_interval": cls_epochs}},
    ]


def pretrain(spec: dict) -> dict:
    """One foundation_x bundle run; returns where its teacher is and how long it took."""
    start = time.perf_counter()
    call = bundle_run("foundation_x", ["train.json", "demo.json"], spec["root"], spec["root"] / "train.log",
                      **spec["overrides"])
    import torch

    state = torch.load(spec["root"] / "models" / "last.pt", map_location="cpu", weights_only=True)
    return {"arm": spec["arm"], "checkpoint": str(spec["root"] / "models" / "last.pt"), "call": call,
            "iterations": int(state["trainer"]["iteration"]), "seconds": round(time.perf_counter() - start, 1)}


def finetune(job: dict) -> dict:
    """Train then evaluate one (task, arm, shots, seed) through finetune_seg / finetune_det; test-split metrics."""
    start = time.perf_counter()
    bundle = f"finetune_{job['task']}"
    root, log = Path(job["root"]), Path(job["root"]) / "run.log"
    start_point = {"finetune": False} if job["arm"] == "scratch" else {
        "finetune": True, "finetune_model_path": job["checkpoint"], "finetune_key": "teacher"}
    overrides = {**COMMON, **job["settings"], **start_point, "few_shot": job["shots"], "few_shot_seed": job["seed"],
                 "seed": job["seed"], "source_datalist": job["datalist"], "validate_data": False}
    train = bundle_run(bundle, ["train.json", "demo.json"], root, log, **overrides)
    evaluate = bundle_run(bundle, ["train.json", "demo.json", "evaluate.json"], root, log, **overrides)
    metrics = read_metrics(root / "eval" / "metrics.csv")
    head = "organs" if job["task"] == "seg" else "nodules"
    keys = ("dice_fx", "dice_global") if job["task"] == "seg" else ("ap50", "map40_fx")
    return {**{k: job[k] for k in ("task", "arm", "shots", "seed")},
            **{k: metrics.get(f"student/{job['task']}/{head}/{k}", float("nan")) for k in keys},
            "seconds": round(time.perf_counter() - start, 1), "calls": [train, evaluate]}


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(runs: list[dict], task: str, metric: str) -> str:
    """Markdown: one row per arm, one column per shot count, mean ± std (sample) over seeds."""
    shots = sorted({r["shots"] for r in runs if r["task"] == task})
    lines = ["| start point | " + " | ".join(f"{n} images" for n in shots) + " |",
             "|---|" + "---|" * len(shots)]
    for arm, label in ARMS.items():
        cells = []
        for n in shots:
            values = [r[metric] for r in runs if r["task"] == task and r["arm"] == arm and r["shots"] == n]
            cells.append(_mean_std(values) if values else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tables_of(runs: list[dict]) -> dict[str, str]:
    return {"seg": table(runs, "seg", "dice_fx"), "det": table(runs, "det", "ap50"),
            "det_map40": table(runs, "det", "map40_fx")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/few_shot")
    parser.add_argument("--results", default=None, help="markdown file to write the tables into")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seg_shots", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--det_shots", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--seg_iterations", type=int, default=60)
    parser.add_argument("--det_iterations", type=int, default=60)
    parser.add_argument("--seg_size", type=int, default=96)
    parser.add_argument("--det_size", type=int, default=128)
    parser.add_argument("--pretrain_cycles", type=int, default=6)
    parser.add_argument("--pretrain_size", type=int, default=96)
    parser.add_argument("--phantom_size", type=int, default=128)
    parser.add_argument("--pretrain_count", type=int, default=48)
    parser.add_argument("--downstream_count", type=int, default=80)
    parser.add_argument("--mode", default="full", choices=["full", "frozen", "warmup"])
    parser.add_argument("--jobs", type=int, default=2, help="parallel runs (each one thread)")
    parser.add_argument("--report_only", action="store_true", help="rewrite --results from <out>/results.json")
    args = parser.parse_args(argv)
    line = " ".join(["python bench/few_shot.py", *(argv if argv is not None else sys.argv[1:])])
    if args.report_only:
        summary = json.loads((Path(args.out) / "results.json").read_text())
        write_report(Path(args.results), summary, tables_of(summary["runs"]))
        return
    os.environ["OMP_NUM_THREADS"] = "1"  # OpenMP spin-waiting on a shared 2-core machine: 1 thread per run
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    wall0, cpu = time.perf_counter(), 0.0
    data, t = _timed(build_data, out, args.pretrain_count, args.downstream_count, args.phantom_size)
    cpu += t
    print(f"data ready ({time.perf_counter() - wall0:.0f} s)", flush=True)
    specs = pretrain_specs(data, out, args.pretrain_cycles, args.pretrain_size)
    context = get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_init_worker) as pool:
        pretrained = {}
        for result, t in pool.map(_timed, [pretrain] * len(specs), specs):
            pretrained[result["arm"]] = result
            cpu += t
            print(f"pretrained {result['arm']}: {result['iterations']} iterations, {result['seconds']} s", flush=True)
        jobs = []
        for task, shots_list, iterations, size in (("seg", args.seg_shots, args.seg_iterations, args.seg_size),
                                                   ("det", args.det_shots, args.det_iterations, args.det_size)):
            settings = {"iterations": iterations, "val_interval": iterations, "image_size": size, "mode": args.mode}
            for shots in shots_list:
                for seed in args.seeds:
                    for arm in ARMS:
                        jobs.append({"task": task, "arm": arm, "shots": shots, "seed": seed, "datalist": data[task],
                                     "settings": settings, "checkpoint": pretrained.get(arm, {}).get("checkpoint"),
                                     "root": str(out / "finetune" / task / f"{arm}_n{shots}_s{seed}")})
        runs = []
        for result, t in pool.map(_timed, [finetune] * len(jobs), jobs):
            runs.append(result)
            cpu += t
            print(f"{result['task']} {result['arm']} n={result['shots']} seed={result['seed']}: "
                  f"{ {k: round(v, 3) for k, v in result.items() if k in ('dice_fx', 'ap50')} } ({result['seconds']} s)",
                  flush=True)
    summary = {"command": line, "settings": vars(args), "pretraining": pretrained, "runs": runs,
               "wall_seconds": round(time.perf_counter() - wall0, 1), "cpu_seconds": round(cpu, 1)}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    tables = tables_of(runs)
    (out / "tables.json").write_text(json.dumps(tables, indent=1))
    print(tables["seg"], tables["det"], f"wall {summary['wall_seconds']} s, CPU {summary['cpu_seconds']} s", sep="\n\n")
    if args.results:
        write_report(Path(args.results), summary, tables)


BEGIN, END = "<!-- few_shot.py: begin (generated) -->", "<!-- few_shot.py: end -->"


def write_report(path: Path, summary: dict, tables: dict) -> None:
    """Put the generated part (command, budget, tables, example bundle commands) between the markers of
    ``path``, keeping any hand-written text around them."""
    s = summary["settings"]
    pre = summary["pretraining"]
    example = {arm: [command(c) for c in next(r["calls"] for r in summary["runs"] if r["arm"] == arm and r["task"] == "seg")]
               for arm in ARMS}
    lines = [BEGIN, "", "Reproduce everything (data, both pretrainings, every fine-tune, these tables):", "", "```bash",
             summary["command"], "```", "",
             f"Measured: {summary['wall_seconds'] / 60:.1f} min wall, {summary['cpu_seconds'] / 60:.1f} CPU-min "
             f"({s['jobs']} parallel runs of one thread each, shared 2-core machine). Seeds {s['seeds']}; "
             f"fine-tuning mode `{s['mode']}`, {s['seg_iterations']} (seg) / {s['det_iterations']} (det) iterations of "
             f"batch {COMMON['batch_size']} (or fewer images when N < {COMMON['batch_size']}) in every arm.", "",
             "Pretraining (tiny Swin, foundation_x bundle + demo override, "
             f"{s['pretrain_count']} phantom images per dataset, {s['pretrain_size']} px):", ""]
    for arm in ("single_task", "foundation_x"):
        lines.append(f"- {ARMS[arm]}: {pre[arm]['iterations']} iterations, {pre[arm]['seconds']} s")
    lines += ["", f"### Segmentation: test Dice (`dice_fx`), organs, {s['seg_size']} px", "", tables["seg"], "",
              f"### Detection: test AP50, nodules + masses, {s['det_size']} px", "", tables["det"], "",
              "Detection `map40_fx` (AP at IoU 0.4, Foundation X's number):", "", tables["det_map40"], "",
              "Mean ± sample standard deviation over the seeds; each seed draws its own training images "
              "(`--few_shot_seed`) and training randomness (`--seed`). Per-run numbers and commands: "
              "`results.json` in the output folder.", "", "One run of each arm, as shell commands "
              "(the script runs the same bundles in-process):", "", "```bash"]
    for arm in ARMS:
        lines += [f"# {ARMS[arm]}", *example[arm]]
    lines += ["```", "", "Pretraining commands:", "", "```bash", *(command(pre[a]["call"]) for a in ("single_task", "foundation_x")),
              "```", "", END]
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + "\n".join(lines) + text[text.index(END) + len(END):]
    else:
        text = (text or "# Results\n\n") + "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    main()
