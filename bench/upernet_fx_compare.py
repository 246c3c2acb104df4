"""cxrfx's ``upernet`` against the Foundation X reference structure ``upernet_fx`` for training from scratch.

Which segmentation head type should new training use? Both arms are ``bundles/finetune_seg`` as
``bench/quality_seg.py`` trains it (the bundle's network, schedule, optimizer and learning-rate schedule; the
demo backbone from scratch; the same loaders, loss, iterations and evaluation of the last iterate on the phantom's
five organs), the only difference being ``network_def#head_types = {"seg": "upernet_fx"}`` in one arm. No published
Foundation X weights are involved (they are request-only): this says which *structure* trains better here, not
how the published decoder fine-tunes.

quality_seg.py's own ``train`` runs each arm (its ``upernet`` arm; ``overrides`` sets ``network_def#head_types`` to
``upernet_fx`` for the other). Results go to ``--results`` (resumable) and are printed as a table.

    nice -n 19 python bench/upernet_fx_compare.py --size 128 --iterations 200 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import quality_seg as qs  # noqa: E402

ARMS = ("upernet", "upernet_fx")


def run_arm(arm: str, datalist: str, a) -> dict:
    """quality_seg.py's training of its ``upernet`` arm, with the head type overridden for ``upernet_fx``."""
    overrides = {"network_def#head_types": {"seg": arm}} if arm != "upernet" else None
    return qs.train("upernet", datalist, a.size, a.batch, a.seed_now, a.iterations, 1e-3, overrides=overrides)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/tmp/cxrfx_upernet_fx_compare")
    ap.add_argument("--count", type=int, default=96)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--results", default=str(HERE / "results" / "upernet_fx_compare.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)  # on shared cores one thread runs far faster in wall time than two (quality_seg --threads)
    datalist = qs.build_data(Path(a.data), a.count, 256, 1016)
    path = Path(a.results)
    stored = json.loads(path.read_text()) if path.exists() else {}
    for seed in a.seeds:
        for arm in ARMS:
            key = f"{arm}/{a.size}/{a.iterations}/{seed}"
            if key in stored:
                continue
            a.seed_now = seed
            print(key, "...", flush=True)
            stored[key] = run_arm(arm, datalist, a)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(stored, indent=1, default=float))
    print("| arm | params | seeds | test dice_fx | test dice_global | test HD95 px | CPU s / it |")
    print("|---|---|---|---|---|---|---|")
    for arm in ARMS:
        runs = [r for k, r in stored.items() if k.startswith(f"{arm}/{a.size}/{a.iterations}/")]
        if runs:
            mean = {m: statistics.mean(r["test"][m] for r in runs) for m in ("dice_fx", "dice_global", "hd95")}
            print(f"| {arm} | {runs[0]['params']['total'] / 1e6:.2f} M | {len(runs)} | {mean['dice_fx']:.3f} | "
                  f"{mean['dice_global']:.3f} | {mean['hd95']:.1f} | "
                  f"{statistics.mean(r['cpu_s_per_it'] for r in runs):.2f} |")
    pairs = [(stored[f"upernet/{a.size}/{a.iterations}/{s}"], stored[f"upernet_fx/{a.size}/{a.iterations}/{s}"])
             for s in sorted({int(k.rsplit("/", 1)[1]) for k in stored})
             if f"upernet/{a.size}/{a.iterations}/{s}" in stored and f"upernet_fx/{a.size}/{a.iterations}/{s}" in stored]
    for split in ("validation", "test"):
        print(f"{split} dice_fx, upernet - upernet_fx per seed:",
              ", ".join(f"{u[split]['dice_fx'] - f[split]['dice_fx']:+.3f}" for u, f in pairs))


if __name__ == "__main__":
    main()
