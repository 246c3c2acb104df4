"""Which part of the Foundation X start point hurts the few-shot organs? Fine-tuning from part of it only.

The few-shot benchmark (``bench/few_shot.py``) found Foundation X pretraining (c) below scratch (a) at 4 images
on every seed. Its start point hands over the backbone and the UperNet decoder (PSP + FPN, trained on ribs,
pneumothorax and effusion); only the organ head is new. This ablation starts from a part of the same teacher
and leaves the rest at its random initialisation, with everything else as in (c) (images, seeds, iterations,
learning rates; the fine-tuning calls are (c)'s own, read from the store, with another start checkpoint):

- ``backbone``: the backbone only (the decoder starts afresh, as in scratch);
- ``early_stages``: the backbone without its last stage (the patch embedding, stages 1-3 and the patch merging
  into stage 4): the pretraining grows the last stage's activations most (stage-map standard deviation on
  downstream images: 0.47 at initialisation, 11 after 8 pretraining cycles, 21 after 32).

Results go to their own store (``--results``), paired with the (a) and (c) runs of the source store.

    python bench/few_shot_partial.py bench/results/few_shot.json --parts backbone early_stages --shots 2 4 \\
        --results bench/results/few_shot_partial.json --doc docs/results.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402
from few_shot import ROOT, _mean_std, finetune, wilcoxon  # noqa: E402

PARTS = {"backbone": lambda k: k.startswith(("backbone.", "input_")),
         "early_stages": lambda k: k.startswith(("backbone.", "input_"))
         and not k.startswith(("backbone.layers.3.", "backbone.norm."))}
SETTINGS = ("iterations", "val_interval", "mode", "image_size", "backbone_kwargs#window_size")


def partial_checkpoint(source: Path, key: str, part: str) -> Path:
    """A copy of ``source``'s ``key`` weights holding only ``part`` (written once, next to the source)."""
    import torch

    out = source.with_name(f"{source.stem}_{key}_{part}.pt")
    if not out.exists():
        weights = torch.load(source, map_location="cpu", weights_only=True)[key]
        kept = {k: v for k, v in weights.items() if PARTS[part](k)}
        torch.save({key: kept}, out)
    return out


def run(store: dict, part: str, shots: int, seed: int, out_root: Path) -> dict:
    """(c)'s fine-tuning of (shots, seed), started from ``part`` of (c)'s teacher."""
    source = store["runs"][f"foundation_x/{shots}/{seed}"]["calls"][0]["overrides"]
    checkpoint = partial_checkpoint(Path(source["finetune_model_path"]), source["finetune_key"], part)
    job = {"arm": part, "shots": shots, "seed": seed, "datalist": source["source_datalist"],
           "settings": {k: source[k] for k in SETTINGS}, "pretrained": {"checkpoint": str(checkpoint),
                                                                         "key": source["finetune_key"]},
           "root": str(out_root / f"{part}_n{shots}_s{seed}")}
    return finetune(job)


def report(store: dict, partial: dict) -> str:
    """Markdown: per part and shot count, the part's Dice against (c) and (a) on the same seeds, paired."""
    lines = ["| start point | images | pairs | Dice | − (a) scratch: mean, pairs +/−, p | − (c) whole start point: "
             "mean, pairs +/−, p |", "|---|---|---|---|---|---|"]
    base = {k: r["dice_fx"] for k, r in store["runs"].items()}
    for part in PARTS:
        for shots in sorted({r["shots"] for r in partial.values() if r["arm"] == part}):
            mine = {r["seed"]: r["dice_fx"] for r in partial.values() if r["arm"] == part and r["shots"] == shots}
            cells = []
            for other in ("scratch", "foundation_x"):
                d = [v - base[f"{other}/{shots}/{s}"] for s, v in sorted(mine.items()) if f"{other}/{shots}/{s}" in base]
                cells.append(f"{statistics.mean(d):+.3f}, {sum(x > 0 for x in d)} / {sum(x < 0 for x in d)}, "
                             f"{wilcoxon(d):.3g}" if d else "–")
            lines.append(f"| (c), {part.replace('_', ' ')} only | {shots} | {len(mine)} | "
                         f"{_mean_std(list(mine.values()))} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", help="the few_shot.py store whose (a) and (c) runs are the pairs")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--shots", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--out", default="runs/few_shot_partial", help="the runs' folders")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "few_shot_partial.json"))
    parser.add_argument("--doc", default=None, help="markdown file to write the table into (between markers)")
    args = parser.parse_args(argv)
    store = json.loads(Path(args.store).read_text())
    results = Path(args.results)
    partial = json.loads(results.read_text()) if results.exists() else {}
    for seed in args.seeds:  # seed by seed: a cut run covers every part with fewer seeds
        for shots in args.shots:
            for part in args.parts:
                key = f"{part}/{shots}/{seed}"
                if key in partial or f"foundation_x/{shots}/{seed}" not in store["runs"]:
                    continue
                partial[key] = run(store, part, shots, seed, Path(args.out).resolve())
                results.write_text(json.dumps(partial, indent=1))
                print(f"{key}: dice_fx {partial[key]['dice_fx']:.3f}", flush=True)
    text = report(store, partial)
    print(text)
    if args.doc:
        write_section(args.doc, "few_shot_partial.py", "Part of the start point (`bench/few_shot_partial.py`, runs "
                      f"in `{results.resolve().relative_to(ROOT)}`; pairs with the runs of `{args.store}`):\n\n"
                      + text + "\n", heading="### Which part of the start point")


if __name__ == "__main__":
    main()
