"""``LockReleaseHandler``: walks the Lock-Release cycle, switching data source, task and trainable parameters.

Ignite handler in the style of ``monai/handlers``. At every step boundary it points the engine at that step's
data (``engine.set_data``), publishes the step as ``engine.state.cxrfx_step`` (the trainer picks head and loss
from it) and sets ``requires_grad``: lock = only the step's head trains, release = every parameter trains.
Frozen parameters get no gradient; with ``zero_grad(set_to_none=True)`` (the trainer's setting) PyTorch's
optimizers then skip them entirely, so neither weight decay nor momentum moves them.

The position in the cycle follows ``engine.state.iteration`` (restored on resume); ``state_dict`` /
``load_state_dict`` check the cycle and carry each data source's position inside its own pass. Events
``STEP_STARTED`` / ``STEP_COMPLETED`` are fired for other handlers (the teacher updates after each step, as the
paper does after each pass).

``ssl`` steps (``cxrfx.ssl``) have no head in the network: lock freezes the whole network, release frees it.
``warmup`` / ``warmup_epochs``: one step (typically ``ssl``) filling the first epochs whole, before the cycle
starts; epochs keep the cycle's length, so validation, LR schedule and checkpoints stay epoch-aligned.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from monai.utils import optional_import
from torch import nn

from cxrfx.engines.schedule import SSL_TASK, Step, parse_schedule, resolve_lengths
from cxrfx.errors import ConfigError

Events, _ = optional_import("ignite.engine", name="Events")
EventEnum, _ = optional_import("ignite.engine", name="EventEnum")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", name="Engine")

__all__ = ["LockReleaseHandler", "LockReleaseEvents", "InfiniteLoader", "set_phase", "register_lock_release_events",
           "freeze_norm_statistics"]


class LockReleaseEvents(EventEnum):
    """Fired by :class:`LockReleaseHandler` around every step of the cycle."""

    STEP_STARTED = "lock_release_step_started"
    STEP_COMPLETED = "lock_release_step_completed"


class InfiniteLoader:
    """Iterates a data loader forever (a new epoch, reshuffled, when one ends); its own iterator, so that
    switching away and back continues where it stopped.

    Its position (passes completed, batches read in the current pass) is saved by ``state_dict``; restoring it
    makes the next batch the one an uninterrupted run would have read, when the loader's sampler can start
    inside a pass (:class:`~cxrfx.data.sampling.ResumableSampler`, which ``build_sources`` uses).
    """

    def __init__(self, loader: Iterable):
        self.loader = loader
        self._it = None
        self.epochs = 0
        self.batches = 0  # batches read in the current pass

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return self

    def _sampler(self):
        return getattr(self.loader, "sampler", None)

    def __next__(self):
        if self._it is None:
            self._it = iter(self.loader)
        try:
            batch = next(self._it)
        except StopIteration:
            self.epochs += 1
            self.batches = 0
            if hasattr(self._sampler(), "set_epoch"):  # reshuffle each pass
                self._sampler().set_epoch(self.epochs)
            self._it = iter(self.loader)
            batch = next(self._it)
        self.batches += 1
        return batch

    def state_dict(self) -> dict:
        return {"epochs": self.epochs, "batches": self.batches}

    def load_state_dict(self, state: Mapping) -> None:
        """Continue at the saved pass and batch (the next iterator skips the batches already read)."""
        self.epochs, self.batches = int(state["epochs"]), int(state["batches"])
        self._it = None
        sampler = self._sampler()
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epochs)
        if hasattr(sampler, "set_start"):
            sampler.set_start(min(self.batches * self.loader.batch_size, len(sampler)))
        elif self.batches:
            logging.getLogger("cxrfx.lock_release").warning(
                f"{type(sampler).__name__} cannot start inside a pass: resuming at the start of pass {self.epochs}")


def register_lock_release_events(engine: Engine) -> None:
    """Register :class:`LockReleaseEvents` on ``engine`` unless already there (handlers may attach in any order)."""
    if not engine.has_registered_events(LockReleaseEvents.STEP_STARTED):
        engine.register_events(*LockReleaseEvents)


def freeze_norm_statistics(network: nn.Module) -> None:
    """Put BatchNorm layers whose parameters are all frozen in eval mode, so a lock step leaves their
    running statistics untouched too (call after ``network.train()``)."""
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


def set_phase(network: nn.Module, step: Step) -> tuple[int, int]:
    """``requires_grad`` for a step: lock = only ``network.heads(step.task)[step.dataset]``; release = all.
    An ``ssl`` step has no head in the network: lock freezes all of it (the SSL recipe's parts live outside).

    Returns (trainable, total) parameter counts.
    """
    head_ids = set() if step.task == SSL_TASK else {id(p) for p in network.heads(step.task)[step.dataset].parameters()}
    total = trainable = 0
    for p in network.parameters():
        train = step.phase == "release" or id(p) in head_ids
        p.requires_grad_(train)
        total += p.numel()
        trainable += p.numel() if train else 0
    return trainable, total


class LockReleaseHandler:
    """Drive the trainer through the cycle.

    Args:
        schedule: steps (dicts or :class:`Step`), see ``cxrfx.engines.schedule``.
        loaders: ``{"<task>/<dataset>": data loader}``, one per data source the steps name.
        network: the :class:`FoundationX` being trained (DDP-wrapped is fine).
        warmup: a step without a length (``{"dataset", "task", "phase"}``, e.g. an ``ssl`` step) that fills each
            of the first ``warmup_epochs`` epochs before the cycle begins.
    """

    def __init__(self, schedule: Sequence[Mapping | Step], loaders: Mapping[str, Iterable], network: nn.Module,
                 warmup: Mapping | None = None, warmup_epochs: int = 0):
        self.steps = parse_schedule(schedule)
        if warmup_epochs and not warmup or warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs={warmup_epochs} needs a warmup step (and must not be negative)")
        if warmup and any(k in warmup for k in ("iterations", "epoch_fraction")):
            raise ConfigError("the warm-up step fills whole epochs: give it no iterations / epoch_fraction")
        warm = [Step(**{**dict(warmup), "iterations": 1})] if warmup and warmup_epochs else []
        missing = sorted({s.key for s in self.steps + warm} - set(loaders))
        if missing:
            raise ConfigError(f"schedule names data sources without a loader: {missing}; have {sorted(loaders)}")
        self.loaders = {k: v if isinstance(v, InfiniteLoader) else InfiniteLoader(v) for k, v in loaders.items()}
        self.network = network.module if hasattr(network, "module") else network
        for step in self.steps + warm:
            if step.task != SSL_TASK:
                self.network.heads(step.task)[step.dataset]  # fail now if a step has no head
        self.lengths = resolve_lengths(self.steps, {k: len(v) for k, v in self.loaders.items()})
        self.bounds = list(itertools.accumulate(self.lengths))
        self.warmup_epochs = int(warmup_epochs) if warm else 0
        # the warm-up step as index len(steps): it lasts one cycle length per warm-up epoch
        self.warmup = Step(**{**warm[0].as_dict(), "iterations": self.bounds[-1]}) if warm else None
        self.step_index = -1
        self.logger = logging.getLogger("cxrfx.lock_release")

    @property
    def cycle_length(self) -> int:
        """Iterations of one full cycle: the trainer's ``epoch_length``."""
        return self.bounds[-1]

    @property
    def all_steps(self) -> list[Step]:
        """The cycle's steps, then the warm-up step if any (its index is ``len(steps)``)."""
        return self.steps + ([self.warmup] if self.warmup else [])

    @property
    def data(self) -> InfiniteLoader:
        """The first step's data: the trainer's initial ``train_data_loader``."""
        return self.loaders[(self.warmup or self.steps[0]).key]

    def position(self, iteration: int) -> tuple[int, int]:
        """(step index, iterations already done in that step) after ``iteration`` iterations."""
        if iteration < self.warmup_epochs * self.cycle_length:
            return len(self.steps), iteration % self.cycle_length
        within = iteration % self.cycle_length
        index = bisect.bisect_right(self.bounds, within)
        return index, within - (self.bounds[index - 1] if index else 0)

    def attach(self, engine: Engine) -> None:
        register_lock_release_events(engine)
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _enter(self, engine: Engine, index: int, done: int = 0, starting: bool = False) -> None:
        self.step_index = index
        step = self.all_steps[index]
        trainable, total = set_phase(self.network, step)
        engine.state.cxrfx_step = step
        if starting:  # before ignite builds its iterator: it then also honours a resumed mid-epoch iteration
            engine.state.dataloader = self.loaders[step.key]
        else:
            engine.set_data(self.loaders[step.key])
        where = "warm-up" if index == len(self.steps) else f"step {index + 1}/{len(self.steps)}"
        length = self.cycle_length if index == len(self.steps) else self.lengths[index]
        self.logger.info(
            f"{where} {step.phase} {step.key}: {length - done} iterations, "
            f"{trainable / 1e6:.2f} M of {total / 1e6:.2f} M parameters trainable"
        )
        engine.fire_event(LockReleaseEvents.STEP_STARTED)

    def start(self, engine: Engine) -> None:
        """At run start (or resume): enter the step that ``engine.state.iteration`` is in."""
        engine.state.cxrfx_schedule_steps = len(self.steps)
        engine.state.cxrfx_warmup_epochs = self.warmup_epochs  # one step each (the teacher's schedule counts it)
        index, done = self.position(engine.state.iteration)
        self._enter(engine, index, done, starting=True)

    def __call__(self, engine: Engine) -> None:
        """After each iteration: when the current step is complete, fire STEP_COMPLETED and enter the next."""
        index, done = self.position(engine.state.iteration)
        if done == 0:  # the iteration just run closed step index - 1
            engine.fire_event(LockReleaseEvents.STEP_COMPLETED)
            if engine.state.iteration < engine.state.epoch_length * engine.state.max_epochs:
                self._enter(engine, index)

    def _warmup_state(self) -> dict | None:
        return {"step": self.warmup.as_dict(), "epochs": self.warmup_epochs} if self.warmup else None

    def state_dict(self) -> dict:
        state = {"step_index": self.step_index, "schedule": [s.as_dict() for s in self.steps],
                 "lengths": list(self.lengths), "loaders": {k: v.state_dict() for k, v in self.loaders.items()}}
        if self.warmup:  # only then: checkpoints of runs without one keep their old form
            state["warmup"] = self._warmup_state()
        return state

    def load_state_dict(self, state: Mapping) -> None:
        """Check the checkpoint was made with the same cycle (the position itself follows the iteration)."""
        if (list(state.get("schedule", [])) != [s.as_dict() for s in self.steps]
                or list(state.get("lengths", [])) != self.lengths or state.get("warmup") != self._warmup_state()):
            raise ConfigError("the checkpoint was written with a different Lock-Release schedule or data sizes; "
                              "resuming would put the run at the wrong step")
        self.step_index = int(state.get("step_index", -1))
        for key, loader_state in state.get("loaders", {}).items():  # older checkpoints: loaders start afresh
            if key in self.loaders:
                self.loaders[key].load_state_dict(loader_state)
