"""Does another fine-tuning recipe let the pretraining show? Foundation X (c) against scratch (a), one row per recipe.

Fine-tuning a pretrained start point is usually done gently: the new head first, the rest after (``--mode
warmup``, the bundle's default; "linear probing then fine-tuning"), or the backbone at a lower learning rate
than the head. Scratch is trained with the same recipe in each store (the protocol's "same settings in every
arm"), so each row pairs (c) with the scratch runs of its own store, by seed. Each recipe is its own
``bench/few_shot.py`` store; a store may borrow another's pretrainings (``--pretrained_from``):

    python bench/few_shot.py --out runs/fs_warmup --store bench/results/few_shot_warmup.json --mode warmup \\
        --arms scratch foundation_x --shots 2 4 --pretrained_from bench/results/few_shot.json
    python bench/few_shot_recipes.py bench/results/few_shot.json bench/results/few_shot_warmup.json \\
        --results docs/results.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402
from few_shot import BUNDLES, ROOT, _mean_std, paired_cells  # noqa: E402

ARM, AGAINST = "foundation_x", "scratch"
# the learning rates a store that sets none fine-tuned with: the bundle's demo override's
DEMO = BUNDLES / "finetune_seg" / "configs" / "demo.json"


def recipe(settings: dict) -> str:
    """"full, backbone lr 3e-04, head lr 1e-03, 200 it" from a store's settings."""
    demo = json.loads(DEMO.read_text())
    lrs = {k: demo[k] if settings.get(k) is None else settings[k] for k in ("backbone_lr", "head_lr")}
    backbone = f"{lrs['backbone_lr']:.0e}" if lrs["backbone_lr"] else "0 (backbone frozen)"
    # other widths than the pretraining's: only the PSP pooling branches of the decoder load, the rest starts new
    decoder = (f", decoder {settings['decoder_channels'][0]}/{settings['decoder_channels'][1]} channels (mostly "
               "new)" if settings.get("decoder_channels") else "")
    return (f"{settings['mode']}, backbone lr {backbone}, head lr {lrs['head_lr']:.0e}, {settings['iterations']} it"
            + decoder)


def recipes_table(stores: list[dict]) -> str:
    """Markdown: per store and shot count, (c) and (a) of that store paired by seed."""
    lines = ["| fine-tuning recipe | pretraining cycles | images | (c) Foundation X | (a) scratch | (c) − (a) | "
             "pairs favouring (c) / (a) | Wilcoxon p |", "|---|---|---|---|---|---|---|---|"]
    for store in stores:
        arms = {arm: {(r["shots"], r["seed"]): r["dice_fx"] for r in store["runs"].values() if r["arm"] == arm}
                for arm in (ARM, AGAINST)}
        for shots in sorted({n for n, _ in arms[ARM]}):
            seeds = sorted(s for n, s in arms[ARM] if n == shots and (n, s) in arms[AGAINST])
            if not seeds:
                continue
            c, a = ([arms[arm][(shots, s)] for s in seeds] for arm in (ARM, AGAINST))
            diffs = [x - y for x, y in zip(c, a)]
            lines.append(f"| {recipe(store['settings'])} | {store['settings']['pretrain_cycles']} | {shots} | "
                         f"{_mean_std(c)} | {_mean_std(a)} | {paired_cells(diffs)} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stores", nargs="+", help="few_shot.py stores, one per fine-tuning recipe")
    parser.add_argument("--results", default=None, help="markdown file to write the table into (between markers)")
    args = parser.parse_args(argv)
    stores = [json.loads(Path(p).read_text()) for p in args.stores]
    text = recipes_table(stores)
    print(text)
    if args.results:
        stored = ", ".join(f"`{Path(p).resolve().relative_to(ROOT)}`" for p in args.stores)
        write_section(args.results, "few_shot_recipes.py",
                      "Foundation X (c) against scratch (a) under other fine-tuning recipes "
                      f"(`bench/few_shot_recipes.py`; runs in {stored}); each recipe trains both arms, paired by "
                      f"seed, exact two-sided Wilcoxon signed-rank test:\n\n{text}\n", heading="### Fine-tuning recipe")


if __name__ == "__main__":
    main()
