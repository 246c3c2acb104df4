"""JSRT raw, MetaImage, NRRD and NIfTI reading of ``cxrfx.io.load_cxr``.

MetaImage and NRRD headers are written by hand; these formats store x (columns) fastest, so the raw bytes
of a C-order (H, W) array are exactly their pixel data with ``DimSize``/``sizes`` = W H.
"""

from __future__ import annotations

import gzip
import zlib

import nibabel as nib
import numpy as np
import pytest

from cxrfx.io import detect_format, load_cxr

SPACING_X, SPACING_Y = 0.3, 0.2  # column and row spacing: different, so a swap is caught


@pytest.fixture
def img(pattern):
    return pattern(4095).astype(np.uint16)


# --------------------------------------------------------------------------------------------- JSRT


@pytest.fixture(scope="module")
def jsrt(tmp_path_factory):
    """A 2048 x 2048 big-endian 12-bit JSRT file (written once: 8 MiB)."""
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 4096, size=(2048, 2048), dtype=np.uint16)
    raw[:100, :300] = 4095  # asymmetric marks
    raw[-50:, -20:] = 0
    raw[0, 1] = 1
    path = tmp_path_factory.mktemp("jsrt") / "JPCLN001.IMG"
    raw.astype(">u2").tofile(path)
    return path, raw


def test_jsrt_inverted_by_default(jsrt):
    path, raw = jsrt
    assert detect_format(path) == "jsrt"
    image, meta = load_cxr(path)
    assert image.dtype == np.float32 and image.shape == (2048, 2048)
    np.testing.assert_array_equal(image, 4095.0 - raw)
    assert image[0, 0] == 0.0 and image[-1, -1] == 4095.0 and image[0, 1] == 4094.0  # byte order and orientation
    assert meta["inverted"] is True
    assert meta["bit_depth"] == 12 and meta["value_range"] == (0.0, 4095.0)
    assert meta["photometric_interpretation"] == "MONOCHROME1"
    assert meta["pixel_spacing"] == (0.175, 0.175)
    assert meta["original_size"] == (2048, 2048)


def test_jsrt_raw_when_not_inverted(jsrt):
    path, raw = jsrt
    image, meta = load_cxr(path, jsrt_invert=False)
    np.testing.assert_array_equal(image, raw)
    assert image[0, 1] == 1.0
    assert meta["inverted"] is False


def test_jsrt_wrong_size(tmp_path, expect_read_error):
    path = tmp_path / "small.IMG"
    np.zeros((100, 100), ">u2").tofile(path)
    expect_read_error(lambda: load_cxr(path), path, "8388608 bytes", "file has 20000")


def test_jsrt_values_above_12_bits(tmp_path, expect_read_error):
    path = tmp_path / "big.IMG"
    raw = np.zeros((2048, 2048), ">u2")
    raw[5, 5] = 40000
    raw.tofile(path)
    expect_read_error(lambda: load_cxr(path), path, "exceed 12 bits")


# --------------------------------------------------------------------------------------------- MetaImage


def write_metaimage(path, arr, *, compressed=False, data_file="LOCAL", element_type="MET_USHORT", dtype="<u2",
                    extra=""):
    h, w = arr.shape
    data = np.ascontiguousarray(arr).astype(dtype).tobytes()
    if compressed:
        data = zlib.compress(data)
    header = (
        "ObjectType = Image\nNDims = 2\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        f"DimSize = {w} {h}\nElementType = {element_type}\nElementSpacing = {SPACING_X} {SPACING_Y}\n{extra}"
    )
    if compressed:
        header += f"CompressedData = True\nCompressedDataSize = {len(data)}\n"
    header += f"ElementDataFile = {data_file}\n"
    if data_file == "LOCAL":
        path.write_bytes(header.encode("ascii") + data)
    else:
        path.write_text(header)
        (path.parent / data_file).write_bytes(data)
    return path


def check_itk_style(image, meta, arr):
    assert image.dtype == np.float32 and image.shape == arr.shape == (30, 50)
    np.testing.assert_array_equal(image, arr)
    assert image[0, 0] == 4095.0 and image[-1, 0] == 0.0
    assert meta["pixel_spacing"] == pytest.approx((SPACING_Y, SPACING_X))  # (row, col)
    assert meta["original_size"] == (30, 50)
    assert meta["photometric_interpretation"] == "MONOCHROME2"
    assert meta["bit_depth"] == 16


def test_metaimage_mha(tmp_path, img):
    path = write_metaimage(tmp_path / "a.mha", img)
    assert detect_format(path) == "metaimage"
    image, meta = load_cxr(path)
    check_itk_style(image, meta, img)
    assert meta["format"] == "metaimage" and meta["spacing_source"] == "metaimage header"
    low, high = meta["value_range"]  # no nominal range in the format: it must at least hold the values
    assert low <= image.min() and high >= image.max()


def test_metaimage_compressed(tmp_path, img):
    path = write_metaimage(tmp_path / "z.mha", img, compressed=True)
    image, meta = load_cxr(path)
    check_itk_style(image, meta, img)


def test_metaimage_mhd_with_raw_file(tmp_path, img):
    path = write_metaimage(tmp_path / "a.mhd", img, data_file="a.raw")
    image, meta = load_cxr(path)
    check_itk_style(image, meta, img)


def test_metaimage_big_endian(tmp_path, img):
    path = write_metaimage(tmp_path / "be.mha", img, dtype=">u2")
    path.write_bytes(path.read_bytes().replace(b"BinaryDataByteOrderMSB = False", b"BinaryDataByteOrderMSB = True"))
    image, meta = load_cxr(path)
    check_itk_style(image, meta, img)


def test_metaimage_trailing_singleton_dimension(tmp_path, img):
    path = write_metaimage(tmp_path / "3d.mha", img)
    path.write_bytes(path.read_bytes().replace(b"NDims = 2", b"NDims = 3").replace(b"DimSize = 50 30", b"DimSize = 50 30 1"))
    image, _ = load_cxr(path)
    np.testing.assert_array_equal(image, img)


def test_metaimage_truncated(tmp_path, img, expect_read_error):
    full = write_metaimage(tmp_path / "full.mha", img).read_bytes()
    path = tmp_path / "truncated.mha"
    path.write_bytes(full[: len(full) // 2])
    expect_read_error(lambda: load_cxr(path), path, "truncated", "3000")


def test_metaimage_compressed_truncated(tmp_path, img, expect_read_error):
    full = write_metaimage(tmp_path / "full.mha", img, compressed=True).read_bytes()
    path = tmp_path / "truncated.mha"
    path.write_bytes(full[:-20])
    expect_read_error(lambda: load_cxr(path), path, "corrupt or truncated")


def test_metaimage_missing_raw_file(tmp_path, img, expect_read_error):
    path = write_metaimage(tmp_path / "a.mhd", img, data_file="a.raw")
    (tmp_path / "a.raw").unlink()
    expect_read_error(lambda: load_cxr(path), path, "cannot read its data file", "a.raw")


def test_metaimage_3d_rejected(tmp_path, img, expect_read_error):
    vol = np.stack([img, img])
    path = tmp_path / "vol.mha"
    header = (f"ObjectType = Image\nNDims = 3\nDimSize = 50 30 2\nElementType = MET_USHORT\n"
              "ElementDataFile = LOCAL\n")
    path.write_bytes(header.encode() + vol.astype("<u2").tobytes())
    expect_read_error(lambda: load_cxr(path), path, "expected a single 2D image", "[50, 30, 2]")


def test_nan_rejected(tmp_path, img, expect_read_error):
    arr = img.astype(np.float32)
    arr[3, 4] = np.nan
    path = write_metaimage(tmp_path / "nan.mha", arr, element_type="MET_FLOAT", dtype="<f4")
    expect_read_error(lambda: load_cxr(path), path, "NaN")


# --------------------------------------------------------------------------------------------- NRRD


def write_nrrd(path, arr, encoding="raw", spacing_line=f"spacings: {SPACING_X} {SPACING_Y}"):
    h, w = arr.shape
    data = np.ascontiguousarray(arr).astype("<u2").tobytes()
    if encoding == "gzip":
        data = gzip.compress(data)
    header = (f"NRRD0004\n# written by the cxrfx tests\ntype: unsigned short\ndimension: 2\nsizes: {w} {h}\n"
              f"endian: little\nencoding: {encoding}\n{spacing_line}\n\n")
    path.write_bytes(header.encode("ascii") + data)
    return path


@pytest.mark.parametrize("encoding", ["raw", "gzip"])
def test_nrrd(tmp_path, img, encoding):
    path = write_nrrd(tmp_path / f"{encoding}.nrrd", img, encoding)
    assert detect_format(path) == "nrrd"
    image, meta = load_cxr(path)
    check_itk_style(image, meta, img)
    assert meta["format"] == "nrrd"


def test_nrrd_space_directions(tmp_path, img):
    line = f"space: left-posterior-superior\nspace directions: ({SPACING_X},0,0) (0,{SPACING_Y},0)"
    path = write_nrrd(tmp_path / "dirs.nrrd", img, spacing_line=line)
    image, meta = load_cxr(path)
    check_itk_style(image, meta, img)


def test_nrrd_trailing_singleton_axis_with_none_direction(tmp_path, img):
    path = tmp_path / "slice.nrrd"
    header = ("NRRD0004\ntype: unsigned short\ndimension: 3\nsizes: 50 30 1\nendian: little\nencoding: raw\n"
              f"space dimension: 2\nspace directions: ({SPACING_X},0) (0,{SPACING_Y}) none\n\n")
    path.write_bytes(header.encode() + img.astype("<u2").tobytes())
    image, meta = load_cxr(path)
    np.testing.assert_array_equal(image, img)
    assert meta["pixel_spacing"] == pytest.approx((SPACING_Y, SPACING_X))


def test_nrrd_malformed_spacing(tmp_path, img, expect_read_error):
    path = write_nrrd(tmp_path / "bad.nrrd", img, spacing_line="spacings: 0.3 abc")
    expect_read_error(lambda: load_cxr(path), path, "malformed NRRD spacing")


def test_nrrd_truncated(tmp_path, img, expect_read_error):
    full = write_nrrd(tmp_path / "full.nrrd", img).read_bytes()
    path = tmp_path / "truncated.nrrd"
    path.write_bytes(full[: len(full) // 2])
    expect_read_error(lambda: load_cxr(path), path, "truncated")


# --------------------------------------------------------------------------------------------- NIfTI


@pytest.mark.parametrize("name", ["a.nii", "a.nii.gz"])
def test_nifti(tmp_path, img, name):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(img.T, np.diag([SPACING_X, SPACING_Y, 1.0, 1.0])), path)  # x fastest
    assert detect_format(path) == "nifti"
    image, meta = load_cxr(path)
    check_itk_style(image, meta, img)
    assert meta["format"] == "nifti"


def test_nifti_trailing_singleton(tmp_path, img):
    path = tmp_path / "s.nii.gz"
    nib.save(nib.Nifti1Image(img.T[..., None], np.eye(4)), path)
    image, _ = load_cxr(path)
    np.testing.assert_array_equal(image, img)


def test_nifti_3d_rejected(tmp_path, img, expect_read_error):
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([img.T, img.T], axis=-1), np.eye(4)), path)
    expect_read_error(lambda: load_cxr(path), path, "expected a single 2D image", "[50, 30, 2]")


def test_nifti_truncated(tmp_path, img, expect_read_error):
    good = tmp_path / "good.nii"
    nib.save(nib.Nifti1Image(img.T, np.eye(4)), good)
    data = good.read_bytes()
    path = tmp_path / "truncated.nii"
    path.write_bytes(data[: len(data) - 1000])
    expect_read_error(lambda: load_cxr(path), path, "cannot read NIfTI")
