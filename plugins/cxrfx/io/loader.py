"""``load_cxr``: one entry point for every radiograph format, returning (H, W) float32 + meta."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cxrfx.errors import CXRReadError
from cxrfx.io.dicom import read_dicom
from cxrfx.io.jsrt import read_jsrt
from cxrfx.io.limits import check_dimensions
from cxrfx.io.raster import read_raster
from cxrfx.io.volume import read_metaimage, read_nifti, read_nrrd

__all__ = ["load_cxr", "detect_format", "list_images", "FORMATS"]

FORMATS = ("dicom", "png", "jpeg", "raster", "jsrt", "metaimage", "nrrd", "nifti")

_EXTENSIONS = {
    ".dcm": "dicom", ".dicom": "dicom", ".dic": "dicom",
    ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "raster", ".tiff": "raster", ".bmp": "raster",
    ".img": "jsrt", ".mha": "metaimage", ".mhd": "metaimage", ".nrrd": "nrrd", ".nhdr": "nrrd",
    ".nii": "nifti", ".nii.gz": "nifti",
}


def detect_format(path: str | os.PathLike) -> str:
    """Guess the format from the file's first bytes, then from its extension."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(352)
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith((b"II*\x00", b"MM\x00*", b"BM")):
        return "raster"
    if head.startswith(b"NRRD000"):
        return "nrrd"
    if head[344:348] in (b"n+1\x00", b"ni1\x00") or head.startswith(b"\x1f\x8b"):
        return "nifti"  # gzip here means .nii.gz (the only gzip container we read)
    if head.lstrip().startswith((b"ObjectType", b"NDims", b"Comment")):
        return "metaimage"
    lower = path.lower()
    for ext in sorted(_EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ext):
            return _EXTENSIONS[ext]
    return "dicom"  # last resort: DICOM files without preamble and extension exist (e.g. PACS exports)


def load_cxr(
    path: str | os.PathLike,
    apply_voi: bool = True,
    bits_stored: int | None = None,
    jsrt_invert: bool = True,
    fmt: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Load a chest radiograph of any supported format.

    Returns ``(image, meta)``: ``image`` is a float32 array of shape (H, W), row 0 at the top as a viewer
    shows it, column 0 on the viewer's left (the patient's right on a PA/AP film), display polarity
    (bright = attenuating; MONOCHROME1 is inverted). ``meta`` holds at least:

    - ``path``, ``format``, ``original_size`` (H, W)
    - ``bit_depth``: significant bits of the source values
    - ``photometric_interpretation``: of the source (``MONOCHROME2`` for non-DICOM gray images)
    - ``pixel_spacing``: (row, column) mm or None; ``spacing_source``: which tag it came from
      (``PixelSpacing`` / ``ImagerPixelSpacing`` / ...)
    - ``value_range``: the (low, high) the values can take, used by ``NormalizeCXRd(mode="range")``

    Args:
        path: image file.
        apply_voi: DICOM only: apply the VOI LUT / window (see :func:`cxrfx.io.dicom.read_dicom`).
        bits_stored: PNG/TIFF only: significant bits of a 16-bit file (e.g. 12 for Montgomery).
        jsrt_invert: JSRT only: flip optical density to display polarity.
        fmt: force a format from :data:`FORMATS` instead of detecting it.

    Raises:
        CXRReadError: naming the file and the problem (missing, empty, truncated, not an image,
            multi-frame, no pixel data, undecodable transfer syntax, invalid pixel attributes, a side
            shorter than :data:`~cxrfx.io.limits.MIN_SIDE` or a header declaring more than
            :data:`~cxrfx.io.limits.MAX_PIXELS` pixels, ...). NaN or infinite pixel values are refused
            too, never clipped or replaced: they mean a broken conversion upstream.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        if os.path.islink(path):
            raise CXRReadError(path, f"broken symbolic link (its target {os.readlink(path)} does not exist)")
        raise CXRReadError(path, "file not found")
    if os.path.isdir(path):
        raise CXRReadError(path, "is a directory, not an image file")
    try:
        size = os.path.getsize(path)
        fmt = fmt or detect_format(path)
    except OSError as exc:
        raise CXRReadError(path, f"cannot open file ({exc.strerror})") from None
    if size == 0:
        raise CXRReadError(path, "empty file (0 bytes)")
    if fmt == "dicom":
        image, meta = read_dicom(path, apply_voi=apply_voi)
    elif fmt in ("png", "jpeg", "raster"):
        image, meta = read_raster(path, bits_stored=bits_stored)
    elif fmt == "jsrt":
        image, meta = read_jsrt(path, invert=jsrt_invert)
    elif fmt == "metaimage":
        image, meta = read_metaimage(path)
    elif fmt == "nrrd":
        image, meta = read_nrrd(path)
    elif fmt == "nifti":
        image, meta = read_nifti(path)
    else:
        raise CXRReadError(path, f"unknown format {fmt!r}; expected one of {FORMATS}")
    check_dimensions(path, *image.shape)
    finite = np.isfinite(image)
    if not finite.all():
        # Refused, not clipped or zeroed: NaN / inf pixels come from a broken conversion upstream, any
        # replacement value would be a guess, and one NaN pixel turns the loss of its whole batch into NaN.
        raise CXRReadError(path, f"{image.size - int(finite.sum())} of {image.size} pixels are NaN or infinite "
                                 "values (refused: fix the conversion that wrote this file)")
    meta["path"] = path
    meta.setdefault("inverted", False)
    return image, meta


def list_images(path: str | os.PathLike) -> list[str]:
    """The radiograph files of ``path``: the file itself, or every image file below a folder (a DICOM
    series folder included: files are recognised by their first bytes, so extension-less DICOMs count)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CXRReadError(path, "input not found")
    if os.path.isfile(path):
        return [path]
    found = []
    for folder, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            full = os.path.join(folder, name)
            if name.startswith(".") or name.lower().endswith((".json", ".csv", ".txt", ".md")):
                continue
            try:
                fmt = detect_format(full)
            except OSError:  # a dangling link, no permission: kept, so the reader names it like any bad input
                found.append(full)
                continue
            known = any(name.lower().endswith(ext) for ext in _EXTENSIONS)
            if known or fmt != "dicom" or _is_dicom(full):
                found.append(full)
    return found


def _is_dicom(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(132)[128:132] == b"DICM"
