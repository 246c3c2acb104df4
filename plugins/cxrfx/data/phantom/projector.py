"""Frontal digitally reconstructed radiographs (plain numpy/scipy), with per-image geometry and exposure.

Steps: parallel line integrals of ``mu`` along anterior-posterior rays, tilted by the patient's
rotation about the head-foot axis (obliquity, as a shear); the same rays OR the structure bits into
masks. The (x, z) projection is then mapped onto the detector canvas: head up, the patient's right on
the viewer's left, in-plane tilt, magnification and shift; images bilinear, masks nearest-neighbour,
so masks stay pixel-exact (beyond the CT's extent the image repeats its edge). Exposure: transmitted
intensity exp(-a b L) (b: beam quality), detector blur, Poisson quanta, log, then a mild unsharp mask as
vendor processing does. No beam divergence or scatter (REFERENCE §10).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cxrfx.data.phantom.volume import PhantomVolume

__all__ = ["Geometry", "Exposure", "project", "to_canvas", "expose", "sample_geometry", "sample_exposure"]

_ATTENUATION_PER_MM = 0.02  # water at ~60 keV, 1/mm
_LOG_RANGE = 7.0  # display white at transmission exp(-7)


@dataclass
class Geometry:
    """Per-image positioning: rotations in degrees, magnification (>= 1), shift in mm (right, up)."""

    obliquity_deg: float = 0.0
    tilt_deg: float = 0.0
    magnification: float = 1.05
    shift_mm: tuple[float, float] = (0.0, 0.0)


@dataclass
class Exposure:
    """Per-image exposure: photons per pixel, detector blur (pixels), unsharp-mask amount, gamma, and beam
    quality as a factor on the attenuation per mm (< 1: harder beam, flatter image)."""

    photons: float = 20000.0
    blur_px: float = 0.5
    unsharp: float = 0.4
    gamma: float = 1.0
    beam: float = 1.0


def sample_geometry(rng: np.random.Generator) -> Geometry:
    return Geometry(
        obliquity_deg=float(rng.uniform(-5, 5)),
        tilt_deg=float(rng.uniform(-4, 4)),
        magnification=float(rng.uniform(1.0, 1.1)),
        shift_mm=(float(rng.uniform(-8, 8)), float(rng.uniform(-6, 6))),
    )


def sample_exposure(rng: np.random.Generator) -> Exposure:
    return Exposure(
        photons=float(np.exp(rng.uniform(np.log(3e3), np.log(5e4)))),
        blur_px=float(rng.uniform(0.2, 1.0)),
        unsharp=float(rng.uniform(0.2, 0.7)),
        gamma=float(rng.uniform(0.85, 1.2)),
        beam=float(rng.uniform(0.85, 1.15)),
    )


def project(vol: PhantomVolume, obliquity_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Line integrals (X, Z) in mm of water, and OR of ``bits`` along the same rays (X, Z)."""
    dx, dy, _ = vol.spacing
    nx, ny, nz = vol.mu.shape
    if obliquity_deg == 0.0:
        return vol.mu.sum(axis=1) * dy, np.bitwise_or.reduce(vol.bits, axis=1)
    # Ray through detector column x meets depth j at x + shift[j]: scatter each slice to x - shift[j].
    shift = (np.arange(ny) - (ny - 1) / 2) * dy * np.tan(np.radians(obliquity_deg)) / dx
    pad = int(np.ceil(np.abs(shift).max())) + 2
    line = np.zeros((nx + 2 * pad, nz), np.float32)
    bits = np.zeros((nx + 2 * pad, nz), vol.bits.dtype)
    for j in range(ny):
        k = int(np.floor(shift[j]))
        f = np.float32(shift[j] - k)
        start = pad - k
        line[start:start + nx] += (1 - f) * vol.mu[:, j, :]
        line[start - 1:start - 1 + nx] += f * vol.mu[:, j, :]
        r = start - int(round(float(f)))
        bits[r:r + nx] |= vol.bits[:, j, :]
    return line[pad:pad + nx] * dy, bits[pad:pad + nx]


def to_canvas(line: np.ndarray, bits: np.ndarray, spacing_xz: tuple[float, float], center_xz: tuple[float, float],
              shape: tuple[int, int], pixel_mm: float, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Map (X, Z) projections to a detector image (H, W): head up, patient's right on the viewer's left.

    ``center_xz`` (index units) lands at the image centre before the shift; ``pixel_mm`` is the detector
    pixel size, so the patient-plane pixel size is ``pixel_mm / magnification``.
    """
    height, width = shape
    dx, dz = spacing_xz
    p = pixel_mm / geometry.magnification
    phi = np.radians(geometry.tilt_deg)
    cos, sin = np.cos(phi), np.sin(phi)
    # Patient-plane mm from output (row, col): u (to patient's left) = c * p, v (superior) = -r * p,
    # then rotated by the tilt; index = centre + (rotated + shift) / spacing.
    du_dr, du_dc = sin * -p, cos * p
    dv_dr, dv_dc = cos * -p, -sin * p
    matrix = np.array([[du_dr / dx, du_dc / dx], [dv_dr / dz, dv_dc / dz]])
    su, sv = geometry.shift_mm
    origin = np.array([(height - 1) / 2, (width - 1) / 2])
    offset = np.array(center_xz) + np.array([su / dx, sv / dz]) - matrix @ origin
    image = ndimage.affine_transform(line, matrix, offset, output_shape=shape, order=1, mode="nearest")
    masks = ndimage.affine_transform(bits, matrix, offset, output_shape=shape, order=0, mode="constant", cval=0)
    return image.astype(np.float32), masks


def expose(line: np.ndarray, exposure: Exposure, rng: np.random.Generator) -> np.ndarray:
    """Line integrals (mm water) -> display values in [0, 1] (bright = attenuating), with quantum noise."""
    transmitted = np.exp(-_ATTENUATION_PER_MM * exposure.beam * line.astype(np.float64))
    if exposure.blur_px > 0:
        transmitted = ndimage.gaussian_filter(transmitted, exposure.blur_px)
    counts = rng.poisson(exposure.photons * transmitted)
    log_att = -np.log(np.maximum(counts, 0.5) / exposure.photons)
    display = log_att / _LOG_RANGE
    if exposure.unsharp > 0:  # large-kernel unsharp mask: flattens the dynamic range, sharpens edges
        sigma = max(2.0, line.shape[1] / 24)
        display = display + exposure.unsharp * (display - ndimage.gaussian_filter(display, sigma))
    display = np.clip(display, 0.0, 1.0) ** exposure.gamma
    return display.astype(np.float32)
