"""SIIM-ACR adapter: a tiny Kaggle-layout tree (DICOMs in <study>/<series>/<ImageId>.dcm, train-rle.csv with the
leading-space header), masks encoded here with the relative column-major RLE and decoded back by the adapter."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrfx.data.adapters import prepare
from cxrfx.errors import DatasetLayoutError

H, W = 32, 40  # non-square: a transposed decode changes the shape


def encode_relative_colmajor(mask: np.ndarray) -> str:
    """Kaggle SIIM encoder: column-major flat array, (offset from the end of the previous run, length) pairs."""
    flat = np.asarray(mask, dtype=bool).T.flatten()
    out, end, i = [], 0, 0
    while i < flat.size:
        if flat[i]:
            j = i
            while j < flat.size and flat[j]:
                j += 1
            out += [i - end, j - i]
            end = i = j
        else:
            i += 1
    return " ".join(map(str, out))


def write_dicom(path, *, patient="P", view="PA", rows=H, cols=W, photometric="MONOCHROME2"):
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture, as the SIIM files
    fm.MediaStorageSOPInstanceUID = generate_uid()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID = fm.MediaStorageSOPClassUID
    ds.SOPInstanceUID = fm.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PatientID = patient
    ds.PatientSex = "M"
    ds.PatientAge = "038Y"
    if view is not None:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = (np.arange(rows * cols) % 256).astype(np.uint8).tobytes()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def kaggle_id(k: int) -> str:
    return f"1.2.276.0.7230010.3.1.4.8323329.{1000 + k}.1517875166.{850000 + k}"


# image A: two regions in two rows (union), an L shape that only decodes right in column-major order
MASK_A1 = np.zeros((H, W), bool)
MASK_A1[2:6, 3:8] = True
MASK_A1[6:10, 3:5] = True  # L: a vertical bar under the left end of the block
MASK_A2 = np.zeros((H, W), bool)
MASK_A2[20:26, 30:36] = True
# image C: one row, two diagonal-touching blocks (one 8-connected component) and a separate speck
MASK_C = np.zeros((H, W), bool)
MASK_C[0:3, 0:3] = True
MASK_C[3:5, 3:6] = True
MASK_C[31, 39] = True


@pytest.fixture
def siim(tmp_path):
    root = tmp_path / "siim"
    train = root / "dicom-images-train"
    lines = ["ImageId, EncodedPixels"]
    ids = {}
    specs = [  # (key, patient, view, rle rows)
        ("A", "pat-a", "PA", [encode_relative_colmajor(MASK_A1), encode_relative_colmajor(MASK_A2)]),
        ("B", "pat-b", "AP", ["-1"]),
        ("C", "pat-c", "AP", [encode_relative_colmajor(MASK_C)]),
    ]
    for k in range(12):  # negatives for the split test; patients shared by pairs of images
        specs.append((f"N{k}", f"pat-n{k // 2}", "PA" if k % 3 else "AP", ["-1"]))
    for k, (key, patient, view, rles) in enumerate(specs):
        image_id = kaggle_id(k)
        ids[key] = image_id
        write_dicom(str(train / f"1.2.276.0.7230010.3.1.2.{k}" / f"1.2.276.0.7230010.3.1.3.{k}" / f"{image_id}.dcm"),
                    patient=patient, view=view)
        lines += [f"{image_id}, {r}" for r in rles]
    # an annotated image whose DICOM is absent (the Kaggle release has a few): skipped with a warning
    lines.append(f"{kaggle_id(99)}, -1")
    (root / "train-rle.csv").write_text("\n".join(lines) + "\n")
    return root, ids


def build(root, tmp_path, **kw):
    out = tmp_path / "out" / "siim.json"
    with pytest.warns(UserWarning, match="1 annotated image"):
        prepare("siim_acr", str(root), str(out), **kw)
    data = json.loads(out.read_text())
    items = {it["id"]: it for s in ("training", "validation", "test") for it in data[s]}
    return data, items, out.parent


def read_mask(out_dir, rel_path):
    return np.array(Image.open(os.path.join(out_dir, rel_path)))


def test_masks_labels_boxes(siim, tmp_path):
    root, ids = siim
    data, items, out_dir = build(root, tmp_path)
    assert data["tasks"]["classification"]["labels"] == ["Pneumothorax"]
    assert data["tasks"]["segmentation"] == {"classes": ["pneumothorax"], "mask_format": "per_class"}
    assert len(items) == 15 and kaggle_id(99) not in items

    a = items[ids["A"]]
    assert a["label"] == [1] and a["view"] == "PA" and a["patient_id"] == "pat-a"
    mask = read_mask(out_dir, a["mask"]["pneumothorax"])
    assert mask.shape == (H, W) and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    np.testing.assert_array_equal(mask > 0, MASK_A1 | MASK_A2)  # both rows unioned, orientation kept
    assert a["boxes"] == [[3.0, 2.0, 8.0, 10.0], [30.0, 20.0, 36.0, 26.0]] and a["box_labels"] == [0, 0]
    assert a["meta"]["source_id"] == ids["A"] and a["meta"]["original_size"] == [H, W]
    assert a["meta"]["rle_rows"] == 2
    assert os.path.normpath(os.path.join(out_dir, a["image"])).endswith(f"{ids['A']}.dcm")
    assert a["mask"]["pneumothorax"].startswith("siim_acr_masks")

    b = items[ids["B"]]
    assert b["label"] == [0] and b["boxes"] == [] and b["box_labels"] == [] and b["mask"] == {}

    c = items[ids["C"]]
    np.testing.assert_array_equal(read_mask(out_dir, c["mask"]["pneumothorax"]) > 0, MASK_C)
    assert c["boxes"] == [[0.0, 0.0, 6.0, 5.0], [39.0, 31.0, 40.0, 32.0]]  # 8-connected by default


def test_four_connectivity_splits_diagonal_blocks(siim, tmp_path):
    root, ids = siim
    _, items, _ = build(root, tmp_path, connectivity=4)
    assert items[ids["C"]]["boxes"] == [[0.0, 0.0, 3.0, 3.0], [3.0, 3.0, 6.0, 5.0], [39.0, 31.0, 40.0, 32.0]]


def test_random_patient_split(siim, tmp_path):
    root, _ = siim
    data, items, _ = build(root, tmp_path, seed=3)
    sizes = {s: len(data[s]) for s in ("training", "validation", "test")}
    assert sum(sizes.values()) == 15 and sizes["training"] > sizes["test"] > 0
    where = {}
    for s in ("training", "validation", "test"):
        for it in data[s]:
            assert where.setdefault(it["patient_id"], s) == s  # no patient in two splits
    data2, _, _ = build(root, tmp_path, split="random", seed=3)
    assert [it["id"] for it in data2["training"]] == [it["id"] for it in data["training"]]


def test_views_filter(siim, tmp_path):
    root, ids = siim
    _, items, _ = build(root, tmp_path, views=["ap"])
    assert items and all(it["view"] == "AP" for it in items.values())
    assert ids["B"] in items and ids["A"] not in items


def test_wrong_root(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="train-rle.csv"):
        prepare("siim_acr", str(tmp_path / "empty"), str(tmp_path / "o.json"))


def test_no_dicoms_found(siim, tmp_path):
    root, _ = siim
    (root / "dicom-images-train").rename(root / "elsewhere")
    os.makedirs(root / "dicom-images-train")
    with pytest.raises(DatasetLayoutError, match="dicom-images-train"):
        prepare("siim_acr", str(root), str(tmp_path / "o.json"))


def test_missing_column(siim, tmp_path):
    root, _ = siim
    csv = root / "train-rle.csv"
    csv.write_text(csv.read_text().replace("ImageId, EncodedPixels", "ImageId, Pixels", 1))
    with pytest.raises(DatasetLayoutError, match=r"train-rle\.csv.*EncodedPixels"):
        prepare("siim_acr", str(root), str(tmp_path / "o.json"))


@pytest.mark.parametrize("bad", ["12 x", "5 3 7", "1270 20"])  # not integers / odd count / run leaves the image
def test_unparsable_row(siim, tmp_path, bad):
    root, ids = siim
    csv = root / "train-rle.csv"
    lines = csv.read_text().splitlines()
    lines[2] = f"{ids['A']}, {bad}"  # line 3 of the file
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetLayoutError, match=r"train-rle\.csv:3"):
        prepare("siim_acr", str(root), str(tmp_path / "o.json"))


def test_missing_dicom_as_error(siim, tmp_path):
    root, _ = siim
    with pytest.raises(DatasetLayoutError, match=r"train-rle\.csv:\d+: no DICOM"):
        prepare("siim_acr", str(root), str(tmp_path / "o.json"), missing="error")


def test_monochrome1_and_header_only(siim, tmp_path):
    """Sizes come from the header alone: a MONOCHROME1 file with another size decodes at its own size."""
    root, ids = siim
    path = next((root / "dicom-images-train").rglob(f"{ids['C']}.dcm"))
    write_dicom(str(path), patient="pat-c", view="AP", rows=W, cols=H, photometric="MONOCHROME1")
    _, items, out_dir = build(root, tmp_path)
    c = items[ids["C"]]
    assert c["meta"]["original_size"] == [W, H]
    assert read_mask(out_dir, c["mask"]["pneumothorax"]).shape == (W, H)
