"""Crash-safe checkpoints and exact resumption.

- :class:`CheckpointSaver`: MONAI's saver writing every file atomically (temporary file in the same folder,
  fsync, rename, fsync of the folder): a kill or power loss leaves the previous file, never a truncated one.
  It also adopts the interval checkpoints an earlier run left, so "keep the last K" holds across resumes.
- :class:`RNGStates`: the global random generators (torch CPU / CUDA, numpy, Python) as a checkpoint object.
- :func:`resume`: load every object before ``trainer.run()``, from a file or the newest complete checkpoint.
- :func:`training_state`: the objects a training checkpoint holds (a bundle's ``train#checkpoint_objects``).
- :func:`load_start_point`: a fine-tuning / pretraining start checkpoint, loaded and logged (``initialize``).

Together with the loaders' positions (``LockReleaseHandler.state_dict``) and per-sample augmentation seeds
(``cxrfx.data.sampling``), a resumed run follows the uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from monai.handlers import CheckpointSaver as _MonaiCheckpointSaver
from monai.utils import optional_import

from cxrfx.engines.distributed import all_gather_objects, is_distributed, rank
from cxrfx.errors import CheckpointError

Checkpoint, _ = optional_import("ignite.handlers", name="Checkpoint")
Events, _ = optional_import("ignite.engine", name="Events")
DiskSaver, _ = optional_import("ignite.handlers", name="DiskSaver")

__all__ = ["resume", "latest_checkpoint", "RNGStates", "CheckpointSaver", "AtomicDiskSaver", "training_state",
           "load_start_point"]

_PART = ".part"  # suffix of files being written; never a checkpoint


def _fsync_dir(path: str | os.PathLike) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` writing ``<dir>/.<name>.part``, fsyncing it, renaming it over ``<dir>/<name>``
    and fsyncing the folder. ``filename``: a fixed name for every save (MONAI's ``final`` / ``key metric`` files).

    ignite removes the oldest file *before* writing the new one; here removals wait until the next save has
    landed (and a fixed-name file is simply replaced), so there is always a complete checkpoint on disk.
    Stale ``.part`` files of a killed run are removed when the saver is made.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None):
        super().__init__(dirname=dirname, require_empty=False, atomic=True, create_dir=True)
        self.filename = filename
        self._to_remove: list[str] = []
        for stale in Path(dirname).glob(f".*{_PART}"):
            stale.unlink(missing_ok=True)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        super().__call__(checkpoint, filename, metadata)
        for old in self._to_remove:
            if old != filename and (self.dirname / old).exists():
                super().remove(old)
        self._to_remove = []

    def remove(self, filename: str) -> None:
        if not self.filename:  # a fixed-name file is replaced atomically by the next save
            self._to_remove.append(filename)

    def _save_func(self, checkpoint: Mapping, path: Path, func) -> None:
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_PART, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as stream:
                func(checkpoint, stream, **self.kwargs)
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)


class CheckpointSaver(_MonaiCheckpointSaver):
    """``monai.handlers.CheckpointSaver`` (same arguments) with :class:`AtomicDiskSaver` for every file, and
    interval checkpoints already in ``save_dir`` counted among the ``n_saved`` kept (oldest removed first).

    ``state_dict`` / ``load_state_dict``: the best-metric tracking, so a resumed run does not replace the
    best model with a worse one (list the validation saver among the trainer's checkpoint objects).
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs):
        super().__init__(save_dir, save_dict, **kwargs)
        # MONAI builds its savers inside __init__ with atomic=False: swap in the atomic one
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(save_dir, getattr(checkpoint.save_handler, "filename", None))
        if self._interval_checkpoint is not None:
            # ignite's name: [<prefix>_]<"checkpoint" or the only key>_<iteration|epoch>=<n>.pt
            prefix = self._interval_checkpoint.filename_prefix
            stem = (f"{prefix}_" if prefix else "") + ("checkpoint" if len(save_dict) > 1 else next(iter(save_dict)))
            pattern = re.compile(re.escape(f"{stem}_{self._interval_checkpoint.score_name}=") + r"(\d+)\.pt")
            found = sorted((int(m.group(1)), p.name) for p in Path(save_dir).glob("*.pt")
                           if (m := pattern.fullmatch(p.name)))
            self._interval_checkpoint._saved = [Checkpoint.Item(priority, name) for priority, name in found]

    def state_dict(self) -> dict:
        return self._key_metric_checkpoint.state_dict() if self._key_metric_checkpoint is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            super().load_state_dict(state_dict)


class RNGStates:
    """The global random generators as a checkpoint object (``state_dict`` / ``load_state_dict``), stored as
    tensors and numbers so ``torch.load(weights_only=True)`` reads them back.

    Multi-process runs save on rank 0 only, but every rank has streams of its own: seeded alike, they stay equal
    only while every rank draws the same numbers (drop-path does), not once draws depend on the data (a
    detector's box sampler). :meth:`attach` gathers all ranks' states whenever the checkpoint saver saves, the
    checkpoint holds them under ``"ranks"``, and on resume each rank takes its own back.
    """

    def __init__(self):
        self.ranks: list | None = None  # every rank's states at the last save (multi-process runs, see attach)

    def attach(self, engine, every: int) -> None:
        """Gather every rank's states at the events the trainer's checkpoint saver saves at (every ``every``
        iterations, and at the end). Attach on every rank (it is a collective), before the saver."""
        if every:  # the saver's save_interval (none: only the final save)
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=every), self.gather)
        engine.add_event_handler(Events.COMPLETED, self.gather)

    def gather(self, _engine=None) -> None:
        if is_distributed():
            self.ranks = all_gather_objects(self._own())

    def state_dict(self) -> dict:
        state = self._own()
        if self.ranks is not None:
            state["ranks"] = self.ranks
        return state

    def _own(self) -> dict:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        version, python_state, gauss_next = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": version, "state": torch.tensor(python_state, dtype=torch.int64),
                       "gauss_next": gauss_next},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping) -> None:
        ranks = state.get("ranks")
        if ranks is not None and rank() < len(ranks):  # a multi-process checkpoint: this rank's own streams
            state = ranks[rank()]
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
        p = state["python"]
        random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def _readable(path: Path, keys: set[str]) -> bool:
    try:  # mmap: only the index is read, tensors stay on disk
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False
    return isinstance(state, Mapping) and keys <= set(state)


def latest_checkpoint(folder: str | os.PathLike, keys: set[str] = frozenset({"trainer"})) -> str | None:
    """The newest ``*.pt`` in ``folder`` that loads and holds ``keys`` (best-model files hold only weights and
    are passed over); None when there is none."""
    candidates = sorted(Path(folder).glob("*.pt"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    return next((str(p) for p in candidates if _readable(p, set(keys))), None)


def resume(path: str | os.PathLike | None, objects: Mapping[str, object], search_dir: str | os.PathLike | None = None
           ) -> bool:
    """Load every object of ``objects`` from ``path`` before ``trainer.run()``; the trainer then continues
    at the saved iteration (and the Lock-Release handler at the matching step and batch).

    ``path``: a checkpoint file; a folder (its newest complete checkpoint); ``"auto"``: the newest complete
    checkpoint in ``search_dir``, or a fresh start when there is none yet (so one command both starts and
    resumes a preemptible job); None: no-op. Returns True when something was loaded. Reads with
    ``weights_only=True``.
    """
    if not path:
        return False
    log = logging.getLogger("cxrfx.resume")
    path = os.fspath(path)
    if path == "auto" or os.path.isdir(path):
        folder = search_dir if path == "auto" else path
        found = latest_checkpoint(folder, set(objects)) if folder and os.path.isdir(folder) else None
        if found is None:
            if path == "auto":
                log.info(f"resume_from auto: no complete checkpoint in {folder}, starting a new run")
                return False
            raise CheckpointError(f"{path}: cannot resume, no complete checkpoint with {sorted(objects)} in it")
        path = found
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
    log.info(f"resumed from {path} at iteration {getattr(getattr(trainer, 'state', None), 'iteration', '?')}")
    return True


def training_state(network, optimizer, lr_scheduler, lock_release, trainer, best_model_saver=None,
                   teacher_handler=None) -> dict:
    """Everything an exact resume needs, by the names the checkpoints hold: ``student`` (the network; a DDP
    wrapper is unwrapped by MONAI's saver), ``teacher`` and ``teacher_handler`` (only with a teacher),
    ``optimizer``, ``lr_scheduler``, ``lock_release`` (loader positions, schedule), ``trainer`` (iteration),
    ``rng`` (:class:`RNGStates`) and ``best_model_saver`` (the validation saver's best-metric tracking).

    The order is the order :func:`resume` loads them in: the random generators come after every other
    object, so nothing loaded later can draw from them.
    """
    state = {"student": network}
    if teacher_handler is not None:
        state["teacher"] = teacher_handler.teacher
    state.update(optimizer=optimizer, lr_scheduler=lr_scheduler, lock_release=lock_release)
    if teacher_handler is not None:
        state["teacher_handler"] = teacher_handler
    state.update(trainer=trainer, rng=RNGStates())
    if best_model_saver is not None:
        state["best_model_saver"] = best_model_saver
    return state


def load_start_point(network: torch.nn.Module, path: str | os.PathLike | None, enabled: bool = True,
                     source: str = "auto", key: str | None = None):
    """Load a start checkpoint into ``network`` before training (the ``initialize`` step of the bundles) and
    log the load report; returns it, or None when ``enabled`` is false or ``path`` empty (random start).

    Before training, not at ``Events.STARTED`` as a ``CheckpointLoader`` would: the EMA teacher is a copy
    made when the trainer is built, and a resumed run must keep the weights it resumed.
    A missing file is :class:`~cxrfx.errors.MissingWeightsError` (one line naming it).
    """
    from cxrfx.errors import MissingWeightsError
    from cxrfx.networks import load_checkpoint

    log = logging.getLogger("cxrfx.start_point")
    if not enabled or not path:
        log.info("start point: scratch (random initialisation)")
        return None
    if not os.path.isfile(path):
        raise MissingWeightsError(path, "start checkpoint not found (set finetune_model_path / initial_weights "
                                        "to an existing file, or train from scratch)")
    report = load_checkpoint(network.module if hasattr(network, "module") else network, path, source=source, key=key)
    log.info(f"start point: {report}")
    return report
