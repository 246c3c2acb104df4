"""DICOM radiographs with pydicom, in the order the standard defines (REFERENCE §6.1).

stored values (BitsStored / HighBit / sign respected) -> modality LUT (rescale or LUT sequence)
-> VOI LUT or window (switch, on by default) -> MONOCHROME1 inverted to MONOCHROME2.

Works with pydicom 3 (``pydicom.pixels``) and pydicom 2.x (``pydicom.pixel_data_handlers.util``),
because MONAI Label pins pydicom < 3.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from cxrfx.errors import CXRReadError
from cxrfx.io.limits import check_dimensions

try:  # pydicom >= 3
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
except ImportError:  # pragma: no cover - pydicom 2.x
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

__all__ = ["read_dicom", "DECODER_HINTS"]

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# Transfer syntax UID prefix -> what to install so pydicom can decode it.
DECODER_HINTS = {
    "1.2.840.10008.1.2.4.50": "Pillow, or pylibjpeg + pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.51": "pylibjpeg + pylibjpeg-libjpeg (12-bit JPEG), or python-gdcm",
    "1.2.840.10008.1.2.4.57": "pylibjpeg + pylibjpeg-libjpeg, or python-gdcm",
    "1.2.840.10008.1.2.4.70": "pylibjpeg + pylibjpeg-libjpeg, or python-gdcm",
    "1.2.840.10008.1.2.4.80": "pyjpegls, or pylibjpeg + pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.81": "pyjpegls, or pylibjpeg + pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.90": "pylibjpeg + pylibjpeg-openjpeg, or Pillow built with OpenJPEG",
    "1.2.840.10008.1.2.4.91": "pylibjpeg + pylibjpeg-openjpeg, or Pillow built with OpenJPEG",
    "1.2.840.10008.1.2.4.201": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg + pylibjpeg-rle (pydicom's own RLE decoder should also work)",
}


# Values longer than this are not read when the file is opened, only when used: a corrupt length field
# (random bytes read with force=True, a lying PixelData length) must not allocate gigabytes up front.
_DEFER_SIZE = 1 << 20


def _open(path: str) -> pydicom.Dataset:
    try:
        ds = pydicom.dcmread(path, defer_size=_DEFER_SIZE)
    except InvalidDicomError:
        ds = None  # no 'DICM' preamble: legacy files exist, retry leniently below
    except Exception as exc:  # truncated header, bad VR, ...
        raise CXRReadError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    if ds is None:
        try:
            ds = pydicom.dcmread(path, force=True, defer_size=_DEFER_SIZE)
        except Exception as exc:
            raise CXRReadError(path, f"not a DICOM file ({type(exc).__name__}: {exc})") from None
        if "Rows" not in ds and not any(k in ds for k in _PIXEL_KEYWORDS):
            raise CXRReadError(path, "not a DICOM file (no DICM preamble and no image attributes)")
    if not _transfer_syntax(ds):  # no (0002,0010) in the file: pydicom decodes nothing without it
        implicit, little = getattr(ds, "original_encoding", None) or (ds.is_implicit_VR, ds.is_little_endian)
        if getattr(ds, "file_meta", None) is None:
            ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            pydicom.uid.ImplicitVRLittleEndian if implicit
            else pydicom.uid.ExplicitVRLittleEndian if little is not False else pydicom.uid.ExplicitVRBigEndian
        )
    return ds


def _check_pixel_attributes(path: str, ds: pydicom.Dataset, photometric: str) -> None:
    """Group 0028 and the pixel data length, checked before decoding: the message names the attribute that
    is wrong, and a header claiming 65535 x 65535 pixels or a 2 GB PixelData allocates nothing."""
    try:
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        allocated = int(ds.get("BitsAllocated", 0) or 0)
        stored = int(ds.get("BitsStored", allocated) or allocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise CXRReadError(path, f"invalid image pixel attributes ({exc})") from None
    if allocated != 1 and (allocated % 8 or not 8 <= allocated <= 64):
        raise CXRReadError(path, f"BitsAllocated {allocated} is invalid: must be 1 or a multiple of 8 up to 64")
    if not 1 <= stored <= allocated:
        raise CXRReadError(path, f"BitsStored {stored} is invalid for BitsAllocated {allocated} (must be 1..{allocated})")
    colour = photometric in ("RGB", "PALETTE COLOR") or photometric.startswith("YBR")
    if not colour and photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise CXRReadError(path, f"unsupported PhotometricInterpretation '{photometric}'")
    expected = 3 if colour and photometric != "PALETTE COLOR" else 1
    if samples != expected:
        raise CXRReadError(path, f"PhotometricInterpretation {photometric} needs SamplesPerPixel {expected}, "
                                 f"the file has {samples}")
    check_dimensions(path, rows, columns, "DICOM")
    try:  # the raw element: its length and offset, without reading the (deferred) value
        element = ds.get_item("PixelData", keep_deferred=True) if "PixelData" in ds else None
    except TypeError:  # pragma: no cover - pydicom 2.x has no keep_deferred: skip this check there
        element = None
    tell, length = getattr(element, "value_tell", None), getattr(element, "length", None)
    if tell is not None and length is not None and length != 0xFFFFFFFF:  # not encapsulated (undefined length)
        available = os.path.getsize(path) - tell
        if length > available:
            raise CXRReadError(path, f"truncated pixel data: PixelData declares {length} bytes, the file holds "
                                     f"{max(available, 0)}")


def _transfer_syntax(ds: pydicom.Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(getattr(meta, "TransferSyntaxUID", "")) if meta is not None else ""


def _decode(path: str, ds: pydicom.Dataset) -> np.ndarray:
    tsuid = _transfer_syntax(ds)
    try:
        return ds.pixel_array
    except RuntimeError as exc:  # NotImplementedError (no decoder) is a RuntimeError
        msg = str(exc)
        low = msg.lower()
        # "no decoder" (pydicom 3: "plugins are missing dependencies", "No pixel data decoders have been
        # implemented"; pydicom 2: "no pixel data handlers available", "missing required dependencies"),
        # as opposed to a decoder that is installed but failed ("exceptions were raised by all available
        # plugins": corrupt data), which must not be reported as a missing package.
        if "missing" in low and "dependenc" in low or "no pixel data" in low:
            name = getattr(pydicom.uid.UID(tsuid), "name", tsuid) if tsuid else "unknown"
            hint = DECODER_HINTS.get(tsuid, "a pydicom pixel-data plugin that supports it")
            raise CXRReadError(
                path, f"cannot decode transfer syntax '{name}' ({tsuid}): no decoder installed; install {hint}"
            ) from None
        raise CXRReadError(path, f"cannot decode pixel data ({type(exc).__name__}: {msg})") from None
    except Exception as exc:  # truncated / inconsistent pixel data
        raise CXRReadError(path, f"corrupt or truncated pixel data ({type(exc).__name__}: {exc})") from None


def _stored_values(arr: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, int, bool]:
    """Honour BitsStored / PixelRepresentation: keep the low BitsStored bits, sign-extend when signed.

    Bits above BitsStored may hold overlays or garbage in old files. HighBit is taken as BitsStored - 1
    (the only value current DICOM allows; pydicom's decoders assume it too).
    """
    allocated = int(ds.get("BitsAllocated", arr.dtype.itemsize * 8))
    stored = int(ds.get("BitsStored", allocated) or allocated)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if stored >= allocated:
        return arr, stored, signed
    raw = arr.astype(np.int64) & ((1 << stored) - 1)
    if signed:
        raw = np.where(raw >= (1 << (stored - 1)), raw - (1 << stored), raw)
    dtype = np.int32 if signed else (np.uint16 if stored <= 16 else np.uint32)
    return raw.astype(dtype), stored, signed


def _modality(path: str, values: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Modality LUT: the LUT Sequence when present (see :func:`_lut_lookup`), else rescale slope/intercept."""
    if ds.get("ModalityLUTSequence"):
        return _lut_lookup(path, values, ds, "ModalityLUTSequence", 0)[0]
    return np.asarray(apply_modality_lut(values, ds), dtype=np.float64)


def _modality_range(path: str, ds: pydicom.Dataset, bits: int, signed: bool) -> tuple[float, float]:
    """Range of values after the modality LUT, by pushing every possible stored value through it."""
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    probe = np.arange(lo, hi + 1, dtype=np.int64) if bits <= 16 else np.array([lo, hi], dtype=np.int64)
    mapped = _modality(path, probe, ds)
    return float(mapped.min()), float(mapped.max())


def _lut_lookup(path: str, values: np.ndarray, ds: pydicom.Dataset, keyword: str, index: int) -> tuple[np.ndarray, int]:
    """Modality / VOI LUT Sequence lookup (PS3.3 C.11.1.1.1, C.11.2.1.1); returns (values, bits per entry).

    Not pydicom's ``apply_modality_lut`` / ``apply_voi_lut`` (pydicom 3.0): the first fails with a
    TypeError for 9-15 bit entries (``dtype "uint12"``), the second builds its LUT index array in the
    LUT's output dtype, so with an 8-bit LUT every input above first-mapped + 255 wraps around.
    """
    try:
        item = getattr(ds, keyword)[index]
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        data = item["LUTData"].value
        if isinstance(data, (bytes, bytearray)):  # OW: 16-bit words in the dataset's byte order
            lut = np.frombuffer(data, dtype=">u2" if _transfer_syntax(ds) == "1.2.840.10008.1.2.2" else "<u2")
        else:  # US: pydicom already decoded the values
            lut = np.atleast_1d(np.asarray(data, dtype=np.int64))
        lut = lut[: entries or 65536].astype(np.float64)
        if lut.size == 0:
            raise ValueError("empty LUT Data")
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise CXRReadError(path, f"invalid {keyword} ({type(exc).__name__}: {exc})") from None
    idx = np.clip(np.rint(values).astype(np.int64) - first, 0, lut.size - 1)  # outside the LUT: first/last entry
    return lut[idx], bits


def _spacing(ds: pydicom.Dataset) -> tuple[tuple[float, float] | None, str | None]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            try:
                row, col = float(value[0]), float(value[1])
            except (TypeError, ValueError):
                continue
            if row > 0 and col > 0:
                return (row, col), keyword
    return None, None


def read_dicom(path: str | os.PathLike, apply_voi: bool = True, voi_index: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a single-frame DICOM radiograph as (H, W) float32 in MONOCHROME2 polarity, plus meta.

    Args:
        path: the DICOM file.
        apply_voi: apply the VOI LUT Sequence or Window Center/Width when present (the radiologist's
            display). ``False`` keeps the modality values (raw detector contrast). Keep it the same for
            training and inference.
        voi_index: which window / VOI LUT to use when several are given.

    ``meta["value_range"]`` is the (low, high) range the returned values can take, so that
    normalisation does not depend on the content of the image.
    """
    path = os.fspath(path)
    ds = _open(path)
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise CXRReadError(path, "DICOM has no pixel data (e.g. a report, presentation state or key object)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise CXRReadError(path, f"multi-frame DICOM ({frames} frames): a radiograph must have exactly one frame")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    _check_pixel_attributes(path, ds, photometric)
    arr = _decode(path, ds)

    meta: dict[str, Any] = {
        "format": "dicom",
        "transfer_syntax": _transfer_syntax(ds),
        "modality": str(ds.get("Modality", "")),
        "view_position": str(ds.get("ViewPosition", "")),
        "photometric_interpretation": photometric,
        "presentation_lut_shape": str(ds.get("PresentationLUTShape", "")),
        "magnification_factor": float(ds.get("EstimatedRadiographicMagnificationFactor", 0) or 0) or None,
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
        "patient_id": str(ds.get("PatientID", "")),
    }

    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim != 2:
            raise CXRReadError(path, f"expected a 2D grayscale frame, decoded shape {arr.shape}")
        arr, bits, signed = _stored_values(arr, ds)
        lo, hi = _modality_range(path, ds, bits, signed)
        values = _modality(path, arr, ds)
        meta["modality_lut_applied"] = bool("RescaleSlope" in ds or "ModalityLUTSequence" in ds)
        voi_applied = None
        if apply_voi and ds.get("VOILUTSequence"):
            values, _ = _lut_lookup(path, values, ds, "VOILUTSequence", voi_index)
            # The LUT's own output range, not 2**bits - 1: some devices declare 16-bit entries for 12-bit data.
            lut_out, _ = _lut_lookup(path, np.arange(-(1 << 16), 1 << 16), ds, "VOILUTSequence", voi_index)
            lo, hi = float(lut_out.min()), float(lut_out.max())
            voi_applied = "VOILUTSequence"
        elif apply_voi and "WindowCenter" in ds and "WindowWidth" in ds:
            try:
                values = np.asarray(apply_voi_lut(values, ds, index=voi_index, prefer_lut=False), np.float64)
                ends = np.asarray(apply_voi_lut(np.array([-1e15, 1e15]), ds, index=voi_index, prefer_lut=False))
            except (ValueError, IndexError, TypeError) as exc:
                raise CXRReadError(path, f"invalid window (WindowCenter/WindowWidth): {exc}") from None
            lo, hi = float(ends.min()), float(ends.max())
            center, width = (ds[k].value[voi_index] if ds[k].VM > 1 else ds[k].value
                             for k in ("WindowCenter", "WindowWidth"))
            voi_applied = f"window {float(center):g}/{float(width):g}"
        meta["voi_applied"] = voi_applied
        if photometric == "MONOCHROME1":  # low values are bright: invert within the current range
            values = lo + hi - values
        meta["inverted"] = photometric == "MONOCHROME1"
        meta["bit_depth"] = bits
        meta["signed"] = signed
    elif photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR") or photometric.startswith("YBR"):
        # pydicom converts YBR to RGB and palette to RGB on request; a radiograph saved in colour
        # (secondary capture, screenshot) becomes grayscale with the Rec. 601 luma weights.
        if photometric == "PALETTE COLOR":
            try:
                from pydicom.pixels import apply_color_lut
            except ImportError:  # pragma: no cover
                from pydicom.pixel_data_handlers.util import apply_color_lut
            arr = apply_color_lut(arr, ds)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise CXRReadError(path, f"colour DICOM with unexpected decoded shape {arr.shape}")
        bits = int(ds.get("BitsStored", 8))
        values = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        lo, hi = 0.0, float(2**bits - 1)
        meta.update(bit_depth=bits, signed=False, voi_applied=None, inverted=False, modality_lut_applied=False)
        meta["converted_from"] = photometric
    else:
        raise CXRReadError(path, f"unsupported PhotometricInterpretation '{photometric}'")

    spacing, source = _spacing(ds)
    meta["pixel_spacing"] = spacing
    meta["spacing_source"] = source
    meta["value_range"] = (float(lo), float(hi))
    image = np.ascontiguousarray(values, dtype=np.float32)
    meta["original_size"] = tuple(int(s) for s in image.shape)
    return image, meta
