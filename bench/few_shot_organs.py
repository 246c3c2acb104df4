"""Few-shot Dice per organ: the clavicles, where the paper makes its few-shot claim, apart from the lungs and heart.

``bench/few_shot.py`` scores the mean Dice over five organs; lungs and heart are large and easy (they reach
~0.9 from scratch with two images), so that mean can hide a difference on the clavicles, the paper's few-shot
task (JSRT clavicles). Runs made since the evaluator reports ``dice_fx_<channel>`` store ``per_organ``; for
earlier runs ``--rescore`` runs each stored evaluation again on the run's saved model (its ``calls`` record the
exact bundle call) and stores the per-organ values, after checking that the overall Dice comes out as stored
(the evaluation is deterministic). The MONAI UNet arm (f) keeps no model, so it has no per-organ row.

    python bench/few_shot_organs.py bench/results/few_shot.json --rescore --results docs/results.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402
from few_shot import COMPARISONS, bundle_run, organ_scores, paired, read_metrics, table  # noqa: E402

CLAVICLES = ("clavicle_left", "clavicle_right")
BIG = ("lung_left", "lung_right", "heart")


def rescore(store_path: Path) -> int:
    """Per-organ Dice for the stored runs that lack it and whose model is still there; returns how many."""
    store = json.loads(store_path.read_text())
    done = 0
    for key, run in store["runs"].items():
        if "per_organ" in run or "calls" not in run:
            continue
        call = run["calls"][-1]  # the evaluation (train.json + demo.json + evaluate.json)
        root = Path(call["root"])
        if "evaluate.json" not in call["configs"] or not (root / "models" / "model.pt").exists():
            continue
        start = time.perf_counter()
        bundle_run(call["bundle"], call["configs"], root, root / "rescore.log", **call["overrides"])
        metrics = read_metrics(root / "eval" / "metrics.csv")
        again = metrics.get("student/seg/organs/dice_fx", float("nan"))
        if abs(again - run["dice_fx"]) > 1e-6:
            raise SystemExit(f"{key}: the evaluation gave dice_fx {again} where {run['dice_fx']} is stored; "
                             "the saved model is not the one scored (left the store unchanged for this run)")
        run["per_organ"] = organ_scores(metrics)
        store_path.write_text(json.dumps(store, indent=1))  # after each run: a cut rescoring keeps its work
        done += 1
        print(f"{key}: clavicles {_mean(run['per_organ'], CLAVICLES):.3f} ({time.perf_counter() - start:.0f} s)",
              flush=True)
    return done


def _mean(per_organ: dict, organs) -> float:
    return statistics.mean(per_organ[o] for o in organs)


def with_groups(runs: list[dict]) -> list[dict]:
    """The runs that have per-organ Dice, with ``clavicles`` and ``lungs_heart`` (means over those organs)."""
    return [{**r, "clavicles": _mean(r["per_organ"], CLAVICLES), "lungs_heart": _mean(r["per_organ"], BIG)}
            for r in runs if set(CLAVICLES + BIG) <= set(r.get("per_organ", {}))]


def report(runs: list[dict]) -> str:
    grouped = with_groups(runs)
    if not grouped:
        return "No run has per-organ Dice yet (`--rescore`)."
    comparisons = [c for c in COMPARISONS if "monai_unet" not in c]
    return "\n".join([
        "Clavicles (mean of left and right test `dice_fx`), mean ± std over seeds:", "", table(grouped, "clavicles"),
        "", "Lungs and heart (mean of three), same runs:", "", table(grouped, "lungs_heart"), "",
        "Clavicles, paired over seeds (exact two-sided Wilcoxon signed-rank test):", "",
        paired(grouped, "clavicles", comparisons)])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", help="a few_shot.py store")
    parser.add_argument("--rescore", action="store_true", help="evaluate again the stored runs without per-organ Dice")
    parser.add_argument("--results", default=None, help="markdown file to write the tables into (between markers)")
    args = parser.parse_args(argv)
    store = Path(args.store)
    if args.rescore:
        print(f"rescored {rescore(store)} run(s)", flush=True)
    text = report(list(json.loads(store.read_text())["runs"].values()))
    print(text)
    if args.results:
        write_section(args.results, "few_shot_organs.py", f"Per organ (`bench/few_shot_organs.py`, runs in "
                      f"`{store.as_posix()}`):\n\n{text}\n", heading="### Segmentation per organ")


if __name__ == "__main__":
    main()
