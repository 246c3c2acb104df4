"""DICOM SEG output: round trip through pydicom and highdicom, references, geometry, DX/CR, MONOCHROME1/2."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from cxrfx.data.phantom.files import write_dicom
from cxrfx.io import load_cxr
from cxrfx.outputs.dicom_seg import DicomSegError, read_dicom_seg, segment_codes, write_dicom_seg

H, W = 40, 56  # non-square: a transposed mask cannot match


def masks(h=H, w=W):
    """Left-right and top-bottom asymmetric masks, one of them empty."""
    lung = np.zeros((h, w), bool)
    lung[5:30, 30:50] = True  # the viewer's right half: the patient's left lung on a PA film
    heart = np.zeros((h, w), bool)
    heart[20:35, 20:36] = True
    heart[20, 20] = False
    return {"lung_left": lung, "heart": heart, "pneumothorax": np.zeros((h, w), bool)}


@pytest.fixture
def dx(tmp_path):
    """A DX "for presentation" MONOCHROME1 file with PixelSpacing and ImagerPixelSpacing (the phantom's writer)."""
    path = tmp_path / "dx.dcm"
    image = np.linspace(0, 1, H * W).reshape(H, W)
    write_dicom(str(path), image, uid_key="seg-test", monochrome1=True, pixel_mm=0.2, magnification=1.1,
                patient_id="P1", calibrated_spacing=True)
    return path


@pytest.fixture
def cr(tmp_path):
    """A CR MONOCHROME2 file with no spacing and no Type 2 patient/study attributes (as many exports are)."""
    path = tmp_path / "cr.dcm"
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "CR", "P2"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = H, W, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 10, 9, 0
    ds.PixelData = (np.arange(H * W, dtype=np.uint16) % 1024).reshape(H, W).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dx_monochrome1_round_trip_pydicom_and_highdicom(dx, tmp_path):
    src = pydicom.dcmread(dx)
    out = write_dicom_seg(dx, masks(), tmp_path / "out" / "dx_seg.dcm")
    seg = pydicom.dcmread(out)
    # references and study membership, read with plain pydicom
    assert seg.Modality == "SEG" and seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.StudyInstanceUID == src.StudyInstanceUID and seg.PatientID == "P1"
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == src.SeriesInstanceUID
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert (seg.Rows, seg.Columns) == (H, W) and seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["lung_left", "heart", "pneumothorax"]
    spacing = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(v) for v in spacing] == pytest.approx([float(v) for v in src.PixelSpacing])
    # pixel data decoded by pydicom alone: each frame belongs to one segment, the empty one has none
    frames = seg.pixel_array.reshape(-1, H, W)
    numbers = [f.SegmentIdentificationSequence[0].ReferencedSegmentNumber for f in seg.PerFrameFunctionalGroupsSequence]
    assert numbers == [1, 2]
    expected = masks()
    np.testing.assert_array_equal(frames[0].astype(bool), expected["lung_left"])
    np.testing.assert_array_equal(frames[1].astype(bool), expected["heart"])
    source_frame = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert source_frame.ReferencedSOPInstanceUID == src.SOPInstanceUID
    # highdicom, through read_dicom_seg (DX has no Frame of Reference, so no Slice Thickness: see the module)
    back = read_dicom_seg(out)
    assert (back.study_instance_uid, back.series_instance_uid, back.sop_instance_uid) == (
        src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID)
    assert list(back.masks) == list(expected)
    for name, mask in expected.items():
        np.testing.assert_array_equal(back.masks[name], mask)
    # the source image loads in display polarity (MONOCHROME1 inverted) on the same grid
    image, meta = load_cxr(dx)
    assert image.shape == (H, W) and meta["photometric_interpretation"] == "MONOCHROME1"


def test_cr_monochrome2_without_type2_attributes_reads_with_plain_segread(cr, tmp_path):
    out = write_dicom_seg(cr, masks(), tmp_path / "cr_seg.dcm")
    seg = hd.seg.segread(out)  # no PixelSpacing in the source: no Pixel Measures, highdicom reads it as is
    src = pydicom.dcmread(cr)
    pixels = seg.get_pixels_by_source_instance([src.SOPInstanceUID], segment_numbers=[1, 2, 3])
    for k, mask in enumerate(masks().values()):
        np.testing.assert_array_equal(pixels[0, :, :, k].astype(bool), mask)
    assert seg.PatientBirthDate == "" and seg.StudyInstanceUID == src.StudyInstanceUID
    np.testing.assert_array_equal(read_dicom_seg(out).masks["heart"], masks()["heart"])


def test_segment_codes():
    category, prop = segment_codes("lung_left")
    assert (prop.value, prop.scheme_designator, category.value) == ("39607008", "SCT", "91723000")
    assert prop.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Left"
    _, prop = segment_codes("Right-Clavicle")
    assert prop.meaning == "Clavicle" and prop.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Right"
    category, prop = segment_codes("pleural_effusion")
    assert (prop.value, category.meaning) == ("60046008", "Morphologically Abnormal Structure")
    category, prop = segment_codes("chest tube")
    assert (category.scheme_designator, prop.scheme_designator, prop.meaning) == ("99CXRFX", "99CXRFX", "chest tube")


def test_errors_name_the_file(dx, tmp_path):
    bad = masks()
    bad["heart"] = bad["heart"].T
    with pytest.raises(DicomSegError, match=r"dx\.dcm: mask 'heart' is \(56, 40\), the image is \(40, 56\)"):
        write_dicom_seg(dx, bad, tmp_path / "x.dcm")
    png = tmp_path / "not_dicom.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(DicomSegError, match="not_dicom.png: source is not a readable DICOM"):
        write_dicom_seg(png, masks(), tmp_path / "y.dcm")
    with pytest.raises(DicomSegError, match=r"dx\.dcm: not a DICOM Segmentation"):
        read_dicom_seg(dx)
