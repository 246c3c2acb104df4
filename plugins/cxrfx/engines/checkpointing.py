"""Resuming a stopped run from a CheckpointSaver file (student, teacher, optimiser, scheduler, cycle, trainer)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
from monai.utils import optional_import

from cxrfx.errors import CheckpointError

Checkpoint, _ = optional_import("ignite.handlers", name="Checkpoint")

__all__ = ["resume"]


def resume(path: str | os.PathLike | None, objects: Mapping[str, object]) -> bool:
    """Load every object of ``objects`` from ``path`` before ``trainer.run()``; the trainer then continues
    at the saved iteration (and the Lock-Release handler at the matching step). ``path`` None: no-op.

    Returns True when something was loaded. Reads with ``weights_only=True``.
    """
    if not path:
        return False
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: cannot resume, file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot resume, not a readable checkpoint ({type(exc).__name__})") from None
    missing = sorted(set(objects) - set(state))
    if missing:
        raise CheckpointError(f"{path}: cannot resume, the checkpoint lacks {missing}")
    trainer = objects.get("trainer")
    wanted_epochs = getattr(getattr(trainer, "state", None), "max_epochs", None)
    Checkpoint.load_objects(to_load=dict(objects), checkpoint=state)
    if wanted_epochs is not None:  # the run's configured length wins over the one stored with the old run
        trainer.state.max_epochs = wanted_epochs
    logging.getLogger("cxrfx.resume").info(
        f"resumed from {path} at iteration {getattr(getattr(trainer, 'state', None), 'iteration', '?')}")
    return True
