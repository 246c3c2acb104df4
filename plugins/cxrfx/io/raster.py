"""PNG / JPEG / TIFF / BMP radiographs with Pillow, as (H, W): row 0 is the top of the image.

We read with PIL + numpy directly rather than MONAI's PILReader, whose default ``reverse_indexing``
returns (W, H) (REFERENCE §6.4). 16-bit PNG keeps its 16 bits; colour or alpha images become grayscale.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrfx.errors import CXRReadError
from cxrfx.io.limits import check_dimensions

__all__ = ["read_raster"]

# PIL modes that hold one grayscale channel, with their bit depth.
_GRAY_MODES = {"1": 1, "L": 8, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


def read_raster(path: str | os.PathLike, bits_stored: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a raster image file as (H, W) float32 plus meta.

    Args:
        path: PNG, JPEG, TIFF or BMP file.
        bits_stored: the significant bits of a 16-bit file when known (e.g. 12 for Montgomery);
            sets ``meta["value_range"]`` to (0, 2**bits_stored - 1) instead of the container's range.
    """
    path = os.fspath(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                fmt = img.format
                mode = img.mode
                info = dict(img.info)
                check_dimensions(path, img.height, img.width)  # from the header, before decoding
                n_frames = getattr(img, "n_frames", 1)
                if n_frames > 1:
                    raise CXRReadError(path, f"multi-frame {fmt} ({n_frames} frames): expected one radiograph")
                img.load()  # decode now so truncated files fail here, not later
                converted_from = None
                if mode in _GRAY_MODES:
                    arr = np.array(img)
                else:  # RGB, RGBA, LA, P, CMYK, YCbCr...: PIL's ITU-R 601 luma, alpha ignored
                    converted_from = mode
                    if mode in ("LA", "PA") or (mode == "P" and "transparency" in info):
                        img = img.convert("RGBA")
                    arr = np.array(img.convert("L"))
    except CXRReadError:
        raise
    except UnidentifiedImageError:
        raise CXRReadError(path, "not an image file that Pillow recognises") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise CXRReadError(path, f"image header declares an implausible size, refused before decoding ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise CXRReadError(path, f"cannot decode image ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 2 or arr.size == 0:
        raise CXRReadError(path, f"decoded to an unexpected shape {arr.shape}")

    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
        depth = 1
    else:
        depth = _GRAY_MODES.get(mode, 8) if converted_from is None else 8
    if depth == 32 and np.issubdtype(arr.dtype, np.integer) and arr.min() >= 0 and arr.max() <= 65535:
        depth = 16  # PIL opens some 16-bit PNGs as mode "I"
    if bits_stored is not None:
        if not 1 <= bits_stored <= depth:
            raise CXRReadError(path, f"bits_stored={bits_stored} is not possible for a {depth}-bit image")
        depth = int(bits_stored)
    if depth == 32:
        value_range = (float(arr.min()), float(arr.max()))  # float/32-bit files have no nominal range
    else:
        value_range = (0.0, float(2**depth - 1))
    meta: dict[str, Any] = {
        "format": (fmt or "raster").lower(),
        "bit_depth": depth,
        "photometric_interpretation": "MONOCHROME2",
        "converted_from": converted_from,
        "value_range": value_range,
        "pixel_spacing": _dpi_spacing(info),
        "spacing_source": "dpi" if _dpi_spacing(info) else None,
        "original_size": tuple(int(s) for s in arr.shape),
    }
    return np.ascontiguousarray(arr, dtype=np.float32), meta


def _dpi_spacing(info: dict) -> tuple[float, float] | None:
    """PNG pHYs / JPEG density as mm per pixel (row, col); usually absent or meaningless for CXR."""
    dpi = info.get("dpi")
    if not dpi or len(dpi) != 2:
        return None
    try:
        x, y = float(dpi[0]), float(dpi[1])
    except (TypeError, ValueError):
        return None
    if x <= 1 or y <= 1 or (round(x) == 72 and round(y) == 72) or (round(x) == 96 and round(y) == 96):
        return None  # software defaults, not a calibration
    return (25.4 / y, 25.4 / x)
