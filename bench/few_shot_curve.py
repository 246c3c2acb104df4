"""Is 200 fine-tuning iterations enough? The fine-tuning curve of the few-shot runs, scratch against Foundation X.

The issue asks to fine-tune long enough to converge and to report the curve. A ``bench/few_shot.py`` store made
with a longer fine-tuning and ``--val_interval`` keeps, per run, the validation Dice at every validation
(``val_curve``); this table shows its mean over seeds per arm and shot count, the test Dice of the checkpoint the
validation chose (the bundle's ``model.pt``), and (c) − (a) per validation point, paired by seed.

    python bench/few_shot.py --out runs/fs_long_ft --store bench/results/few_shot_finetune800.json --iterations 800 \\
        --val_interval 100 --arms scratch foundation_x --shots 2 4 --seeds 0 1 2
    python bench/few_shot_curve.py bench/results/few_shot_finetune800.json --results docs/results.md
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", help="a few_shot.py store made with --val_interval")
    parser.add_argument("--results", default=None, help="markdown file to write the table into (between markers)")
    args = parser.parse_args(argv)
    store = json.loads(Path(args.store).read_text())
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
