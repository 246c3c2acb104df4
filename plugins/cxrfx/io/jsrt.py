"""JSRT raw ``.IMG`` radiographs: 2048 x 2048, 12-bit values in big-endian uint16, no header."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cxrfx.errors import CXRReadError

__all__ = ["read_jsrt", "JSRT_SHAPE", "JSRT_SPACING_MM"]

JSRT_SHAPE = (2048, 2048)
JSRT_SPACING_MM = (0.175, 0.175)  # digitised film, 0.175 mm pixels (JSRT documentation)


def read_jsrt(path: str | os.PathLike, invert: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a JSRT ``.IMG`` file as (H, W) float32 in 0..4095.

    JSRT stores film optical density: high values are dark. ``invert=True`` (default) flips it to the
    usual display polarity (bones bright, MONOCHROME2), as the PNG conversions in circulation do.
    """
    path = os.fspath(path)
    expected = JSRT_SHAPE[0] * JSRT_SHAPE[1] * 2
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise CXRReadError(path, f"cannot open file ({exc.strerror})") from None
    if size != expected:
        raise CXRReadError(
            path, f"JSRT raw .IMG must be exactly {expected} bytes (2048x2048 big-endian uint16), file has {size}"
        )
    raw = np.fromfile(path, dtype=">u2").reshape(JSRT_SHAPE)
    if raw.max() > 4095:
        raise CXRReadError(path, f"values up to {int(raw.max())} exceed 12 bits: not a JSRT raw image?")
    values = raw.astype(np.float32)
    if invert:
        values = 4095.0 - values
    meta = {
        "format": "jsrt",
        "bit_depth": 12,
        "photometric_interpretation": "MONOCHROME1",
        "inverted": bool(invert),
        "value_range": (0.0, 4095.0),
        "pixel_spacing": JSRT_SPACING_MM,
        "spacing_source": "JSRT specification",
        "original_size": JSRT_SHAPE,
    }
    return values, meta
