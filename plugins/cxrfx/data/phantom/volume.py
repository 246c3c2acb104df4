"""The CT as an attenuation volume plus structure bits, at the working resolution of a render.

``mu`` is a linear-attenuation proxy relative to water: ``max(0, 1 + HU/1000)``, with bone (HU > 0)
boosted by :data:`BONE_BOOST` because a ~60 keV radiograph shows bone denser than the CT's HU scale
implies (photoelectric effect). The scan is contrast-enhanced, so heart and great vessels are reset to
40 HU (REFERENCE §10). ``bits`` is a uint16 volume: bit ``STRUCTURE_BITS[name]`` marks each structure,
and higher bits are free for inserted findings; projecting with bitwise OR gives every mask at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrfx.data.phantom.source import ChestCT

__all__ = ["PhantomVolume", "prepare_volume", "STRUCTURES", "STRUCTURE_BITS", "FIRST_FREE_BIT", "BONE_BOOST",
           "HELPER_STRUCTURES", "HELPER_BITS"]

BONE_BOOST = 1.6
# Structure -> TotalSegmentator names it is made of.
STRUCTURES = {
    "lung_left": ("lung_upper_lobe_left", "lung_lower_lobe_left"),
    "lung_right": ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"),
    "heart": ("heart", "atrial_appendage_left"),
    "clavicle_left": ("clavicula_left",),
    "clavicle_right": ("clavicula_right",),
    "ribs": tuple(f"rib_{side}_{i}" for side in ("left", "right") for i in range(1, 13)),
}
STRUCTURE_BITS = {name: i for i, name in enumerate(STRUCTURES)}
# Not segmentation classes: what an SCR-style lung field excludes (``annotation.py``). The mediastinum as
# SCR defines it (great vessels, airway, oesophagus; the superior vena cava is not part of it, the hilar
# vessels lie on the lung field); "below_diaphragm": the abdominal organs under the domes.
HELPER_STRUCTURES = {
    "mediastinum": ("aorta", "brachiocephalic_trunk", "common_carotid_artery_right", "common_carotid_artery_left",
                    "brachiocephalic_vein_left", "brachiocephalic_vein_right", "trachea", "esophagus"),
    "below_diaphragm": ("liver", "spleen", "stomach", "gallbladder", "pancreas", "kidney_right", "kidney_left",
                        "adrenal_gland_right", "adrenal_gland_left", "duodenum", "colon", "small_bowel",
                        "inferior_vena_cava", "portal_vein_and_splenic_vein"),
}
HELPER_BITS = {name: len(STRUCTURES) + i for i, name in enumerate(HELPER_STRUCTURES)}
FIRST_FREE_BIT = len(STRUCTURES) + len(HELPER_STRUCTURES)
_DECONTRAST = ("heart", "aorta", "pulmonary_vein", "brachiocephalic_trunk", "subclavian_artery_right",
               "subclavian_artery_left", "common_carotid_artery_right", "common_carotid_artery_left",
               "brachiocephalic_vein_left", "brachiocephalic_vein_right", "atrial_appendage_left",
               "superior_vena_cava", "inferior_vena_cava", "portal_vein_and_splenic_vein")


@dataclass
class PhantomVolume:
    """Attenuation ``mu`` (X, Y, Z) float32 and structure ``bits`` (X, Y, Z) uint16 on one grid.

    Axes: X grows to the patient's left, Y anterior, Z superior; ``spacing`` in mm.
    """

    mu: np.ndarray
    bits: np.ndarray
    spacing: tuple[float, float, float]

    def structure(self, name: str) -> np.ndarray:
        """Boolean volume of one named structure (or helper structure)."""
        bit = STRUCTURE_BITS[name] if name in STRUCTURE_BITS else HELPER_BITS[name]
        return (self.bits & np.uint16(1 << bit)) != 0


def _block_mean(a: np.ndarray, fx: int, fz: int) -> np.ndarray:
    x, y, z = (s - s % f for s, f in zip(a.shape, (fx, fx, fz)))
    a = a[:x, :y, :z]
    return a.reshape(x // fx, fx, y // fx, fx, z // fz, fz).mean(axis=(1, 3, 5), dtype=np.float32)


def prepare_volume(ct: ChestCT, voxel_mm: float) -> PhantomVolume:
    """Attenuation and structure bits, downsampled (block mean / centre sample) to about ``voxel_mm``."""
    hu = ct.hu.copy()
    hu[hu <= -1024] = -1000.0  # -2048 fills the outside of the reconstruction circle: air
    decontrast = np.zeros(256, bool)
    decontrast[ct.label_ids(*_DECONTRAST)] = True
    hu[decontrast[ct.labels]] = 40.0
    mu = np.maximum(0.0, 1.0 + hu / 1000.0)
    mu = np.where(hu > 0, 1.0 + BONE_BOOST * hu / 1000.0, mu).astype(np.float32)

    lut = np.zeros(256, np.uint16)  # label value -> structure bits, applied in one pass
    for name, parts in STRUCTURES.items():
        lut[ct.label_ids(*parts)] |= np.uint16(1 << STRUCTURE_BITS[name])
    for name, parts in HELPER_STRUCTURES.items():
        lut[ct.label_ids(*parts)] |= np.uint16(1 << HELPER_BITS[name])
    bits = lut[ct.labels]

    fx = max(1, int(voxel_mm / ct.spacing[0]))
    fz = max(1, int(voxel_mm / ct.spacing[2]))
    if fx > 1 or fz > 1:
        mu = _block_mean(mu, fx, fz)
        ox, oz = fx // 2, fz // 2  # the voxel nearest the block centre carries the labels
        bits = bits[ox::fx, ox::fx, oz::fz][: mu.shape[0], : mu.shape[1], : mu.shape[2]]
    spacing = (ct.spacing[0] * fx, ct.spacing[1] * fx, ct.spacing[2] * fz)
    return PhantomVolume(mu=np.ascontiguousarray(mu), bits=np.ascontiguousarray(bits), spacing=spacing)
