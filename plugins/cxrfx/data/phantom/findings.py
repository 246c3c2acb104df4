"""Synthetic findings inserted into the CT before projection, so that their appearance is physical.

Each function edits ``mu`` / ``bits`` of a :class:`PhantomVolume` copy in place and returns a
:class:`Finding` (or ``None`` when it could not be placed). Findings own a free bit of ``bits`` so that
their projected mask (and box) comes out of the same projection as the image.

- nodule / mass: a solid ellipsoid in aerated lung (nodule 8-28 mm, mass 32-50 mm).
- pneumothorax: the apical-lateral rim of one lung becomes air (no lung markings), the rest of that
  lung denser (partial collapse); the band is set per axial slice so no lung overlaps it along a ray.
- effusion: fluid fills one lung's base up to a meniscus that rises laterally.
- cardiomegaly: the heart scaled about its centroid (x1.22-1.4 across, less head-to-foot).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrfx.data.phantom.volume import STRUCTURE_BITS, PhantomVolume

__all__ = ["Finding", "insert_nodule", "insert_pneumothorax", "insert_effusion", "insert_cardiomegaly"]

_MU_SOFT = 1.05
_MU_FLUID = 1.0


@dataclass
class Finding:
    """What was inserted: ``kind``, the ``bit`` marking its region (None: no own region), side, size."""

    kind: str
    bit: int | None
    side: str | None = None
    size_mm: float = 0.0
    density: float = 0.0  # lesions: attenuation relative to water
    cnr: float | None = None  # lesions: contrast-to-noise ratio measured in the radiograph (render.lesion_cnr)


def _bit(b: int) -> np.uint16:
    return np.uint16(1 << b)


def _lung(vol: PhantomVolume, side: str) -> np.ndarray:
    return vol.structure(f"lung_{side}")


def insert_nodule(vol: PhantomVolume, rng: np.random.Generator, bit: int, kind: str = "nodule",
                  avoid_bits: int = 0) -> Finding | None:
    """A solid ellipsoid fully inside aerated lung, away from regions marked by ``avoid_bits``."""
    lo, hi = (4.0, 14.0) if kind == "nodule" else (16.0, 25.0)
    radius = float(rng.uniform(lo, hi))
    radius = max(radius, 1.6 * max(vol.spacing))  # stays visible (and boxable) at coarse test grids
    axes = radius * rng.uniform(0.8, 1.2, size=3)
    lungs = _lung(vol, "left") | _lung(vol, "right")
    candidates = np.argwhere(lungs & (vol.mu < 0.6))
    if len(candidates) == 0:
        return None
    half = np.ceil(axes / np.array(vol.spacing)).astype(int)
    for _ in range(30):
        cx, cy, cz = candidates[rng.integers(len(candidates))]
        sl = tuple(slice(c - h, c + h + 1) for c, h in zip((cx, cy, cz), half))
        if any(s.start < 0 or s.stop > n for s, n in zip(sl, vol.mu.shape)):
            continue
        grid = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
        inside = sum((g * sp / a) ** 2 for g, sp, a in zip(grid, vol.spacing, axes)) <= 1.0
        box_lung = lungs[sl]
        if not box_lung[inside].all() or (vol.bits[sl][inside] & np.uint16(avoid_bits)).any():
            continue  # must sit wholly in lung, clear of pleura and of other findings
        density = _lesion_density(rng)
        vol.mu[sl][inside] = np.maximum(vol.mu[sl][inside], density)
        vol.bits[sl][inside] |= _bit(bit)
        return Finding(kind, bit, "left" if cx * 2 > vol.mu.shape[0] else "right", float(2 * axes.mean()),
                       density=round(density, 3))
    return None


def _lesion_density(rng: np.random.Generator) -> float:
    """Lesion attenuation relative to water: half soft tissue (0.9-1.15), half denser (1.15-2.5, log-uniform:
    dense, partly or wholly calcified). Soft tissue alone left every lesion subtle at 256 px (median CNR 0.6,
    ribs and vessels around it count as noise); real nodule sets span subtle to conspicuous. The resulting CNR
    distribution is measured in docs/data.md."""
    if rng.random() < 0.5:
        return float(rng.uniform(0.9, 1.15))
    return float(np.exp(rng.uniform(np.log(1.15), np.log(2.5))))


def insert_pneumothorax(vol: PhantomVolume, rng: np.random.Generator, bit: int, side: str) -> Finding | None:
    """Air replaces the apical-lateral rim of one lung (``side`` = patient's left or right)."""
    lung = _lung(vol, side)
    zs = np.flatnonzero(lung.any(axis=(0, 1)))
    if len(zs) < 4:
        return None
    dx, _, dz = vol.spacing
    z_top, z_bottom = zs.max(), zs.min()
    span = int((z_top - z_bottom) * rng.uniform(0.45, 0.8))
    thickness_mm = float(rng.uniform(12.0, 30.0))
    apex_slices = max(1, int(round(thickness_mm * 0.6 / dz)))
    region = np.zeros_like(lung)
    for z in range(z_top - span, z_top + 1):
        cols = np.flatnonzero(lung[:, :, z].any(axis=1))
        if len(cols) == 0:
            continue
        taper = min(1.0, (z - (z_top - span)) / max(1.0, span / 2))  # thin towards the bottom of the band
        t = max(1, int(round(thickness_mm * taper / dx)))
        if z > z_top - apex_slices:
            region[:, :, z] = lung[:, :, z]  # apical cap
        elif side == "left":  # x grows to the patient's left: the lateral edge is the largest x
            region[cols.max() - t + 1:, :, z] = lung[cols.max() - t + 1:, :, z]
        else:
            region[: cols.min() + t, :, z] = lung[: cols.min() + t, :, z]
    if not region.any():
        return None
    rest = lung & ~region
    vol.mu[rest] = np.minimum(vol.mu[rest] * 1.35, 1.0)  # the collapsing lung gets denser
    vol.mu[region] = 0.0
    vol.bits[region] |= _bit(bit)
    return Finding("pneumothorax", bit, side, thickness_mm)


def insert_effusion(vol: PhantomVolume, rng: np.random.Generator, bit: int, side: str) -> Finding | None:
    """Fluid fills the base of one lung up to a meniscus that rises towards the chest wall."""
    lung = _lung(vol, side)
    if not lung.any():
        return None
    dx, _, dz = vol.spacing
    xs, _, zs = np.nonzero(lung)
    height_mm = float(rng.uniform(18.0, 45.0))
    medial = xs.min() if side == "left" else xs.max()
    x = np.arange(lung.shape[0])
    lateral = np.clip(np.abs(x - medial) / max(1, xs.max() - xs.min()), 0, 1)
    level_mm = zs.min() * dz + height_mm + 35.0 * lateral**2  # concave meniscus, rising to the chest wall
    below = (np.arange(lung.shape[2])[None, :] * dz) <= level_mm[:, None]  # (X, Z)
    region = lung & below[:, None, :]
    if not region.any():
        return None
    vol.mu[region] = _MU_FLUID
    vol.bits[region] |= _bit(bit)
    return Finding("effusion", bit, side, height_mm)


def insert_cardiomegaly(vol: PhantomVolume, rng: np.random.Generator) -> Finding | None:
    """Scale the heart about its centroid; soft tissue and lung around it become heart."""
    heart = vol.structure("heart")
    idx = np.argwhere(heart)
    if len(idx) == 0:
        return None
    scale_xy = float(rng.uniform(1.22, 1.4))
    scale = np.array([scale_xy, scale_xy, 1.0 + (scale_xy - 1.0) / 2])
    center = idx.mean(axis=0)
    lo = np.maximum(0, np.floor(center - (center - idx.min(axis=0)) * scale) - 1).astype(int)
    hi = np.minimum(heart.shape, np.ceil(center + (idx.max(axis=0) - center) * scale) + 2).astype(int)
    grid = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij")
    src = [np.rint(center[k] + (grid[k] - center[k]) / scale[k]).astype(int) for k in range(3)]
    valid = np.all([(s >= 0) & (s < n) for s, n in zip(src, heart.shape)], axis=0)
    grown = np.zeros(valid.shape, bool)
    grown[valid] = heart[src[0][valid], src[1][valid], src[2][valid]]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    mu, bits = vol.mu[sl], vol.bits[sl]
    skeletal = (bits & np.uint16(_bone_bits())) != 0
    grow = grown & ~skeletal & (mu < 1.3)  # never paint over bone
    mu[grow] = _MU_SOFT - 0.01
    lung_bits = np.uint16((1 << STRUCTURE_BITS["lung_left"]) | (1 << STRUCTURE_BITS["lung_right"]))
    bits[grow] = (bits[grow] & ~lung_bits) | np.uint16(1 << STRUCTURE_BITS["heart"])
    return Finding("cardiomegaly", None, None, scale_xy)


def _bone_bits() -> int:
    return sum(1 << STRUCTURE_BITS[n] for n in ("clavicle_left", "clavicle_right", "ribs"))
