"""``CheckpointLoader``: a bundle's weights loaded when its evaluator starts, not while its config is parsed.

The Model Zoo's inference and evaluation configs list MONAI's ``CheckpointLoader`` among the evaluator's
handlers: the weights are read at ``Events.STARTED``, so ``ConfigWorkflow.initialize()`` and
``check_properties()`` work on a bundle whose ``models/model.pt`` is not there yet (a zoo download before
``download_large_files``). This handler has MONAI's arguments and event, and reads through
:func:`cxrfx.networks.load_checkpoint`, so every format a cxrfx network loads works here: plain state dicts,
``{"student", "teacher", ...}`` training checkpoints, Ark and Foundation X files (mapped), each load logged
with its report. A missing file ends the run with one line naming it (:class:`~cxrfx.errors.MissingWeightsError`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from monai.utils import optional_import
from torch import nn

from cxrfx.errors import CheckpointError, MissingWeightsError

Events, _ = optional_import("ignite.engine", name="Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", name="Engine")

__all__ = ["CheckpointLoader"]


class CheckpointLoader:
    """Load ``load_path`` into the networks of ``load_dict`` when the engine starts (MONAI's handler, cxrfx formats).

    Args:
        load_path: the checkpoint file. Missing at run time: :class:`~cxrfx.errors.MissingWeightsError`, one
            line naming the file and what to do (no traceback under ``python -m monai.bundle run``).
        load_dict: ``{entry: network}``. With one entry the file may be a plain state dict or a nested one
            (``load_checkpoint`` picks the entry: the teacher of a training checkpoint first, see ``key``);
            with several, each network loads the file's entry of that name (``{"student": .., "teacher": ..}``
            of a foundation_x ``last.pt``).
        source: ``"cxrfx"`` (this project's files), ``"auto"``, ``"ark"`` or ``"foundation_x"``.
        key: with one entry, the file's entry to read (default: ``load_checkpoint``'s choice for ``source``).
        strict: refuse a load that leaves any network tensor unloaded or any file tensor unused (MONAI's
            ``strict``); ``False`` loads what fits and logs the report (missing / unexpected / mismatched).
        name: logger name (default ``cxrfx.weights``).
    """

    def __init__(self, load_path: str | os.PathLike, load_dict: Mapping[str, nn.Module], source: str = "cxrfx",
                 key: str | None = None, strict: bool = True, name: str | None = None):
        if not load_dict:
            raise CheckpointError(f"{load_path}: CheckpointLoader needs at least one network in load_dict")
        self.load_path = load_path
        self.load_dict = dict(load_dict)
        self.source, self.key, self.strict = source, key, strict
        self.logger = logging.getLogger(name or "cxrfx.weights")
        self.reports: dict = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)
        # ignite hands an exception to the first EXCEPTION_RAISED handler only; listed before MONAI's
        # StatsHandler (as the zoo lists its CheckpointLoader first), this keeps a missing file to one line
        # instead of StatsHandler's logged traceback. Every exception is re-raised unchanged, as StatsHandler does.
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.exception_raised)

    def exception_raised(self, _engine: Engine, e: BaseException) -> None:
        raise e

    def __call__(self, engine: Engine | None = None) -> dict:
        return self.load()

    def load(self) -> dict:
        """Load now; returns ``{entry: LoadReport}`` (also kept in ``reports``)."""
        from cxrfx.networks import load_checkpoint

        path = os.fspath(self.load_path)
        if not os.path.isfile(path):
            raise MissingWeightsError(path)
        single = len(self.load_dict) == 1
        reports = {}
        for entry, network in self.load_dict.items():
            network = network.module if hasattr(network, "module") else network  # DDP: the wrapped model
            report = load_checkpoint(network, path, source=self.source, key=self.key if single else entry)
            unfit = len(report.missing) + len(report.unexpected) + len(report.mismatched)
            if self.strict and unfit:
                raise CheckpointError(f"{path}: does not fit the network {entry!r} ({len(report.missing)} tensors "
                                      f"missing, {len(report.unexpected)} unexpected, {len(report.mismatched)} "
                                      f"shape-mismatched; strict load)\n{report}")
            self.logger.info(str(report) if single else f"{entry}: {report}")
            reports[entry] = report
        self.reports = reports
        return reports
