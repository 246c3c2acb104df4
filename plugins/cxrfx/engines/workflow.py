"""``MultiTaskTrainer``: MONAI's SupervisedTrainer running one Lock-Release step's task per iteration.

Each iteration reads the current step (``engine.state.cxrfx_step``, set by :class:`LockReleaseHandler`), runs
the backbone once, that task's shared part and head, the head type's loss (its ``criterion``, from the head
registry), and, with a teacher, the consistency
term on the same image: ``loss = (1 - w) * task + w * consistency`` (paper: w = 0.5). Consistency
features: the pooled embedding (cls), the fused UperNet map (seg), the neck levels (det); the student side
keeps its gradient unless ``det_consistency_gradient=False`` (the reference code's behaviour for
localization). The teacher computes only the shared feature, and nothing in lock steps, where the frozen shared
part gives the term no gradient. AMP: bf16 autocast on CPU and CUDA (``amp=True``); gradients clipped by norm.

``task_lr_scale`` gives a task its own learning rate: ``{"det": 0.1}`` multiplies every group's rate by 0.1 for the
updates of localization steps only. The tasks share the backbone but not their sensitivity to the step size (on the
phantom, a detector from scratch does not take off at the rates where segmentation learns fastest), so one global
rate must otherwise sacrifice one of them. The scale is applied around ``optimizer.step()`` and undone after it,
so the LR scheduler's own values, and what it saves, are untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from monai.engines import SupervisedTrainer
from monai.handlers import MLFlowHandler  # importable without mlflow (MONAI imports mlflow lazily)
from torch import nn

from cxrfx.engines.lock_release import LockReleaseHandler, freeze_norm_statistics
from cxrfx.engines.losses import consistency_loss
from cxrfx.engines.schedule import SSL_TASK, TASKS
from cxrfx.errors import ConfigError

__all__ = ["MultiTaskTrainer"]


def _first_if_single(value):
    return value[0] if isinstance(value, tuple) and len(value) == 1 else value


def _single_loss_for_tracking(handlers: Sequence | None) -> None:
    """``--tracking mlflow`` (MONAI's default tracking settings) reads the loss with ``from_engine(["loss"],
    first=True)``, written for a decollated list of per-image dicts. This trainer's output is one dict, from which
    that transform returns a 1-tuple, which MLflow refuses as a metric value: unwrap it. The handler reads its
    ``output_transform`` at each iteration, so replacing it after the handler is attached is enough."""
    for handler in handlers or ():
        if isinstance(handler, MLFlowHandler):
            handler.output_transform = lambda output, read=handler.output_transform: _first_if_single(read(output))


def _task_lr_scale(spec: Mapping[str, float] | None) -> dict[str, float]:
    """``task_lr_scale`` checked: supervised tasks only (an ``ssl`` step's update is its recipe's, ``cxrfx.ssl``),
    finite positive factors."""
    tasks = [t for t in TASKS if t != SSL_TASK]
    scales = {str(k): v for k, v in dict(spec or {}).items()}
    unknown = sorted(set(scales) - set(tasks))
    if unknown:
        raise ConfigError(f"task_lr_scale names tasks it cannot scale {unknown}; it takes {tasks}")
    for task, factor in scales.items():
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < float("inf"):
            raise ConfigError(f"task_lr_scale[{task!r}] must be a positive number, got {factor!r}")
    return {k: float(v) for k, v in scales.items()}


def _scaled_step(optimizer: torch.optim.Optimizer, scale: float) -> None:
    """``optimizer.step()`` with every group's learning rate times ``scale``, restored afterwards."""
    if scale == 1.0:
        optimizer.step()
        return
    rates = [group["lr"] for group in optimizer.param_groups]
    for group, lr in zip(optimizer.param_groups, rates):
        group["lr"] = lr * scale
    try:
        optimizer.step()
    finally:
        for group, lr in zip(optimizer.param_groups, rates):
            group["lr"] = lr


class MultiTaskTrainer(SupervisedTrainer):
    """Multi-dataset, multi-task trainer driven by a :class:`LockReleaseHandler`.

    Args:
        device, max_epochs, network, optimizer: as ``SupervisedTrainer`` (one epoch = one cycle).
        lock_release: the cycle; attached here, it also supplies the data and the epoch length.
        teacher: a :class:`TeacherHandler` (attached here), its teacher module, or None (no consistency term).
        consistency_weight: ``w`` above.
        det_consistency_gradient: False reproduces the reference code (no gradient from the det term).
        clip_grad_norm: max gradient norm (None: no clipping).
        amp: bf16 autocast.
        nonfinite: on a NaN / infinite loss, ``"skip"`` the update (logged, counted) or ``"stop"`` the run after
            skipping it (so the weights a final checkpoint saves are the last good ones).
        train_handlers: further ignite handlers (teacher, checkpoints, logging, LR schedule, validation).
        seg_loss, cls_loss: loss modules replacing the head types' own (Dice + BCE, masked BCE).
        task_lr_scale: ``{task: factor}``, the learning-rate multiplier of that task's updates (default 1).
    """

    def __init__(self, device: str | torch.device, max_epochs: int, network: nn.Module,
                 optimizer: torch.optim.Optimizer, lock_release: LockReleaseHandler, teacher=None,
                 consistency_weight: float = 0.5, det_consistency_gradient: bool = True,
                 clip_grad_norm: float | None = 1.0, amp: bool = False, train_handlers: Sequence | None = None,
                 seg_loss: nn.Module | None = None, cls_loss: nn.Module | None = None, nonfinite: str = "skip",
                 task_lr_scale: Mapping[str, float] | None = None, **kwargs):
        super().__init__(device=device, max_epochs=max_epochs, train_data_loader=lock_release.data, network=network,
                         optimizer=optimizer, loss_function=cls_loss,
                         epoch_length=lock_release.cycle_length, train_handlers=train_handlers, amp=False,
                         decollate=False, optim_set_to_none=True, **kwargs)
        lock_release.attach(self)
        self.lock_release = lock_release
        _single_loss_for_tracking(train_handlers)
        if hasattr(teacher, "attach") and hasattr(teacher, "teacher"):  # a TeacherHandler: attach it, use its model
            teacher.attach(self)
            teacher = teacher.teacher
        self.teacher = teacher
        self._teacher_model = teacher.module if hasattr(teacher, "module") else teacher
        self.consistency_weight = float(consistency_weight)
        self.det_consistency_gradient = det_consistency_gradient
        self.clip_grad_norm = clip_grad_norm
        self.bf16 = bool(amp)
        if nonfinite not in ("skip", "stop"):
            raise ConfigError(f"nonfinite must be 'skip' or 'stop', got {nonfinite!r}")
        self.nonfinite = nonfinite
        self.task_lr_scale = _task_lr_scale(task_lr_scale)
        # counters live in the engine state and its state_dict, so a resumed run keeps counting
        self.state.skipped_steps = self.state.skipped_samples = 0
        self.state_dict_user_keys.extend(["skipped_steps", "skipped_samples"])
        self.run_log = logging.getLogger("cxrfx.trainer")  # not self.logger: that is ignite's engine logger
        if self.task_lr_scale:
            self.run_log.info("learning rate per task: " + ", ".join(
                f"{task} x {factor:g}" for task, factor in sorted(self.task_lr_scale.items())))
        self.task_losses = {"cls": cls_loss, "seg": seg_loss}  # None: the head type's own loss
        model = network.module if hasattr(network, "module") else network
        self.model = model
        self.criteria = {(task, name): model.head_type(task).criterion(model, name, self.task_losses.get(task))
                         for task in ("cls", "seg", "det") for name in model.heads(task)}

    @property
    def skipped_steps(self) -> int:
        """Updates skipped for a non-finite loss, over the whole run (resumes included)."""
        return self.state.skipped_steps

    @property
    def skipped_samples(self) -> int:
        """Unreadable samples left out under the ``skip_bad_samples`` policy, over the whole run."""
        return self.state.skipped_samples

    def load_state_dict(self, state_dict) -> None:
        """ignite's, accepting checkpoints written before the counters were saved (they then start at 0)."""
        super().load_state_dict({"skipped_steps": 0, "skipped_samples": 0, **state_dict})

    def _task_loss(self, task: str, head: str, out, images: torch.Tensor, batch: Mapping) -> torch.Tensor:
        return self.criteria[(task, head)](out, images, batch)

    def _iteration(self, engine, batchdata: Mapping) -> dict:
        step = engine.state.cxrfx_step
        engine.state.skipped_samples += int(batchdata.get("skipped", 0)) if batchdata else 0
        if not batchdata or "image" not in batchdata or (batchdata["skipped"] and len(batchdata["image"]) < 2):
            # every sample unreadable (skip policy), or one left: BatchNorm cannot train on a single image
            self.run_log.warning(f"iteration {engine.state.iteration} ({step.key}): batch left with "
                                 f"{len(batchdata.get('image', ())) if batchdata else 0} image(s) after skipping "
                                 "unreadable samples: skipped")
            engine.state.output = {"loss": torch.tensor(float("nan")), "step": step.key, "phase": step.phase}
            return engine.state.output
        images = batchdata["image"].to(engine.state.device, non_blocking=engine.non_blocking)
        engine.network.train()
        if step.phase == "lock":
            freeze_norm_statistics(self.model)
        engine.optimizer.zero_grad(set_to_none=True)
        device_type = images.device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bf16):
            # one call through engine.network (DDP-wrapped in multi-GPU runs, so gradients are synchronised)
            out, shared = engine.network(images, task=step.task, head=step.dataset, return_features=True)
            task_loss = self._task_loss(step.task, step.dataset, out, images, batchdata)
            consistency = torch.zeros((), device=images.device)
            if self.teacher is None or self.consistency_weight <= 0:
                loss = task_loss
            elif not any(t.requires_grad for t in (shared if isinstance(shared, (list, tuple)) else [shared])):
                # lock steps: everything under the head is frozen, so the consistency term has no gradient and
                # cannot change the update; the teacher's forward is skipped (same update, less work)
                loss = (1 - self.consistency_weight) * task_loss
            else:
                with torch.no_grad():
                    target = self._teacher_model.shared_features(images, step.task)
                student = shared
                if step.task == "det" and not self.det_consistency_gradient:
                    student = [s.detach() for s in shared]
                consistency = consistency_loss(student, target)
                loss = (1 - self.consistency_weight) * task_loss + self.consistency_weight * consistency
        if not torch.isfinite(loss.detach()):
            engine.state.skipped_steps += 1
            stop = "; stopping the run" if self.nonfinite == "stop" else ""
            self.run_log.error(f"non-finite loss ({float(loss.detach())}) at iteration {engine.state.iteration}, "
                               f"dataset {step.dataset}, task {step.task} ({step.phase}): update skipped{stop}")
            engine.optimizer.zero_grad(set_to_none=True)
            engine.state.output = {"loss": loss.detach(), "task_loss": task_loss.detach(),
                                   "consistency": consistency.detach(), "step": step.key, "phase": step.phase,
                                   "skipped": True}
            if self.nonfinite == "stop":
                engine.terminate()
            return engine.state.output
        loss.backward()
        if self.clip_grad_norm:
            params = [p for p in engine.network.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        _scaled_step(engine.optimizer, self.task_lr_scale.get(step.task, 1.0))
        engine.state.output = {"loss": loss.detach(), "task_loss": task_loss.detach(),
                               "consistency": consistency.detach(), "step": step.key, "phase": step.phase}
        return engine.state.output
