"""Self-supervised data sources: any datalist's images (unlabelled ones, or annotated ones read as images only)
as ``{"ssl/<dataset>": DataLoader}`` for the ``ssl`` steps of the Lock-Release cycle.

Each item becomes two views of the same radiograph (random resized crop, small rotation, contrast and blur
jitter; no left-right flip, the anatomy is lateralised as ``cxrfx.data.pipelines`` explains), and view 1 is
Models-Genesis distorted with its undistorted copy kept as the restoration target. Sampling, per-sample seeds
and the skip policy are the supervised sources' (``ResumableSampler``, ``SeededDataset``), so an SSL step
resumes on the same batch and the same distortions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from monai.data import DataLoader, Dataset
from monai.transforms import (
    Compose, CopyItemsd, EnsureTyped, RandAdjustContrastd, RandAffined, RandGaussianSmoothd, RandScaleCropd, Resized,
    SelectItemsd,
)

from cxrfx.data.datalist import load_datalist
from cxrfx.data.multitask import SkippingDataset, build_sources, multitask_collate
from cxrfx.data.sampling import ResumableSampler, SeededDataset, source_seed
from cxrfx.data.transforms import ResizeWithBoxesd
from cxrfx.errors import ConfigError
from cxrfx.io.transforms import LoadCXRd, NormalizeCXRd
from cxrfx.ssl.transforms import RandAnatomyCropsd, RandGenesisd

__all__ = ["ssl_transforms", "ssl_collate", "ssl_loaders", "task_loaders_with_ssl", "SSL_KEYS", "RECIPE_KEYS"]

# the batch entries of each recipe (``input_keys`` of DiRA and Adam-v2)
RECIPE_KEYS = {"dira": ("view1", "view2", "target"), "adam_v2": ("whole1", "whole2", "part_a", "part_b")}
SSL_KEYS = tuple(k for keys in RECIPE_KEYS.values() for k in keys)


def _jitter(key: str) -> list:
    """Intensity jitter of one view (its own draws)."""
    return [RandAdjustContrastd(key, prob=0.5, gamma=(0.7, 1.5)),
            RandGaussianSmoothd(key, prob=0.3, sigma_x=(0.1, 1.0), sigma_y=(0.1, 1.0))]


def ssl_transforms(size: int = 224, recipe: str = "dira", crop_scale: Sequence[float] = (0.5, 1.0),
                   genesis: bool = True, normalize: str = "range", num_blocks: int = 1000, max_level: int = 2
                   ) -> Compose:
    """Load, normalise, resize to ``size``, then per ``recipe``:

    ``dira``: two augmented views; Genesis on view 1 (``genesis``) with the undistorted view 1 as ``target``.
    ``crop_scale``: side fraction range of the random crops (MoCo crops an area fraction of 0.2..1 of natural
    images; a radiograph's anatomy needs most of the field, hence 0.5..1).
    ``adam_v2``: an anatomical whole crop (granularity level 0..``max_level``) and its two halves, each resized to
    ``size``; two intensity-jittered views of the whole (no random crop: the crop *is* the anatomy).
    """
    if recipe not in RECIPE_KEYS:
        raise ConfigError(f"SSL recipe must be one of {sorted(RECIPE_KEYS)}, got {recipe!r}")
    chain = [LoadCXRd("image"), NormalizeCXRd("image", mode=normalize), ResizeWithBoxesd("image", (size, size))]
    if recipe == "adam_v2":
        chain += [RandAnatomyCropsd("image", (size, size), max_level=max_level, whole_key="whole1"),
                  CopyItemsd("whole1", names=["whole2"]), *_jitter("whole1"), *_jitter("whole2")]
    else:
        chain.append(CopyItemsd("image", times=2, names=["view1", "view2"]))
        for key in ("view1", "view2"):  # separate transforms: each view draws its own crop and jitter
            chain += [RandScaleCropd(key, roi_scale=crop_scale[0], max_roi_scale=crop_scale[1], random_size=True),
                      Resized(key, (size, size), mode="bilinear"),
                      RandAffined(key, prob=0.5, rotate_range=0.12, padding_mode="zeros"), *_jitter(key)]
        if genesis:
            chain.append(RandGenesisd("view1", restore_key="target", num_blocks=num_blocks))
        else:
            chain.append(CopyItemsd("view1", names=["target"]))
    keys = list(RECIPE_KEYS[recipe])
    chain.append(EnsureTyped(keys, data_type="tensor", dtype=torch.float32, track_meta=False))
    chain.append(SelectItemsd([*keys, "id", "dataset"], allow_missing_keys=True))
    return Compose(chain)


def ssl_collate(batch: Sequence[Mapping | None]) -> dict:
    """:func:`~cxrfx.data.multitask.multitask_collate` (skipped samples dropped and counted) with the views
    stacked."""
    out = multitask_collate(batch)
    for key in SSL_KEYS:
        if key in out:
            out[key] = torch.stack([torch.as_tensor(v) for v in out[key]])
    return out


def ssl_loaders(data: Mapping[str, Mapping], split: str = "training", size: int = 224, batch_size: int = 8,
                num_workers: int = 0, seed: int = 0, skip_bad_samples: bool = False, distributed: bool = False,
                transform_options: Mapping | None = None) -> dict[str, DataLoader]:
    """``{"ssl/<dataset>": DataLoader}`` from ``{dataset: {"datalist": path, "batch_size"?}}``; annotated
    datalists contribute their images only. Shuffled, resumable and seeded as ``build_sources``' loaders."""
    import torch.distributed as dist

    loaders = {}
    for name, spec in data.items():
        items = [{"image": it["image"], "id": str(it.get("id", it["image"])), "dataset": name}
                 for it in load_datalist(spec["datalist"], split)]
        if not items:
            continue
        # one Compose per source: SeededDataset re-seeds each dataset's own transform
        dataset = (SkippingDataset if skip_bad_samples else Dataset)(
            items, ssl_transforms(size, **dict(transform_options or {})))
        replicas, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        sampler = ResumableSampler(len(dataset), shuffle=True, seed=source_seed(seed, f"ssl/{name}"),
                                   num_replicas=replicas, rank=rank)
        bs = int(spec.get("batch_size", batch_size))
        if len(sampler) < 2:
            raise ConfigError(f"{spec['datalist']}: ssl training needs at least 2 images per process")
        loaders[f"ssl/{name}"] = DataLoader(
            SeededDataset(dataset), batch_size=bs, sampler=sampler, drop_last=len(sampler) % bs == 1,
            num_workers=num_workers, collate_fn=ssl_collate, generator=torch.Generator().manual_seed(seed))
    return loaders


def task_loaders_with_ssl(data: Mapping[str, Mapping], ssl_data: Mapping[str, Mapping], split: str = "training",
                          ssl_options: Mapping | None = None, **kwargs) -> dict:
    """The supervised sources of ``data`` (``build_sources``) and the SSL sources of ``ssl_data``, one mapping:
    what a bundle's ``train#dataset`` returns when its schedule has ``ssl`` steps. ``kwargs`` go to both
    (size, batch_size, num_workers, seed, skip_bad_samples, ...); ``ssl_options``: transform options."""
    loaders = dict(build_sources(data, split=split, **kwargs)) if data else {}
    shared = {k: kwargs[k] for k in ("size", "batch_size", "num_workers", "seed", "skip_bad_samples", "distributed")
              if k in kwargs}
    loaders.update(ssl_loaders(ssl_data, split=split, transform_options=ssl_options, **shared))
    return loaders
