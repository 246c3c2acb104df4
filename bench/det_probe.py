"""Detection probe: train one detector on a detection datalist with the bundles' data pipeline and report AP50,
recall at any score, detections per image and the top score every 100 iterations (the diagnosis behind
docs/results.md's detection section; bench/quality_det.py is the benchmark proper).

    python bench/det_probe.py --data DATALIST --iters 400 --strides 4,8,16,32 --anchors fit --settings '{"sampler": "none"}'
    python bench/det_probe.py --data DATALIST --iters 400 --arm monai      # MONAI RetinaNet-ResNet-18 (det_baseline.py)
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from cxrfx.networks import FoundationX
from cxrfx.networks.heads.detection import build_detector
from cxrfx.networks.heads.detection import detection_loss
from cxrfx.engines import build_optimizer
from cxrfx.data.multitask import build_sources
from cxrfx.metrics import ap50
from monai.optimizers import WarmupCosineSchedule
ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True)
ap.add_argument("--size", type=int, default=256)
ap.add_argument("--iters", type=int, default=400)
ap.add_argument("--bs", type=int, default=8)
ap.add_argument("--strides", default="8,16,32,64")
ap.add_argument("--anchors", default="default")
ap.add_argument("--settings", default="{}")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--eval_split", default="test")
ap.add_argument("--arm", default="cxrfx")
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--blr", type=float, default=3e-4)
ap.add_argument("--stem", default="patch")
ap.add_argument("--embed", type=int, default=32)
a = ap.parse_args()
torch.manual_seed(a.seed)
strides = tuple(int(s) for s in a.strides.split(","))
anchors = None
if a.anchors == "fit":
    from cxrfx.data.boxes import propose_anchors
    anchors = propose_anchors(a.data, a.size, strides)["shapes"]
    print("anchors", anchors)
model = FoundationX("tiny", det_heads={"n": 2}, backbone_kwargs=dict(embed_dim=a.embed, depths=(2,2,2,2), num_heads=(1,2,4,8), window_size=8, drop_path_rate=0.1, stem=a.stem),
                    det_channels=64, default_task="det", det_strides=strides, det_anchors=anchors, detector_settings=json.loads(a.settings))
src = {"n": {"datalist": a.data, "tasks": ["det"]}}
tr = build_sources(src, "training", a.size, a.bs, train=True, seed=a.seed, cache_rate=1.0)["det/n"]
te = build_sources(src, a.eval_split, a.size, a.bs, train=False, seed=a.seed, cache_rate=1.0)["det/n"]
det = build_detector(model, "n")
opt = build_optimizer(model, backbone_lr=a.blr, head_lr=a.lr, weight_decay=1e-4)
if a.arm == "monai":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from det_baseline import monai_retinanet
    from cxrfx.data.boxes import box_sizes, fit_anchor_shapes
    hw = box_sizes(a.data, a.size)["hw"]
    base = [[h, w] for h, w in fit_anchor_shapes(hw, [4], 3, 0.5, 100)[0]]
    print("base shapes", base)
    model, det = monai_retinanet(2, base)
    opt = torch.optim.AdamW(model.parameters(), a.lr, weight_decay=1e-4)
sch = WarmupCosineSchedule(opt, warmup_steps=max(1, a.iters // 20), t_total=a.iters)
def evaluate():
    model.eval(); d = (build_detector(model, "n", score_thresh=0.02) if a.arm == "cxrfx" else det).eval(); P, G = [], []
    with torch.no_grad():
        for b in te:
            for o in d(b["image"]):
                P.append({"boxes": o["boxes"], "scores": o["labels_scores"], "labels": o["labels"]})
            G += [{"boxes": torch.as_tensor(x).reshape(-1, 4), "labels": torch.as_tensor(l).reshape(-1)} for x, l in zip(b["boxes"], b["box_labels"])]
    from cxrfx.metrics.detection import coco_ap
    r = coco_ap(P, G, [0.5])
    from cxrfx.metrics.detection import box_iou_coco
    hit = [ (box_iou_coco(g["boxes"], p["boxes"]).max(1) >= 0.5) if len(p["boxes"]) and len(g["boxes"]) else np.zeros(len(g["boxes"]), bool) for p, g in zip(P, G)]
    rec = float(np.concatenate(hit).mean())
    nd = np.mean([len(p["boxes"]) for p in P]); ms = max(float(p["scores"].max()) if len(p["scores"]) else 0 for p in P)
    return round(r["map"], 3), {k: round(v, 3) for k, v in r["per_category"].items()}, "recall_any", round(rec, 3), "ndet", round(nd, 1), "maxscore", round(ms, 3)
t0 = time.time(); it = 0; hist = []
while it < a.iters:
    for b in tr:
        model.train()
        x = b["image"]
        tg = [{"boxes": torch.as_tensor(bb, dtype=torch.float32).reshape(-1, 4), "labels": torch.as_tensor(l, dtype=torch.long).reshape(-1)} for bb, l in zip(b["boxes"], b["box_labels"])]
        if a.arm == "cxrfx":
            out = model(x, task="det", head="n")
            L = detection_loss(det, x, out, tg)
        else:
            det.train(); L = det(x, tg)
        loss = sum(L.values())
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); sch.step()
        hist.append([float(v.detach()) for v in L.values()]); it += 1
        if it % 100 == 0 or it == a.iters:
            print(it, np.mean(hist[-100:], 0).round(4), "test", evaluate(), f"{time.time()-t0:.0f}s", flush=True)
        if it >= a.iters: break
