"""What ``make demo`` reaches, measured: the full demo's test scores and pictures, and the classification baseline.

    python bench/demo_quality.py --out runs/demo_quality            # the demo as `make demo` runs it, then:
    python bench/demo_quality.py --out runs/demo_quality --reuse    # re-score an existing run (no training)
    python bench/demo_quality.py --out runs/demo_quality --baseline # + MONAI DenseNet-121 on the same images
    python bench/demo_quality.py --out runs/demo_quality --reuse --probe OTHER_PHANTOM  # pixel-level diagnostic

Writes ``docs/demo/`` (the pictures, ``summary.md``) and ``bench/results/demo_quality.json`` (the pooled test AUCs
of Foundation X and of the baseline), which the demo's summary reads for its classification line.

The baseline (issue 22: "a MONAI DenseNet-121 classifier on the same images and budget"): ``DenseNet121``
(spatial_dims 2, one input channel, five outputs, random start) trained on the classification labels of the
three phantom datasets' training splits (the images Foundation X's three classification heads see), the same
image size, batch size, augmentation (``cxrfx.data.pipelines``) and number of classification iterations as the
demo's run (one cycle's classification steps x cycles), AdamW with a one-cycle schedule, masked BCE; scored on
the same test images with the same AUC and bootstrap.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))

from cxrfx.demo import analyse, default_bundle, demo_settings, run_demo  # noqa: E402
from cxrfx.demo_report import VISIBLE_FINDINGS, baseline_lines  # noqa: E402
from cxrfx.metrics.auc import roc_auc  # noqa: E402
from cxrfx.metrics.bootstrap import bootstrap_ci  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "demo_quality.json"
BASELINES = "### Against the baselines (the benchmarks' latest stored results, not re-run here)"


def _demo_config(bundle: str) -> dict:
    with open(os.path.join(bundle, "configs", "demo.json"), encoding="utf-8") as f:
        return json.load(f)


def cls_iterations(log_path: str) -> int:
    """Classification iterations of a demo run, counted from the Lock-Release handler's step lines."""
    import re

    total = 0
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.search(r"step \d+/\d+ (?:lock|release) cls/\S+: (\d+) iterations", line)
            if m:
                total += int(m.group(1))
    return total


def pooled_auc(scores: np.ndarray, labels: np.ndarray, names, n_boot: int = 1000) -> dict:
    out = {}
    for j, name in enumerate(names):
        auc = roc_auc(scores[:, j], labels[:, j])
        out[name] = {"auc": auc, "ci": bootstrap_ci(roc_auc, scores[:, j], labels[:, j], n_boot=n_boot)}
    out["visible_mean"] = float(np.mean([out[n]["auc"] for n in VISIBLE_FINDINGS]))
    out["nodule"] = out["nodule"]["auc"]
    return out


def densenet_baseline(phantom_dir: str, size: int, batch_size: int, iterations: int, lr: float = 1e-3,
                      seed: int = 0) -> dict:
    """MONAI DenseNet-121 on the three phantom datasets' classification labels; pooled test AUCs."""
    from monai.networks.nets import DenseNet121

    from cxrfx.data.multitask import build_sources
    from cxrfx.data.phantom.render import LABELS
    from cxrfx.data.phantom.writer import PHANTOM_DATASETS

    torch.manual_seed(seed)
    data = {name: {"datalist": os.path.join(phantom_dir, name, "datalist.json"), "tasks": ["cls"]}
            for name in PHANTOM_DATASETS}
    train = build_sources(data, "training", size=size, batch_size=batch_size, train=True, seed=seed)
    test = build_sources(data, "test", size=size, batch_size=16, train=False, seed=seed)
    net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=len(LABELS))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=iterations, pct_start=0.1)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    iters = {k: iter(v) for k, v in train.items()}
    done = 0
    net.train()
    while done < iterations:
        for key in train:  # the datasets in turn, as the demo's cycle visits them
            try:
                batch = next(iters[key])
            except StopIteration:
                iters[key] = iter(train[key])
                batch = next(iters[key])
            y = batch["label"].float()
            known = (y >= 0).float()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(batch["image"]), y.clamp(min=0),
                                                                        reduction="none")
            loss = (loss * known).sum() / known.sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if done % 50 == 0:
                print(f"baseline: {done}/{iterations} loss {float(loss):.3f}", flush=True)
            if done >= iterations:
                break
    train_cpu, train_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    net.eval()
    scores, labels = [], []
    with torch.no_grad():
        for loader in test.values():
            for batch in loader:
                scores.append(torch.sigmoid(net(batch["image"])).numpy())
                labels.append(batch["label"].numpy())
    result = pooled_auc(np.concatenate(scores), np.concatenate(labels), LABELS)
    result.update(iterations=iterations, batch_size=batch_size, size=size, lr=lr,
                  parameters=sum(p.numel() for p in net.parameters()),
                  train_cpu_s=round(train_cpu, 1), train_wall_s=round(train_wall, 1))
    return result


def pixel_probe(phantom_dir: str, thumb: int = 16) -> dict:
    """Is the signal in the pixels? Logistic regression (scikit-learn) on ``thumb`` x ``thumb`` thumbnails of
    the three datasets' training images, C chosen per label on the validation split; pooled test AUC."""
    from PIL import Image
    from sklearn.linear_model import LogisticRegression

    from cxrfx.data.datalist import load_datalist
    from cxrfx.data.phantom.render import LABELS
    from cxrfx.data.phantom.writer import PHANTOM_DATASETS
    from cxrfx.io import load_cxr

    def split(name):
        x, y = [], []
        for dataset in PHANTOM_DATASETS:
            for item in load_datalist(os.path.join(phantom_dir, dataset, "datalist.json"), name):
                image, _ = load_cxr(item["image"])
                image = (image - image.min()) / (image.max() - image.min() + 1e-6)
                x.append(np.asarray(Image.fromarray(image.astype(np.float32)).resize((thumb, thumb),
                                                                                     Image.BILINEAR)).ravel())
                y.append(item["label"])
        return np.array(x), np.array(y, float)

    (xtr, ytr), (xva, yva), (xte, yte) = split("training"), split("validation"), split("test")
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    out = {"thumb": thumb, "train_images": len(xtr), "test_images": len(xte)}
    for j, name in enumerate(LABELS):
        fits = [LogisticRegression(C=c, max_iter=3000).fit((xtr - mu) / sd, ytr[:, j]) for c in (1e-3, 1e-2, 0.1, 1.0)]
        best = max(fits, key=lambda m: roc_auc(m.decision_function((xva - mu) / sd), yva[:, j]))
        out[name] = {"auc": roc_auc(best.decision_function((xte - mu) / sd), yte[:, j]), "C": best.C}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "runs" / "demo_quality"))
    ap.add_argument("--reuse", action="store_true", help="score the run already under --out (no training)")
    ap.add_argument("--baseline", action="store_true", help="also train the DenseNet-121 baseline")
    ap.add_argument("--probe", nargs="*", metavar="PHANTOM_DIR",
                    help="logistic regression on thumbnails of the run's phantom and of these other builds")
    ap.add_argument("--docs", default=str(ROOT / "docs" / "demo"))
    ap.add_argument("--n_boot", type=int, default=1000)
    args = ap.parse_args(argv)
    bundle = default_bundle()
    settings = demo_settings(bundle)
    out = os.path.abspath(args.out)
    overrides = {"dataset_dir": os.path.join(out, "phantom"), "phantom_count": settings["count"],
                 "phantom_size": settings["size"]}
    if not args.reuse:
        run_demo(out, n_boot=args.n_boot)
    else:
        md = analyse(out, bundle, overrides, n_boot=args.n_boot)
        print(md)
    with open(os.path.join(out, "scores.json"), encoding="utf-8") as f:
        scores = json.load(f)
    teacher = scores["teacher"]["cls"]
    fx = {name: {"auc": v["pooled"]["auc"], "ci": v["pooled"]["ci"]} for name, v in teacher.items()}
    fx["visible_mean"] = float(np.mean([fx[n]["auc"] for n in VISIBLE_FINDINGS]))
    fx["nodule"] = fx["nodule"]["auc"]
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["foundation_x_cls"] = fx
    results["foundation_x_seg"] = scores["teacher"]["seg"]
    results["foundation_x_det"] = scores["teacher"]["det"]
    demo = _demo_config(bundle)
    results["meta"] = {"phantom_count": settings["count"], "phantom_size": settings["size"],
                       "image_size": demo["image_size"], "batch_size": demo["batch_size"], "cycles": demo["epochs"],
                       "cls_iterations": cls_iterations(os.path.join(out, "train.log")),
                       "run": os.path.relpath(out, ROOT) if out.startswith(str(ROOT)) else out}
    if args.baseline:
        results["baseline_cls"] = densenet_baseline(os.path.join(out, "phantom"), demo["image_size"],
                                                    demo["batch_size"], results["meta"]["cls_iterations"])
    if args.probe is not None:
        from cxrfx.data.phantom.writer import read_manifest

        def name(d):
            p = (read_manifest(d) or {}).get("params", {})
            return f"phantom count {p.get('count')}, size {p.get('size')}, seed {p.get('seed')}"

        results["pixel_probe"] = {name(d): pixel_probe(d) for d in [os.path.join(out, "phantom"), *args.probe]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    # the summary's baseline lines again, now that this run's results are stored; then pictures + summary to docs
    summary_path = os.path.join(out, "summary.md")
    with open(summary_path, encoding="utf-8") as f:
        text = f.read()
    head, sep, rest = text.partition(BASELINES)
    if sep:
        tail = rest.split("\n\n", 2)  # ["", the list, what follows]
        lines = "\n".join(baseline_lines(str(ROOT)))
        text = head + sep + "\n\n" + lines + ("\n\n" + tail[2] if len(tail) > 2 else "\n")
        with open(summary_path, "w", encoding="utf-8") as f:
            f.write(text)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(out):
        if name.endswith(".png"):
            shutil.copy(os.path.join(out, name), docs / name)
    note = (f"<!-- generated by bench/demo_quality.py ({time.strftime('%Y-%m-%d')}): the run's summary.md; logs, "
            f"checkpoints and prediction files stay in the run folder -->\n")
    (docs / "summary.md").write_text(note + text)
    print(json.dumps({k: results[k] for k in results if k != "foundation_x_seg"}, indent=1)[:3000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
