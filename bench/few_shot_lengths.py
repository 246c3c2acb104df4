"""Does a longer pretraining transfer better? Foundation X (c) against scratch (a), one row per pretraining length.

The issue asks for 2-3 pretraining lengths. Each length is its own ``bench/few_shot.py`` store (its settings
differ only in ``--pretrain_cycles``); the scratch arm does not depend on the pretraining, so its runs are taken
from whichever store holds them, and where several stores hold the same (shots, seed) they must agree (the runs
are deterministic: a disagreement is reported, not averaged). Pairs, test and counts as in ``few_shot.py``.
Besides the downstream score, each row says what the pretraining itself had learned: its teacher's validation
metrics on the pretraining tasks (classification AUC averaged over the three label sets, box AP50, mask Dice).
``--metric ap50`` reads ``bench/few_shot_det.py`` stores instead (the detection stage; its own section).

    python bench/few_shot.py --out runs/fs32 --store bench/results/few_shot_pretrain32.json --pretrain_cycles 32 \\
        --arms scratch foundation_x --shots 2 4
    python bench/few_shot_lengths.py bench/results/few_shot.json bench/results/few_shot_pretrain32.json \\
        bench/results/few_shot_pretrain64.json --results docs/results.md
    python bench/few_shot_lengths.py bench/results/few_shot_det_lowlr.json \\
        bench/results/few_shot_det_pretrain32.json --metric ap50 --results docs/results.md

``--frozen`` adds stores made with ``--mode frozen`` (only the new organ head trains; backbone and decoder stay as
pretrained): a probe of what the pretrained features hold, next to what fine-tuning everything makes of them.
Such a store fine-tunes the pretrainings of a full store without pretraining again:

    python bench/few_shot.py --out runs/fsfrozen32 --store bench/results/few_shot_frozen32.json --pretrain_cycles 32 \\
        --mode frozen --arms foundation_x --shots 2 4 --pretrained_from bench/results/few_shot_pretrain32.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402
from few_shot import _mean_std, paired_cells, pretraining_metrics, repo_relative  # noqa: E402

ARM, AGAINST = "foundation_x", "scratch"
# per metric: what it is called in the tables, and the generated section's name and heading
METRICS = {"dice_fx": ("Dice", "few_shot_lengths.py", "### Pretraining length (224 px, synthetic patients)"),
           "ap50": ("AP50", "few_shot_lengths.py (detection)", "### Pretraining length, detection (224 px)")}


def scratch_runs(stores: list[dict], metric: str = "dice_fx") -> dict[tuple[int, int], float]:
    """{(shots, seed): scratch score} over all stores; the same run in two stores must give the same value."""
    found: dict[tuple[int, int], float] = {}
    for store in stores:
        for run in store["runs"].values():
            if run["arm"] != AGAINST:
                continue
            key = (run["shots"], run["seed"])
            if key in found and abs(found[key] - run[metric]) > 1e-9:
                raise SystemExit(f"scratch run {key} differs between stores ({found[key]} vs {run[metric]}): "
                                 "the stores were not made with the same downstream settings")
            found[key] = run[metric]
    return found


def teacher_summary(pretraining: dict) -> str:
    """"AUC 0.39 · AP50 0.004 · Dice 0.26" from the pretraining's recorded (or logged) validation metrics."""
    metrics = pretraining.get("validation")
    if metrics is None:  # stores made before pretrain() recorded them: read the run's log if it is still there,
        log = Path(pretraining["checkpoint"]).parents[1] / "train.log"
        if not log.exists() and "validation_text" in pretraining:  # else the summary read from it while it was
            return pretraining["validation_text"]
        metrics = pretraining_metrics(log)
    aucs = [v for k, v in metrics.items() if k.startswith("cls/") and k.endswith("/auc")]
    parts = [f"AUC {statistics.mean(aucs):.2f}" if aucs else None,
             f"AP50 {metrics['det/phantom_det/ap50']:.3f}" if "det/phantom_det/ap50" in metrics else None,
             f"Dice {metrics['seg/phantom_seg/dice_fx']:.2f}" if "seg/phantom_seg/dice_fx" in metrics else None]
    return " · ".join(p for p in parts if p) or "not recorded"


def lengths_table(stores: list[dict], metric: str = "dice_fx") -> str:
    """Markdown: one row per (pretraining length, shot count): (c)'s ``metric``, (c) − (a) paired by seed."""
    scratch = scratch_runs(stores, metric)
    lines = ["| pretraining cycles | iterations | CPU-min | teacher on its own tasks (validation) | images | "
             "(c) Foundation X | (a) scratch, same seeds | (c) − (a) | pairs favouring (c) / (a) | Wilcoxon p |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for store in sorted(stores, key=lambda s: s["settings"]["pretrain_cycles"]):
        pre = store["pretraining"].get(ARM)
        if pre is None:
            continue
        runs = {(r["shots"], r["seed"]): r[metric] for r in store["runs"].values() if r["arm"] == ARM}
        for shots in sorted({n for n, _ in runs}):
            seeds = sorted(s for n, s in runs if n == shots and (shots, s) in scratch)
            if not seeds:
                continue
            diffs = [runs[(shots, s)] - scratch[(shots, s)] for s in seeds]
            lines.append(
                f"| {store['settings']['pretrain_cycles']} | {pre['iterations']} | {pre['cpu_seconds'] / 60:.1f} | "
                f"{teacher_summary(pre)} | {shots} | {_mean_std([runs[(shots, s)] for s in seeds])} | "
                f"{_mean_std([scratch[(shots, s)] for s in seeds])} | {paired_cells(diffs)} |")
    return "\n".join(lines)


def _arm_runs(stores: list[dict], arm: str) -> dict[tuple[int, int, int], float]:
    """{(pretraining cycles, shots, seed): Dice} of ``arm`` over the stores (scratch: cycles 0, any store)."""
    return {(0 if arm == AGAINST else s["settings"]["pretrain_cycles"], r["shots"], r["seed"]): r["dice_fx"]
            for s in stores for r in s["runs"].values() if r["arm"] == arm}


def frozen_table(full: list[dict], frozen: list[dict]) -> str:
    """Markdown: per pretraining length and shot count, (c) with only the organ head trained (frozen) and (c)
    fine-tuned whole; scratch likewise (its frozen form: random features, a trained head)."""
    probe, tuned = _arm_runs(frozen, ARM), _arm_runs(full, ARM)
    probe0, tuned0 = _arm_runs(frozen, AGAINST), _arm_runs(full, AGAINST)

    def cell(runs: dict, cycles: int, shots: int) -> str:
        values = [v for (c, n, _), v in sorted(runs.items()) if (c, n) == (cycles, shots)]
        return f"{_mean_std(values)} ({len(values)})" if values else "–"

    lines = ["| start point | pretraining cycles | images | only the organ head trains (frozen) | everything trains "
             "(full) |", "|---|---|---|---|---|"]
    for cycles, shots in sorted({(c, n) for c, n, _ in probe0} | {(c, n) for c, n, _ in probe}):
        name = "(a) scratch (random features)" if cycles == 0 else "(c) Foundation X"
        source = (probe0, tuned0) if cycles == 0 else (probe, tuned)
        lines.append(f"| {name} | {cycles or '–'} | {shots} | {cell(source[0], cycles, shots)} | "
                     f"{cell(source[1], cycles, shots)} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stores", nargs="+", help="few_shot.py stores, one per pretraining length")
    parser.add_argument("--frozen", nargs="*", default=[], help="stores made with --mode frozen (any lengths)")
    parser.add_argument("--results", default=None, help="markdown file to write the table into (between markers)")
    parser.add_argument("--metric", default="dice_fx", choices=list(METRICS),
                        help="dice_fx: few_shot.py (organ) stores; ap50: few_shot_det.py (detection) stores")
    args = parser.parse_args(argv)
    name, section, heading = METRICS[args.metric]
    stores = [json.loads(Path(p).read_text()) for p in args.stores]
    frozen = [json.loads(Path(p).read_text()) for p in args.frozen]
    if frozen and args.metric != "dice_fx":
        raise SystemExit("--frozen reads organ (dice_fx) stores only")
    if any(s["settings"].get("mode") != "frozen" for s in frozen):
        raise SystemExit("a --frozen store was not made with --mode frozen")
    others = {json.dumps({k: v for k, v in s["settings"].items() if k != "pretrain_cycles"}, sort_keys=True)
              for s in stores}
    if len(others) > 1:
        raise SystemExit("the stores differ in more than --pretrain_cycles: " + " / ".join(sorted(others)))
    text = lengths_table(stores, args.metric)
    probe = frozen_table(stores, frozen) if frozen else ""
    print(text, probe, sep="\n\n")
    if args.results:
        stored = ", ".join(f"`{repo_relative(str(Path(p).resolve()))}`" for p in args.stores)
        body = (f"Foundation X (c) against scratch (a) by pretraining length, test {name} "
                f"(`bench/few_shot_lengths.py`; runs in {stored}); paired by seed, exact two-sided Wilcoxon "
                f"signed-rank test:\n\n{text}\n")
        if frozen:
            kept = ", ".join(f"`{repo_relative(str(Path(p).resolve()))}`" for p in args.frozen)
            body += ("\nWhat the pretrained features hold: the same fine-tuning with only the new organ head trained "
                     f"(`--mode frozen`: backbone and decoder as pretrained; runs in {kept}), mean ± std over seeds, "
                     f"next to fine-tuning everything (the runs above):\n\n{probe}\n")
        write_section(args.results, section, body, heading=heading)


if __name__ == "__main__":
    main()
