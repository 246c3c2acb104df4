"""The Lock-Release cycle as data: an ordered list of steps (dataset, task, phase, length).

A step trains one task of one dataset. ``lock``: only that task's head for that dataset learns (the new head
catches up while shared parts stay fixed); ``release``: everything learns. A length is a number of
iterations or a fraction of that dataset's epoch (its loader's length), resolved when the loaders exist.
One pass over the list is one cycle (one trainer epoch).

Task ``ssl`` is a self-supervised step on a source of unlabelled images (``cxrfx.ssl``): it has no head in the
network, so ``lock`` there freezes the whole network (only the SSL recipe's own parts learn) and ``release``
trains the network with them. :func:`with_ssl` adds such steps to a cycle; a one-off warm-up before the cycle
is the Lock-Release handler's ``warmup`` (whole epochs of one step).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from cxrfx.errors import ConfigError

__all__ = ["Step", "parse_schedule", "resolve_lengths", "paper_cycle", "phantom_cycle", "PAPER_TASK_ORDER",
           "expand_tasks", "finetune_schedule", "FINETUNE_MODES", "with_ssl", "SSL_TASK", "TASKS"]

SSL_TASK = "ssl"
TASKS = ("cls", "seg", "det", SSL_TASK)
_PHASES = ("lock", "release")


@dataclass(frozen=True)
class Step:
    """One step of the cycle. Exactly one of ``iterations`` / ``epoch_fraction`` sets its length."""

    dataset: str
    task: str
    phase: str = "release"
    iterations: int | None = None
    epoch_fraction: float | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ConfigError(f"schedule step {self}: task must be one of {TASKS}")
        if self.phase not in _PHASES:
            raise ConfigError(f"schedule step {self}: phase must be 'lock' or 'release'")
        if (self.iterations is None) == (self.epoch_fraction is None):
            raise ConfigError(f"schedule step {self}: give exactly one of iterations / epoch_fraction")
        if (self.iterations is not None and self.iterations < 1) or (
                self.epoch_fraction is not None and self.epoch_fraction <= 0):
            raise ConfigError(f"schedule step {self}: length must be positive")

    @property
    def key(self) -> str:
        """``"<task>/<dataset>"``: names the data source and the head."""
        return f"{self.task}/{self.dataset}"

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def parse_schedule(spec: Sequence[Mapping | Step]) -> list[Step]:
    """Steps from config dicts (``{"dataset", "task", "phase", "iterations" | "epoch_fraction"}``)."""
    steps = [s if isinstance(s, Step) else Step(**dict(s)) for s in spec]
    if not steps:
        raise ConfigError("the schedule is empty")
    return steps


def resolve_lengths(steps: Sequence[Step], epoch_lengths: Mapping[str, int]) -> list[int]:
    """Iterations of each step; ``epoch_lengths`` maps step keys to their loader's length (batches)."""
    lengths = []
    for step in steps:
        if step.iterations is not None:
            lengths.append(int(step.iterations))
            continue
        if step.key not in epoch_lengths:
            raise ConfigError(f"schedule step {step.key}: no data source named {step.key!r}")
        lengths.append(max(1, math.ceil(step.epoch_fraction * epoch_lengths[step.key])))
    return lengths


def expand_tasks(order: Sequence[tuple[str, str]], lock_fraction: float = 0.5, release_fraction: float = 1.0,
                 lock_cls: bool = False, iterations: int | None = None) -> list[dict]:
    """Foundation X's expansion of (dataset, task) pairs into steps (REFERENCE §1.5).

    Classification: one release epoch (``lock_cls``: Foundation X+'s head-only half epoch first).
    Localization and segmentation: lock for ``lock_fraction`` of an epoch, then release for a full epoch.
    ``iterations``: every step that many iterations instead of its epoch fraction (a dry run of the cycle).
    """
    def length(fraction: float) -> dict:
        return {"iterations": int(iterations)} if iterations is not None else {"epoch_fraction": fraction}

    steps = []
    for dataset, task in order:
        if task != "cls" or lock_cls:
            steps.append({"dataset": dataset, "task": task, "phase": "lock", **length(lock_fraction)})
        steps.append({"dataset": dataset, "task": task, "phase": "release", **length(release_fraction)})
    return steps


# The paper's 20 task-epochs (REFERENCE §1.5), datasets named as cxrfx's adapters name them (and so as
# ``python -m cxrfx prepare NAME`` names their datalists): MIMIC is ``mimic_cxr_jpg``.
PAPER_TASK_ORDER = (
    ("chexpert", "cls"), ("nih14", "cls"), ("vindr_cxr", "cls"), ("shenzhen", "cls"), ("mimic_cxr_jpg", "cls"),
    ("tbx11k", "cls"), ("tbx11k", "det"), ("node21", "cls"), ("node21", "det"), ("candid_ptx", "cls"),
    ("candid_ptx", "det"), ("candid_ptx", "seg"), ("rsna_pneumonia", "cls"), ("rsna_pneumonia", "det"),
    ("chestx_det", "cls"), ("chestx_det", "det"), ("chestx_det", "seg"), ("siim_acr", "cls"), ("siim_acr", "det"),
    ("siim_acr", "seg"),
)


def phantom_cycle(lock_fraction: float = 0.5) -> list[dict]:
    """The same mechanism over the phantom: labels of all three datasets, boxes, masks (7 steps)."""
    return expand_tasks([("phantom_cls", "cls"), ("phantom_det", "cls"), ("phantom_det", "det"),
                         ("phantom_seg", "cls"), ("phantom_seg", "seg")], lock_fraction=lock_fraction)


def paper_cycle(lock_cls: bool = False, iterations: int | None = None) -> list[dict]:
    """The published cycle: 20 task-epochs, expanded into 29 lock / release steps (11 cls, 6 det x 2, 3 seg x 2).

    ``lock_cls``: Foundation X+'s variant, classification locked for half an epoch first too (40 steps).
    ``iterations``: every step that many iterations (``paper.json``'s dry run uses 1).
    """
    return expand_tasks(PAPER_TASK_ORDER, lock_cls=lock_cls, iterations=iterations)


FINETUNE_MODES = ("full", "frozen", "warmup")


def finetune_schedule(dataset: str, task: str, mode: str = "warmup", iterations: int | None = None,
                      epochs: float | None = None, lock_fraction: float = 0.2) -> list[dict]:
    """The Lock-Release machinery with one data source: a fine-tuning run as one cycle.

    ``mode``: ``"full"`` (one release step: everything trains), ``"frozen"`` (one lock step: only the new
    head trains; backbone, shared decoder / neck stay as loaded) or ``"warmup"`` (lock for ``lock_fraction``
    of the run so the new head catches up, then release). The total length is the same in every mode:
    ``iterations`` (a fixed budget, e.g. for few-shot runs) or ``epochs`` (passes over the training data);
    give exactly one. Run it with the trainer's ``max_epochs = 1`` (the cycle is the whole run).
    """
    if mode not in FINETUNE_MODES:
        raise ConfigError(f"fine-tuning mode must be one of {FINETUNE_MODES}, got {mode!r}")
    if (iterations is None) == (epochs is None):
        raise ConfigError("finetune_schedule: give exactly one of iterations / epochs")
    if mode == "warmup" and not 0 < lock_fraction < 1:
        raise ConfigError(f"finetune_schedule: lock_fraction must be in (0, 1) for warmup, got {lock_fraction}")

    def length(fraction: float) -> dict:
        if iterations is not None:
            return {"iterations": max(1, int(round(iterations * fraction)))}
        return {"epoch_fraction": epochs * fraction}

    if mode == "full":
        return [{"dataset": dataset, "task": task, "phase": "release", **length(1.0)}]
    if mode == "frozen":
        return [{"dataset": dataset, "task": task, "phase": "lock", **length(1.0)}]
    lock = length(lock_fraction)
    release = ({"iterations": max(1, int(iterations) - lock["iterations"])} if iterations is not None
               else length(1.0 - lock_fraction))
    return [{"dataset": dataset, "task": task, "phase": "lock", **lock},
            {"dataset": dataset, "task": task, "phase": "release", **release}]


def with_ssl(schedule: Sequence[Mapping | Step], dataset: str, every: int | None = None, phase: str = "release",
             iterations: int | None = None, epoch_fraction: float | None = None) -> list[dict]:
    """``schedule`` with ``ssl`` steps on the unlabelled source ``dataset``: one at the start of the cycle
    (``every`` None), or one before every ``every`` supervised steps (interleaved). Length: ``iterations`` or
    ``epoch_fraction`` of the SSL source's epoch (default a whole epoch)."""
    if iterations is None and epoch_fraction is None:
        epoch_fraction = 1.0
    ssl = Step(dataset, SSL_TASK, phase, iterations=iterations, epoch_fraction=epoch_fraction).as_dict()
    steps = [s.as_dict() for s in parse_schedule(schedule)]
    if every is None:
        return [ssl] + steps
    if every < 1:
        raise ConfigError(f"with_ssl: every must be at least 1, got {every}")
    out: list[dict] = []
    for i, step in enumerate(steps):
        if i % every == 0:
            out.append(dict(ssl))
        out.append(step)
    return out
