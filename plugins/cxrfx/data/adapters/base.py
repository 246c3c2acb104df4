"""Dataset adapters: a public dataset as distributed (unpacked under a root folder) -> a cxrfx datalist.

Each adapter is one module in this package defining a subclass of :class:`DatasetAdapter` decorated with
:func:`register`; the registry discovers the modules itself. An adapter's :meth:`~DatasetAdapter.build`
returns the datalist dict; :func:`cxrfx.data.adapters.prepare` checks and writes it.

Conventions every adapter follows:
- images stay where they are (paths in the datalist are relative to the datalist's folder when possible);
- boxes become ``[x1, y1, x2, y2]`` in pixels of the image as stored (x = column, pixel edges);
- masks are decoded to PNG files under ``<out_dir>/<dataset>_masks/`` (one binary 8-bit PNG per class);
- labels stay in the dataset's native label space (``harmonise=True`` maps them to the shared vocabulary);
- splits: ``"official"`` where the dataset has one, else patient-level random with ``seed`` (never image
  level when patient ids exist); ``views`` filters view positions where the metadata has them;
- every item carries ``meta["source_id"]`` (the dataset's own image id) for leakage checks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

__all__ = ["AdapterInfo", "DatasetAdapter"]


@dataclass(frozen=True)
class AdapterInfo:
    """What ``prepare --list`` prints: name, tasks, where to get it, licence, one-line description."""

    name: str
    tasks: tuple[str, ...]  # among "classification", "detection", "segmentation"
    source: str  # where / how to obtain it
    license: str
    description: str
    official_split: bool = True
    views: bool = False  # metadata has view positions (``views`` filter supported)


class DatasetAdapter(ABC):
    """Base class of dataset adapters (see module docstring)."""

    info: AdapterInfo

    @abstractmethod
    def build(self, root: str, out_dir: str, split: str = "official", seed: int = 0,
              views: list[str] | None = None, **options: Any) -> dict:
        """Read the dataset under ``root`` and return a datalist dict (paths relative to ``out_dir``)."""
