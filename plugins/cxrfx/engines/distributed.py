"""Multi-process training (``torchrun``, one or several nodes): process group, rank, and the two collectives the
evaluation needs.

The bundles follow the Model Zoo's multi-GPU pattern (``multi_gpu_train.json``): DistributedDataParallel, every
data source sharded across ranks, the handlers that write (logs, TensorBoard, checkpoints, MLflow) disabled on
ranks other than 0 (``"_disabled_": "@is_not_rank0"``). Validation is sharded too; :class:`MultiTaskScore`
gathers every rank's predictions before scoring, so all ranks compute the same metrics on the whole split, and
:class:`MultiTaskEvaluator` first gives every rank rank 0's buffers (BatchNorm statistics are updated by each
rank's own batches), so the model scored is the one rank 0 saves. Everything here is a no-op in a
single-process run.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterable

import torch
import torch.distributed as dist
from monai.utils import optional_import
from torch import nn

idist, _ = optional_import("ignite.distributed")
Events, _ = optional_import("ignite.engine", name="Events")

__all__ = ["setup", "teardown", "rank", "world_size", "is_distributed", "all_gather_objects", "broadcast_buffers",
           "BufferSync"]

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def is_distributed() -> bool:
    """A process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank: the process group's, or ``torchrun``'s ``RANK`` before the group exists
    (so a config can ask before ``setup`` ran); 0 in a single-process run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def setup(backend: str | None = None, log_all_ranks: bool = False) -> int:
    """Join the process group ``torchrun`` describes (``MASTER_ADDR`` / ``RANK`` / ``WORLD_SIZE`` in the
    environment; one node or many), select this process's GPU (``LOCAL_RANK``), and return the global rank.

    ``backend``: default ``nccl`` with CUDA, ``gloo`` otherwise (CPU runs and tests). Ranks other than 0 log
    warnings and errors only (the zoo's ``logger.setLevel(WARNING)`` on those ranks), unless ``log_all_ranks``:
    a skipped sample or a non-finite loss on any rank is still reported.
    """
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    # ignite's idist discovers the process group lazily, with collectives, the first time anything asks it for the
    # rank (its DiskSaver does, inside the checkpoint savers). Savers exist on rank 0 only, so that first call
    # would wait forever for the other ranks: let every rank make it here, together.
    idist.sync()
    if dist.get_rank() > 0 and not log_all_ranks:
        logging.getLogger().setLevel(logging.WARNING)
    return dist.get_rank()


def teardown() -> None:
    """Leave the process group, every rank together (the bundles' ``finalize``); a no-op without one.

    A barrier first, so that no rank destroys its group while another is still in a collective or writing, then
    ``destroy_process_group`` while the interpreter is fully alive, then the garbage collector: a process group
    whose last reference dies during interpreter shutdown can abort the process ("terminate called without an
    active exception", SIGABRT on one rank after a finished run). ignite's own record of the group is reset too,
    so nothing holds it afterwards.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    if idist.get_world_size() > 1:  # ignite adopted the group in setup(): let it destroy it and forget it
        idist.finalize()
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single-process run. Collective: every
    rank must call it, in the same order."""
    if not is_distributed():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(modules: Iterable[nn.Module | None], src: int = 0, norm_only: bool = False) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics, ...) of each module to every rank
    (``norm_only``: those of BatchNorm layers alone, the ones training changes).

    DDP broadcasts buffers at the start of each forward, and each rank then updates them with its own batch,
    so after training the ranks' buffers differ slightly; the weights are the same on every rank."""
    if not is_distributed():
        return
    for module in modules:
        if module is None:
            continue
        module = module.module if hasattr(module, "module") else module
        owners = [m for m in module.modules() if isinstance(m, _NORMS)] if norm_only else [module]
        for owner in owners:
            for buffer in owner.buffers():
                dist.broadcast(buffer.data, src)


class BufferSync:
    """Handler: after every iteration, give every rank rank 0's BatchNorm statistics of ``module``.

    For the EMA teacher: it copies (``buffers="copy"``) the statistics of its own rank's student, which each rank
    updates with its own batch, so without this every rank would have a slightly different teacher while the
    checkpoints hold rank 0's, and a resumed run would not continue the other ranks' teachers. With it there is
    one teacher, rank 0's, as DDP makes rank 0's the student's statistics at each forward. Attach after the
    teacher's handler (in ``run``, after the trainer is built) and before the checkpoint saver. A collective:
    attach it on every rank. Costs one broadcast of the normalisation buffers per iteration.
    """

    def __init__(self, module: nn.Module):
        self.module = module

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine=None) -> None:
        broadcast_buffers([self.module], norm_only=True)
