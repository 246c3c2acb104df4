"""The demo's reading of a trained Foundation X run: every head on the held-out test split, scores per label and
per class with 95% bootstrap intervals, the pictures (predictions beside the ground truth, ROC curves, the
learning curve) and one line per task on how the model compares with the baseline a user would pick, read from
the benchmarks' latest generated results (never re-run here).

Used by :mod:`cxrfx.demo` (``make demo``) and ``bench/demo_quality.py``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from cxrfx.metrics.auc import roc_auc
from cxrfx.metrics.bootstrap import bootstrap_ci
from cxrfx.metrics.detection import ap50
from cxrfx.outputs.figures import render_comparison, save_comparisons, save_line_chart, save_roc_figure

__all__ = ["bundle_parser", "test_predictions", "score_tables", "read_learning_curve", "write_figures",
           "baseline_lines", "dice"]

# organs the demo's segmentation target is about, and the findings visible at its size (nodules apart)
TARGET_ORGANS = ("lung_left", "lung_right", "heart")
VISIBLE_FINDINGS = ("cardiomegaly", "effusion", "pneumothorax", "mass")


def bundle_parser(bundle: str, configs: Sequence[str], **overrides):
    """The bundle's configs (``configs/<name>`` in order) as a MONAI ``ConfigParser`` with ``overrides``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([os.path.join(bundle, "configs", c) for c in configs])
    for key, value in overrides.items():
        parser[key] = value
    return parser


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty (as ``dice_fx`` counts them)."""
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


@torch.no_grad()
def test_predictions(parser, checkpoint: str, models: Sequence[str] = ("student", "teacher"), split: str = "test",
                     batch_size: int = 8) -> dict:
    """Every head of the network in ``parser`` (``network_def``, ``datasets``, ``image_size``) on ``split``,
    with the weights of ``checkpoint`` (a training checkpoint holding ``student`` / ``teacher``).

    Returns ``{model: {"<task>/<dataset>": {...}}}``: cls ``ids``, ``scores`` (N, L), ``labels`` (N, L), ``names``;
    seg ``ids``, ``images`` (N, H, W), ``pred`` / ``truth`` (N, C, H, W) booleans, ``names``; det ``ids``,
    ``images``, ``pred`` / ``truth`` (per image ``boxes`` [r1, c1, r2, c2], ``labels``, ``scores``), ``names``.
    """
    from cxrfx.data.datalist import read_datalist
    from cxrfx.data.multitask import build_sources
    from cxrfx.networks.foundation_x import HeadPredictor

    network = parser.get_parsed_content("network_def")
    datasets = parser.get_parsed_content("datasets")
    size = parser.get_parsed_content("image_size")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    loaders = build_sources(datasets, split, size=size, batch_size=batch_size, num_workers=0, train=False)
    out: dict = {}
    for model in models:
        network.load_state_dict(state[model])
        network.eval()
        predictor = HeadPredictor(network, {"det": {"score_thresh": 0.02}})
        out[model] = {}
        for key, loader in loaders.items():
            task, head = key.split("/", 1)
            tasks = read_datalist(datasets[head]["datalist"])["tasks"]
            rec: dict = {"ids": [], "images": [], "pred": [], "truth": []}
            for batch in loader:
                images = batch["image"]
                rec["ids"] += list(batch.get("id", [""] * len(images)))
                pred = predictor(images, task, head)
                if task == "cls":
                    rec["pred"].append(pred.float().numpy())
                    rec["truth"].append(batch["label"].float().numpy())
                    continue
                rec["images"] += [im[0].numpy() for im in images]
                if task == "seg":
                    rec["pred"] += list((pred > 0.5).numpy())
                    rec["truth"] += list(batch["mask"].numpy() > 0.5)
                else:
                    rec["pred"] += [{k: v.float().numpy() for k, v in p.items()} for p in pred]
                    rec["truth"] += [{k: v.numpy() for k, v in t.items()}
                                     for t in network.head_type("det").targets(batch)]
            if task == "cls":
                rec = {"ids": rec["ids"], "scores": np.concatenate(rec["pred"]), "labels": np.concatenate(rec["truth"]),
                       "names": list(tasks["classification"]["labels"])}
            else:
                rec["names"] = list(tasks["segmentation" if task == "seg" else "detection"]["classes"])
            out[model][key] = rec
    return out


def _fmt(value: float, ci: tuple[float, float] | None = None) -> str:
    if value != value:
        return "n/a"
    if ci is None or ci[0] != ci[0]:
        return f"{value:.3f}"
    return f"{value:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _auc_ci(scores: np.ndarray, labels: np.ndarray, n_boot: int) -> tuple[float, tuple[float, float]]:
    return roc_auc(scores, labels), bootstrap_ci(roc_auc, scores, labels, n_boot=n_boot)


def _ap50_of(preds, truths) -> float:
    import torch as _t

    def tensors(items):
        return [{k: _t.as_tensor(v) for k, v in it.items()} for it in items]

    return ap50(tensors(preds), tensors(truths))


def score_tables(preds: Mapping, n_boot: int = 1000) -> tuple[str, dict]:
    """Markdown tables of one model's test predictions (from :func:`test_predictions`) with 95% bootstrap
    intervals over images, and the same numbers as a dict (``cls`` per label and dataset and pooled over the
    classification heads, ``seg`` Dice per class, ``det`` AP50).

    Pooled AUC: every classification head's test images together, each scored by its own dataset's head.
    """
    scores: dict = {"cls": {}, "seg": {}, "det": {}}
    lines = []
    cls = {k.split("/", 1)[1]: v for k, v in preds.items() if k.startswith("cls/")}
    if cls:
        names = next(iter(cls.values()))["names"]
        heads = list(cls)
        lines += ["| label | " + " | ".join(f"{h} (n={len(cls[h]['ids'])})" for h in heads)
                  + f" | pooled (n={sum(len(c['ids']) for c in cls.values())}) | positives |",
                  "|---|" + "---|" * (len(heads) + 2)]
        for j, name in enumerate(names):
            row, per = [], {}
            for h in heads:
                auc, ci = _auc_ci(cls[h]["scores"][:, j], cls[h]["labels"][:, j], n_boot)
                per[h] = {"auc": auc, "ci": ci}
                row.append(_fmt(auc, ci))
            s = np.concatenate([cls[h]["scores"][:, j] for h in heads])
            y = np.concatenate([cls[h]["labels"][:, j] for h in heads])
            auc, ci = _auc_ci(s, y, n_boot)
            per["pooled"] = {"auc": auc, "ci": ci}
            scores["cls"][name] = per
            lines.append(f"| {name} | " + " | ".join(row) + f" | **{_fmt(auc, ci)}** | {int((y == 1).sum())} |")
        lines.append("")
    for key, rec in preds.items():
        task, head = key.split("/", 1)
        if task == "seg":
            pred, truth = np.stack(rec["pred"]), np.stack(rec["truth"])
            lines += [f"| {head} class (n={len(pred)}) | Dice [95% CI] |", "|---|---|"]
            for c, name in enumerate(rec["names"]):
                per_image = np.array([dice(pred[i, c], truth[i, c]) for i in range(len(pred))])
                value, ci = float(per_image.mean()), bootstrap_ci(np.mean, per_image, n_boot=n_boot)
                scores["seg"][name] = {"dice": value, "ci": ci}
                bold = name in TARGET_ORGANS
                lines.append(f"| {name} | {'**' if bold else ''}{_fmt(value, ci)}{'**' if bold else ''} |")
            lines.append("")
        elif task == "det":
            idx = np.arange(len(rec["pred"]))
            value = _ap50_of(rec["pred"], rec["truth"])

            def resampled(i, found=rec["pred"], truth=rec["truth"]):
                return _ap50_of([found[k] for k in i], [truth[k] for k in i])

            ci = bootstrap_ci(resampled, idx, n_boot=min(n_boot, 200))
            n_boxes = sum(len(t["boxes"]) for t in rec["truth"])
            scores["det"][head] = {"ap50": value, "ci": ci}
            lines += [f"| {head} detection (n={len(idx)}, {n_boxes} boxes) | AP50 [95% CI] |", "|---|---|",
                      f"| nodule + mass | {_fmt(value, ci)} |", ""]
    return "\n".join(lines), scores


_EPOCH = re.compile(r"Epoch\[(\d+)\] Metrics -- (.*)$")


def read_learning_curve(log_path: str) -> dict[int, dict[str, float]]:
    """``{cycle: {metric: value}}`` from a training log's per-epoch validation lines (MONAI ``StatsHandler``:
    ``Epoch[k] Metrics -- name: value name: value ...``); one epoch of the demo is one Lock-Release cycle."""
    curve: dict[int, dict[str, float]] = {}
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = _EPOCH.search(line.rstrip())
            if not m:
                continue
            values = dict(re.findall(r"(\S+): (-?[0-9.]+(?:e-?\d+)?|nan)", m.group(2)))
            curve[int(m.group(1))] = {k: float(v) for k, v in values.items()}
    return curve


def _panel_caption(rec_cls: Mapping | None, index: int, ident: str, extra: str = "") -> str:
    lines = [ident + extra]
    if rec_cls is not None and ident in rec_cls["ids"]:
        k = rec_cls["ids"].index(ident)
        parts = []
        for j, name in enumerate(rec_cls["names"]):
            mark = "*" if rec_cls["labels"][k, j] == 1 else " "
            parts.append(f"{name} {rec_cls['scores'][k, j]:.2f}{mark}")
        lines += ["P(finding), * = true:", "  ".join(parts[:3]), "  ".join(parts[3:])]
    return "\n".join(lines)


def write_figures(preds: Mapping, curve: Mapping[int, Mapping[str, float]], out_dir: str, panels: int = 4,
                  box_score: float = 0.3) -> dict[str, str]:
    """The demo's pictures of one model's test predictions under ``out_dir``; returns ``{name: path}``.

    - ``predictions_vs_truth.png``: test films, ground truth left and prediction right (mask contours; truth
      boxes green, predicted boxes scoring >= ``box_score`` orange), finding probabilities under each.
    - ``roc.png``: per-label ROC curves, every classification head's test images pooled; ``roc_<dataset>.png``.
    - ``learning_curve.png``: the validation scores of the teacher after every cycle.
    """
    paths: dict[str, str] = {}
    os.makedirs(out_dir, exist_ok=True)
    drawn = []
    for key, rec in preds.items():
        task, head = key.split("/", 1)
        if task == "seg":
            keep = [c for c in rec["names"] if c != "ribs"]  # ribs' contours would hide everything else
            cls = preds.get(f"cls/{head}")
            for i in range(min(panels, len(rec["ids"]))):
                masks = [{c: m[k] for k, c in enumerate(rec["names"]) if c in keep}
                         for m in (rec["truth"][i], rec["pred"][i])]
                d = "  ".join(f"{c} {dice(rec['pred'][i][k], rec['truth'][i][k]):.2f}"
                              for k, c in enumerate(rec["names"]) if c in TARGET_ORGANS)
                drawn.append(render_comparison(rec["images"][i], masks[0], masks[1], class_order=keep,
                                               caption=_panel_caption(cls, i, rec["ids"][i], "") + "\nDice " + d))
        elif task == "det":
            cls = preds.get(f"cls/{head}")
            order = sorted(range(len(rec["ids"])), key=lambda i: -len(rec["truth"][i]["boxes"]))[:panels]
            for i in sorted(order):
                rc = [[b[1], b[0], b[3], b[2]] for b in rec["truth"][i]["boxes"]]  # [r1, c1, r2, c2] -> x, y
                keep = rec["pred"][i]["scores"] >= box_score
                pc = [[b[1], b[0], b[3], b[2]] for b in rec["pred"][i]["boxes"][keep][:5]]
                drawn.append(render_comparison(rec["images"][i], truth_boxes=rc, pred_boxes=pc,
                                               caption=_panel_caption(cls, i, rec["ids"][i],
                                                                      f"  boxes: {len(rc)} true, {len(pc)} found")))
    if drawn:
        paths["predictions"] = save_comparisons(drawn, os.path.join(out_dir, "predictions_vs_truth.png"), columns=4)
    cls = {k.split("/", 1)[1]: v for k, v in preds.items() if k.startswith("cls/")}
    if cls:
        names = next(iter(cls.values()))["names"]
        pooled = {n: (np.concatenate([c["scores"][:, j] for c in cls.values()]),
                      np.concatenate([c["labels"][:, j] for c in cls.values()])) for j, n in enumerate(names)}
        paths["roc"] = save_roc_figure(os.path.join(out_dir, "roc.png"), pooled,
                                       title=f"test ROC, {len(cls)} heads pooled")
        for head, c in cls.items():
            paths[f"roc_{head}"] = save_roc_figure(os.path.join(out_dir, f"roc_{head}.png"),
                                                   {n: (c["scores"][:, j], c["labels"][:, j])
                                                    for j, n in enumerate(c["names"])}, title=f"test ROC, {head}")
    if curve:
        cycles = sorted(curve)
        keys = sorted({k for v in curve.values() for k in v if k.startswith("teacher/") and k.count("/") == 3
                       and k.rsplit("/", 1)[1] in ("auc", "dice_fx", "ap50")})
        series = {k[len("teacher/"):]: (cycles, [curve[c].get(k, float("nan")) for c in cycles]) for k in keys}
        paths["learning_curve"] = save_line_chart(os.path.join(out_dir, "learning_curve.png"), series,
                                                  title="validation score of the teacher after each cycle",
                                                  xlabel="cycle", ylabel="AUC / Dice / AP50", ylim=(0, 1),
                                                  markers=True, size=(460, 320))
    return paths


def _latest_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def baseline_lines(repo: str) -> list[str]:
    """One line per task: how cxrfx compares with its baseline in the benchmarks' latest stored results
    (``bench/results/*.json``), or that no such result exists yet. Nothing is re-run."""
    results = os.path.join(repo, "bench", "results")
    lines = []
    demo = _latest_json(os.path.join(results, "demo_quality.json"))
    base = (demo or {}).get("baseline_cls")
    fx = (demo or {}).get("foundation_x_cls")
    if base and fx:
        lines.append(f"- **Classification** (bench/demo_quality.py, same phantom, images and iterations): Foundation X "
                     f"pooled test AUC {fx['visible_mean']:.3f} over {', '.join(VISIBLE_FINDINGS)} vs MONAI "
                     f"DenseNet-121 {base['visible_mean']:.3f}; nodules {fx['nodule']:.3f} vs {base['nodule']:.3f}.")
    else:
        lines.append("- **Classification**: no stored baseline result (run `bench/demo_quality.py --baseline`).")
    seg = _latest_json(os.path.join(results, "quality_seg.json"))
    seg_line = _seg_line(seg) if seg else None
    lines.append(seg_line or "- **Segmentation**: no stored comparison with MONAI's UNet in bench/results yet.")
    det = _latest_json(os.path.join(results, "quality_det.json"))
    lines.append(_det_line(det) if det else "- **Detection**: no stored comparison with MONAI RetinaNet yet.")
    return lines


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if v == v]
    return float(np.mean(values)) if values else float("nan")


def _det_line(det: Mapping) -> str:
    runs = det.get("runs", {})
    by_arm: dict = {}
    for run in runs.values():
        by_arm.setdefault((run.get("arm"), run.get("budget")), []).append(run)
    meta = det.get("meta", {})
    for (arm, budget), items in by_arm.items():
        if arm != "cxrfx":
            continue
        other = by_arm.get(("monai", budget))
        if not other:
            continue
        a, b = _mean([r["ap50"] for r in items]), _mean([r["ap50"] for r in other])
        return (f"- **Detection** (bench/quality_det.py, budget '{budget}', {meta.get('size', '?')} px, "
                f"{len(items)} / {len(other)} seeds): finetune_det test AP50 {a:.3f} vs MONAI RetinaNet-ResNet-18 "
                f"{b:.3f} (CPM {_mean([r.get('cpm', float('nan')) for r in items]):.3f} vs "
                f"{_mean([r.get('cpm', float('nan')) for r in other]):.3f}).")
    return "- **Detection**: bench/results/quality_det.json holds no cxrfx / MONAI pair at one budget."


def _seg_line(seg: Mapping) -> str | None:
    """finetune_seg's UperNet (the segmentation head Foundation X uses) against MONAI's UNet in
    ``quality_seg.json``: mean test ``dice_fx`` over the seeds both arms have at the most common budget, default
    settings (no variant)."""
    runs = [r for r in (seg.get("runs") or {}).values() if isinstance(r, Mapping) and not r.get("variant")
            and isinstance(r.get("test"), Mapping)]
    by_arm: dict = {}
    for r in runs:
        by_arm.setdefault((r.get("arm"), r.get("iterations_budget", r.get("iterations"))), []).append(r)
    budgets = sorted({b for (a, b) in by_arm if a == "upernet" and ("monai_unet", b) in by_arm},
                     key=lambda b: -len(by_arm[("upernet", b)]))
    if not budgets:
        return None
    budget = budgets[0]
    ours, unet = by_arm[("upernet", budget)], by_arm[("monai_unet", budget)]
    meta = seg.get("meta", {})

    def organs(items):
        return _mean([r["test"].get("per_class", {}).get(c, {}).get("dice_fx", float("nan"))
                      for r in items for c in TARGET_ORGANS])

    return (f"- **Segmentation** (bench/quality_seg.py, {meta.get('size', '?')} px, {budget} iterations from scratch, "
            f"{len(ours)} / {len(unet)} seeds): finetune_seg's UperNet test dice_fx "
            f"{_mean([r['test']['dice_fx'] for r in ours]):.3f} vs MONAI UNet "
            f"{_mean([r['test']['dice_fx'] for r in unet]):.3f} (lungs and heart {organs(ours):.3f} vs "
            f"{organs(unet):.3f}).")
