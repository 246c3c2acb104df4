"""Phantom studies for the MONAI Label server: the phantom's segmentation images (8-bit PNG) and detection
images (DX DICOM, MONOCHROME1 and 2) side by side in one folder, as a local datastore expects them."""

from __future__ import annotations

import os
import shutil

__all__ = ["write_studies"]


def write_studies(out: str, count: int = 16, size: int = 256, seed: int = 0) -> list[str]:
    """Build (or reuse) the phantom in ``<out>_phantom`` and copy its PNG and DICOM images into ``out``;
    returns the study files. No labels are copied: the studies start unlabelled, as an annotation project does."""
    from cxrfx.data.datalist import read_datalist
    from cxrfx.data.phantom import phantom_sources

    out = os.path.abspath(out)
    # the phantom build sits beside the studies: the datastore would list its images (and masks) too
    sources = phantom_sources(out.rstrip("/") + "_phantom", count=count, size=size, seed=seed)
    os.makedirs(out, exist_ok=True)
    written = []
    for name in ("phantom_seg", "phantom_det"):
        datalist = sources[name]["datalist"]
        base = os.path.dirname(datalist)
        data = read_datalist(datalist)
        for split in ("training", "validation", "test"):
            for item in data.get(split, []):
                dst = os.path.join(out, os.path.basename(item["image"]))
                if not os.path.exists(dst):
                    shutil.copy2(os.path.join(base, item["image"]), dst)
                written.append(dst)
    return written
