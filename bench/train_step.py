"""Training overhead of the method: one Lock-Release step (teacher forward + consistency) vs a plain step.

Same network, same batch, same task (segmentation on the phantom, release phase), medians over repeats in one
run. "plain" = forward + Dice/BCE + backward + AdamW step; "method" = MultiTaskTrainer's iteration with the EMA
teacher's forward and the consistency term (the teacher update itself runs once per step of the cycle and is
timed separately).

    .venv/bin/python bench/train_step.py [--backbone tiny|base] [--size 96] [--batch 4] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from cxrfx.data.multitask import build_sources
from cxrfx.data.phantom import phantom_sources
from cxrfx.engines import DiceBCELoss, LockReleaseHandler, MultiTaskTrainer, TeacherHandler, build_optimizer, ema_update
from cxrfx.networks import FoundationX

SMALL = {"embed_dim": 32, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8), "window_size": 6}


def timed(fn, repeats):
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    root = tempfile.mkdtemp()
    sources = phantom_sources(root, count=12, size=128)
    loaders = build_sources({"phantom_seg": {**sources["phantom_seg"], "tasks": ["seg"]}}, size=a.size,
                            batch_size=a.batch)
    kwargs = {"backbone_kwargs": SMALL} if a.backbone == "tiny" else {}
    net = FoundationX(a.backbone, seg_heads={"phantom_seg": 8}, seg_channels=32 if a.backbone == "tiny" else 128,
                      psp_channels=64 if a.backbone == "tiny" else 1024, **kwargs)
    batch = next(iter(loaders["seg/phantom_seg"]))
    schedule = [{"dataset": "phantom_seg", "task": "seg", "iterations": 1000}]
    teacher = TeacherHandler(net, momentum=0.8)
    trainer = MultiTaskTrainer("cpu", 1, net, build_optimizer(net), LockReleaseHandler(schedule, loaders, net),
                               teacher=teacher.teacher)
    trainer.state.cxrfx_step = trainer.lock_release.steps[0]
    trainer.state.device = torch.device("cpu")
    plain_opt = build_optimizer(net)
    loss_fn = DiceBCELoss()

    def plain():
        net.train()
        plain_opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(batch["image"], task="seg", head="phantom_seg"), batch["mask"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_([q for q in net.parameters() if q.grad is not None], 1.0)
        plain_opt.step()

    def method():
        trainer._iteration(trainer, batch)

    # interleaved rounds so that machine noise hits both alike
    plains, methods = [], []
    for _ in range(a.repeats):
        plains.append(timed(plain, 1))
        methods.append(timed(method, 1))
    t_plain, t_method = statistics.median(plains), statistics.median(methods)
    t_ema = timed(lambda: ema_update(teacher.teacher, net, 0.8), a.repeats)
    print(json.dumps({"backbone": a.backbone, "size": a.size, "batch": a.batch, "plain_step_s": round(t_plain, 4),
                      "method_step_s": round(t_method, 4), "ratio": round(t_method / t_plain, 3),
                      "teacher_update_s": round(t_ema, 4), "teacher_update_over_plain": round(t_ema / t_plain, 3)},
                     indent=1))


if __name__ == "__main__":
    main()
