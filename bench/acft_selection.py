"""Which images to annotate next: ACFT selection vs random selection, measured as test Dice per labelled image.

Simulates the MONAI Label loop (``cxr_segmentation``: annotate, fine-tune, ask for the next images) on the
phantom's organ segmentation (synthetic patients, ``finetune_seg``'s network and demo backbone): a seed's run
starts from ``--start`` randomly drawn labelled images, fine-tunes, then for ``--rounds`` rounds picks
``--per-round`` more images from the unlabelled rest of the training split, by

- ``acft``: the highest ACFT scores of the current model (``cxrfx.label.acft``: entropy + diversity over 6
  augmented copies, mean of the top 25 % locations; the MONAI Label strategy ``acft`` computes the same score), or
- ``random``: uniformly (the same generator per seed),

and fine-tunes again, continually: from the previous round's weights on every image labelled so far, with a fresh
warm-up + cosine schedule of ``--iterations`` (ACFT's continual fine-tuning). Both strategies share the seed's
start images and start weights, so the comparison is paired. Test ``dice_fx`` (5 organs) after every round.

    python bench/acft_selection.py --threads 1        # resumable; ~20 CPU-minutes with the defaults
    python bench/acft_selection.py --report-only

Writes ``bench/results/acft_selection.json`` and a section of ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "plugins"))

from common import mean_std, write_section  # noqa: E402
from quality_seg import build_data, bundle_parser, evaluate  # noqa: E402

RESULTS = HERE / "results" / "acft_selection.json"
STRATEGIES = ("acft", "random")


def _round_datalist(datalist: str, items: list[dict], tag: str) -> str:
    """``datalist`` with its training split replaced by ``items``, written beside it (relative paths hold)."""
    data = json.loads(Path(datalist).read_text())
    out = Path(datalist).with_name(f"acft_round_{tag}_{os.getpid()}.json")
    out.write_text(json.dumps({**data, "training": items}))
    return str(out)


def fine_tune(net, datalist: str, size: int, batch: int, iterations: int, seed: int) -> float:
    """Continue training ``net`` for ``iterations`` on ``datalist``'s training split with finetune_seg's optimiser
    and schedule (fresh each round); returns the CPU seconds."""
    from monai.handlers import LrScheduleHandler

    from cxrfx.data.multitask import build_sources
    from cxrfx.engines import LockReleaseHandler, MultiTaskTrainer

    with tempfile.TemporaryDirectory() as workdir:
        parser = bundle_parser(size, batch, iterations, seed, workdir, "upernet",
                               overrides={"network_def": "$None", "network": net, "mode": "full"})
        optimizer = parser.get_parsed_content("train#optimizer")
        lr_scheduler = parser.get_parsed_content("train#lr_scheduler")
        loaders = build_sources({"organs": {"datalist": datalist, "tasks": ["seg"]}}, "training", size, batch,
                                train=True, seed=seed, cache_rate=1.0)
        lock_release = LockReleaseHandler(parser.get_parsed_content("schedule"), loaders, net)
        trainer = MultiTaskTrainer(device=torch.device("cpu"), max_epochs=1, network=net, optimizer=optimizer,
                                   lock_release=lock_release, clip_grad_norm=1.0, amp=False, nonfinite="skip",
                                   train_handlers=[LrScheduleHandler(lr_scheduler, print_lr=False, epoch_level=False)])
        cpu0 = time.process_time()
        trainer.run()
        return time.process_time() - cpu0


def acft_scores(net, datalist: str, items: list[dict], size: int) -> list[float]:
    """The ACFT score of every item (its image through the evaluation pipeline, as the Label app reads it)."""
    from cxrfx.data.multitask import build_sources
    from cxrfx.label.acft import acft_score, network_outputs

    pool = _round_datalist(datalist, items, "pool")
    loader = build_sources({"organs": {"datalist": pool, "tasks": ["seg"]}}, "training", size, 1, train=False,
                           seed=0)["seg/organs"]
    net.eval()
    scores = {}
    with torch.no_grad():
        for b in loader:
            scores[b["id"][0]] = acft_score(network_outputs(net, b["image"]))
    os.remove(pool)
    return [scores[it["id"]] for it in items]


def run(datalist: str, strategy: str, seed: int, a) -> dict:
    from monai.utils import set_determinism

    set_determinism(seed=seed)
    train_items = json.loads(Path(datalist).read_text())["training"]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train_items))
    labelled = [train_items[i] for i in order[:a.start]]
    pool = [train_items[i] for i in order[a.start:]]
    with tempfile.TemporaryDirectory() as workdir:  # the seed's start weights, the same for both strategies
        net = bundle_parser(a.size, a.batch, a.iterations, seed, workdir, "upernet").get_parsed_content("network")
    picker = np.random.default_rng(seed + 1000)
    rounds, cpu = [], 0.0
    for r in range(a.rounds + 1):
        if r:
            if strategy == "acft":
                scores = acft_scores(net, datalist, pool, a.size)
                chosen = sorted(np.argsort(scores)[::-1][:a.per_round].tolist())
            else:
                chosen = sorted(picker.choice(len(pool), a.per_round, replace=False).tolist())
            labelled += [pool[i] for i in chosen]
            pool = [it for i, it in enumerate(pool) if i not in set(chosen)]
        current = _round_datalist(datalist, labelled, f"{strategy}{seed}")
        cpu += fine_tune(net, current, a.size, a.batch, a.iterations, seed * 100 + r)
        os.remove(current)
        test = evaluate(net, datalist, "test", a.size, a.batch)
        rounds.append({"labelled": len(labelled), "dice_fx": test["dice_fx"],
                       "per_class": {k: v["dice_fx"] for k, v in test["per_class"].items()},
                       "ids": [it["id"] for it in labelled]})
        print(f"{strategy} seed {seed} round {r}: {len(labelled)} labelled, test dice_fx {test['dice_fx']:.3f}",
              flush=True)
    return {"rounds": rounds, "train_cpu_s": round(cpu, 1)}


def report(results: dict, meta: dict) -> str:
    from scipy.stats import wilcoxon

    lines = [f"Phantom organ segmentation (synthetic patients, {meta['count']} images at {meta['size']} px, seed "
             f"{meta['phantom_seed']}; pool = its {meta['pool']} training images, test = its {meta['test']} test "
             f"images), `finetune_seg`'s network (demo backbone, from scratch), start {meta['start']} random "
             f"labelled images, {meta['per_round']} more per round, {meta['iterations']} iterations of batch "
             f"{meta['batch']} per round, continually. Test `dice_fx`, mean ± std over seeds (n = seeds run).", "",
             "| labelled images | " + " | ".join(STRATEGIES) + " | acft − random (paired) |",
             "|---|" + "---|" * (len(STRATEGIES) + 1)]
    seeds = sorted({int(k.split("/")[1]) for k in results if all(f"{s}/{k.split('/')[1]}" in results
                                                                 for s in STRATEGIES)})
    for r in range(meta["rounds"] + 1):
        cells, per = [], {}
        for s in STRATEGIES:
            per[s] = [results[f"{s}/{seed}"]["rounds"][r]["dice_fx"] for seed in seeds]
            cells.append(f"{mean_std(per[s])} (n={len(per[s])})")
        n = results[f"acft/{seeds[0]}"]["rounds"][r]["labelled"] if seeds else "?"
        diffs = [x - y for x, y in zip(per["acft"], per["random"])]
        cells.append(f"{mean_std(diffs)}" if diffs else "")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    diffs = [results[f"acft/{seed}"]["rounds"][r]["dice_fx"] - results[f"random/{seed}"]["rounds"][r]["dice_fx"]
             for seed in seeds for r in range(1, meta["rounds"] + 1)]
    if len(diffs) >= 6 and any(diffs):
        lines += ["", f"Over every round after the start and every seed ({len(diffs)} pairs): acft − random "
                      f"{np.mean(diffs):+.3f}, better in {sum(d > 0 for d in diffs)} of {len(diffs)}, Wilcoxon "
                      f"signed-rank p = {wilcoxon(diffs).pvalue:.3f}."]
    target = meta.get("target", 0.85)
    reach = []
    for strategy in STRATEGIES:
        needed = [next((r["labelled"] for r in results[f"{strategy}/{seed}"]["rounds"] if r["dice_fx"] >= target),
                       None) for seed in seeds]
        got = [n for n in needed if n is not None]
        reach.append(f"{strategy} {np.mean(got):.1f} (reached in {len(got)} of {len(needed)} seeds)" if got
                     else f"{strategy}: not reached in {len(needed)} seeds")
    lines += ["", f"Labelled images needed to reach test `dice_fx` {target:g} (mean over the seeds that reached it "
                  "within the rounds): " + "; ".join(reach) + "."]
    cpu = [v["train_cpu_s"] for v in results.values()]
    lines += ["", f"Fine-tuning CPU per run (all rounds): {np.mean(cpu) / 60:.1f} min; ACFT scoring adds 6 forward "
                  "passes per unlabelled image per round. Reproduce: `python bench/acft_selection.py --threads 1`."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.expanduser("~/.cache/cxrfx/bench/acft_selection"))
    ap.add_argument("--count", type=int, default=120)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--phantom-seed", type=int, default=31)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--start", type=int, default=2)
    ap.add_argument("--per-round", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--target", type=float, default=0.85, help="test dice_fx whose labelled-image cost is reported")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--doc", default=str(HERE.parent / "docs" / "results.md"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    datalist = build_data(Path(a.data), a.count, a.size, a.phantom_seed)
    data = json.loads(Path(datalist).read_text())
    meta = {"count": a.count, "size": a.size, "phantom_seed": a.phantom_seed, "start": a.start,
            "per_round": a.per_round, "rounds": a.rounds, "iterations": a.iterations, "batch": a.batch,
            "pool": len(data["training"]), "test": len(data["test"])}
    results = Path(a.results)
    stored = json.loads(results.read_text()) if results.exists() else {"meta": meta, "runs": {}}
    same = {k: v for k, v in stored["meta"].items() if k != "target"} == meta
    meta["target"] = a.target  # a report setting: changing it keeps the runs
    if not same:
        stored = {"meta": meta, "runs": {}, "superseded": stored.get("superseded", []) + [stored]}
    if not a.report_only:
        for seed in a.seeds:
            for strategy in STRATEGIES:
                key = f"{strategy}/{seed}"
                if key not in stored["runs"]:
                    stored["runs"][key] = run(datalist, strategy, seed, a)
                    results.write_text(json.dumps(stored, indent=1) + "\n")
    text = report(stored["runs"], meta)
    write_section(a.doc, "acft_selection.py", text,
                  "# Active learning: ACFT vs random selection (`bench/acft_selection.py`, MONAI Label issue)")
    print(text)


if __name__ == "__main__":
    main()
