"""Binary masks on disk: 8-bit PNG (0 / 255) and NIfTI (uint8 0 / 1, pixel spacing in the header).

Both hold one class of one image in the original image's pixel grid. The NIfTI array is stored (x, y) =
(column, row), the convention ``cxrfx.io.load_cxr`` reads back to (H, W); the affine scales by the pixel
spacing (row, column) in mm when it is known (DICOM PixelSpacing or ImagerPixelSpacing, NIfTI/MetaImage/
NRRD headers) and is the identity otherwise. It carries no patient orientation: a radiograph has none
that NIfTI's RAS frame could express.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

__all__ = ["save_mask_png", "save_mask_nifti"]


def save_mask_png(path: str, mask: np.ndarray) -> str:
    """(H, W) mask -> 8-bit PNG with 255 inside; returns the path."""
    Image.fromarray((np.asarray(mask).astype(bool) * 255).astype(np.uint8)).save(path)
    return path


def save_mask_nifti(path: str, mask: np.ndarray, spacing: Sequence[float] | None = None) -> str:
    """(H, W) mask -> NIfTI-1 (``.nii`` or ``.nii.gz``), uint8 0 / 1; ``spacing`` = (row, column) mm."""
    import nibabel as nib

    data = np.ascontiguousarray(np.asarray(mask).astype(np.uint8).T)  # (x = column, y = row)
    row, col = (float(spacing[0]), float(spacing[1])) if spacing is not None else (1.0, 1.0)
    image = nib.Nifti1Image(data, np.diag([col, row, 1.0, 1.0]))
    image.header.set_xyzt_units(xyz="mm" if spacing is not None else "unknown")
    image.header.set_data_dtype(np.uint8)
    nib.save(image, path)
    return path
