"""Reproducible, resumable sample order and augmentation.

A run killed inside an epoch must continue exactly as if it had not stopped. Two things make that possible
without replaying the data: the order of an epoch is a pure function of ``(seed, epoch)``, and so is each
sample's augmentation (a per-position seed sent with the index to :class:`SeededDataset`). A restored loader
therefore only needs ``(epoch, position)``: :class:`ResumableSampler` starts its next pass there. Neither
depends on the global RNGs or on which DataLoader worker reads a sample.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["ResumableSampler", "SeededDataset", "source_seed"]

_MAX_SEED = 2**31 - 1


def source_seed(seed: int, name: str) -> int:
    """A seed for one data source: ``seed`` mixed with the source's name, so that two sources of the same
    size do not walk in lockstep."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % _MAX_SEED


class ResumableSampler(Sampler):
    """Yields ``(index, sample_seed)`` pairs; the permutation and seeds of epoch ``e`` depend only on
    ``(seed, e)``.

    Args:
        length: number of samples of the dataset.
        shuffle: a new permutation each epoch (training) or the dataset order (evaluation).
        seed: base seed.
        num_replicas, rank: distributed sharding as ``DistributedSampler`` does it (the permutation is
            padded by repeating its start so every rank gets ``ceil(length / num_replicas)`` samples).

    ``set_epoch(e)`` picks the epoch; ``set_start(k)`` makes the NEXT pass skip its first ``k`` samples (one
    pass only: the pass after it is whole again). ``len()`` is always a whole pass, so loaders keep their
    nominal length.
    """

    def __init__(self, length: int, shuffle: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.length = int(length)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.num_samples = math.ceil(self.length / self.num_replicas)
        self.epoch = 0
        self._start = 0

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, start: int) -> None:
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} outside 0..{self.num_samples}")
        self._start = int(start)

    def epoch_plan(self, epoch: int) -> tuple[list[int], list[int]]:
        """(indices, sample seeds) of this rank's whole pass ``epoch``."""
        # SeedSequence hashes (seed, epoch) well: consecutive epochs get unrelated streams
        state = np.random.SeedSequence([self.seed, int(epoch)]).generate_state(2, dtype=np.uint64)
        generator = torch.Generator().manual_seed(int(state[0]) & 0x7FFF_FFFF_FFFF_FFFF)
        order = torch.randperm(self.length, generator=generator) if self.shuffle else torch.arange(self.length)
        seeds = np.random.default_rng(int(state[1])).integers(0, _MAX_SEED, size=self.length)
        total = self.num_samples * self.num_replicas
        positions = (list(range(self.length)) * math.ceil(total / max(self.length, 1)))[:total]
        mine = positions[self.rank::self.num_replicas]
        return [int(order[p]) for p in mine], [int(seeds[p]) for p in mine]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start, self._start = self._start, 0
        indices, seeds = self.epoch_plan(self.epoch)
        return iter(list(zip(indices, seeds))[start:])


class SeededDataset(Dataset):
    """Wraps a MONAI dataset: ``ds[(index, seed)]`` re-seeds the dataset's random transforms with ``seed``
    before reading ``index`` (plain integer indices read without re-seeding).

    Re-seeding per sample makes the augmentation independent of worker assignment and of how many samples a
    worker read before, which is what lets a resumed run reproduce it.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, seed = key
            transform = getattr(self.dataset, "transform", None)
            if hasattr(transform, "set_random_state"):
                transform.set_random_state(seed=int(seed))
            return self.dataset[int(index)]
        return self.dataset[key]
