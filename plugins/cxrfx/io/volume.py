"""ITK-style files holding one 2D radiograph: MetaImage (.mha/.mhd), NRRD (.nrrd/.nhdr), NIfTI (.nii/.nii.gz).

These formats store x (columns) fastest. We return the storage order as (H, W), which is what
SimpleITK's ``GetArrayFromImage`` + ``imshow`` shows (NODE21's .mha files are read this way); direction
cosines are recorded, not applied. MetaImage and NRRD are parsed here (both are a text header plus raw
or zlib data) so that the 1.5 GB ``itk`` package stays optional; NIfTI goes through nibabel.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from typing import Any

import numpy as np

from cxrfx.errors import CXRReadError
from cxrfx.io.limits import check_dimensions

__all__ = ["read_metaimage", "read_nrrd", "read_nifti"]

_MET_TYPES = {
    "MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2", "MET_INT": "i4",
    "MET_UINT": "u4", "MET_LONG": "i8", "MET_ULONG": "u8", "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8",
    "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}
_NRRD_TYPES = {
    "signed char": "i1", "int8": "i1", "int8_t": "i1", "uchar": "u1", "unsigned char": "u1", "uint8": "u1",
    "uint8_t": "u1", "short": "i2", "short int": "i2", "signed short": "i2", "int16": "i2", "int16_t": "i2",
    "ushort": "u2", "unsigned short": "u2", "uint16": "u2", "uint16_t": "u2", "int": "i4", "signed int": "i4",
    "int32": "i4", "int32_t": "i4", "uint": "u4", "unsigned int": "u4", "uint32": "u4", "uint32_t": "u4",
    "float": "f4", "double": "f8",
}


def _declared_size(path: str, sizes_xy_first: list[int]) -> tuple[int, int]:
    """(H, W) of a header's sizes (x first), refusing more than 2 non-singleton dimensions and sizes that are
    too small or too large (:func:`~cxrfx.io.limits.check_dimensions`); call it before reading pixel data."""
    extra = [s for s in sizes_xy_first[2:] if s != 1]
    if len(sizes_xy_first) < 2 or extra:
        raise CXRReadError(path, f"expected a single 2D image, found dimensions {sizes_xy_first}")
    height, width = int(sizes_xy_first[1]), int(sizes_xy_first[0])
    check_dimensions(path, height, width)
    return height, width


def _to_2d(path: str, data: np.ndarray, sizes_xy_first: list[int]) -> np.ndarray:
    """Reshape storage-order data (x fastest) to (H, W), allowing trailing singleton dimensions."""
    height, width = _declared_size(path, sizes_xy_first)
    if data.size != width * height:
        raise CXRReadError(path, f"pixel data holds {data.size} values, header says {width}x{height}: truncated?")
    return data.reshape(height, width)


def _int_list(path: str, field: str, value: str) -> list[int]:
    try:
        return [int(v) for v in value.split()]
    except ValueError:
        raise CXRReadError(path, f"header field {field} = {value[:60]!r} is not a list of integers") from None


def _range(values: np.ndarray) -> tuple[float, float]:
    if values.dtype == np.uint8:
        return (0.0, 255.0)
    return (float(values.min()), float(values.max()))  # no nominal range in these formats


def _meta(fmt: str, image: np.ndarray, dtype: np.dtype, spacing_xy: list[float] | None, **extra) -> dict[str, Any]:
    spacing = None
    if spacing_xy and len(spacing_xy) >= 2 and spacing_xy[0] > 0 and spacing_xy[1] > 0:
        spacing = (float(spacing_xy[1]), float(spacing_xy[0]))
    meta = {
        "format": fmt,
        "bit_depth": int(np.dtype(dtype).itemsize * 8),
        "photometric_interpretation": "MONOCHROME2",
        "value_range": _range(image),
        "pixel_spacing": spacing,
        "spacing_source": f"{fmt} header" if spacing else None,
        "original_size": tuple(int(s) for s in image.shape),
    }
    meta.update(extra)
    return meta


def _read_payload(path: str, blob: bytes, compressed: bool) -> bytes:
    if not compressed:
        return blob
    try:
        return zlib.decompress(blob) if blob[:2] != b"\x1f\x8b" else gzip.decompress(blob)
    except (zlib.error, OSError, EOFError) as exc:
        raise CXRReadError(path, f"compressed pixel data is corrupt or truncated ({exc})") from None


def read_metaimage(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a MetaImage ``.mha`` (header + data) or ``.mhd`` (header pointing to a raw file)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        content = f.read()
    header: dict[str, str] = {}
    offset = 0
    while True:
        end = content.find(b"\n", offset)
        if end < 0:
            raise CXRReadError(path, "MetaImage header has no ElementDataFile line: not a MetaImage file?")
        line = content[offset:end].decode("latin-1").strip()
        offset = end + 1
        if "=" not in line:
            raise CXRReadError(path, f"malformed MetaImage header line {line[:60]!r}")
        key, value = (s.strip() for s in line.split("=", 1))
        header[key] = value
        if key == "ElementDataFile":
            break
    try:
        sizes = _int_list(path, "DimSize", header["DimSize"])
        dtype = np.dtype(_MET_TYPES[header["ElementType"]])
    except KeyError as exc:
        raise CXRReadError(path, f"MetaImage header lacks or has an unknown {exc}") from None
    _declared_size(path, sizes)
    channels = (_int_list(path, "ElementNumberOfChannels", header.get("ElementNumberOfChannels", "1")) or [0])[0]
    if channels != 1:
        raise CXRReadError(path, f"MetaImage with {channels} channels per pixel: expected grayscale")
    msb = header.get("BinaryDataByteOrderMSB", header.get("ElementByteOrderMSB", "False")).lower() == "true"
    dtype = dtype.newbyteorder(">" if msb else "<")
    data_file = header["ElementDataFile"]
    if data_file == "LOCAL":
        blob = content[offset:]
    else:
        raw_path = os.path.join(os.path.dirname(path), data_file)
        try:
            with open(raw_path, "rb") as f:
                blob = f.read()
        except OSError as exc:
            raise CXRReadError(path, f"cannot read its data file {raw_path} ({exc.strerror})") from None
    compressed = header.get("CompressedData", "False").lower() == "true"
    payload = _read_payload(path, blob, compressed)
    count = int(np.prod(sizes))
    if len(payload) < count * dtype.itemsize:
        raise CXRReadError(path, f"pixel data has {len(payload)} bytes, header needs {count * dtype.itemsize}: truncated")
    data = np.frombuffer(payload, dtype=dtype, count=count)
    image = _to_2d(path, data, sizes)
    spacing = [float(v) for v in header.get("ElementSpacing", header.get("ElementSize", "")).split()] or None
    return image.astype(np.float32), _meta(
        "metaimage", image, dtype, spacing, direction=header.get("TransformMatrix", header.get("Orientation"))
    )


def read_nrrd(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an attached-header NRRD (``raw``, ``gzip`` or ``ascii`` encoding) or a detached ``.nhdr``."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        content = f.read()
    if not content.startswith(b"NRRD000"):
        raise CXRReadError(path, "missing the NRRD magic line: not a NRRD file")
    header: dict[str, str] = {}
    offset = content.find(b"\n") + 1
    while True:
        end = content.find(b"\n", offset)
        line = content[offset:end if end >= 0 else None].decode("latin-1").rstrip("\r")
        offset = end + 1 if end >= 0 else len(content)
        if line == "" or end < 0:
            break
        if line.startswith("#") or ":=" in line:
            continue
        if ":" in line:
            key, value = line.split(":", 1)
            header[key.strip().lower()] = value.strip()
    try:
        sizes = _int_list(path, "sizes", header["sizes"])
        dtype = np.dtype(_NRRD_TYPES[header["type"].lower()])
    except KeyError as exc:
        raise CXRReadError(path, f"NRRD header lacks or has an unknown field {exc}") from None
    _declared_size(path, sizes)
    dtype = dtype.newbyteorder(">" if header.get("endian", "little") == "big" else "<")
    data_file = header.get("data file", header.get("datafile"))
    if data_file:
        try:
            with open(os.path.join(os.path.dirname(path), data_file), "rb") as f:
                blob = f.read()
        except OSError as exc:
            raise CXRReadError(path, f"cannot read its data file {data_file} ({exc.strerror})") from None
    else:
        blob = content[offset:]
    encoding = header.get("encoding", "raw").lower()
    count = int(np.prod(sizes))
    if encoding in ("ascii", "text", "txt"):
        data = np.array(blob.split(), dtype=dtype.newbyteorder("="))
    elif encoding in ("raw", "gzip", "gz"):
        payload = _read_payload(path, blob, encoding != "raw")
        if len(payload) < count * dtype.itemsize:
            raise CXRReadError(path, f"pixel data has {len(payload)} bytes, header needs {count * dtype.itemsize}: truncated")
        data = np.frombuffer(payload, dtype=dtype, count=count)
    else:
        raise CXRReadError(path, f"NRRD encoding '{encoding}' is not supported (install itk to read it)")
    image = _to_2d(path, data, sizes)
    spacing = None
    try:
        if "spacings" in header:
            spacing = [float(v) for v in header["spacings"].split() if v.lower() != "nan"]
        elif "space directions" in header:  # one "(x,y,...)" per axis, or "none" for a non-spatial axis
            vecs = re.findall(r"\(([^)]*)\)", header["space directions"])
            spacing = [float(np.linalg.norm([float(c) for c in v.split(",")])) for v in vecs]
    except ValueError as exc:
        raise CXRReadError(path, f"malformed NRRD spacing ({exc})") from None
    return image.astype(np.float32), _meta("nrrd", image, dtype, spacing, direction=header.get("space directions"))


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a NIfTI file holding a 2D image (trailing singleton dimensions allowed)."""
    import nibabel as nib

    path = os.fspath(path)
    try:
        img = nib.load(path)
        _declared_size(path, [int(s) for s in img.header.get_data_shape()])  # x first; before any allocation
        data = np.asarray(img.dataobj)
    except CXRReadError:
        raise
    except Exception as exc:  # nibabel raises many types for bad files
        raise CXRReadError(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})") from None
    shape = list(data.shape)
    if len(shape) < 2 or any(s != 1 for s in shape[2:]):
        raise CXRReadError(path, f"expected a single 2D image, found dimensions {shape}")
    image = data.reshape(shape[0], shape[1]).T  # nibabel gives (x, y); storage order is (H, W) = (y, x)
    zooms = [float(z) for z in img.header.get_zooms()[:2]]
    return np.ascontiguousarray(image, dtype=np.float32), _meta(
        "nifti", image, data.dtype, zooms, affine=np.asarray(img.affine).tolist()
    )
