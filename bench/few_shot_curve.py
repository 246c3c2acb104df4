"""Is 200 fine-tuning iterations enough? The fine-tuning curve of the few-shot runs, scratch against Foundation X.

The issue asks to fine-tune long enough to converge and to report the curve. A ``bench/few_shot.py`` store made
with a longer fine-tuning and ``--val_interval`` keeps, per run, the validation Dice at every validation
(``val_curve``); this table shows its mean over seeds per arm and shot count, the test Dice of the checkpoint the
validation chose (the bundle's ``model.pt``), and (c) − (a) per validation point, paired by seed.

    python bench/few_shot.py --out runs/fs_long_ft --store bench/results/few_shot_finetune800.json --iterations 800 \\
        --val_interval 100 --arms scratch foundation_x --shots 2 4 --seeds 0 1 2
    python bench/few_shot_curve.py bench/results/few_shot_finetune800.json --results docs/results.md

``--recover`` fills the curve of runs stored without one from the validation series the bundle's TensorBoard
handler wrote into the run's folder (runs of a process whose log lost the "Metrics --" lines) and saves the store.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402
from few_shot import ARMS, _mean_std  # noqa: E402


def curve_table(runs: list[dict]) -> str:
    """Markdown: validation Dice per iteration (mean ± std over seeds), per (arm, shots), then (c) − (a)."""
    runs = [r for r in runs if r.get("val_curve")]
    if not runs:
        return "No run has a validation curve (`--val_interval`)."
    points = sorted({int(i) for r in runs for i in r["val_curve"]})
    head = ["| start point | images | seeds | " + " | ".join(f"{i} it" for i in points) + " | test (chosen checkpoint) |",
            "|---|---|---|" + "---|" * len(points) + "---|"]
    lines = list(head)
    by = {}
    for arm in ARMS:
        for shots in sorted({r["shots"] for r in runs}):
            mine = [r for r in runs if r["arm"] == arm and r["shots"] == shots]
            if not mine:
                continue
            by[(arm, shots)] = {r["seed"]: {int(i): v for i, v in r["val_curve"].items()} for r in mine}
            cells = [_mean_std([c[i] for c in by[(arm, shots)].values() if i in c]) for i in points]
            lines.append(f"| {ARMS[arm]} | {shots} | {len(mine)} | " + " | ".join(cells) +
                         f" | {_mean_std([r['dice_fx'] for r in mine])} |")
    diffs = []
    for shots in sorted({r["shots"] for r in runs}):
        a, c = by.get(("scratch", shots), {}), by.get(("foundation_x", shots), {})
        seeds = sorted(set(a) & set(c))
        if not seeds:
            continue
        cells = []
        for i in points:
            d = [c[s][i] - a[s][i] for s in seeds if i in c[s] and i in a[s]]
            cells.append(f"{statistics.mean(d):+.3f} ({sum(x > 0 for x in d)}/{len(d)})" if d else "–")
        diffs.append(f"| (c) − (a) | {shots} | {len(seeds)} | " + " | ".join(cells) + " | |")
    if diffs:
        lines += ["", "Paired by seed, validation Dice (pairs favouring (c) / pairs):", "", *head[:2], *diffs]
    return "\n".join(lines)


def curve_from_events(folder: Path, interval: int, validations: int) -> dict[int, float]:
    """{iteration: validation dice_fx} from the ``val_dice_fx`` series of the TensorBoard files in ``folder``, in
    the order written; {} unless there are exactly ``validations`` values (a resumed or repeated run is ambiguous)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for events in sorted(folder.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if "val_dice_fx" in acc.Tags()["scalars"]:
            values += [(e.wall_time, e.value) for e in acc.Scalars("val_dice_fx")]
    values.sort()
    return {interval * (k + 1): v for k, (_, v) in enumerate(values)} if len(values) == validations else {}


def recover(store: dict) -> int:
    """Fill missing ``val_curve`` entries from each run's TensorBoard files; how many were filled."""
    s, filled = store["settings"], 0
    for run in store["runs"].values():
        if run.get("val_curve") or not run.get("calls"):
            continue
        curve = curve_from_events(Path(run["calls"][0]["root"]) / "eval", s["val_interval"],
                                  s["iterations"] // s["val_interval"])
        if curve:
            run["val_curve"], filled = curve, filled + 1
    return filled


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", help="a few_shot.py store made with --val_interval")
    parser.add_argument("--results", default=None, help="markdown file to write the table into (between markers)")
    parser.add_argument("--recover", action="store_true", help="fill missing curves from the runs' TensorBoard files")
    args = parser.parse_args(argv)
    store = json.loads(Path(args.store).read_text())
    if args.recover:
        print(f"recovered {recover(store)} curve(s) from TensorBoard files")
        Path(args.store).write_text(json.dumps(store, indent=1) + "\n")
    text = curve_table(list(store["runs"].values()))
    print(text)
    if args.results:
        s = store["settings"]
        write_section(args.results, "few_shot_curve.py",
                      f"Fine-tuning curve (`bench/few_shot_curve.py`, runs in `{Path(args.store).as_posix()}`): "
                      f"{s['iterations']} iterations, validation `dice_fx` every {s.get('val_interval')} iterations "
                      f"on the downstream validation split, pretraining {s['pretrain_cycles']} cycles; the test "
                      "column scores the checkpoint with the best validation Dice.\n\n" + text + "\n",
                      heading="### Fine-tuning curve")


if __name__ == "__main__":
    main()
