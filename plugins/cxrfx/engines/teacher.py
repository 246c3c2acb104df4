"""``TeacherHandler``: the EMA teacher of Foundation X / Ark.

teacher <- m * teacher + (1 - m) * student, where ``m`` is the teacher momentum (paper: 0.8 after each
Lock-Release step; Ark: cosine from 0.9 to 1.0; ``m = 1`` keeps the teacher fixed, ``m = 0`` copies the
student). Not ignite's ``EMAHandler``: its schedule is a linear warm-up only (no cosine), it refuses ``m`` of 0
or 1 (its momentum is ``1 - m``, in the open interval (0, 1)), it loops over parameters in Python, and its
``"copy"`` makes the teacher's buffers alias the student's. Here the update runs as fused ``torch._foreach`` ops
over all tensors. Buffers (BatchNorm statistics) are copied from the student (``buffers="copy"``) or averaged
too (``"update"``); the reference code did neither (REFERENCE §1.10 item 3).

The teacher stays in eval mode, receives no gradient, and serves consistency targets and evaluation.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import TYPE_CHECKING

import torch
from monai.utils import optional_import
from torch import nn

from cxrfx.engines.lock_release import LockReleaseEvents, register_lock_release_events
from cxrfx.errors import ConfigError

Events, _ = optional_import("ignite.engine", name="Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", name="Engine")

__all__ = ["TeacherHandler", "ema_update"]


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float, buffers: str = "copy") -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, for all parameters (and buffers per mode)."""
    t_params = list(teacher.parameters())
    s_params = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
    t_bufs, s_bufs = list(teacher.buffers()), list(student.buffers())
    if buffers == "update":
        floats = [(t, s) for t, s in zip(t_bufs, s_bufs) if t.is_floating_point()]
        if floats:
            torch._foreach_mul_([t for t, _ in floats], momentum)
            torch._foreach_add_([t for t, _ in floats], [s for _, s in floats], alpha=1.0 - momentum)
        for t, s in zip(t_bufs, s_bufs):
            if not t.is_floating_point():
                t.copy_(s)
    elif buffers == "copy":
        for t, s in zip(t_bufs, s_bufs):
            t.copy_(s)


class TeacherHandler:
    """Keep an EMA teacher of ``network`` and update it on an event.

    Args:
        network: the student (DDP-wrapped is fine).
        momentum: teacher momentum ``m`` at the start (paper 0.8, Ark 0.9).
        final_momentum: if given, ``m`` follows a cosine from ``momentum`` to this value over the run (Ark: 1.0).
        update_on: ``"step"`` (after each Lock-Release step, the paper), ``"iteration"`` or ``"epoch"``.
        every: update every N such events.
        buffers: ``"copy"`` (default), ``"update"`` (EMA of float buffers) or ``"none"`` (reference parity).
    """

    def __init__(self, network: nn.Module, momentum: float = 0.8, final_momentum: float | None = None,
                 update_on: str = "step", every: int = 1, buffers: str = "copy"):
        if not 0.0 <= momentum <= 1.0 or (final_momentum is not None and not 0.0 <= final_momentum <= 1.0):
            raise ConfigError(f"teacher momentum must be in [0, 1], got {momentum} / {final_momentum}")
        if update_on not in ("step", "iteration", "epoch"):
            raise ConfigError(f"update_on must be 'step', 'iteration' or 'epoch', got {update_on!r}")
        if buffers not in ("copy", "update", "none"):
            raise ConfigError(f"buffers must be 'copy', 'update' or 'none', got {buffers!r}")
        student = network.module if hasattr(network, "module") else network
        self.student = student
        # a detached copy in eval mode, as ignite's EMAHandler makes it: no gradient ever reaches the teacher
        self.teacher = copy.deepcopy(student).eval()
        self.teacher.requires_grad_(False)
        self.momentum, self.final_momentum = momentum, final_momentum
        self.update_on, self.every, self.buffers = update_on, every, buffers
        self.updates = 0
        self.total_updates = 1
        self.logger = logging.getLogger("cxrfx.teacher")

    def current_momentum(self) -> float:
        """``m`` for the next update (cosine schedule when ``final_momentum`` is set)."""
        if self.final_momentum is None:
            return self.momentum
        progress = min(1.0, self.updates / max(1, self.total_updates - 1))
        return self.final_momentum - (self.final_momentum - self.momentum) * (math.cos(math.pi * progress) + 1) / 2

    def attach(self, engine: Engine) -> None:
        event = {"step": LockReleaseEvents.STEP_COMPLETED, "iteration": Events.ITERATION_COMPLETED,
                 "epoch": Events.EPOCH_COMPLETED}[self.update_on]
        register_lock_release_events(engine)
        engine.add_event_handler(event(every=self.every) if self.every > 1 else event, self)

    def count_updates(self, engine: Engine) -> int:
        """Updates over the whole run. Read at each update, not at ``STARTED``: the Lock-Release handler records
        the steps per cycle in a ``STARTED`` handler of its own, which runs after ours when we attach first (as
        ``train_handlers`` do); by the first update every ``STARTED`` handler has run, in either order. A warm-up
        epoch (the Lock-Release handler's ``warmup``, e.g. SSL only) is one step, not a cycle's worth."""
        per_epoch = {"step": getattr(engine.state, "cxrfx_schedule_steps", 1), "epoch": 1,
                     "iteration": engine.state.epoch_length}[self.update_on]
        warm = min(getattr(engine.state, "cxrfx_warmup_epochs", 0), engine.state.max_epochs)
        if self.update_on == "step" and warm:
            return max(1, (warm + per_epoch * (engine.state.max_epochs - warm)) // self.every)
        return max(1, per_epoch * engine.state.max_epochs // self.every)

    def __call__(self, engine: Engine) -> None:
        self.total_updates = self.count_updates(engine)
        m = self.current_momentum()
        self.teacher.eval()
        ema_update(self.teacher, self.student, m, self.buffers)
        self.updates += 1
        engine.state.teacher_momentum = m
        self.logger.info(f"teacher update {self.updates} (iteration {engine.state.iteration}): momentum {m:.4f}")

    def state_dict(self) -> dict:
        """The schedule's position only: the teacher's weights are a checkpoint object of their own (``teacher``
        in the bundles' ``checkpoint_objects``), so saving them here too would store them twice."""
        return {"updates": self.updates}

    def load_state_dict(self, state) -> None:
        """Also reads checkpoints written when this state held the teacher's weights (the same tensors as their
        ``teacher`` entry)."""
        self.updates = int(state["updates"])
        if "teacher" in state:
            self.teacher.load_state_dict(state["teacher"])
