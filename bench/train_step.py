"""Figure 3 — training overhead of the method: one Lock-Release iteration (student, EMA teacher's forward,
consistency loss) ÷ one plain supervised iteration of the same network and batch, per phase.

Same network, batch and task (segmentation on the phantom). "plain" = forward + Dice/BCE + backward + clip +
AdamW step; "release" / "lock" = ``MultiTaskTrainer``'s iteration in that phase with the teacher attached. The
teacher's EMA update runs once per Lock-Release step (hundreds of iterations); it is timed on its own and also
reported as if it ran every iteration (the worst case). The cycle figure weights the phases as the paper's
cycle does when every dataset has the same number of batches.

    .venv/bin/python bench/train_step.py [--backbone tiny|base] [--size 96] [--batch 4] [--repeats 7]
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from common import emit, interleaved_medians, machine
from cxrfx.data.multitask import build_sources
from cxrfx.data.phantom import phantom_sources
from cxrfx.engines import (DiceBCELoss, LockReleaseHandler, MultiTaskTrainer, TeacherHandler, build_optimizer,
                           ema_update, paper_cycle, parse_schedule)
from cxrfx.networks import FoundationX

SMALL = {"embed_dim": 32, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8), "window_size": 6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args()
    root = tempfile.mkdtemp()
    sources = phantom_sources(root, count=12, size=128)
    loaders = build_sources({"phantom_seg": {**sources["phantom_seg"], "tasks": ["seg"]}}, size=a.size,
                            batch_size=a.batch)
    torch.manual_seed(0)
    kwargs = {"backbone_kwargs": SMALL} if a.backbone == "tiny" else {}
    net = FoundationX(a.backbone, seg_heads={"phantom_seg": 8}, seg_channels=32 if a.backbone == "tiny" else 512,
                      psp_channels=64 if a.backbone == "tiny" else 512, **kwargs)
    batch = next(iter(loaders["seg/phantom_seg"]))
    teacher = TeacherHandler(net, momentum=0.8)
    schedule = [{"dataset": "phantom_seg", "task": "seg", "phase": phase, "iterations": 1000}
                for phase in ("lock", "release")]
    lock_release = LockReleaseHandler(schedule, loaders, net)
    trainer = MultiTaskTrainer("cpu", 1, net, build_optimizer(net), lock_release, teacher=teacher.teacher)
    trainer.state.device = torch.device("cpu")
    plain_opt = build_optimizer(net)
    loss_fn = DiceBCELoss()

    def plain():
        net.requires_grad_(True)
        net.train()
        plain_opt.zero_grad(set_to_none=True)
        loss_fn(net(batch["image"], task="seg", head="phantom_seg"), batch["mask"]).backward()
        torch.nn.utils.clip_grad_norm_([q for q in net.parameters() if q.grad is not None], 1.0)
        plain_opt.step()

    def method(index):
        def step():
            from cxrfx.engines import set_phase

            trainer.state.cxrfx_step = lock_release.steps[index]
            set_phase(net, lock_release.steps[index])
            trainer._iteration(trainer, batch)
        return step

    t = interleaved_medians({"plain": plain, "lock": method(0), "release": method(1),
                             "ema": lambda: ema_update(teacher.teacher, net, 0.8)}, a.repeats)
    steps = parse_schedule(paper_cycle())
    lock_share = sum(s.epoch_fraction for s in steps if s.phase == "lock") / sum(s.epoch_fraction for s in steps)
    release, lock = t["release"] / t["plain"], t["lock"] / t["plain"]
    emit({"machine": machine(), "backbone": a.backbone, "size": a.size, "batch": a.batch,
          "seconds": {k: round(v, 4) for k, v in t.items()},
          "release_ratio": round(release, 3), "lock_ratio": round(lock, 3),
          "release_ratio_ema_every_iteration": round((t["release"] + t["ema"]) / t["plain"], 3),
          "paper_cycle_lock_share": round(lock_share, 3),
          "paper_cycle_ratio": round(lock_share * lock + (1 - lock_share) * release, 3)})


if __name__ == "__main__":
    main()
