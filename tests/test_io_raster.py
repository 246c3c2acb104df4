"""PNG / JPEG / TIFF reading of ``cxrfx.io.load_cxr``: pixels, orientation, bit depth, meta, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cxrfx.io import detect_format, load_cxr


@pytest.fixture
def img8(pattern):
    return pattern(255).astype(np.uint8)


@pytest.fixture
def img16(pattern):
    a = pattern(4095).astype(np.uint16)
    a[-1, 0] = 65535  # the full 16-bit range occurs
    a[-1, 1] = 300  # a value above 255
    return a


def test_png_8bit(tmp_path, img8):
    path = tmp_path / "a.png"
    Image.fromarray(img8).save(path)
    image, meta = load_cxr(path)
    assert image.dtype == np.float32 and image.shape == (30, 50)
    np.testing.assert_array_equal(image, img8)
    assert image[0, 0] == 255 and image[-1, 0] == 0 and image[-1, -1] == 127  # no flip, no transpose
    assert meta["format"] == "png"
    assert meta["bit_depth"] == 8
    assert meta["value_range"] == (0.0, 255.0)
    assert meta["photometric_interpretation"] == "MONOCHROME2"
    assert meta["original_size"] == (30, 50)
    assert meta["converted_from"] is None
    assert meta["pixel_spacing"] is None and meta["spacing_source"] is None
    assert meta["path"] == str(path) and meta["inverted"] is False


def test_png_16bit_keeps_values(tmp_path, img16):
    path = tmp_path / "a16.png"
    Image.fromarray(img16).save(path)
    image, meta = load_cxr(path)
    np.testing.assert_array_equal(image, img16)
    assert image[-1, 0] == 65535.0 and image[-1, 1] == 300.0 and image[0, 0] == 4095.0
    assert meta["bit_depth"] == 16
    assert meta["value_range"] == (0.0, 65535.0)


def test_png_16bit_bits_stored_12(tmp_path, pattern):
    a = pattern(4095).astype(np.uint16)
    path = tmp_path / "a12.png"
    Image.fromarray(a).save(path)
    image, meta = load_cxr(path, bits_stored=12)
    np.testing.assert_array_equal(image, a)
    assert meta["bit_depth"] == 12
    assert meta["value_range"] == (0.0, 4095.0)


def test_bits_stored_above_container_depth_rejected(tmp_path, img8, expect_read_error):
    path = tmp_path / "a.png"
    Image.fromarray(img8).save(path)
    expect_read_error(lambda: load_cxr(path, bits_stored=12), path, "bits_stored=12", "8-bit")


def test_rgb_png_to_grayscale(tmp_path, img8):
    rgb = np.stack([img8, img8, img8], axis=-1)
    rgb[-1, -1] = (200, 100, 50)
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(path)
    image, meta = load_cxr(path)
    assert image.shape == (30, 50)
    np.testing.assert_array_equal(image[:-1], img8[:-1])  # gray stays gray
    assert abs(image[-1, -1] - (0.299 * 200 + 0.587 * 100 + 0.114 * 50)) <= 1  # ITU-R 601 luma
    assert meta["converted_from"] == "RGB"
    assert meta["bit_depth"] == 8 and meta["value_range"] == (0.0, 255.0)


def test_rgba_png_to_grayscale_alpha_ignored(tmp_path, img8):
    alpha = np.zeros_like(img8)  # fully transparent: must not blank or darken the image
    alpha[:, 25:] = 128
    rgba = np.stack([img8, img8, img8, alpha], axis=-1)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(path)
    image, meta = load_cxr(path)
    assert image.shape == (30, 50)
    np.testing.assert_array_equal(image, img8)
    assert meta["converted_from"] == "RGBA"


def test_gray_alpha_png(tmp_path, img8):
    path = tmp_path / "la.png"
    Image.fromarray(np.stack([img8, np.full_like(img8, 0)], axis=-1), mode="LA").save(path)
    image, meta = load_cxr(path)
    np.testing.assert_array_equal(image, img8)
    assert meta["converted_from"] == "LA"


def test_palette_png_uses_palette_colours(tmp_path):
    index = np.zeros((30, 50), np.uint8)
    index[:10, :12] = 1
    index[-3:, -5:] = 2
    img = Image.fromarray(index, mode="P")
    img.putpalette([0, 0, 0, 255, 255, 255, 100, 100, 100] + [0, 0, 0] * 253)
    path = tmp_path / "pal.png"
    img.save(path)
    assert Image.open(path).mode == "P"
    image, meta = load_cxr(path)
    expected = np.choose(index, [0, 255, 100])
    np.testing.assert_array_equal(image, expected)
    assert meta["converted_from"] == "P"


def test_bilevel_png(tmp_path, img8):
    path = tmp_path / "bw.png"
    Image.fromarray(img8 > 100).save(path)
    image, meta = load_cxr(path)
    np.testing.assert_array_equal(image, (img8 > 100).astype(np.float32))
    assert meta["bit_depth"] == 1 and meta["value_range"] == (0.0, 1.0)


def test_jpeg_close_to_original(tmp_path, img8):
    path = tmp_path / "a.jpg"
    Image.fromarray(img8).save(path, quality=95)
    image, meta = load_cxr(path)
    assert image.shape == (30, 50) and image.dtype == np.float32
    diff = np.abs(image - img8)
    assert diff.mean() < 2.0 and diff.max() <= 24
    assert image[:10, :12].mean() > 240 and image[-1, 0] < 15
    assert meta["format"] == "jpeg" and meta["bit_depth"] == 8 and meta["value_range"] == (0.0, 255.0)


def test_tiff_16bit(tmp_path, img16):
    path = tmp_path / "a.tif"
    Image.fromarray(img16).save(path)
    image, meta = load_cxr(path)
    np.testing.assert_array_equal(image, img16)
    assert meta["format"] == "tiff" and meta["bit_depth"] == 16


def test_png_dpi_as_spacing(tmp_path, img8):
    path = tmp_path / "dpi.png"
    Image.fromarray(img8).save(path, dpi=(254, 127))  # x: 0.1 mm, y: 0.2 mm
    _, meta = load_cxr(path)
    assert meta["pixel_spacing"] == pytest.approx((0.2, 0.1), rel=1e-3)  # (row, col)
    assert meta["spacing_source"] == "dpi"


def test_png_default_dpi_is_not_a_calibration(tmp_path, img8):
    path = tmp_path / "dpi72.png"
    Image.fromarray(img8).save(path, dpi=(72, 72))
    _, meta = load_cxr(path)
    assert meta["pixel_spacing"] is None and meta["spacing_source"] is None


def test_png_content_with_wrong_extension(tmp_path, img8):
    path = tmp_path / "image.dcm"
    Image.fromarray(img8).save(path, format="PNG")
    assert detect_format(path) == "png"
    image, meta = load_cxr(path)
    np.testing.assert_array_equal(image, img8)
    assert meta["format"] == "png"


# --------------------------------------------------------------------------------------------- bad input


def test_truncated_png(tmp_path, img16, expect_read_error):
    good = tmp_path / "good.png"
    Image.fromarray(img16).save(good)
    data = good.read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    expect_read_error(lambda: load_cxr(path), path, "cannot decode image")


def test_truncated_jpeg(tmp_path, img8, expect_read_error):
    good = tmp_path / "good.jpg"
    Image.fromarray(img8).save(good)
    data = good.read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    expect_read_error(lambda: load_cxr(path), path, "truncated")


def test_empty_png(tmp_path, expect_read_error):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    expect_read_error(lambda: load_cxr(path), path, "empty file", "0 bytes")


def test_text_file_named_png(tmp_path, expect_read_error):
    path = tmp_path / "fake.png"
    path.write_text("this is not an image\n")
    expect_read_error(lambda: load_cxr(path), path, "not an image file")


def test_missing_file(tmp_path, expect_read_error):
    path = tmp_path / "nowhere" / "missing.png"
    expect_read_error(lambda: load_cxr(path), path, "file not found")


def test_directory(tmp_path, expect_read_error):
    path = tmp_path / "folder.png"
    path.mkdir()
    expect_read_error(lambda: load_cxr(path), path, "is a directory")


def test_unknown_forced_format(tmp_path, img8, expect_read_error):
    path = tmp_path / "a.png"
    Image.fromarray(img8).save(path)
    expect_read_error(lambda: load_cxr(path, fmt="webp"), path, "unknown format", "'webp'")
