"""Public chest X-ray datasets as distributed -> cxrfx datalists (``python -m cxrfx prepare``).

One module per dataset registers its adapter; :func:`prepare` builds, checks and writes a datalist.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

from cxrfx.data.adapters.base import AdapterInfo, DatasetAdapter
from cxrfx.errors import ConfigError

__all__ = ["register", "get_adapter", "list_adapters", "prepare", "AdapterInfo", "DatasetAdapter"]

_REGISTRY: dict[str, type[DatasetAdapter]] = {}
_NOT_ADAPTERS = {"base", "common", "labels", "leakage"}
_discovered = False


def register(cls: type[DatasetAdapter]) -> type[DatasetAdapter]:
    """Class decorator adding an adapter to the registry under ``cls.info.name``."""
    if cls.info.name in _REGISTRY and _REGISTRY[cls.info.name] is not cls:
        raise ConfigError(f"two adapters named {cls.info.name!r}")
    _REGISTRY[cls.info.name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if not _discovered:
        for module in pkgutil.iter_modules(__path__):
            if module.name not in _NOT_ADAPTERS and not module.name.startswith("_"):
                importlib.import_module(f"{__name__}.{module.name}")
        _discovered = True


def list_adapters() -> list[AdapterInfo]:
    """Every registered dataset, sorted by name."""
    _discover()
    return [_REGISTRY[n].info for n in sorted(_REGISTRY)]


def get_adapter(name: str) -> DatasetAdapter:
    _discover()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()


def prepare(name: str, root: str, out: str, split: str = "official", seed: int = 0, views: list[str] | None = None,
            harmonise: bool = False, **options) -> str:
    """Build the datalist of dataset ``name`` from ``root`` and write it to ``out`` (checked); returns ``out``."""
    from cxrfx.data.adapters.labels import harmonise_datalist
    from cxrfx.data.datalist import write_datalist

    if split not in ("official", "random"):
        raise ConfigError(f"split must be 'official' or 'random', got {split!r}")
    if not os.path.isdir(root):
        raise ConfigError(f"{root}: --root is not a folder")
    adapter = get_adapter(name)
    out_dir = os.path.dirname(os.path.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    data = adapter.build(os.path.abspath(root), out_dir, split=split, seed=seed, views=views, **options)
    if harmonise:
        data = harmonise_datalist(data)
    return write_datalist(data, out)
