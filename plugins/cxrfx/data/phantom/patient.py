"""Synthetic patients: one smooth, invertible 3D deformation of the CT per image, plus per-patient appearance.

A :class:`Patient` is drawn from a seed (:func:`sample_patient`); :func:`make_patient` turns the shared CT
(:class:`~cxrfx.data.phantom.volume.PhantomVolume` at the render grid) into that patient's volume. The
deformation is a backward map ``source = G(p) + u(G(p))`` for every output voxel ``p``:

- ``G`` is separable and monotone per axis (so invertible by construction): lateral thorax width, lateral
  chest-wall (soft-tissue) thickness, antero-posterior depth (habitus), apex-to-dome lung height anchored at
  the apex, and the diaphragm level (inspiration / expiration; the abdomen below stretches or shrinks so that
  nothing is sampled from outside the scan).
- ``u`` is smooth and local: the heart scaled about its centroid and shifted (Gaussian window), each clavicle
  rotated in the coronal plane about its medial end (shoulder girdle up or down), and a random cubic B-spline
  displacement (48 mm control grid). Its Jacobian is checked on a coarse grid; a field whose determinant
  drops below :data:`MIN_JACOBIAN` is scaled down until it passes (folding is impossible).

The attenuation volume is resampled trilinearly and the structure bits (labels and finding bits) by nearest
neighbour through the same coordinates, so every mask follows the anatomy exactly. Appearance is randomised
per patient as well: aerated-lung density, bone density, a lung parenchymal texture (correlated noise added
to the line integrals through lung, :func:`add_texture`), and (in ``projector.sample_exposure``) beam quality.
Every component is cheap: separable factors are evaluated on 1D axes and combined by outer products.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from cxrfx.data.phantom.volume import STRUCTURE_BITS, PhantomVolume

__all__ = ["Patient", "Anatomy", "sample_patient", "measure_anatomy", "make_patient", "patient_coordinates",
           "add_texture", "PATIENT_RANGES", "MIN_JACOBIAN"]

MIN_JACOBIAN = 0.2
_CONTROL_MM = 48.0  # B-spline control-point spacing of the random warp
_WALL_MM = 20.0  # the lateral chest-wall band whose thickness varies
_SMOOTH_MM = 12.0  # kinks of the piecewise-linear axis maps are smoothed over this scale

# Uniform ranges of the patient parameters (documented in docs/data.md).
PATIENT_RANGES = {
    "lung_width": (0.88, 1.08),  # lateral scale of the thorax (1 = the CT's patient)
    "lung_height": (0.86, 1.10),  # apex-to-dome scale
    "diaphragm_mm": (-18.0, 18.0),  # dome level, + = higher (expiration)
    "ap_depth": (0.88, 1.15),  # antero-posterior depth: body habitus along the beam
    "chest_wall": (0.5, 2.0),  # lateral soft-tissue thickness relative to the CT's
    "heart_scale": (0.72, 0.98),  # heart scaled about its centroid (on top of cardiomegaly, a finding)
    "heart_shift_x_mm": (-8.0, 8.0),  # + = towards the patient's left
    "heart_shift_z_mm": (-8.0, 8.0),  # + = up
    "clavicle_deg": (-9.0, 9.0),  # both shoulders, + = lateral ends up
    "clavicle_asymmetry_deg": (-3.0, 3.0),  # added to the left, subtracted from the right
    "warp_mm": (2.0, 5.0),  # RMS of each component of the random B-spline displacement
    "lung_density": (0.75, 1.3),  # aerated lung attenuation factor
    "bone_density": (0.75, 1.25),  # bone attenuation above soft tissue, factor
    "texture_mm": (0.3, 2.0),  # lung texture amplitude, mm of water along the ray
    "texture_grain_mm": (1.0, 3.0),  # lung texture correlation length
}


@dataclass
class Patient:
    """One synthetic patient; ``seed`` drives its random warp and texture. See :data:`PATIENT_RANGES`."""

    seed: int
    lung_width: float = 1.0
    lung_height: float = 1.0
    diaphragm_mm: float = 0.0
    ap_depth: float = 1.0
    chest_wall: float = 1.0
    heart_scale: float = 1.0
    heart_shift_x_mm: float = 0.0
    heart_shift_z_mm: float = 0.0
    clavicle_deg: float = 0.0
    clavicle_asymmetry_deg: float = 0.0
    warp_mm: float = 0.0
    lung_density: float = 1.0
    bone_density: float = 1.0
    texture_mm: float = 0.0
    texture_grain_mm: float = 2.0
    damping: float = 1.0  # < 1 when the local field had to be scaled down to stay invertible
    min_jacobian: float = 1.0  # smallest Jacobian determinant of the whole map (coarse grid)

    def summary(self) -> dict:
        """Rounded parameters for a datalist's ``meta``."""
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def sample_patient(seed_or_rng: int | np.random.Generator) -> Patient:
    """Draw a patient: from an int seed (the same seed, the same patient) or a generator (one int is drawn)."""
    if isinstance(seed_or_rng, np.random.Generator):
        seed = int(seed_or_rng.integers(0, 2**62))
    else:
        seed = int(seed_or_rng)
    rng = np.random.default_rng([seed, 0x9A71E])
    values = {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in PATIENT_RANGES.items()}
    return Patient(seed=seed, **values)


@dataclass
class Anatomy:
    """Landmarks of the shared CT in voxel indices, measured once per render grid."""

    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    thorax_x: float  # lateral centre of the lungs
    thorax_half_width: float  # half the lungs' lateral extent
    thorax_y: float  # antero-posterior centre of the lungs
    lung_top: float  # apex (z)
    dome: float  # diaphragm dome level (z)
    heart_center: np.ndarray
    heart_half: np.ndarray
    body_y: tuple[int, int]  # antero-posterior extent of the body (mu > 0.3)
    clavicles: dict = field(default_factory=dict)  # side -> (pivot, window centre, window sigma), each (3,)


def measure_anatomy(vol: PhantomVolume) -> Anatomy:
    """Landmarks used by the deformation: lung extents, dome level, heart and clavicles."""
    lungs = vol.structure("lung_left") | vol.structure("lung_right")
    xs, ys, zs = (np.flatnonzero(lungs.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3))
    # The dome: the highest slice at which the lungs' cross-section has fallen to half its largest area
    # going down (the lungs' bases below it are the posterior recesses).
    area = lungs.sum(axis=(0, 1)).astype(float)
    peak = int(np.argmax(area))
    below = np.flatnonzero(area[:peak] < 0.5 * area[peak])
    dome = float(below.max()) if len(below) else float(zs.min())
    heart = np.argwhere(vol.structure("heart"))
    body_y = np.flatnonzero((vol.mu > 0.3).any(axis=(0, 2)))
    clavicles = {}
    for side in ("left", "right"):
        idx = np.argwhere(vol.structure(f"clavicle_{side}")).astype(float)
        if len(idx) == 0:
            continue
        medial = idx[np.argsort(np.abs(idx[:, 0] - (xs.min() + xs.max()) / 2))[: max(1, len(idx) // 20)]].mean(axis=0)
        centre = idx.mean(axis=0)
        half = (idx.max(axis=0) - idx.min(axis=0)) / 2
        # The window covers the clavicle and the shoulder lateral to it, fading over the lung apex.
        window_centre = centre + np.array([(centre[0] - medial[0]) * 0.5, 0.0, 0.0])
        sigma = np.array([max(half[0], 4.0), max(half[1] * 2, 8.0), max(30.0 / vol.spacing[2], half[2])])
        clavicles[side] = (medial, window_centre, sigma)
    return Anatomy(
        spacing=tuple(vol.spacing), shape=tuple(vol.mu.shape),
        thorax_x=float((xs.min() + xs.max()) / 2), thorax_half_width=float((xs.max() - xs.min()) / 2),
        thorax_y=float((ys.min() + ys.max()) / 2), lung_top=float(zs.max()), dome=dome,
        heart_center=heart.mean(axis=0), heart_half=(heart.max(axis=0) - heart.min(axis=0)) / 2 + 1,
        body_y=(int(body_y.min()), int(body_y.max())),
        clavicles=clavicles,
    )


# ---------------------------------------------------------------- separable axis maps (output -> source)

def _piecewise(out_knots: list[float], src_knots: list[float], n: int, smooth_vox: float) -> np.ndarray:
    """Monotone map of output indices 0..n-1 through (out, src) knots, linear beyond them (slope of the
    outer segments), smoothed with a Gaussian (a positive kernel keeps it monotone)."""
    order = np.argsort(out_knots)
    xo, xs = np.asarray(out_knots, float)[order], np.asarray(src_knots, float)[order]
    pad = int(4 * smooth_vox) + 2
    grid = np.arange(-pad, n + pad, dtype=float)
    g = np.interp(grid, xo, xs)
    lo_slope = (xs[1] - xs[0]) / (xo[1] - xo[0])
    hi_slope = (xs[-1] - xs[-2]) / (xo[-1] - xo[-2])
    g = np.where(grid < xo[0], xs[0] + (grid - xo[0]) * lo_slope, g)
    g = np.where(grid > xo[-1], xs[-1] + (grid - xo[-1]) * hi_slope, g)
    if smooth_vox > 0:
        g = ndimage.gaussian_filter1d(g, smooth_vox, mode="nearest")
    return g[pad:pad + n]


def _axis_maps(a: Anatomy, p: Patient) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nx, ny, nz = a.shape
    dx, dy, dz = a.spacing
    # x: thorax scaled about its centre, then the chest wall (thickness x chest_wall), then the arms as they are
    r, w = a.thorax_half_width, _WALL_MM / dx
    r_out, w_out = r * p.lung_width, w * p.chest_wall
    c = a.thorax_x
    lo_o, hi_o, lo_s, hi_s = c - r_out - w_out, c + r_out + w_out, c - r - w, c + r + w
    gx = _piecewise([lo_o - nx, lo_o, c - r_out, c, c + r_out, hi_o, hi_o + nx],
                    [lo_s - nx, lo_s, c - r, c, c + r, hi_s, hi_s + nx], nx, _SMOOTH_MM / dx)
    # y: antero-posterior depth about the lungs' centre
    cy = a.thorax_y
    gy = cy + (np.arange(ny) - cy) / p.ap_depth
    # z: above the apex unchanged; apex-to-dome scaled and shifted by the diaphragm; the abdomen fills the rest
    top, dome = a.lung_top, a.dome
    dome_out = top - (top - dome) * p.lung_height + p.diaphragm_mm / dz
    dome_out = float(np.clip(dome_out, 0.25 * dome, top - 0.5 * (top - dome)))
    gz = _piecewise([0.0, dome_out, top, nz - 1.0], [0.0, dome, top, nz - 1.0], nz, _SMOOTH_MM / dz)
    return gx, gy, gz


# ---------------------------------------------------------------- local displacement (source space)

def _gauss(q: np.ndarray, c: float, s: float, power: int = 2) -> np.ndarray:
    return np.exp(-0.5 * np.abs((q - c) / s) ** power)


def _bspline_matrix(q: np.ndarray, n_ctrl: int, step: float) -> np.ndarray:
    """Cubic B-spline basis (len(q), n_ctrl) for positions ``q`` (voxels) on knots every ``step`` voxels."""
    t = q / step + 1.0  # control 0 sits one step before the first voxel
    j = np.arange(n_ctrl)
    d = np.abs(t[:, None] - j[None, :])
    return np.where(d < 1, 2 / 3 - d**2 + d**3 / 2, np.where(d < 2, (2 - d) ** 3 / 6, 0.0))


class _Local:
    """The local displacement u(q) as sums of separable terms, evaluable on any axis-aligned grid."""

    def __init__(self, a: Anatomy, p: Patient, scale: float):
        self.a, self.p, self.scale = a, p, scale
        rng = np.random.default_rng([p.seed, 0xDEF0])
        steps = [_CONTROL_MM / s for s in a.spacing]
        self.n_ctrl = [int(np.ceil(n / st)) + 3 for n, st in zip(a.shape, steps)]
        self.steps = steps
        # warp coefficients in mm, drawn so each component's RMS is about warp_mm (B-spline smoothing ~x0.55)
        self.coef = rng.normal(0.0, p.warp_mm / 0.55, size=(3, *self.n_ctrl))

    def terms(self, qx: np.ndarray, qy: np.ndarray, qz: np.ndarray):
        """Yield (component, fx, fy, fz, weight): u[component] += weight * fx[x] fy[y] fz[z] (voxels)."""
        a, p, s = self.a, self.p, self.scale
        sp = np.asarray(a.spacing)
        # heart: scale about the centroid and shift, under a flat-topped window (exp(-r^4/2), 1.2x its half
        # extents: about 0.8 at the heart's border, falling off before the chest wall)
        c, sig = a.heart_center, a.heart_half * 1.2
        g = [_gauss(q, c[k], sig[k], 4) for k, q in enumerate((qx, qy, qz))]
        k_scale = (1.0 / p.heart_scale - 1.0) * s
        shift = np.array([p.heart_shift_x_mm, 0.0, p.heart_shift_z_mm]) / sp * s
        for comp, q in enumerate((qx, qy, qz)):
            f = [g[0], g[1], g[2]]
            f[comp] = (q - c[comp]) * k_scale * g[comp] - shift[comp] * g[comp]
            yield comp, f[0], f[1], f[2]
        # clavicles: rotation in the coronal (x, z) plane about the medial end, in mm
        for side, sign in (("left", 1.0), ("right", -1.0)):
            if side not in a.clavicles:
                continue
            pivot, wc, ws = a.clavicles[side]
            deg = p.clavicle_deg + sign * p.clavicle_asymmetry_deg
            theta = np.radians(deg) * sign * s  # left: counter-clockwise in (x, z) raises the lateral end
            cos, sin = np.cos(-theta), np.sin(-theta)  # backward map: the inverse rotation
            w = [_gauss(q, wc[k], ws[k]) for k, q in enumerate((qx, qy, qz))]
            xm, zm = (qx - pivot[0]) * sp[0], (qz - pivot[2]) * sp[2]
            # ux = ((cos-1) xm - sin zm) W / dx ; uz = (sin xm + (cos-1) zm) W / dz
            yield 0, (cos - 1) * xm * w[0] / sp[0], w[1], w[2]
            yield 0, w[0], w[1], -sin * zm * w[2] / sp[0]
            yield 2, sin * xm * w[0] / sp[2], w[1], w[2]
            yield 2, w[0], w[1], (cos - 1) * zm * w[2] / sp[2]

    def coordinates(self, gx: np.ndarray, gy: np.ndarray, gz: np.ndarray) -> np.ndarray:
        """Source coordinates (3, nx, ny, nz) float32 of the output grid whose separable map is (gx, gy, gz):
        ``g + u(g)``. Every part is a sum of separable terms, so each component is one matrix product
        (nx*ny, K) @ (K, nz): K columns for the B-spline's z basis, the local terms and the axis map."""
        nx, ny, nz = len(gx), len(gy), len(gz)
        mx, my, mz = (_bspline_matrix(q, n, st) for q, n, st in zip((gx, gy, gz), self.n_ctrl, self.steps))
        terms: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[], [], []]
        for comp, fx, fy, fz in self.terms(gx, gy, gz):
            terms[comp].append((fx, fy, fz))
        ones = (np.ones(nx), np.ones(ny), np.ones(nz))
        terms[0].append((gx, ones[1], ones[2]))
        terms[1].append((ones[0], gy, ones[2]))
        terms[2].append((ones[0], ones[1], gz))
        out = np.empty((3, nx, ny, nz), np.float32)
        for comp in range(3):
            c = self.coef[comp] * (self.scale / self.a.spacing[comp])  # (Kx, Ky, Kz), mm -> voxels
            w = np.einsum("xi,ijk,yj->xyk", mx, c, my, optimize=True).reshape(nx * ny, -1)
            left = [w] + [np.outer(fx, fy).reshape(-1, 1) for fx, fy, _ in terms[comp]]
            right = [mz.T] + [fz[None, :] for _, _, fz in terms[comp]]
            np.matmul(np.concatenate(left, axis=1).astype(np.float32),
                      np.concatenate(right, axis=0).astype(np.float32), out=out[comp].reshape(nx * ny, nz))
        return out


def _jacobian_min(coords: np.ndarray, steps: tuple[float, float, float]) -> float:
    grads = [np.gradient(c.astype(np.float64), *steps) for c in coords]  # grads[i][j] = d source_i / d output_j
    (a, b, c), (d, e, f), (g, h, i) = grads
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    return float(det.min())


def patient_coordinates(a: Anatomy, p: Patient, y_range: tuple[int, int] | None = None
                        ) -> tuple[np.ndarray, Patient]:
    """Source coordinates (3, X, Y, Z) float32 in voxels for every output voxel (output rows ``y_range`` of
    the antero-posterior axis only, when given), and the patient with its damping and minimum Jacobian
    filled in. The local field is scaled down until the Jacobian is at least :data:`MIN_JACOBIAN`."""
    gx, gy, gz = _axis_maps(a, p)
    sub = (4, 4, 2)  # Jacobian checked on a coarse grid: the field's scales are >= 12 mm
    for scale in (1.0, 0.7, 0.5, 0.35, 0.25, 0.0):
        local = _Local(a, p, scale)
        jmin = _jacobian_min(local.coordinates(gx[::sub[0]], gy[::sub[1]], gz[::sub[2]]), sub)
        if jmin >= MIN_JACOBIAN:
            break
    else:  # pragma: no cover - the separable part alone is monotone
        raise RuntimeError(f"patient {p.seed}: no invertible deformation (Jacobian {jmin:.3f})")
    p = Patient(**{**asdict(p), "damping": scale, "min_jacobian": round(jmin, 4)})
    if y_range is not None:
        gy = gy[y_range[0]:y_range[1]]
    return local.coordinates(gx, gy, gz), p


def make_patient(base: PhantomVolume, anatomy: Anatomy, patient: Patient) -> tuple[PhantomVolume, Patient]:
    """The patient's volume: ``base`` deformed (attenuation trilinear, bits nearest) and re-densified."""
    # Only output rows (antero-posterior) that can hold body are resampled; the rest is air.
    ny, cy, margin = base.mu.shape[1], anatomy.thorax_y, 16.0
    lo = int(np.floor(cy + (anatomy.body_y[0] - margin - cy) * patient.ap_depth))
    hi = int(np.ceil(cy + (anatomy.body_y[1] + margin - cy) * patient.ap_depth)) + 1
    lo, hi = max(0, lo), min(ny, hi)
    coords, patient = patient_coordinates(anatomy, patient, (lo, hi))
    mu = np.zeros(base.mu.shape, np.float32)
    bits = np.zeros(base.bits.shape, base.bits.dtype)
    mu[:, lo:hi] = ndimage.map_coordinates(base.mu, coords, order=1, mode="nearest", output=np.float32,
                                           prefilter=False)
    bits[:, lo:hi] = ndimage.map_coordinates(base.bits, coords, order=0, mode="nearest", prefilter=False)
    del coords
    lung_bits = np.uint16((1 << STRUCTURE_BITS["lung_left"]) | (1 << STRUCTURE_BITS["lung_right"]))
    aerated = ((bits & lung_bits) != 0) & (mu < 0.6)
    mu[aerated] *= np.float32(patient.lung_density)
    bone = mu > 1.15
    mu[bone] = np.float32(1.15) + (mu[bone] - np.float32(1.15)) * np.float32(patient.bone_density)
    return PhantomVolume(mu=mu, bits=bits, spacing=base.spacing), patient


def add_texture(line: np.ndarray, lung_rays: np.ndarray, patient: Patient, spacing_xz: tuple[float, float]
                ) -> np.ndarray:
    """Add the patient's lung texture to the line integrals (X, Z): correlated noise of ``texture_mm`` RMS and
    ``texture_grain_mm`` correlation length on the rays through lung (softly edged)."""
    if patient.texture_mm <= 0 or not lung_rays.any():
        return line
    rng = np.random.default_rng([patient.seed, 0x7E47])
    sigma = [patient.texture_grain_mm / s for s in spacing_xz]
    noise = ndimage.gaussian_filter(rng.standard_normal(line.shape), sigma)
    noise *= patient.texture_mm / max(noise.std(), 1e-6)
    weight = ndimage.gaussian_filter(lung_rays.astype(np.float32), 1.0)
    return np.maximum(line + (noise * weight).astype(np.float32), 0.0).astype(np.float32)
