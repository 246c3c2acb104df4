"""Synthetic phantom patients: the deformation (masks follow the volume, invertible, seeded) and SCR masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cxrfx.data.datalist import read_datalist
from cxrfx.data.phantom import LABELS, PhantomRenderer, generate_phantom
from cxrfx.data.phantom.patient import MIN_JACOBIAN, make_patient, sample_patient
from cxrfx.data.phantom.render import CARDIOMEGALY_CTR
from cxrfx.data.phantom.volume import FIRST_FREE_BIT, PhantomVolume

SIZE = 64


@pytest.fixture(scope="module")
def renderer():
    return PhantomRenderer(SIZE)


def _dice(a, b):
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


def test_masks_follow_the_volume(renderer):
    """A dense marker block owning a bit: after the deformation its attenuation and its bit are in one place."""
    base = renderer.volume
    mu, bits = base.mu.copy(), base.bits.copy()
    cx, cy, cz = (int(c) for c in renderer.anatomy.heart_center)
    block = (slice(cx - 4, cx + 4), slice(cy - 4, cy + 4), slice(cz - 3, cz + 3))
    mu[block] = 5.0
    bits[block] |= np.uint16(1 << FIRST_FREE_BIT)
    marked = PhantomVolume(mu, bits, base.spacing)
    for seed in (1, 2):
        vol, patient = make_patient(marked, renderer.anatomy, sample_patient(seed))
        bit = (vol.bits & np.uint16(1 << FIRST_FREE_BIT)) != 0
        near = ndimage.binary_dilation(bit, iterations=4)  # (bone elsewhere can be as dense as the marker)
        dense = (vol.mu > 3.0) & near  # halfway between marker and tissue: where nearest and trilinear agree
        assert bit.sum() > 50 and _dice(bit, dense) > 0.7, seed
        # exact up to the one-voxel difference between nearest and trilinear sampling
        assert not (bit & ~ndimage.binary_dilation(dense, np.ones((3, 3, 3)))).any() and not (dense & ~ndimage.binary_dilation(bit, np.ones((3, 3, 3)))).any()
        assert np.abs(np.argwhere(bit).mean(axis=0) - np.argwhere(dense).mean(axis=0)).max() < 0.5
        # the organs keep their labels on their tissue: aerated lung is air-like, the heart soft tissue
        lung = vol.structure("lung_left") & ~bit
        assert np.median(vol.mu[lung]) < 0.5
        heart = vol.structure("heart") & ~bit
        assert 0.8 < np.median(vol.mu[heart]) < 1.3


def test_same_seed_same_patient(renderer):
    a, b = sample_patient(11), sample_patient(11)
    assert a == b
    va, pa = make_patient(renderer.volume, renderer.anatomy, a)
    vb, pb = make_patient(renderer.volume, renderer.anatomy, b)
    assert pa == pb and np.array_equal(va.mu, vb.mu) and np.array_equal(va.bits, vb.bits)
    s1 = renderer.render(np.random.default_rng([5, 2, 0]))
    s2 = renderer.render(np.random.default_rng([5, 2, 0]))
    assert s1.patient == s2.patient and np.array_equal(s1.image, s2.image)
    assert all(np.array_equal(s1.masks[k], s2.masks[k]) for k in s1.masks)


def test_different_seeds_different_anatomy(renderer):
    patients = [sample_patient(s) for s in range(4)]
    assert len({p.lung_width for p in patients}) == 4
    lungs = []
    for p in patients:
        vol, p = make_patient(renderer.volume, renderer.anatomy, p)
        assert p.min_jacobian >= MIN_JACOBIAN  # invertible: the map never folds
        lungs.append(vol.structure("lung_left"))
    sizes = [m.sum() for m in lungs]
    assert max(sizes) > 1.1 * min(sizes)
    assert max(_dice(a, b) for i, a in enumerate(lungs) for b in lungs[i + 1:]) < 0.97


def test_scr_lung_fields_exclude_the_heart(renderer):
    rng_seed = [0, 2, 3]
    scr = renderer.render(np.random.default_rng(rng_seed))
    renderer.annotation = "projection"
    try:
        full = renderer.render(np.random.default_rng(rng_seed))
    finally:
        renderer.annotation = "scr"
    assert np.array_equal(scr.image, full.image)
    for side in ("left", "right"):
        lung, heart = scr.masks[f"lung_{side}"], scr.masks["heart"]
        assert lung.sum() > 20 and not (lung & heart).any()
        assert (lung & ~full.masks[f"lung_{side}"]).sum() == 0  # a subset of the projection
        assert not (scr.masks[f"clavicle_{side}"] & ~full.masks[f"clavicle_{side}"]).any()
    both = full.masks["lung_left"] | full.masks["lung_right"]
    assert (both & full.masks["heart"]).sum() > 0.5 * full.masks["heart"].sum()
    assert np.array_equal(scr.masks["heart"], full.masks["heart"])


def test_cardiomegaly_is_the_cardiothoracic_ratio(renderer):
    seen = set()
    for i in range(8):
        s = renderer.render(np.random.default_rng([1, 2, i]))
        enlarged = bool(s.label[LABELS.index("cardiomegaly")])
        assert enlarged == (s.ctr > CARDIOMEGALY_CTR), (i, s.ctr)
        assert 0.25 < s.ctr < 0.8
        seen.add(round(s.ctr, 2))
    assert len(seen) > 3  # heart size varies between patients


def test_patient_ids_disjoint_across_splits_and_seeds(tmp_path):
    ids = {}
    for seed in (0, 1):
        out = tmp_path / f"s{seed}"
        generate_phantom(str(out), count=4, size=SIZE, seed=seed, datasets=("phantom_cls",), verbose=False)
        data = read_datalist(out / "phantom_cls" / "datalist.json")
        assert "SCR" in data["description"] and "synthetic patient" in data["description"]
        split_ids = {s: {it["patient_id"] for it in data[s]} for s in ("training", "validation", "test")}
        assert sum(len(v) for v in split_ids.values()) == 4  # one patient per image
        assert not (split_ids["training"] & split_ids["test"]) and not (split_ids["training"] & split_ids["validation"])
        ids[seed] = set().union(*split_ids.values())
        item = data["training"][0]
        assert {"patient", "cardiothoracic_ratio"} <= set(item["meta"])
    assert not (ids[0] & ids[1])
