"""TeacherHandler: schedule independent of attach order, momentum 0 / 1, schedule-only state in checkpoints."""

from __future__ import annotations

import io
import math

import pytest
import torch
from ignite.engine import Engine, Events

from cxrfx.engines import LockReleaseHandler, MultiTaskTrainer, TeacherHandler, build_optimizer
from cxrfx.networks import FoundationX

NET = dict(backbone="tiny", backbone_kwargs={"embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 3, 6),
                                             "window_size": 4, "drop_path_rate": 0.0},
           seg_channels=16, psp_channels=32, det_channels=32)
SCHEDULE = [{"dataset": "a", "task": "cls", "phase": "release", "iterations": 1},
            {"dataset": "b", "task": "cls", "phase": "lock", "iterations": 1},
            {"dataset": "b", "task": "cls", "phase": "release", "iterations": 1}]


def _batches(n: int = 2) -> list[dict]:
    g = torch.Generator().manual_seed(n)
    return [{"image": torch.rand(2, 1, 32, 32, generator=g), "label": torch.randint(0, 2, (2, 3), generator=g).float(),
             "skipped": 0} for _ in range(n)]


@pytest.mark.parametrize("order", ["train_handlers", "teacher_argument"])
def test_cosine_schedule_counts_every_step_in_either_attach_order(order):
    """3 steps x 2 cycles = 6 updates from 0.5 to 1.0 whichever way the handler is attached. Attached through
    ``train_handlers`` (before the Lock-Release handler) it used to count 2 and reach 1.0 at the second update,
    freezing the teacher for the rest of the run."""
    torch.manual_seed(0)
    net = FoundationX(**NET, cls_heads={"a": 3, "b": 3})
    handler = TeacherHandler(net, momentum=0.5, final_momentum=1.0)
    lock_release = LockReleaseHandler(SCHEDULE, {"cls/a": _batches(), "cls/b": _batches()}, net)
    via_handlers = order == "train_handlers"
    trainer = MultiTaskTrainer("cpu", 2, net, build_optimizer(net, backbone_lr=1e-3, head_lr=1e-2), lock_release,
                               teacher=handler.teacher if via_handlers else handler,
                               train_handlers=[handler] if via_handlers else None)
    momenta, snapshots = [], []

    @trainer.on(Events.ITERATION_COMPLETED)  # one iteration per step: one teacher update each
    def record(engine):
        momenta.append(engine.state.teacher_momentum)
        snapshots.append(handler.teacher.backbone.patch_embed.proj.weight.detach().clone())

    trainer.run()
    assert handler.updates == 6 and handler.total_updates == 6
    expected = [1.0 - 0.5 * (math.cos(math.pi * k / 5) + 1) / 2 for k in range(6)]
    assert momenta == pytest.approx(expected)
    assert not torch.equal(snapshots[1], snapshots[4])  # the teacher still follows the student after update 2


def _linear_engine(handler: TeacherHandler, student: torch.nn.Module) -> Engine:
    def step(engine, batch):
        with torch.no_grad():
            student.weight.add_(1.0)

    engine = Engine(step)
    handler.attach(engine)
    return engine


@pytest.mark.parametrize("momentum", [0.0, 1.0])
def test_momentum_zero_copies_the_student_and_one_keeps_the_teacher(momentum):
    torch.manual_seed(0)
    student = torch.nn.Linear(2, 2)
    start = student.weight.detach().clone()
    handler = TeacherHandler(student, momentum=momentum, update_on="iteration")  # ignite's EMAHandler refused both
    _linear_engine(handler, student).run([0, 1, 2], max_epochs=1)
    assert handler.updates == 3
    torch.testing.assert_close(handler.teacher.weight, student.weight if momentum == 0.0 else start)
    torch.testing.assert_close(student.weight.detach(), start + 3)
    assert not handler.teacher.weight.requires_grad and not handler.teacher.training


def test_state_holds_the_schedule_only_and_old_checkpoints_still_load():
    torch.manual_seed(0)
    student = torch.nn.Linear(64, 64)
    handler = TeacherHandler(student, momentum=0.5, update_on="iteration")
    _linear_engine(handler, student).run([0, 1], max_epochs=1)
    assert handler.state_dict() == {"updates": 2}
    sizes = {}
    for name, objects in {"teacher": {"teacher": handler.teacher.state_dict()},
                          "both": {"teacher": handler.teacher.state_dict(), "teacher_handler": handler.state_dict()}
                          }.items():
        buffer = io.BytesIO()
        torch.save(objects, buffer)
        sizes[name] = len(buffer.getvalue())
    assert sizes["both"] - sizes["teacher"] < 1000  # the weights (16 kB here) are stored once

    old = {"updates": 7, "teacher": {k: v + 1.0 for k, v in handler.teacher.state_dict().items()}}  # earlier format
    fresh = TeacherHandler(student, momentum=0.5)
    fresh.load_state_dict(old)
    assert fresh.updates == 7
    torch.testing.assert_close(fresh.teacher.weight, old["teacher"]["weight"])
    fresh.load_state_dict({"updates": 3})
    assert fresh.updates == 3 and torch.equal(fresh.teacher.weight, old["teacher"]["weight"])


def test_cosine_schedule_counts_a_warmup_epoch_as_one_step():
    """A warm-up epoch (one step filling the epoch, e.g. SSL only) closes one step, not a cycle's three: 1 + 3 x 2
    updates, and the cosine reaches the final momentum at the last one (it used to count 9 and stop short)."""
    torch.manual_seed(0)
    net = FoundationX(**NET, cls_heads={"a": 3, "b": 3})
    handler = TeacherHandler(net, momentum=0.5, final_momentum=1.0)
    lock_release = LockReleaseHandler(SCHEDULE, {"cls/a": _batches(), "cls/b": _batches()}, net,
                                      warmup={"dataset": "a", "task": "cls", "phase": "release"}, warmup_epochs=1)
    trainer = MultiTaskTrainer("cpu", 3, net, build_optimizer(net, backbone_lr=1e-3, head_lr=1e-2), lock_release,
                               teacher=handler)
    momenta = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda e: momenta.append(getattr(e.state, "teacher_momentum", None)))
    trainer.run()
    assert handler.updates == 7 and handler.total_updates == 7
    assert momenta[-1] == pytest.approx(1.0)
    assert momenta[2] == pytest.approx(0.5)  # the warm-up epoch's 3 iterations end with the first update
