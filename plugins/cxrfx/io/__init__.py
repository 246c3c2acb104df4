"""Chest X-ray image I/O: ``load_cxr`` for every format, and MONAI transforms around it."""

from cxrfx.io.loader import FORMATS, detect_format, load_cxr
from cxrfx.io.transforms import LoadCXR, LoadCXRd, LoadMaskd, NormalizeCXR, NormalizeCXRd, read_mask

__all__ = [
    "FORMATS", "detect_format", "load_cxr", "LoadCXR", "LoadCXRd", "LoadMaskd", "NormalizeCXR", "NormalizeCXRd",
    "read_mask",
]
