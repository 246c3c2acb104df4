"""The self-supervised arms of the few-shot benchmark (issue 21): DiRA and Adam-v2 on the pretraining
population's images read without their labels, and DiRA then the Foundation X cycle, at about (c)'s CPU cost.

``bench/few_shot.py`` runs them as pretraining arms like any other (``--arms ssl_dira ssl_adam dira_fx``); this
module builds their bundle overrides (``configs/ssl.json`` of ``foundation_x``: SSL warm-up epochs, each as long
as one cycle) and measures what sets their length, the CPU cost of an SSL iteration against a mean iteration of
the Foundation X cycle:

    python bench/few_shot_ssl.py --out runs/fsgpu     # prints SSL_COST; copy it here when the setting changes

The probe trains each arm for 1 and for 3 cycles' worth of iterations and divides the difference of CPU time by
the difference of iterations, so start-up and validation, paid once per run, drop out.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

# recipe and what is fine-tuned: DiRA and Adam-v2 fine-tune their online encoder (the student); DiRA-then-FX ends
# with the Foundation X cycle, so its teacher, as (c)
SSL_ARMS = {"ssl_dira": ("dira", "student"), "ssl_adam": ("adam_v2", "student"), "dira_fx": ("dira", "teacher")}
# CPU cost of one SSL iteration relative to a mean iteration of the Foundation X cycle (224 px, batch 4, one torch
# thread, demo backbone), measured by this module's probe on the 2-core machine, 2026-12-05
SSL_COST = {"dira": 1.54, "adam_v2": 2.6}  # FX cycle: 0.364 CPU s per iteration
SSL_QUEUE = 128  # MoCo queue: about half a pass over the ~200 unlabelled images, so no image is its own negative
#                  (the bundle's 4096 suits an archive of real radiographs)
RECIPES = {"adam_v2": {"ssl_recipe": {"_target_": "cxrfx.ssl.adam_v2.AdamV2", "network": "@network",
                                      "queue_size": SSL_QUEUE, "seed": "@seed"},
                       "ssl_transforms": {"recipe": "adam_v2"}},
           "dira": {"ssl_recipe#queue_size": SSL_QUEUE}}
SSL_CONFIGS = ["train.json", "demo.json", "ssl.json"]


def unlabelled_datalist(datalists: list[str], out: Path) -> str:
    """One unlabelled datalist (``"kind": "unlabelled"``) of every image of ``datalists``, split by split: what an
    SSL arm reads, the images the supervised arms train on without their labels."""
    from cxrfx.data.datalist import load_datalist, write_datalist

    splits = {}
    for split in ("training", "validation", "test"):
        seen = {}
        for path in datalists:
            for item in load_datalist(path, split):
                seen.setdefault(item["image"], {"image": os.path.relpath(item["image"], out.parent),
                                                "id": str(item.get("id", item["image"]))})
        if seen:
            splits[split] = list(seen.values())
    write_datalist({"name": "phantom_images", "schema_version": 1, "kind": "unlabelled", "tasks": {},
                    "description": "the pretraining population's images without their annotations (few-shot SSL arms)",
                    **splits}, out)
    return str(out)


def ssl_lengths(arm: str, cycles: int, cost: dict[str, float] = SSL_COST) -> tuple[int, int]:
    """(SSL epochs, Foundation X cycles) of ``arm`` for the CPU time of ``cycles`` Foundation X cycles: SSL alone
    spends it all on SSL; DiRA-then-FX spends half (rounded down) on the cycle, the rest on DiRA first."""
    recipe = SSL_ARMS[arm][0]
    fx = cycles // 2 if arm == "dira_fx" else 0
    return max(1, round((cycles - fx) / cost[recipe])), fx


def ssl_overrides(arm: str, base: dict, unlabelled: str, cycles: int, cost: dict[str, float] = SSL_COST) -> dict:
    """Bundle overrides of one SSL arm on top of ``base`` (the Foundation X arm's: sources, schedule, sizes)."""
    ssl_epochs, fx = ssl_lengths(arm, cycles, cost)
    return {**base, **RECIPES[SSL_ARMS[arm][0]], "ssl_datasets": {"phantom_images": {"datalist": unlabelled}},
            "ssl_warmup_epochs": ssl_epochs, "epochs": ssl_epochs + fx, "val_interval": ssl_epochs + fx}


def measure_cost(out: Path, args) -> dict[str, float]:
    """SSL_COST on this machine: CPU seconds per iteration of each recipe over those of the Foundation X cycle."""
    import few_shot

    data = few_shot.build_data(out, args)
    per_iteration = {}
    for arm in ("foundation_x", "ssl_dira", "ssl_adam"):
        runs = []
        for cycles in (1, 3):
            spec = few_shot.pretrain_specs(data, out / "ssl_cost" / f"c{cycles}", cycles, args.size,
                                           cost={"dira": 1.0, "adam_v2": 1.0})[arm]
            result = few_shot.pretrain(spec)
            runs.append((result["iterations"], result["cpu_seconds"]))
            print(f"{arm}, {cycles} cycle(s): {result['iterations']} iterations, {result['cpu_seconds']} CPU s",
                  flush=True)
        (i1, c1), (i3, c3) = runs
        per_iteration[arm] = (c3 - c1) / (i3 - i1)
    fx = per_iteration["foundation_x"]
    return {"dira": round(per_iteration["ssl_dira"] / fx, 2), "adam_v2": round(per_iteration["ssl_adam"] / fx, 2),
            "fx_cpu_s_per_iteration": round(fx, 3)}


def main(argv=None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/few_shot")
    for name, default in (("size", 224), ("phantom_size", 256), ("pretrain_count", 96), ("downstream_count", 80),
                          ("pretrain_seed", 100), ("downstream_seed", 200)):
        parser.add_argument(f"--{name}", type=int, default=default, help="as bench/few_shot.py")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    print("SSL_COST =", measure_cost(Path(args.out).resolve(), args), f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
