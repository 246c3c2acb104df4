"""Several datasets at once: one loader per (task, dataset) data source, with its own transforms."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset
from monai.data.utils import json_hashing

from cxrfx.data.datalist import load_datalist, read_datalist
from cxrfx.data.pipelines import task_transforms
from cxrfx.data.sampling import ResumableSampler, SeededDataset, source_seed
from cxrfx.errors import ConfigError

__all__ = ["multitask_collate", "build_sources", "SkippingDataset", "SkippingPersistentDataset",
           "SkippingCacheDataset"]

_STACK = ("image", "label", "mask")


def _log_skipped(item: Mapping, exc: BaseException) -> None:
    cause = exc
    while cause.__cause__ is not None:  # MONAI wraps transform errors: report the original one
        cause = cause.__cause__
    logging.getLogger("cxrfx.data").warning(f"skipped sample {item.get('image')}: {cause}")


class _SkipUnreadable:
    """Mixin for MONAI datasets: an unreadable sample becomes ``None`` (logged with the file and the reason)."""

    def __getitem__(self, index):
        if isinstance(index, (slice, Sequence)):  # MONAI returns a Subset, which comes back here per item
            return super().__getitem__(index)
        try:
            return super().__getitem__(index)
        except Exception as exc:  # any failure of one sample must not stop a multi-day run under this policy
            _log_skipped(self.data[index], exc)
            return None


class SkippingDataset(_SkipUnreadable, Dataset):
    """A MONAI Dataset whose unreadable samples become ``None`` (logged with the file and the reason) instead of
    an exception; :func:`multitask_collate` drops them and counts them in the batch's ``"skipped"``."""


class SkippingPersistentDataset(_SkipUnreadable, PersistentDataset):
    """:class:`SkippingDataset` with MONAI's on-disk cache of the deterministic transforms."""


class SkippingCacheDataset(_SkipUnreadable, CacheDataset):
    """:class:`SkippingDataset` with MONAI's in-memory cache, which is filled when the dataset is built: an item
    that fails there is logged once, remembered in ``unreadable`` and read as ``None`` afterwards (MONAI's
    own CacheDataset would raise while building, and it has no public hook around filling its cache)."""

    def __init__(self, *args, **kwargs):
        self.unreadable: set[int] = set()
        super().__init__(*args, **kwargs)

    def _load_cache_item(self, idx: int):
        try:
            return super()._load_cache_item(idx)
        except Exception as exc:
            _log_skipped(self.data[idx], exc)
            self.unreadable.add(idx)  # filled from a thread pool: set.add is atomic
            return None

    def __getitem__(self, index):
        if not isinstance(index, (slice, Sequence)) and int(index) in self.unreadable:
            return None
        return super().__getitem__(index)


def multitask_collate(batch: Sequence[Mapping | None]) -> dict:
    """Stack images, labels and masks; keep boxes / box labels (different counts per image) as lists.

    ``None`` entries (samples skipped under the ``skip_bad_samples`` policy) are dropped and counted in
    ``"skipped"``; a batch of only skipped samples is ``{"skipped": n}``.
    """
    skipped = sum(item is None for item in batch)
    batch = [item for item in batch if item is not None]
    if not batch:
        return {"skipped": skipped}
    out: dict = {"skipped": skipped}
    for key in batch[0]:
        values = [item[key] for item in batch]
        out[key] = torch.stack([torch.as_tensor(v) for v in values]) if key in _STACK else values
    return out


def build_sources(sources: Mapping[str, Mapping], split: str = "training", size: int = 224, batch_size: int = 4,
                  num_workers: int = 0, train: bool = True, seed: int = 0, cache_rate: float = 0.0,
                  distributed: bool = False, skip_bad_samples: bool = False, cache_dir: str | None = None
                  ) -> dict[str, DataLoader]:
    """``{"<task>/<dataset>": DataLoader}`` from ``{dataset: {"datalist": path, "tasks": [...], "batch_size"?}}``.

    Each data source gets the task's standard transforms (``cxrfx.data.pipelines``) and shuffles when
    ``train``. A dataset listed with several tasks gives one source per task. Order and augmentation follow
    ``(seed, epoch)`` only (:class:`~cxrfx.data.sampling.ResumableSampler`), so a resumed run reads what the
    uninterrupted run would have read. ``distributed``: each process reads its shard. Training shards all have
    the same length (padded by repeating samples, as ``DistributedSampler`` does), so every rank walks the same
    cycle; evaluation shards are disjoint and unpadded (rank ``r`` reads items ``r, r + n, ...``), so no image
    counts twice once ``MultiTaskScore`` gathers the ranks' predictions (such loaders have ``sharded = True``).
    ``skip_bad_samples``: an unreadable sample is logged, counted and left out of its batch instead of stopping
    the run (off by default: a bad file should be fixed, and ``validate`` finds them before training).
    ``cache_dir``: keep each sample's decoded, normalised, resized image (everything before the first random
    transform) on disk (MONAI ``PersistentDataset``; keyed by the item and the transform chain), so later passes
    skip decoding multi-megapixel DICOM / PNG. Delete the folder when image files change in place.
    ``cache_rate``: the same in memory (``CacheDataset``), filled when the loaders are built.
    """
    loaders = {}
    for dataset, spec in sources.items():
        path = spec["datalist"]
        meta = read_datalist(path)
        items = load_datalist(path, split)
        if not items:
            continue
        replicas, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        if not train:  # evaluation: this rank's disjoint share (possibly none), each shard cached by its rank only
            items, replicas, rank = items[rank::replicas], 1, 0
        for task in spec.get("tasks", ("cls",)):
            classes = meta["tasks"].get("segmentation", {}).get("classes") if task == "seg" else None
            transform = task_transforms(task, size, classes, train=train)
            if cache_dir:
                data = (SkippingPersistentDataset if skip_bad_samples else PersistentDataset)(
                    items, transform, cache_dir=os.path.join(cache_dir, f"{task}_{dataset}_{size}"),
                    hash_transform=json_hashing)
            elif cache_rate:
                data = (SkippingCacheDataset if skip_bad_samples else CacheDataset)(
                    items, transform, cache_rate=cache_rate, progress=False)
            else:
                data = (SkippingDataset if skip_bad_samples else Dataset)(items, transform)
            sampler = ResumableSampler(len(data), shuffle=train, seed=source_seed(seed, f"{task}/{dataset}"),
                                       num_replicas=replicas, rank=rank)
            size_here = len(sampler)
            bs = int(spec.get("batch_size", batch_size))
            if train and size_here < 2:
                raise ConfigError(f"{path}: {task} training needs at least 2 images per process ({size_here} here): "
                                  "BatchNorm cannot train on single-image batches")
            loaders[f"{task}/{dataset}"] = loader = DataLoader(
                SeededDataset(data), batch_size=bs, sampler=sampler,
                # a last batch of one image would break BatchNorm in training; evaluation keeps every image
                drop_last=train and size_here % bs == 1, num_workers=num_workers, collate_fn=multitask_collate,
                # worker seeds from a private generator: creating iterators leaves the global RNG alone
                generator=torch.Generator().manual_seed(seed))
            loader.sharded = distributed and not train  # MultiTaskEvaluator gathers the ranks' predictions
    return loaders
