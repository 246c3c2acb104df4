"""Size limits every reader applies to a file's declared image size, before it allocates anything.

A corrupt or hostile header can claim 65535 x 65535 pixels (DICOM) or 200000 x 200000 (MetaImage, NRRD,
NIfTI); reading it would allocate gigabytes before noticing the data is missing. At the other end, a 1 x 1
or 1 x N "image" is not a radiograph (an export error or a placeholder), and resizing it to the network's
input would silently train on a constant picture.
"""

from __future__ import annotations

import os

from cxrfx.errors import CXRReadError

__all__ = ["MAX_PIXELS", "MIN_SIDE", "check_dimensions"]

# 2**27 pixels (about 11600 x 11600): well above any chest radiograph (the largest detectors are about
# 4300 x 4300), well below what would exhaust a training machine's memory as float32.
MAX_PIXELS = 1 << 27
MIN_SIDE = 8  # pixels, per side


def check_dimensions(path: str | os.PathLike, height: int, width: int, what: str = "image") -> None:
    """Raise :class:`CXRReadError` naming ``path`` if a (height, width) is too small or too large to read.

    Call it with the size a header declares, before reading the pixel data, and again on decoded arrays.
    """
    height, width = int(height), int(width)
    if height * width > MAX_PIXELS:
        raise CXRReadError(path, f"{what} header declares {height}x{width} (HxW) = {height * width} pixels, more "
                                 f"than the {MAX_PIXELS} a radiograph can have: corrupt header?")
    if min(height, width) < MIN_SIDE:
        raise CXRReadError(path, f"{what} is {height}x{width} (HxW) pixels: too small to be a radiograph "
                                 f"(each side must be at least {MIN_SIDE})")
