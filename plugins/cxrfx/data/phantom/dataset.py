"""``PhantomDataset``: a MONAI dataset over one phantom dataset, built on first use (like DecathlonDataset)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from monai.data import CacheDataset

from cxrfx.data.datalist import load_datalist

__all__ = ["PhantomDataset"]


class PhantomDataset(CacheDataset):
    """Items of ``root_dir/<dataset>/datalist.json``, generating the phantom there if it is missing.

    Args:
        root_dir: folder holding (or to hold) the phantom build.
        dataset: ``"phantom_cls"``, ``"phantom_det"`` or ``"phantom_seg"``.
        section: ``"training"``, ``"validation"`` or ``"test"``.
        transform: MONAI transforms applied to each item dict (e.g. ``LoadCXRd`` ...).
        count, size, seed: phantom parameters used when it must be built (see ``generate_phantom``).
        cache_rate, num_workers: as MONAI's ``CacheDataset`` (no caching by default).
    """

    def __init__(self, root_dir: str, dataset: str = "phantom_seg", section: str = "training",
                 transform: Sequence[Callable] | Callable = (), count: int = 64, size: int = 256, seed: int = 0,
                 cache_rate: float = 0.0, num_workers: int | None = 1, progress: bool = False):
        from cxrfx.data.phantom.writer import generate_phantom

        datalist = os.path.join(root_dir, dataset, "datalist.json")
        generate_phantom(root_dir, count=count, size=size, seed=seed, verbose=False)
        self.datalist_path = datalist
        self.section = section
        data = load_datalist(datalist, section)
        super().__init__(data, transform, cache_rate=cache_rate, num_workers=num_workers, progress=progress)
