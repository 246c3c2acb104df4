"""MONAI transforms around :func:`load_cxr`: images and masks as (C, H, W) MetaTensors, and normalisation.

Axis convention of the whole project: tensors are (C, H, W); spatial axis 0 is the row (y, top to
bottom) and spatial axis 1 the column (x, viewer's left to right). MONAI's own PNG/DICOM readers return
(W, H) by default (REFERENCE §6.4); nothing here uses them.

Intensity contract of :class:`NormalizeCXRd` (the input contract of every cxrfx network): one channel,
float32 in [0, 1], 0 = least attenuating (air, black), 1 = most attenuating (bone, metal, white).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from cxrfx.errors import CXRReadError
from cxrfx.io.loader import load_cxr

__all__ = ["LoadCXR", "LoadCXRd", "LoadMaskd", "NormalizeCXR", "NormalizeCXRd", "read_mask", "meta_for_tensor"]


def meta_for_tensor(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Turn :func:`load_cxr` meta into MetaTensor meta with fixed keys and collatable types (no None)."""
    height, width = meta["original_size"]
    spacing = meta.get("pixel_spacing") or (float("nan"), float("nan"))
    affine = torch.eye(4, dtype=torch.float64)
    if np.isfinite(spacing).all():
        affine[0, 0], affine[1, 1] = float(spacing[0]), float(spacing[1])
    return {
        "filename_or_obj": meta.get("path", ""),
        "affine": affine,
        "original_affine": affine.clone(),
        "spatial_shape": np.array([height, width]),
        "original_channel_dim": "no_channel",
        "cxr_format": str(meta.get("format", "")),
        "cxr_bit_depth": int(meta.get("bit_depth", 0)),
        "cxr_photometric": str(meta.get("photometric_interpretation", "")),
        "cxr_inverted": bool(meta.get("inverted", False)),
        "cxr_voi": str(meta.get("voi_applied") or ""),
        "cxr_pixel_spacing": np.asarray(spacing, dtype=np.float64),
        "cxr_spacing_source": str(meta.get("spacing_source") or ""),
        "cxr_value_range": np.asarray(meta["value_range"], dtype=np.float64),
        "cxr_original_size": np.array([height, width]),
    }


class LoadCXR(Transform):
    """Load a radiograph file as a (1, H, W) float32 :class:`MetaTensor` (see :func:`load_cxr`)."""

    def __init__(self, apply_voi: bool = True, bits_stored: int | None = None, jsrt_invert: bool = True):
        self.kwargs = {"apply_voi": apply_voi, "bits_stored": bits_stored, "jsrt_invert": jsrt_invert}

    def __call__(self, path: str | os.PathLike) -> MetaTensor:
        image, meta = load_cxr(path, **self.kwargs)
        return MetaTensor(torch.from_numpy(image[None]), meta=meta_for_tensor(meta))


class LoadCXRd(MapTransform):
    """Dictionary version of :class:`LoadCXR`: replaces each path under ``keys`` by the loaded image."""

    def __init__(self, keys: KeysCollection = "image", allow_missing_keys: bool = False, **load_kwargs):
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadCXR(**load_kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "LA", "La", "PA")


def _mask_pixels(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """A mask file's values via :func:`load_cxr`, refusing colour masks, whose class cannot be read from luma.

    A colour label image (red = class 1, green = class 2 ...) turned into gray levels gives arbitrary values,
    and a mask drawn only in the alpha channel (black, transparent outside) would silently become empty.
    Gray images stored as RGB(A) with equal channels are accepted. Palette images keep their indices.
    """
    arr, meta = load_cxr(path)
    mode = meta.get("converted_from")
    if mode == "P":  # palette PNG/GIF (e.g. VOC style): the indices are the classes
        from PIL import Image

        with Image.open(path) as img:
            return np.asarray(img, dtype=np.float32), meta
    if mode in _COLOUR_MODES:
        from PIL import Image

        with Image.open(path) as img:
            bands = np.asarray(img.convert("RGBA"))
        rgb, alpha = bands[..., :3], bands[..., 3]
        if (rgb != rgb[..., :1]).any():
            raise CXRReadError(path, f"colour ({mode}) mask: its R, G and B channels differ, so classes cannot be "
                                     "read from it; save masks as grayscale (or palette) images")
        if alpha.min() != alpha.max() and rgb.min() == rgb.max():
            raise CXRReadError(path, f"{mode} mask drawn only in its alpha channel (the gray values are all "
                                     f"{int(rgb.flat[0])}); save the alpha channel as a grayscale mask")
    return arr, meta


def _check_binary(path: str | os.PathLike, arr: np.ndarray) -> np.ndarray:
    """``arr > 0`` for a binary mask (0 and ONE foreground value); anything else is refused, because a lossy
    (JPEG) mask, an index map or a probability map given as a binary mask would be thresholded silently."""
    if arr.min() < 0:
        raise CXRReadError(path, f"binary mask has negative values (minimum {arr.min():g}); expected 0 and one "
                                 "foreground value")
    foreground = arr[arr != 0]
    if foreground.size and foreground.min() != foreground.max():
        levels = np.unique(foreground)
        found = ", ".join(f"{v:g}" for v in levels[:5]) + (", ..." if levels.size > 5 else "")
        raise CXRReadError(path, f"not a binary mask: {levels.size} foreground values ({found}); expected 0 and one "
                                 "value (a lossy JPEG, an index map or a probability map?)")
    return arr > 0


def read_mask(spec: str | os.PathLike | Mapping[str, str], classes: Sequence[str]) -> np.ndarray:
    """Read a mask as (C, H, W) uint8 {0, 1}, one channel per entry of ``classes``.

    ``spec`` is either the path of an index map (pixel value k = ``classes[k-1]``, 0 = background;
    classes cannot overlap) or a mapping ``{class name: path of a binary mask}`` (0 = outside, one other
    value = inside, e.g. 0 / 255; classes may overlap; a class absent from the mapping is an empty channel).

    Raises :class:`CXRReadError` naming the file for anything :func:`load_cxr` refuses, and for: index
    values outside ``0..len(classes)``, binary masks with several foreground values or negative values,
    colour masks (R, G, B differ) and masks drawn only in an alpha channel, files of different sizes.
    """
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - set(classes))
        if unknown:
            raise CXRReadError(next(iter(spec.values()), "<mask>"), f"mask names unknown classes {unknown}")
        channels, shape, first = {}, None, None
        for name, path in spec.items():
            arr, _ = _mask_pixels(path)
            if shape is not None and arr.shape != shape:
                raise CXRReadError(path, f"mask size {arr.shape} differs from {first} size {shape}")
            shape, first = arr.shape, path
            channels[name] = _check_binary(path, arr)
        if shape is None:
            raise CXRReadError("<mask>", "mask mapping is empty")
        return np.stack([channels.get(c, np.zeros(shape, bool)) for c in classes]).astype(np.uint8)
    arr, _ = _mask_pixels(spec)
    bad = arr[(arr < 0) | (arr > len(classes)) | (arr != np.round(arr))]
    if bad.size:
        found = ", ".join(f"{v:g}" for v in np.unique(bad)[:5])
        raise CXRReadError(spec, f"index-map mask has values outside 0..{len(classes)} (one per class): {found}")
    index = arr.astype(np.int64)
    return np.stack([index == k + 1 for k in range(len(classes))]).astype(np.uint8)


class LoadMaskd(MapTransform):
    """Load masks (see :func:`read_mask`) as (C, H, W) float32 MetaTensors checked against an image.

    Args:
        keys: keys holding mask specs.
        classes: segmentation class names, in channel order.
        ref_key: key of the already-loaded image the mask must match in size; its meta is copied.
    """

    def __init__(self, keys: KeysCollection, classes: Sequence[str], ref_key: str | None = "image",
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.classes = list(classes)
        self.ref_key = ref_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            spec = d[key]
            mask = read_mask(spec, self.classes)
            meta: dict[str, Any] = {}
            if self.ref_key is not None and self.ref_key in d:
                ref = d[self.ref_key]
                if tuple(mask.shape[1:]) != tuple(ref.shape[-2:]):
                    where = spec if isinstance(spec, (str, os.PathLike)) else next(iter(spec.values()))
                    raise CXRReadError(
                        where, f"mask size {tuple(mask.shape[1:])} differs from image size {tuple(ref.shape[-2:])}"
                        f" ({getattr(ref, 'meta', {}).get('filename_or_obj', self.ref_key)})"
                    )
                if isinstance(ref, MetaTensor):
                    meta = dict(ref.meta)
            d[key] = MetaTensor(torch.from_numpy(mask.astype(np.float32)), meta=meta)
        return d


class NormalizeCXR(Transform):
    """Map a loaded radiograph to the [0, 1] contract (see module docstring).

    Modes:
        ``"range"`` (default): divide by the nominal range of the source (``cxr_value_range`` meta, e.g.
            0..4095 for 12-bit, the window for a VOI-windowed DICOM); contrast is comparable across images.
        ``"percentile"``: map the ``lower``..``upper`` percentiles to 0..1; for sources whose nominal range
            is unknown or unreliable (16-bit PNGs holding 10-14 bits, e.g. PadChest).
        ``"minmax"``: per-image minimum and maximum.
    Values are clipped to [0, 1].
    """

    def __init__(self, mode: str = "range", lower: float = 0.5, upper: float = 99.5):
        if mode not in ("range", "percentile", "minmax"):
            raise ValueError(f"mode must be 'range', 'percentile' or 'minmax', got {mode!r}")
        self.mode, self.lower, self.upper = mode, lower, upper

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = img.float()
        if self.mode == "range":
            vr = getattr(img, "meta", {}).get("cxr_value_range")
            if vr is None:
                raise ValueError("NormalizeCXR(mode='range') needs 'cxr_value_range' meta: load with LoadCXRd")
            lo, hi = float(vr[0]), float(vr[1])
        elif self.mode == "percentile":
            flat = x.reshape(-1)
            sample = flat[:: max(1, flat.numel() // 262144)]  # percentiles of a strided sample: fast, stable
            q = torch.tensor([self.lower, self.upper], dtype=sample.dtype, device=sample.device) / 100.0  # same device: CUDA
            lo, hi = (float(v) for v in torch.quantile(sample, q))
        else:
            lo, hi = float(x.min()), float(x.max())
        scale = 1.0 / (hi - lo) if hi > lo else 0.0
        return ((x - lo) * scale).clamp_(0.0, 1.0)


class NormalizeCXRd(MapTransform):
    """Dictionary version of :class:`NormalizeCXR`."""

    def __init__(self, keys: KeysCollection = "image", mode: str = "range", lower: float = 0.5,
                 upper: float = 99.5, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.normalizer = NormalizeCXR(mode, lower, upper)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d
