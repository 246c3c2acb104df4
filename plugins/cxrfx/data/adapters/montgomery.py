"""NLM Montgomery County chest X-ray set (tuberculosis) with manual left/right lung masks -> datalist.

Layout (NLM release; ``--root`` may be ``MontgomerySet`` or a folder up to three levels above it)::

    MontgomerySet/CXR_png/MCUCXR_0001_0.png                138 images, suffix _0 normal (80), _1 TB (58);
                                                          16-bit PNGs holding 12-bit values (0..4095)
    MontgomerySet/ManualMask/leftMask/MCUCXR_0001_0.png    manual lung masks, same size as the image
    MontgomerySet/ManualMask/rightMask/MCUCXR_0001_0.png
    MontgomerySet/ClinicalReadings/MCUCXR_0001_0.txt       optional: "Patient's Sex: M", "Patient's Age: 044Y",
                                                          then the reading

Tasks: classification ``Tuberculosis`` (file-name suffix); segmentation ``lung_left`` / ``lung_right``.

Which lung is which: the class names follow the anatomical (radiological) convention, ``lung_left`` = the
patient's left lung, which a PA film shows on the viewer's right. Whether the release's ``leftMask`` folder
holds the patient's left lung or the lung on the viewer's left is not documented with the data, so the option
``left_mask`` decides: ``"patient"`` (leftMask -> lung_left), ``"viewer"`` (leftMask -> lung_right) or ``"auto"``
(default): the masks themselves decide by majority over the images: a ``leftMask`` whose centroid lies to the
viewer's right of the ``rightMask`` centroid is the patient's left (a tie or no masks falls back to
``"patient"``). The choice and its vote are written into the task description; images whose own masks
contradict it get ``meta["lung_sides_contradict"] = True`` (a flipped film or a mask mix-up).

Each item's meta records ``bits_stored`` (12 for the 16-bit PNGs, 8 for 8-bit copies) so that intensities are
normalised by 4095 (``load_cxr(path, bits_stored=12)``), never by 65535 or 255. No official split: one image
per patient, ``split="official"`` falls back to the random patient split. No view metadata: ``views`` is
refused. Leakage: TBX11K contains the Montgomery images.

:func:`side_vote` / :func:`resolve_sides` are reused by the JSRT (SCR masks) and CheXmask adapters.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from cxrfx.data.adapters import common, register
from cxrfx.data.adapters.base import AdapterInfo, DatasetAdapter
from cxrfx.data.adapters.common import check_options, refuse_views
from cxrfx.data.adapters.shenzhen import (find_dir, has_files, image_header, nlm_name, parse_clinical_reading,
                                          read_binary_mask, read_text, warn_skipped)
from cxrfx.errors import ConfigError, DatasetLayoutError

__all__ = ["MontgomeryAdapter", "side_vote", "resolve_sides", "SIDE_CONVENTIONS"]

LABELS = ["Tuberculosis"]
SIDE_CONVENTIONS = ("auto", "patient", "viewer")


# ------------------------------------------------------------------------------------ left / right helpers


def _centroid_column(mask: np.ndarray) -> float | None:
    cols = np.asarray(mask, dtype=bool).sum(axis=0)
    total = cols.sum()
    return float((cols * np.arange(cols.size)).sum() / total) if total else None


def side_vote(named_left: np.ndarray, named_right: np.ndarray) -> int:
    """+1 when the mask named "left" lies to the viewer's right of the one named "right" (names = the patient's
    sides, as on a PA/AP film displayed normally), -1 when it lies to the viewer's left, 0 when undecidable."""
    a, b = _centroid_column(named_left), _centroid_column(named_right)
    if a is None or b is None or a == b:
        return 0
    return 1 if a > b else -1


def resolve_sides(option: str, votes: Sequence[int], what: str) -> tuple[str, str]:
    """The convention to use (``"patient"``: a structure named left is the patient's left; ``"viewer"``: it is
    the viewer's left) for ``option`` in :data:`SIDE_CONVENTIONS`, and a sentence saying why."""
    if option not in SIDE_CONVENTIONS:
        raise ConfigError(f"{what}: side convention must be one of {SIDE_CONVENTIONS}, got {option!r}")
    n_patient = sum(1 for v in votes if v > 0)
    n_viewer = sum(1 for v in votes if v < 0)
    tally = f"{n_patient} image(s) show it on the viewer's right, {n_viewer} on the viewer's left"
    if option != "auto":
        return option, f"{what} taken as the {option}'s left by option ({tally})"
    if n_viewer > n_patient:
        return "viewer", f"{what} found to be the viewer's left = the patient's right ({tally})"
    if n_patient > n_viewer:
        return "patient", f"{what} found to be the patient's left ({tally})"
    return "patient", f"{what} assumed to be the patient's left: the masks could not tell ({tally})"


# ------------------------------------------------------------------------------------------------ adapter

_SIDE_DIRS = {"left": ("leftMask", "left_mask", "left", "leftmasks"),
              "right": ("rightMask", "right_mask", "right", "rightmasks")}


@register
class MontgomeryAdapter(DatasetAdapter):
    info = AdapterInfo(
        name="montgomery",
        tasks=("classification", "segmentation"),
        source="NLM Tuberculosis Chest X-ray Image Data Sets (lhncbc.nlm.nih.gov, 'Montgomery County CXR Set', "
               "NLM-MontgomeryCXRSet.zip)",
        license="NLM public release (cite Jaeger et al. 2014 and Candemir et al. 2014)",
        description="138 CXRs (80 normal / 58 TB) from Montgomery County, Maryland; TB label from the file-name "
                    "suffix; manual left/right lung masks (12-bit values in 16-bit PNGs); no official split: "
                    "split=official falls back to the random patient split; TBX11K contains these images (leakage)",
        official_split=False,
        views=False,
    )

    def build(self, root: str, out_dir: str, split: str = "official", seed: int = 0,
              views: list[str] | None = None, **options: Any) -> dict:
        check_options(self.info.name, options, ["left_mask"])
        refuse_views(self.info.name, views)
        left_option = str(options.get("left_mask", "auto"))
        if left_option not in SIDE_CONVENTIONS:
            raise ConfigError(f"montgomery: left_mask must be one of {SIDE_CONVENTIONS}, got {left_option!r}")
        image_dir = find_dir(root, ["CXR_png"], accept=lambda d: has_files(d, "MCUCXR_"))
        if image_dir is None:
            raise DatasetLayoutError(f"{os.path.join(root, 'CXR_png')}: expected folder not found (Montgomery images "
                                     "MCUCXR_XXXX_{0,1}.png); is --root the unpacked MontgomerySet folder?")
        base = os.path.dirname(image_dir)
        readings_dir = find_dir(base, ["ClinicalReadings"], depth=0) or find_dir(root, ["ClinicalReadings"])
        manual = find_dir(base, ["ManualMask"], depth=0) or find_dir(root, ["ManualMask"])
        side_dirs = {}
        if manual:
            for side, names in _SIDE_DIRS.items():
                side_dirs[side] = find_dir(manual, names, depth=0)
                if side_dirs[side] is None:
                    raise DatasetLayoutError(f"{os.path.join(manual, names[0])}: expected folder not found "
                                             f"({side} lung masks)")
        mask_out = os.path.join(out_dir, "montgomery_masks")
        items, skipped, votes, unmasked = [], [], [], []
        for name in sorted(os.listdir(image_dir)):
            if not name.lower().endswith(".png"):
                continue
            parsed = nlm_name(name, "MCUCXR")
            if parsed is None:
                skipped.append(name)
                continue
            stem, patient, tb = parsed
            path = os.path.join(image_dir, name)
            header = image_header(path)
            meta: dict[str, Any] = {"source_id": stem, "size": [header["height"], header["width"]],
                                    "bits_stored": 12 if header["mode"].startswith("I") else 8}
            reading = os.path.join(readings_dir, stem + ".txt") if readings_dir else None
            if reading and os.path.isfile(reading):
                meta.update(parse_clinical_reading(read_text(reading)))
            item: dict[str, Any] = {"id": stem, "image": common.rel(path, out_dir), "patient_id": patient,
                                    "label": [tb], "meta": meta}
            if side_dirs:
                files = {side: _find_mask(folder, stem) for side, folder in side_dirs.items()}
                if all(files.values()):
                    size = (header["height"], header["width"])
                    masks = {}
                    for side, file in files.items():
                        masks[side], resized_from = read_binary_mask(file, size)
                        if resized_from:
                            meta.setdefault("mask_resized_from", {})[side] = list(resized_from)
                    vote = side_vote(masks["left"], masks["right"])
                    votes.append(vote)
                    item["_vote"] = vote
                    item["mask"] = {}
                    for side, mask in masks.items():
                        if mask.any():  # written under the source folder's name, renamed once sides are known
                            out = common.write_mask(os.path.join(mask_out, f"{stem}_{side}Mask.png"), mask)
                            item["mask"][side] = out
                else:
                    unmasked.append(stem)
            items.append(item)
        warn_skipped(self.info.name, skipped, image_dir, "name is not MCUCXR_<number>_<0|1>.png")
        if unmasked:
            warnings.warn(f"montgomery: {len(unmasked)} image(s) lack a leftMask or rightMask file and carry no "
                          f"mask: {', '.join(unmasked[:3])}{', ...' if len(unmasked) > 3 else ''}", stacklevel=2)
        if not items:
            raise DatasetLayoutError(f"{image_dir}: no MCUCXR_<number>_<0|1>.png images found")
        convention, note = resolve_sides(left_option, votes, "ManualMask/leftMask")
        target = {"left": "lung_left", "right": "lung_right"} if convention == "patient" else \
            {"left": "lung_right", "right": "lung_left"}
        for item in items:
            vote = item.pop("_vote", None)
            if vote and (vote > 0) != (convention == "patient"):
                item["meta"]["lung_sides_contradict"] = True
            if "mask" in item:
                renamed = {}
                for side, path in item.pop("mask").items():
                    cls = target[side]
                    final = os.path.join(mask_out, f"{item['id']}_{cls}.png")
                    os.replace(path, final)
                    renamed[cls] = common.rel(final, out_dir)
                item["mask"] = dict(sorted(renamed.items()))
        tasks: dict[str, Any] = {"classification": {
            "labels": LABELS, "description": "from the file-name suffix: _1 tuberculosis, _0 normal"}}
        if side_dirs:
            tasks["segmentation"] = {
                "classes": ["lung_left", "lung_right"], "mask_format": "per_class",
                "description": "lung_left = the patient's left lung (viewer's right on a PA film); " + note}
        splits = common.assign_splits(items, seed)
        return common.datalist(self.info.name, tasks, splits, self.info.description, self.info.license,
                               self.info.source)


def _find_mask(folder: str, stem: str) -> str | None:
    for name in (f"{stem}.png", f"{stem}_mask.png", f"{stem}.PNG", f"{stem}.gif"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None
