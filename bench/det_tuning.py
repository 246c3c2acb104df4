"""Choosing finetune_det's recipe for short budgets without looking at the benchmark's held-out images.

``bench/quality_det.py`` left one goal unmet: at 400 iterations from scratch the detector is just taking off (held-out
AP50 0.084 / 0.171 / 0.019 over three seeds) and not ahead of MONAI's RetinaNet on every seed. This script tries
variants of the recipe (learning rates, stochastic depth) at that budget. It trains ``quality_det.py``'s cxrfx arm
on the benchmark's own training images (the phantom of ``--phantom-seed`` plus its ``--extra-train`` build, as
``quality_det.py`` builds them) and scores every run on a **separate tuning phantom** (``--tuning-seed``, other
patients, every split of it), never on the benchmark's validation and test images: a variant picked here is judged
afresh by ``quality_det.py``.

Every finished (variant, seed) is stored in ``--results`` at once (several processes may share it: one per core);
``--report-only`` writes the table into docs/results.md between this script's markers.

    python bench/det_tuning.py --variants lr1x lr_half --seeds 0 1 &
    python bench/det_tuning.py --variants lr_quarter lr_eighth --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import quality_det as qd  # noqa: E402
from common import mean_std, write_between  # noqa: E402

BEGIN, END = "<!-- det_tuning.py: begin (generated) -->", "<!-- det_tuning.py: end -->"


# Bundle overrides on top of finetune_det's train.json + demo.json, each a whole recipe (learning rates of the heads
# and the backbone, stochastic depth), so a variant means the same whatever the bundle's default is. "lr1x" is the
# recipe before this study (head 1e-3, backbone 3e-4, drop path 0.1); the others scale both learning rates.
def _recipe(scale: float, drop_path: float = 0.1) -> dict:
    return {"head_lr": 1e-3 * scale, "backbone_lr": 3e-4 * scale, "backbone_kwargs#drop_path_rate": drop_path}


VARIANTS = {
    "lr3x": {**_recipe(3.0), "backbone_lr": 1e-3},
    "lr2x": _recipe(2.0),
    "lr1x": _recipe(1.0),
    "lr1x_no_droppath": _recipe(1.0, 0.0),
    "lr_half": _recipe(0.5),
    "lr_quarter": _recipe(0.25),
    "lr_eighth": _recipe(0.125),
}


def tuning_datalist(train_list: str, tuning: str) -> str:
    """``train_list``'s training images; the tuning phantom's every image as validation (its training and validation
    splits) and test (its test split), so ``quality_det.evaluate`` scores all of them. Written beside
    ``train_list``, image paths relative to it."""
    base, other = json.load(open(train_list)), json.load(open(tuning))
    here, there = Path(train_list).resolve().parent, Path(tuning).resolve().parent

    def moved(items):
        return [{**it, "id": f"tuning_{it['id']}", "image": os.path.relpath(there / it["image"], here)} for it in items]

    out = here / "datalist_tuning.json"
    out.write_text(json.dumps({**{k: v for k, v in base.items() if k not in ("validation", "test")},
                               "validation": moved(other["training"] + other["validation"]),
                               "test": moved(other["test"])}, indent=1))
    return str(out)


def report(stored: dict) -> str:
    meta, runs = stored["meta"], stored["runs"]
    lines = [BEGIN, "", f"The cxrfx arm of `bench/quality_det.py` trained on the benchmark's {meta['train_images']} "
             f"training images, {meta['iterations']} iterations of batch {meta['batch']}, {meta['threads']} torch "
             f"thread(s); scored on a tuning phantom of other patients (`phantom_det` seed {meta['tuning_seed']}, "
             f"{meta['eval_images']} images, {meta['eval_lesions']} lesions), not on the benchmark's held-out "
             "images. mean ± std over seeds.", "",
             "Reproduce (resumes): `python bench/det_tuning.py --variants " + " ".join(VARIANTS) + " --seeds 0 1`", "",
             "| variant | overrides | n | AP50 | AP50 CNR ≥ 1 | CPM (FROC) | final loss | AP50 per seed |",
             "|---|---|---|---|---|---|---|---|"]
    for name, overrides in VARIANTS.items():
        rs = sorted((r for r in runs.values() if r["variant"] == name), key=lambda r: r["seed"])
        if not rs:
            continue
        shown = ", ".join(f"`{k.split('#')[-1]}` {v:g}" for k, v in overrides.items())
        lines.append(f"| {name} | {shown} | {len(rs)} | {mean_std([r['ap50'] for r in rs])} | "
                     f"{mean_std([r['ap50_visible'] for r in rs])} | {mean_std([r['cpm'] for r in rs])} | "
                     f"{mean_std([r['final_loss'] for r in rs])} | "
                     + " / ".join(f"{r['ap50']:.3f}" for r in rs) + " |")
    return "\n".join(lines + ["", END])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.expanduser("~/.cache/cxrfx/bench/quality_det"))
    ap.add_argument("--tuning-data", default=os.path.expanduser("~/.cache/cxrfx/bench/det_tuning"))
    ap.add_argument("--count", type=int, default=792)
    ap.add_argument("--extra-train", type=int, default=1800)
    ap.add_argument("--tuning-count", type=int, default=600)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--phantom-seed", type=int, default=1015)
    ap.add_argument("--tuning-seed", type=int, default=1030)
    ap.add_argument("--variants", nargs="+", default=["lr1x"], choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--iterations", type=int, default=qd.DEFAULT_ITERATIONS)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", default=str(HERE / "results" / "det_tuning.json"))
    ap.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args(argv)
    results = Path(a.results)
    if not a.report_only:
        torch.set_num_threads(a.threads)
        datalist = qd.build_phantom(Path(a.data), a.count, a.size, a.phantom_seed)
        extra = qd.build_phantom(Path(f"{a.data}_extra{a.extra_train}"), a.extra_train, a.size, a.phantom_seed + 1)
        tuning = qd.build_phantom(Path(a.tuning_data), a.tuning_count, a.size, a.tuning_seed)
        train_list = tuning_datalist(qd.with_extra_training(datalist, extra), tuning)
        items = json.load(open(train_list))
        held_out = items["validation"] + items["test"]
        meta = {"phantom_seed": a.phantom_seed, "tuning_seed": a.tuning_seed, "size": a.size, "batch": a.batch,
                "iterations": a.iterations, "threads": a.threads, "train_images": len(items["training"]),
                "eval_images": len(held_out),
                "eval_lesions": sum(len(it.get("meta", {}).get("lesions", [])) for it in held_out)}
        with qd.locked_store(results) as stored:
            if stored.get("meta") and stored["meta"] != meta:
                raise SystemExit(f"{results} holds runs of another setting ({stored['meta']}); use another --results")
            stored["meta"] = meta
        for key in qd.to_run(results, [f"{name}/{seed}" for seed in a.seeds for name in a.variants]):
            name, seed = key.split("/")[0], int(key.split("/")[1])
            r = qd.train("cxrfx", train_list, a.size, a.batch, seed, a.iterations, None, overrides=VARIANTS[name])
            r.update(variant=name, seed=seed)
            with qd.locked_store(results) as stored:
                stored["runs"][key] = r
            print(f"{key}: AP50 {r['ap50']:.3f}, CNR>=1 {r['ap50_visible']:.3f}, CPM {r['cpm']:.3f}, "
                  f"loss {r['final_loss']:.3f}, {r['train_wall_s']:.0f} s", flush=True)
    text = report(qd.read_store(results))
    write_between(a.doc, text, BEGIN, END, "# Detection recipe for short budgets (`bench/det_tuning.py`)")
    print(text)


if __name__ == "__main__":
    main()
