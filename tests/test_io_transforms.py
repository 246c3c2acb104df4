"""MONAI transforms of ``cxrfx.io``: LoadCXRd, NormalizeCXRd, LoadMaskd (shapes, meta, collation, values)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor, list_data_collate
from PIL import Image

from cxrfx.io import LoadCXRd, LoadMaskd, NormalizeCXRd

CLASSES = ["left_lung", "right_lung", "heart"]


@pytest.fixture
def png12(tmp_path, pattern):
    arr = pattern(4095).astype(np.uint16)
    path = tmp_path / "img12.png"
    Image.fromarray(arr).save(path)
    return str(path), arr


@pytest.fixture
def dcm_mono1(tmp_path, pattern):
    """12-bit MONOCHROME1 DICOM with PixelSpacing (0.2, 0.3)."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    arr = pattern(4095).astype(np.uint16)[::-1].copy()
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "DX", 30, 50, 1
    ds.PhotometricInterpretation, ds.PixelSpacing = "MONOCHROME1", [0.2, 0.3]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = arr.tobytes()
    path = tmp_path / "mono1.dcm"
    ds.save_as(path, enforce_file_format=True)
    return str(path), arr


def test_load_cxrd_metatensor(png12):
    path, arr = png12
    out = LoadCXRd(keys="image", bits_stored=12)({"image": path, "label": 3})
    x = out["image"]
    assert isinstance(x, MetaTensor)
    assert x.shape == (1, 30, 50) and x.dtype == torch.float32
    np.testing.assert_array_equal(x[0].numpy(), arr)
    assert out["label"] == 3  # other keys untouched
    assert x.meta["filename_or_obj"] == path
    np.testing.assert_array_equal(x.meta["cxr_value_range"], [0.0, 4095.0])
    assert x.meta["cxr_photometric"] == "MONOCHROME2"
    assert x.meta["cxr_bit_depth"] == 12
    assert x.meta["cxr_format"] == "png"
    np.testing.assert_array_equal(x.meta["spatial_shape"], [30, 50])
    assert np.isnan(x.meta["cxr_pixel_spacing"]).all()  # unknown spacing: NaN, not None (collatable)


def test_load_cxrd_dicom_meta(dcm_mono1):
    path, arr = dcm_mono1
    x = LoadCXRd(keys="image")({"image": path})["image"]
    np.testing.assert_array_equal(x[0].numpy(), 4095.0 - arr)
    assert x.meta["cxr_photometric"] == "MONOCHROME1" and x.meta["cxr_inverted"] is True
    np.testing.assert_allclose(x.meta["cxr_pixel_spacing"], [0.2, 0.3])
    assert x.meta["cxr_spacing_source"] == "PixelSpacing"
    np.testing.assert_allclose(np.diag(x.affine.numpy())[:2], [0.2, 0.3])


def test_loaded_items_collate(png12, dcm_mono1):
    load = LoadCXRd(keys="image")
    items = [load({"image": png12[0]}), load({"image": dcm_mono1[0]})]
    batch = list_data_collate(items)
    x = batch["image"]
    assert isinstance(x, MetaTensor) and x.shape == (2, 1, 30, 50)
    assert list(x.meta["filename_or_obj"]) == [png12[0], dcm_mono1[0]]
    assert list(x.meta["cxr_photometric"]) == ["MONOCHROME2", "MONOCHROME1"]
    assert torch.as_tensor(x.meta["cxr_value_range"]).shape == (2, 2)
    np.testing.assert_array_equal(x[0, 0].numpy(), png12[1])


def test_dataloader_with_load_and_normalize(png12, dcm_mono1):
    from monai.transforms import Compose

    transform = Compose([LoadCXRd(keys="image", bits_stored=12), NormalizeCXRd(keys="image")])
    data = [{"image": png12[0]}, {"image": png12[0]}]
    batch = next(iter(DataLoader(Dataset(data, transform), batch_size=2, num_workers=0)))
    assert batch["image"].shape == (2, 1, 30, 50)
    assert float(batch["image"].max()) == 1.0 and float(batch["image"].min()) == 0.0


def test_normalize_range_mode(png12):
    path, arr = png12
    d = LoadCXRd(keys="image", bits_stored=12)({"image": path})
    y = NormalizeCXRd(keys="image", mode="range")(d)["image"]
    assert y.shape == (1, 30, 50) and y.dtype == torch.float32
    assert float(y[0, 0, 0]) == 1.0  # 4095
    assert float(y[0, -1, 0]) == 0.0  # 0
    assert float(y[0, -1, -1]) == pytest.approx(2047 / 4095)
    np.testing.assert_allclose(y[0].numpy(), arr / 4095.0, rtol=1e-6)


def test_normalize_range_mode_16bit_container(png12):
    path, arr = png12
    d = LoadCXRd(keys="image")({"image": path})  # no bits_stored: the 16-bit container range
    y = NormalizeCXRd(keys="image")(d)["image"]
    assert float(y[0, 0, 0]) == pytest.approx(4095 / 65535)


def test_normalize_range_mode_monochrome1(dcm_mono1):
    path, arr = dcm_mono1
    y = NormalizeCXRd(keys="image")(LoadCXRd(keys="image")({"image": path}))["image"]
    np.testing.assert_allclose(y[0].numpy(), (4095.0 - arr) / 4095.0, rtol=1e-6)


def test_normalize_minmax_mode(tmp_path):
    arr = np.full((30, 50), 1000, np.uint16)
    arr[0, 0], arr[-1, -1], arr[0, -1] = 3000, 500, 2000
    path = tmp_path / "mm.png"
    Image.fromarray(arr).save(path)
    y = NormalizeCXRd(keys="image", mode="minmax")(LoadCXRd(keys="image")({"image": str(path)}))["image"]
    assert float(y[0, 0, 0]) == 1.0 and float(y[0, -1, -1]) == 0.0
    assert float(y[0, 0, -1]) == pytest.approx(0.6)
    assert float(y[0, 5, 5]) == pytest.approx(0.2)


def test_normalize_percentile_mode(tmp_path):
    arr = np.arange(30 * 50, dtype=np.uint16).reshape(30, 50)
    path = tmp_path / "pct.png"
    Image.fromarray(arr).save(path)
    d = LoadCXRd(keys="image")({"image": str(path)})
    y = NormalizeCXRd(keys="image", mode="percentile", lower=10, upper=90)(d)["image"]
    lo, hi = np.percentile(arr, [10, 90])  # 149.9, 1349.1
    np.testing.assert_allclose(y[0].numpy(), np.clip((arr - lo) / (hi - lo), 0, 1), atol=1e-5)
    assert float(y.min()) == 0.0 and float(y.max()) == 1.0
    assert float(y[0, 15, 0]) == pytest.approx((750 - lo) / (hi - lo), abs=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_normalize_percentile_mode_on_cuda(tmp_path):
    arr = np.arange(30 * 50, dtype=np.uint16).reshape(30, 50)
    path = tmp_path / "pct.png"
    Image.fromarray(arr).save(path)
    d = LoadCXRd(keys="image")({"image": str(path)})
    cpu = NormalizeCXRd(keys="image", mode="percentile", lower=10, upper=90)(d)["image"]
    gpu = NormalizeCXRd(keys="image", mode="percentile", lower=10, upper=90)({"image": d["image"].cuda()})["image"]
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), atol=1e-5)


def test_normalize_constant_image_is_zero(tmp_path):
    path = tmp_path / "flat.png"
    Image.fromarray(np.full((30, 50), 7, np.uint8)).save(path)
    y = NormalizeCXRd(keys="image", mode="minmax")(LoadCXRd(keys="image")({"image": str(path)}))["image"]
    assert float(y.abs().max()) == 0.0


def test_normalize_range_needs_meta_and_valid_mode():
    with pytest.raises(ValueError, match="cxr_value_range"):
        NormalizeCXRd(keys="image")({"image": torch.zeros(1, 4, 4)})
    with pytest.raises(ValueError, match="mode"):
        NormalizeCXRd(keys="image", mode="zscore")


# --------------------------------------------------------------------------------------------- masks


@pytest.fixture
def image_item(png12):
    return LoadCXRd(keys="image")({"image": png12[0]})


def _binary_png(path, mask, on=255):
    Image.fromarray((mask * on).astype(np.uint8)).save(path)
    return str(path)


def test_load_maskd_per_class_pngs(tmp_path, image_item):
    left = np.zeros((30, 50), bool)
    left[:, :20] = True
    heart = np.zeros((30, 50), bool)
    heart[10:25, 15:35] = True  # overlaps the left lung: allowed with per-class masks
    spec = {"left_lung": _binary_png(tmp_path / "l.png", left), "heart": _binary_png(tmp_path / "h.png", heart, on=1)}
    out = LoadMaskd(keys="label", classes=CLASSES)({**image_item, "label": spec})
    y = out["label"]
    assert isinstance(y, MetaTensor) and y.shape == (3, 30, 50) and y.dtype == torch.float32
    np.testing.assert_array_equal(y[0].numpy(), left)
    np.testing.assert_array_equal(y[1].numpy(), 0)  # class absent from the mapping: empty channel
    np.testing.assert_array_equal(y[2].numpy(), heart)
    assert y.meta["filename_or_obj"] == image_item["image"].meta["filename_or_obj"]  # image meta copied


def test_load_maskd_index_map(tmp_path, image_item):
    index = np.zeros((30, 50), np.uint8)
    index[:, :10] = 1
    index[:, 40:] = 2
    index[12:20, 20:30] = 3
    path = tmp_path / "index.png"
    Image.fromarray(index).save(path)
    y = LoadMaskd(keys="label", classes=CLASSES)({**image_item, "label": str(path)})["label"]
    assert y.shape == (3, 30, 50)
    for k in range(3):
        np.testing.assert_array_equal(y[k].numpy(), index == k + 1)
    assert float(y.sum(0).max()) == 1.0  # one class per pixel at most


def test_masks_collate_with_images(tmp_path, png12):
    index = np.zeros((30, 50), np.uint8)
    index[:5, :5] = 2
    path = str(tmp_path / "index.png")
    Image.fromarray(index).save(path)
    load_img, load_mask = LoadCXRd(keys="image"), LoadMaskd(keys="label", classes=CLASSES)
    items = [load_mask(load_img({"image": png12[0], "label": path})) for _ in range(2)]
    batch = list_data_collate(items)
    assert batch["image"].shape == (2, 1, 30, 50) and batch["label"].shape == (2, 3, 30, 50)
    assert float(batch["label"][:, 1].sum()) == 2 * 25


def test_mask_size_mismatch_names_mask_and_sizes(tmp_path, image_item, expect_read_error):
    path = str(tmp_path / "transposed.png")
    Image.fromarray(np.zeros((50, 30), np.uint8)).save(path)  # (W, H): a transposed mask
    load = LoadMaskd(keys="label", classes=CLASSES)
    expect_read_error(lambda: load({**image_item, "label": path}), path, "mask size", "(50, 30)", "(30, 50)")
    expect_read_error(lambda: load({**image_item, "label": {"heart": path}}), path, "(50, 30)", "(30, 50)")


def test_per_class_masks_of_different_sizes(tmp_path, expect_read_error):
    a = _binary_png(tmp_path / "a.png", np.ones((30, 50), bool))
    b = _binary_png(tmp_path / "b.png", np.ones((31, 50), bool))
    load = LoadMaskd(keys="label", classes=CLASSES, ref_key=None)
    expect_read_error(lambda: load({"label": {"left_lung": a, "heart": b}}), b, "(31, 50)", "(30, 50)")


def test_index_map_with_too_many_classes(tmp_path, image_item, expect_read_error):
    index = np.zeros((30, 50), np.uint8)
    index[0, 0] = 4
    path = str(tmp_path / "index4.png")
    Image.fromarray(index).save(path)
    load = LoadMaskd(keys="label", classes=CLASSES)
    expect_read_error(lambda: load({**image_item, "label": path}), path, "outside 0..3")


def test_mask_with_unknown_class(tmp_path, image_item, expect_read_error):
    path = _binary_png(tmp_path / "x.png", np.ones((30, 50), bool))
    load = LoadMaskd(keys="label", classes=CLASSES)
    expect_read_error(lambda: load({**image_item, "label": {"clavicle": path}}), path, "unknown classes", "clavicle")


def test_index_map_palette_png_uses_indices(tmp_path):
    from PIL import Image

    from cxrfx.io import read_mask

    index = np.zeros((12, 20), np.uint8)
    index[2:5, 3:9] = 1
    index[7:10, 12:18] = 2
    img = Image.fromarray(index, mode="P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))  # colours, not gray levels
    img.save(tmp_path / "voc.png")
    mask = read_mask(str(tmp_path / "voc.png"), ["a", "b"])
    assert mask.shape == (2, 12, 20)
    np.testing.assert_array_equal(mask[0], index == 1)
    np.testing.assert_array_equal(mask[1], index == 2)
