"""DICOM Segmentation (SEG) objects for predicted masks of a DICOM radiograph, written and read with highdicom.

The SEG is BINARY, one segment per class, in the pixel grid of the source image (same Rows x Columns;
the mask's row 0 is the source's row 0 - ``cxrfx.io.load_cxr`` never flips, it only inverts MONOCHROME1
intensities, so polarity does not matter here). It joins the source's study (Study Instance UID and
patient module copied) and references the source image (Referenced Series Sequence, Source Image
Sequence per frame) by Series and SOP Instance UID. DX and CR sources carry no Frame of Reference, so
highdicom derives the per-frame correspondence from the referenced SOP instance and copies PixelSpacing
(when the source has one) into the Pixel Measures.

Segment codes: well-known chest structures and findings get SNOMED CT codes (category "Anatomical
Structure" or "Morphologically Abnormal Structure"; ``_left`` / ``_right`` as a laterality modifier);
any other class name gets a code in the local scheme ``99CXRFX`` whose meaning is the class name.

Two highdicom 0.28.2 limitations are handled here, and said where: it needs Type 2 patient/study
attributes that real radiographs often lack (filled with empty values on a header copy), and its reader
insists on Slice Thickness in the Pixel Measures, which DICOM (CP 1426) requires only when a Frame of
Reference is present, as it never is for DX/CR (:func:`read_dicom_seg` reads such files anyway).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pydicom

from cxrfx.errors import CXRFXError

__all__ = ["DicomSegError", "SegReadBack", "segment_codes", "write_dicom_seg", "read_dicom_seg", "SOFTWARE"]

SOFTWARE = "cxrfx"
LOCAL_SCHEME = "99CXRFX"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"

# class-name stem -> (SNOMED CT code, meaning, category); category "A" anatomy, "F" abnormal finding
_SCT = {
    "lung": ("39607008", "Lung", "A"), "heart": ("80891009", "Heart", "A"),
    "clavicle": ("51299004", "Clavicle", "A"), "rib": ("113197003", "Rib", "A"),
    "trachea": ("44567001", "Trachea", "A"), "aorta": ("15825003", "Aorta", "A"),
    "spine": ("421060004", "Spine", "A"), "mediastinum": ("72410000", "Mediastinum", "A"),
    "pneumothorax": ("36118008", "Pneumothorax", "F"), "effusion": ("60046008", "Pleural effusion", "F"),
    "nodule": ("27925004", "Nodule", "F"), "mass": ("4147007", "Mass", "F"),
    "consolidation": ("95436008", "Lung consolidation", "F"), "atelectasis": ("46621007", "Atelectasis", "F"),
    "cardiomegaly": ("287272002", "Cardiomegaly", "F"),
}
_ALIASES = {"lungs": "lung", "ribs": "rib", "clavicles": "clavicle", "pleural_effusion": "effusion",
            "ptx": "pneumothorax"}
_CATEGORY = {"A": ("91723000", "Anatomical Structure"), "F": ("49755003", "Morphologically Abnormal Structure")}
_SIDES = {"left": ("7771000", "Left"), "right": ("24028007", "Right")}
# Type 2 attributes highdicom reads from the source without a default; empty is their legal "unknown"
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")


class DicomSegError(CXRFXError, ValueError):
    """A DICOM SEG could not be written for, or read from, ``path``; ``problem`` says why."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path, self.problem = os.fspath(path), problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # pickle / copy rebuild from (path, problem), not from the one formatted message
        return type(self), (self.path, self.problem)

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def _hd():
    try:
        import highdicom
    except ImportError as exc:  # pragma: no cover - highdicom is an install requirement
        raise CXRFXError(f"DICOM SEG needs highdicom (pip install -c constraints.txt highdicom): {exc}") from None
    return highdicom


def segment_codes(name: str):
    """(category, property type) coded concepts for a class name, e.g. ``lung_left`` -> Lung + modifier Left."""
    hd = _hd()
    key = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    side = None
    for s in _SIDES:
        if key.startswith(s + "_") or key.endswith("_" + s):
            side, key = s, re.sub(rf"(^{s}_|_{s}$)", "", key)
            break
    key = _ALIASES.get(key, key)
    if key in _SCT:
        code, meaning, cat = _SCT[key]
        category = hd.sr.CodedConcept(_CATEGORY[cat][0], "SCT", _CATEGORY[cat][1])
        prop = hd.sr.CodedConcept(code, "SCT", meaning)
    else:  # honest local code rather than a wrong standard one
        category = hd.sr.CodedConcept("model_output", LOCAL_SCHEME, "Model output class")
        prop = hd.sr.CodedConcept(key[:16] or "class", LOCAL_SCHEME, name[:64])
        side = None  # the name already says it
    if side:
        prop.SegmentedPropertyTypeModifierCodeSequence = [hd.sr.CodedConcept(_SIDES[side][0], "SCT", _SIDES[side][1])]
    return category, prop


def _source_header(path: str) -> pydicom.Dataset:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise DicomSegError(path, f"source is not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Rows", "Columns")
               if not ds.get(k)]
    if missing:
        raise DicomSegError(path, f"source lacks {', '.join(missing)}: a SEG cannot reference it")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise DicomSegError(path, "multi-frame source: SEG output supports single-frame radiographs only")
    ds = copy.deepcopy(ds)
    for keyword in _TYPE2:  # highdicom 0.28 reads these unconditionally; DX/CR files often omit them
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def write_dicom_seg(source: str | os.PathLike, masks: Mapping[str, np.ndarray], out_path: str | os.PathLike, *,
                    algorithm: str = SOFTWARE, algorithm_version: str = "0.1.0",
                    series_description: str = "cxrfx segmentation", series_number: int = 900,
                    content_label: str = "CXRFX") -> str:
    """Write a BINARY DICOM SEG of ``masks`` (``{class name: (Rows, Columns) bool}``) referencing ``source``.

    Every class becomes a segment (numbered in the order given), empty ones included in the Segment
    Sequence (highdicom leaves out their all-zero frames). Returns the written path.
    """
    hd = _hd()
    source, out_path = os.fspath(source), os.fspath(out_path)
    src = _source_header(source)
    names = list(masks)
    if not names:
        raise DicomSegError(source, "no mask classes to write")
    shape = (int(src.Rows), int(src.Columns))
    planes = []
    for name in names:
        m = np.asarray(masks[name])
        if m.shape != shape:
            raise DicomSegError(source, f"mask {name!r} is {m.shape}, the image is {shape} (Rows, Columns)")
        planes.append(m.astype(bool))
    pixels = np.stack(planes, axis=-1)[None].astype(np.uint8)  # (frames=1, rows, cols, segments)
    algo = hd.AlgorithmIdentificationSequence(name=algorithm, version=algorithm_version,
                                              family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence"))
    descriptions = []
    for number, name in enumerate(names, start=1):
        category, prop = segment_codes(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64], segmented_property_category=category,
            segmented_property_type=prop, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo))
    try:
        seg = hd.seg.Segmentation(
            source_images=[src], pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=series_number,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=SOFTWARE, manufacturer_model_name=algorithm,
            software_versions=algorithm_version, device_serial_number="none", series_description=series_description,
            content_label=content_label, content_description=f"{algorithm} prediction",
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomSegError(source, f"cannot build a DICOM SEG for it ({type(exc).__name__}: {exc})") from None
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    seg.save_as(out_path)
    return out_path


@dataclass
class SegReadBack:
    """What a SEG file says: ``masks`` ``{segment label: (Rows, Columns) bool}`` for the referenced image,
    the referenced UIDs, and the highdicom object (``seg``) for anything else."""

    masks: dict[str, np.ndarray]
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    seg: object


def read_dicom_seg(path: str | os.PathLike) -> SegReadBack:
    """Read a single-source SEG (as :func:`write_dicom_seg` writes) into per-segment masks."""
    hd = _hd()
    path = os.fspath(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise DicomSegError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    if str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS:
        raise DicomSegError(path, f"not a DICOM Segmentation (SOP class {ds.get('SOPClassUID', 'missing')})")
    shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
    measures = shared.get("PixelMeasuresSequence") if shared is not None else None
    # highdicom's reader requires Slice Thickness, which DICOM requires only with a Frame of Reference
    # (CP 1426): lift the Pixel Measures out while it parses, then put them back unchanged.
    lift = measures is not None and "SliceThickness" not in measures[0] and "FrameOfReferenceUID" not in ds
    if lift:
        del shared.PixelMeasuresSequence
    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        raise DicomSegError(path, f"highdicom cannot parse the SEG ({type(exc).__name__}: {exc})") from None
    if lift:
        seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence = measures
    refs = [(s.SeriesInstanceUID, i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence
            for i in s.ReferencedInstanceSequence]
    if len(refs) != 1:
        raise DicomSegError(path, f"references {len(refs)} source images; expected one radiograph")
    series_uid, sop_uid = refs[0]
    numbers = [int(item.SegmentNumber) for item in seg.SegmentSequence]
    labels = [str(item.SegmentLabel) for item in seg.SegmentSequence]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[sop_uid], segment_numbers=numbers,
                                               combine_segments=False)
    masks = {label: pixels[0, :, :, k].astype(bool) for k, label in enumerate(labels)}
    return SegReadBack(masks, str(seg.StudyInstanceUID), str(series_uid), str(sop_uid), seg)
