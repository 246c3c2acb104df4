"""DICOM reading of ``cxrfx.io.load_cxr``: pixels, orientation, LUT pipeline, meta and error messages.

Every file is written here with pydicom (30 x 50, asymmetric pattern: see ``conftest.make_pattern``).
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid

from cxrfx.io import detect_format, load_cxr

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"  # no decoder in the tested environment


def write_dicom(path, arr, *, bits_stored=12, bits_allocated=16, signed=False, photometric="MONOCHROME2",
                transfer_syntax=ExplicitVRLittleEndian, pixel_data=None, samples=1, **attrs):
    """Write a single-frame DICOM with ``arr`` (stored as ``arr.tobytes()`` unless ``pixel_data``)."""
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = DX_STORAGE
    fm.MediaStorageSOPInstanceUID = generate_uid()
    fm.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID = fm.MediaStorageSOPClassUID
    ds.SOPInstanceUID = fm.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "TEST"
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixel_data if pixel_data is not None else arr.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def linear_window(x, center, width, y_min, y_max):
    """DICOM PS3.3 C.11.2.1.2.1 'LINEAR' VOI window, written out from the standard."""
    x = np.asarray(x, dtype=np.float64)
    c, w = center - 0.5, width - 1.0
    inside = ((x - c) / w + 0.5) * (y_max - y_min) + y_min
    return np.where(x <= c - w / 2, y_min, np.where(x > c + w / 2, y_max, inside))


@pytest.fixture
def img12(pattern):
    return pattern(4095).astype(np.uint16)


@pytest.fixture
def dcm12(tmp_path, img12):
    return write_dicom(tmp_path / "mono2.dcm", img12)


# --------------------------------------------------------------------------------------------- round trips


def test_monochrome2_12bit_round_trip(dcm12, img12):
    image, meta = load_cxr(dcm12)
    assert image.dtype == np.float32 and image.shape == (30, 50)
    np.testing.assert_array_equal(image, img12)
    assert image[0, 0] == 4095 and image[-1, 0] == 0  # bright block top-left: row 0 is the top
    assert image[-1, -1] == 2047 and image[-4, -1] > image[-4, 0]  # bottom-right block, ramp rises to the right
    assert meta["bit_depth"] == 12
    assert meta["value_range"] == (0.0, 4095.0)
    assert meta["photometric_interpretation"] == "MONOCHROME2"
    assert meta["original_size"] == (30, 50)
    assert meta["format"] == "dicom" and meta["inverted"] is False
    assert meta["voi_applied"] is None and meta["modality_lut_applied"] is False
    assert meta["pixel_spacing"] is None and meta["spacing_source"] is None
    assert meta["path"] == str(dcm12)
    assert meta["transfer_syntax"] == ExplicitVRLittleEndian


def test_implicit_vr_and_path_object(tmp_path, img12):
    path = write_dicom(tmp_path / "implicit.dcm", img12, transfer_syntax=ImplicitVRLittleEndian)
    image, _ = load_cxr(path)  # a pathlib.Path is accepted
    np.testing.assert_array_equal(image, img12)


def test_monochrome1_inverted(tmp_path, img12):
    path = write_dicom(tmp_path / "mono1.dcm", img12, photometric="MONOCHROME1")
    image, meta = load_cxr(path)
    np.testing.assert_array_equal(image, 4095.0 - img12)
    assert image[0, 0] == 0.0  # the stored-bright block is dark in display polarity
    assert meta["inverted"] is True
    assert meta["photometric_interpretation"] == "MONOCHROME1"
    assert meta["value_range"] == (0.0, 4095.0)


def test_window_applied_with_linear_formula(tmp_path, img12):
    path = write_dicom(tmp_path / "window.dcm", img12, WindowCenter=500.5, WindowWidth=1001)
    image, meta = load_cxr(path)
    expected = linear_window(img12, 500.5, 1001, 0, 4095)
    np.testing.assert_allclose(image, expected, rtol=0, atol=1e-3)
    # the three regimes all occur, and values worked out by hand: c - 0.5 = 500, w - 1 = 1000
    assert image[-1, 0] == 0.0  # x = 0 <= 500 - 500
    assert image[0, 0] == 4095.0  # x = 4095 > 1000
    x = img12[-1]
    assert np.any((x > 0) & (x < 1000))
    k = int(np.argmax(x >= 500))
    np.testing.assert_allclose(image[-1, k], ((x[k] - 500) / 1000 + 0.5) * 4095, atol=1e-3)
    assert meta["value_range"] == (0.0, 4095.0)
    assert meta["voi_applied"].startswith("window")


def test_window_hand_values(tmp_path):
    arr = np.zeros((30, 50), np.uint16)
    arr[0, :5] = [0, 250, 500, 750, 1000]
    arr[1, :2] = [1001, 4095]
    path = write_dicom(tmp_path / "w.dcm", arr, WindowCenter=500.5, WindowWidth=1001)
    image, _ = load_cxr(path)
    np.testing.assert_allclose(image[0, :5], [0.0, 1023.75, 2047.5, 3071.25, 4095.0], atol=1e-3)
    np.testing.assert_allclose(image[1, :2], [4095.0, 4095.0])


def test_window_not_applied_when_apply_voi_false(tmp_path, img12):
    path = write_dicom(tmp_path / "window.dcm", img12, WindowCenter=500.5, WindowWidth=1001)
    image, meta = load_cxr(path, apply_voi=False)
    np.testing.assert_array_equal(image, img12)
    assert meta["voi_applied"] is None
    assert meta["value_range"] == (0.0, 4095.0)


def test_first_of_several_windows_used(tmp_path, img12):
    path = write_dicom(tmp_path / "windows.dcm", img12, WindowCenter=[500.5, 3000], WindowWidth=[1001, 200])
    image, _ = load_cxr(path)
    np.testing.assert_allclose(image, linear_window(img12, 500.5, 1001, 0, 4095), atol=1e-3)


def test_monochrome1_with_window_inverted_after_windowing(tmp_path, img12):
    path = write_dicom(tmp_path / "m1w.dcm", img12, photometric="MONOCHROME1", WindowCenter=500.5, WindowWidth=1001)
    image, meta = load_cxr(path)
    np.testing.assert_allclose(image, 4095.0 - linear_window(img12, 500.5, 1001, 0, 4095), atol=1e-3)
    assert meta["value_range"] == (0.0, 4095.0) and meta["inverted"] is True


def _voi_lut_item(entries, first, bits, data):
    item = Dataset()
    item.LUTDescriptor = [entries, first, bits]
    item.add_new(0x00283006, "US", [int(v) for v in data])  # LUTData
    return item


def test_voi_lut_sequence_applied(tmp_path, img12):
    table = np.arange(1000) * 4  # 12-bit output, entries for stored values 1000..1999
    path = write_dicom(tmp_path / "lut.dcm", img12, VOILUTSequence=Sequence([_voi_lut_item(1000, 1000, 12, table)]))
    image, meta = load_cxr(path)
    expected = np.clip(img12.astype(np.int64) - 1000, 0, 999) * 4  # below first mapped: entry 0; above: last
    np.testing.assert_array_equal(image, expected)
    assert meta["voi_applied"] == "VOILUTSequence"
    assert meta["value_range"] == (0.0, 3996.0)  # the LUT's own output range (entries 0..999 x 4)
    image, meta = load_cxr(path, apply_voi=False)
    np.testing.assert_array_equal(image, img12)
    assert meta["voi_applied"] is None


def test_voi_lut_sequence_8bit_with_4096_entries(tmp_path, img12):
    """An 8-bit VOI LUT over the whole 12-bit range (pydicom's apply_voi_lut wraps indices above 255)."""
    table = np.arange(4096) // 16
    path = write_dicom(tmp_path / "lut8.dcm", img12, VOILUTSequence=Sequence([_voi_lut_item(4096, 0, 8, table)]),
                       WindowCenter=100, WindowWidth=10)  # the LUT wins over the window
    image, meta = load_cxr(path)
    np.testing.assert_array_equal(image, img12 // 16)
    assert image[0, 0] == 255.0
    assert meta["value_range"] == (0.0, 255.0)
    assert meta["voi_applied"] == "VOILUTSequence"


def test_voi_lut_sequence_ow_data(tmp_path, img12):
    table = (4095 - np.arange(4096)).astype("<u2")
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.add_new(0x00283006, "OW", table.tobytes())
    path = write_dicom(tmp_path / "lut_ow.dcm", img12, VOILUTSequence=Sequence([item]))
    image, _ = load_cxr(path)
    np.testing.assert_array_equal(image, 4095 - img12)


def test_rescale_slope_intercept_applied(tmp_path, img12):
    path = write_dicom(tmp_path / "rescale.dcm", img12, RescaleSlope=2, RescaleIntercept=-100)
    image, meta = load_cxr(path)
    np.testing.assert_array_equal(image, img12 * 2.0 - 100.0)
    assert meta["modality_lut_applied"] is True
    assert meta["value_range"] == (-100.0, 4095 * 2.0 - 100.0)
    assert meta["bit_depth"] == 12


@pytest.mark.parametrize("lut_bits", [8, 12, 16])
def test_modality_lut_sequence_applied(tmp_path, img12, lut_bits):
    top = 2**lut_bits - 1
    table = (4095 - np.arange(4096)) * top // 4095  # decreasing, so that it cannot be confused with identity
    item = _voi_lut_item(4096, 0, lut_bits, table)
    item.ModalityLUTType = "US"
    path = write_dicom(tmp_path / "mlut.dcm", img12, ModalityLUTSequence=Sequence([item]))
    image, meta = load_cxr(path)
    np.testing.assert_array_equal(image, table[img12])
    assert meta["modality_lut_applied"] is True
    assert meta["value_range"] == (0.0, float(top))


def test_signed_pixel_representation(tmp_path, img12):
    signed = (img12.astype(np.int32) - 2048).astype(np.int16)
    path = write_dicom(tmp_path / "signed.dcm", signed, signed=True)
    image, meta = load_cxr(path)
    np.testing.assert_array_equal(image, signed)
    assert image.min() == -2048 and image[0, 0] == 2047
    assert meta["signed"] is True
    assert meta["value_range"] == (-2048.0, 2047.0)


def test_signed_12_in_16_without_sign_extension(tmp_path, img12):
    """Signed 12-bit values stored without sign extension (garbage in bits 12-15) are read as 12-bit two's complement."""
    signed = img12.astype(np.int32) - 2048
    raw = ((signed & 0x0FFF) | 0x5000).astype(np.uint16)
    path = write_dicom(tmp_path / "signed_raw.dcm", raw, signed=True)
    image, _ = load_cxr(path)
    np.testing.assert_array_equal(image, signed)


def test_bits_stored_respected_high_bits_ignored(tmp_path, img12):
    garbage = img12 | np.uint16(0xF000)  # overlay / junk in the 4 unused bits
    path = write_dicom(tmp_path / "garbage.dcm", garbage)
    image, meta = load_cxr(path)
    np.testing.assert_array_equal(image, img12)
    assert image.max() == 4095.0
    assert meta["bit_depth"] == 12 and meta["value_range"] == (0.0, 4095.0)


def test_pixel_spacing_preferred_over_imager_pixel_spacing(tmp_path, img12):
    path = write_dicom(tmp_path / "sp.dcm", img12, PixelSpacing=[0.2, 0.3], ImagerPixelSpacing=[0.25, 0.35])
    _, meta = load_cxr(path)
    assert meta["pixel_spacing"] == pytest.approx((0.2, 0.3))
    assert meta["spacing_source"] == "PixelSpacing"


def test_imager_pixel_spacing_when_pixel_spacing_absent(tmp_path, img12):
    path = write_dicom(tmp_path / "isp.dcm", img12, ImagerPixelSpacing=[0.25, 0.35])
    _, meta = load_cxr(path)
    assert meta["pixel_spacing"] == pytest.approx((0.25, 0.35))
    assert meta["spacing_source"] == "ImagerPixelSpacing"


def test_rle_lossless_decodes_identical(tmp_path, dcm12, img12):
    ds = pydicom.dcmread(dcm12)
    ds.compress(RLELossless)
    path = tmp_path / "rle.dcm"
    ds.save_as(path, enforce_file_format=True)
    image, meta = load_cxr(path)
    np.testing.assert_array_equal(image, img12)
    assert meta["transfer_syntax"] == RLELossless
    assert meta["bit_depth"] == 12


def test_jpeg_baseline_decodes_close(tmp_path, pattern):
    img8 = pattern(255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img8).save(buf, format="JPEG", quality=95)
    path = write_dicom(tmp_path / "jpeg.dcm", img8, bits_stored=8, bits_allocated=8,
                       transfer_syntax=JPEG_BASELINE, pixel_data=encapsulate([buf.getvalue()]))
    image, meta = load_cxr(path)
    assert image.shape == (30, 50) and image.dtype == np.float32
    diff = np.abs(image - img8)
    assert diff.mean() < 2.0 and diff.max() <= 24
    assert image[:10, :12].mean() > 240 and image[-1, 0] < 15  # orientation kept
    assert meta["bit_depth"] == 8 and meta["value_range"] == (0.0, 255.0)
    assert meta["transfer_syntax"] == JPEG_BASELINE


def test_rgb_dicom_converted_to_grayscale(tmp_path, pattern):
    gray = pattern(255).astype(np.uint8)
    rgb = np.stack([gray, gray, gray], axis=-1)
    rgb[-1, -1] = (200, 100, 50)
    path = write_dicom(tmp_path / "rgb.dcm", rgb, bits_stored=8, bits_allocated=8, photometric="RGB", samples=3,
                       PlanarConfiguration=0)
    image, meta = load_cxr(path)
    assert image.shape == (30, 50) and image.dtype == np.float32
    np.testing.assert_allclose(image[:-1], gray[:-1], atol=1e-3)
    assert image[-1, -1] == pytest.approx(0.299 * 200 + 0.587 * 100 + 0.114 * 50, abs=1e-3)
    assert meta["converted_from"] == "RGB"
    assert meta["value_range"] == (0.0, 255.0) and meta["bit_depth"] == 8


def test_dicom_without_preamble_or_extension(tmp_path, img12):
    """Bare dataset (no 128-byte preamble, no file meta, no extension): read via the lenient path."""
    ds = Dataset()
    ds.Rows, ds.Columns = img12.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing = [0.15, 0.16]
    ds.PixelData = img12.tobytes()
    path = tmp_path / "IM0001"
    pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    assert detect_format(path) == "dicom"
    image, meta = load_cxr(path)
    np.testing.assert_array_equal(image, img12)
    assert meta["pixel_spacing"] == pytest.approx((0.15, 0.16))


def test_dicom_with_preamble_but_no_transfer_syntax(tmp_path, img12):
    """File meta without (0002,0010): the encoding pydicom read the dataset with is used to decode it."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DX_STORAGE
    ds.Rows, ds.Columns = img12.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = img12.tobytes()
    ds.preamble = b"\0" * 128
    path = tmp_path / "no_ts.dcm"
    pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=True)
    assert path.read_bytes()[128:132] == b"DICM" and "TransferSyntaxUID" not in pydicom.dcmread(path).file_meta
    image, meta = load_cxr(path)
    np.testing.assert_array_equal(image, img12)
    assert meta["transfer_syntax"] == ExplicitVRLittleEndian


def test_format_detected_from_content_not_extension(tmp_path, dcm12, img12):
    misnamed = tmp_path / "really_dicom.png"
    misnamed.write_bytes(dcm12.read_bytes())
    assert detect_format(misnamed) == "dicom"
    image, meta = load_cxr(misnamed)
    np.testing.assert_array_equal(image, img12)
    assert meta["format"] == "dicom"


# --------------------------------------------------------------------------------------------- bad input


def test_empty_file(tmp_path, expect_read_error):
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    expect_read_error(lambda: load_cxr(path), path, "empty file")


def test_truncated_file(tmp_path, dcm12, expect_read_error):
    data = dcm12.read_bytes()
    path = tmp_path / "truncated.dcm"
    path.write_bytes(data[: len(data) // 2])
    expect_read_error(lambda: load_cxr(path), path, "truncated pixel data")


def test_text_file_with_dcm_extension(tmp_path, expect_read_error):
    path = tmp_path / "notes.dcm"
    path.write_text("Patient notes: this is plain text, not a DICOM file.\n" * 20)
    expect_read_error(lambda: load_cxr(path), path, "not a DICOM file")


def test_dicom_without_pixel_data(tmp_path, expect_read_error):
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    fm.MediaStorageSOPInstanceUID = generate_uid()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID, ds.SOPInstanceUID = fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "SR", "TEST"
    path = tmp_path / "report.dcm"
    ds.save_as(path, enforce_file_format=True)
    expect_read_error(lambda: load_cxr(path), path, "no pixel data")


def test_multi_frame(tmp_path, img12, expect_read_error):
    frames = np.stack([img12, img12[::-1]])
    path = write_dicom(tmp_path / "multi.dcm", frames, NumberOfFrames=2)
    expect_read_error(lambda: load_cxr(path), path, "multi-frame", "2 frames")


def test_unsupported_transfer_syntax_names_it_and_a_package(tmp_path, img12, expect_read_error):
    from pydicom.pixels import get_decoder

    if get_decoder(JPEG_LOSSLESS_SV1).is_available:
        pytest.skip("a JPEG Lossless decoder is installed here (pylibjpeg-libjpeg or gdcm)")
    path = write_dicom(tmp_path / "jll.dcm", img12, transfer_syntax=JPEG_LOSSLESS_SV1,
                       pixel_data=encapsulate([b"\xff\xd8\xff\xc3" + b"\x00garbage" * 16]))
    err = expect_read_error(lambda: load_cxr(path), path, JPEG_LOSSLESS_SV1, "JPEG Lossless", "no decoder",
                            "pylibjpeg")
    assert "install" in err.problem


def test_corrupt_jpeg_is_not_reported_as_missing_decoder(tmp_path, pattern, expect_read_error):
    """Pillow is installed: broken JPEG data must say so, not ask to install Pillow."""
    img8 = pattern(255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img8).save(buf, format="JPEG")
    data = buf.getvalue()
    path = write_dicom(tmp_path / "bad_jpeg.dcm", img8, bits_stored=8, bits_allocated=8,
                       transfer_syntax=JPEG_BASELINE, pixel_data=encapsulate([data[: len(data) // 2]]))
    err = expect_read_error(lambda: load_cxr(path), path, "cannot decode pixel data")
    assert "install" not in err.problem


def test_unsupported_photometric(tmp_path, img12, expect_read_error):
    path = write_dicom(tmp_path / "argb.dcm", img12, photometric="HSV")
    expect_read_error(lambda: load_cxr(path), path, "PhotometricInterpretation", "HSV")
