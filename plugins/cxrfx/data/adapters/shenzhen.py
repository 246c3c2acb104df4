"""NLM Shenzhen Hospital chest X-ray set (tuberculosis): PNG images named by their TB label -> datalist.

Layout (NLM release ``ChinaSet_AllFiles``; ``--root`` may be that folder or any folder up to three levels above
it, e.g. the Kaggle copy ``ChinaSet_AllFiles/ChinaSet_AllFiles``)::

    CXR_png/CHNCXR_0001_0.png            662 images, suffix _0 normal, _1 tuberculosis
    ClinicalReadings/CHNCXR_0001_0.txt   optional: "male 35yrs" then the reading ("normal", "PTB in the ...")

Lung masks are third-party (Stirenko et al. 2018, Kaggle ``yoctoman/shcxr-lung-mask``, about 566 images): a folder
``mask/`` (also ``masks/``, ``lung_masks/``, ``Mask/``) anywhere up to three levels below ``--root``, or given with
the option ``masks=DIR``, holding ``CHNCXR_0001_0_mask.png`` (``CHNCXR_0001_0.png`` is accepted too). Masks are
binarised at half their maximum and written as 8-bit PNGs; a mask whose size differs from its image is resized
to the image (nearest) and flagged in ``meta["mask_resized_from"]``. Images without a mask file carry no ``mask``
key (not annotated for segmentation).

Tasks: classification ``Tuberculosis`` (from the file-name suffix); segmentation ``lungs`` when masks exist.
There is no official split and one image per patient (the 4-digit number): ``split="official"`` falls back to
the random patient split. The set has no view metadata (mostly PA, some paediatric AP): ``views`` is refused.
Leakage: TBX11K contains the Shenzhen (and Montgomery) images.

This module also holds the helpers the Montgomery adapter reuses (folder search, clinical readings, masks).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from cxrfx.data.adapters import common, register
from cxrfx.data.adapters.base import AdapterInfo, DatasetAdapter
from cxrfx.data.adapters.common import check_options, refuse_views
from cxrfx.errors import DatasetLayoutError

__all__ = ["ShenzhenAdapter", "find_dir", "parse_clinical_reading", "read_binary_mask", "image_header",
           "nlm_name"]

LABELS = ["Tuberculosis"]
_MASK_DIR_NAMES = ("mask", "masks", "lung_masks", "lungmasks", "lung masks", "lung_mask")


# ------------------------------------------------------------------------------------------ shared helpers






def find_dir(root: str, names: Sequence[str], depth: int = 3,
             accept: Callable[[str], bool] | None = None) -> str | None:
    """The first folder named one of ``names`` (case-insensitive) among the sub-folders of ``root`` down to
    ``depth`` levels below them, breadth first (sorted); with ``accept``, only folders it accepts count."""
    wanted = {n.lower() for n in names}
    level = [root]
    for _ in range(depth + 1):
        nxt = []
        for folder in level:
            try:
                entries = sorted((e for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")),
                                 key=lambda e: e.name)
            except OSError:
                continue
            for e in entries:
                if e.name.lower() in wanted and (accept is None or accept(e.path)):
                    return e.path
            nxt.extend(e.path for e in entries)
        level = nxt
    return None


def has_files(folder: str, prefix: str) -> bool:
    """Whether ``folder`` holds a file whose name starts with ``prefix`` (case-insensitive)."""
    try:
        return any(n.upper().startswith(prefix.upper()) for n in os.listdir(folder))
    except OSError:
        return False


def nlm_name(filename: str, prefix: str) -> tuple[str, str, int] | None:
    """``CHNCXR_0001_0.png`` -> (stem, patient id, TB label) for ``prefix="CHNCXR"``; None if the name differs."""
    m = re.fullmatch(rf"({prefix}_(\d+))_([01])\.png", filename, flags=re.IGNORECASE)
    if not m:
        return None
    return filename[: -len(".png")], m.group(1).upper(), int(m.group(3))


_SEX = {"m": "M", "male": "M", "f": "F", "female": "F"}


def parse_clinical_reading(text: str) -> dict[str, Any]:
    """Sex, age and the reading of an NLM ``ClinicalReadings`` file, tolerant of both known styles.

    Shenzhen: ``male 35yrs`` / ``female  24 yrs`` (also ``18month``) on the first line, the reading below.
    Montgomery: ``Patient's Sex: M`` / ``Patient's Age: 044Y`` lines, the reading below.
    Returns ``{"sex": "M"|"F", "age": years (int, or float for months/days), "finding": str}`` with only the
    parts found; unparsed demographic text stays in ``finding``.
    """
    out: dict[str, Any] = {}
    findings = []
    for raw in text.replace("\r", "\n").split("\n"):
        line = raw.strip()
        if not line:
            continue
        low = line.lower()
        m_sex = re.search(r"sex\s*:\s*([a-z]+)", low)
        m_age = re.search(r"age\s*:\s*0*(\d+(?:\.\d+)?)\s*([ymdw])?", low)
        if m_sex or m_age:
            if m_sex and m_sex.group(1) in _SEX:
                out["sex"] = _SEX[m_sex.group(1)]
            if m_age:
                out["age"] = _age(m_age.group(1), m_age.group(2) or "y")
            continue
        if "sex" not in out and not findings:  # Shenzhen style first line: "male 35yrs"
            m_s = re.search(r"\b(female|male)\b", low)
            m_a = re.search(r"(\d+(?:\.\d+)?)\s*(yrs?|years?|y|months?|mons?|m|days?|d)\b", low)
            if m_s:
                out["sex"] = _SEX[m_s.group(1)]
                if m_a:
                    out["age"] = _age(m_a.group(1), m_a.group(2)[0])
                continue
        findings.append(line)
    if findings:
        out["finding"] = " ".join(findings)
    return out


def _age(value: str, unit: str) -> int | float:
    v = float(value)
    if unit == "m":
        v /= 12
    elif unit == "w":
        v /= 52
    elif unit == "d":
        v /= 365
    return int(v) if unit == "y" and v == int(v) else round(v, 2)


def read_text(path: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return ""


def image_header(path: str) -> dict[str, Any]:
    """Size and PIL mode of an image, read from its header (no pixel decoding)."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            mode = img.mode
    except Exception as exc:  # PIL raises several kinds for broken files
        raise DatasetLayoutError(f"{path}: cannot read the image header ({type(exc).__name__}: {exc})") from None
    return {"height": int(height), "width": int(width), "mode": mode}


def read_binary_mask(path: str, size: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int] | None]:
    """A mask file as (H, W) bool, thresholded at half its maximum (0/1, 0/255 and anti-aliased masks alike).

    With ``size`` = (H, W), a mask of another size is resized to it (nearest); the original size is returned
    as the second value in that case, else None.
    """
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
                img = img.convert("L")
            arr = np.array(img)
    except Exception as exc:
        raise DatasetLayoutError(f"{path}: cannot read the mask ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 2:
        raise DatasetLayoutError(f"{path}: mask decoded to shape {arr.shape}, expected one channel")
    peak = float(arr.max()) if arr.size else 0.0
    mask = arr > (peak / 2 if peak > 1 else 0)
    resized_from = None
    if size is not None and mask.shape != tuple(size):
        resized_from = (int(mask.shape[0]), int(mask.shape[1]))
        pil = Image.fromarray(mask.astype(np.uint8) * 255).resize((size[1], size[0]), Image.NEAREST)
        mask = np.array(pil) > 127
    return mask, resized_from


def index_masks(folder: str) -> dict[str, str]:
    """Mask files of a folder by image stem (upper case): ``X_mask.png`` and ``X.png`` both give ``X``."""
    out: dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        low = name.lower()
        if not low.endswith((".png", ".gif", ".bmp", ".tif", ".tiff")):
            continue
        stem = os.path.splitext(name)[0]
        if stem.lower().endswith("_mask"):
            stem = stem[: -len("_mask")]
        out.setdefault(stem.upper(), os.path.join(folder, name))
    return out


def warn_skipped(name: str, skipped: list[str], folder: str, why: str) -> None:
    if skipped:
        examples = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        warnings.warn(f"{name}: {len(skipped)} file(s) in {folder} skipped ({why}): {examples}", stacklevel=3)


# ------------------------------------------------------------------------------------------------ adapter


@register
class ShenzhenAdapter(DatasetAdapter):
    info = AdapterInfo(
        name="shenzhen",
        tasks=("classification", "segmentation"),
        source="NLM Tuberculosis Chest X-ray Image Data Sets (lhncbc.nlm.nih.gov, 'Shenzhen Hospital CXR Set', "
               "ChinaSet_AllFiles); lung masks from Kaggle yoctoman/shcxr-lung-mask (third-party)",
        license="NLM public release (cite Jaeger et al. 2014); Kaggle lung masks CC BY-NC-SA 4.0",
        description="662 CXRs (326 normal / 336 TB) from Shenzhen No.3 Hospital, TB label from the file-name suffix;"
                    " optional third-party lung masks; no official split: split=official falls back to the random "
                    "patient split (one image per patient); TBX11K contains these images (leakage)",
        official_split=False,
        views=False,
    )

    def build(self, root: str, out_dir: str, split: str = "official", seed: int = 0,
              views: list[str] | None = None, **options: Any) -> dict:
        check_options(self.info.name, options, ["masks"])
        refuse_views(self.info.name, views)
        image_dir = find_dir(root, ["CXR_png"], accept=lambda d: has_files(d, "CHNCXR_"))
        if image_dir is None:
            raise DatasetLayoutError(f"{os.path.join(root, 'CXR_png')}: expected folder not found (Shenzhen images "
                                     "CHNCXR_XXXX_{0,1}.png); is --root the unpacked ChinaSet_AllFiles folder?")
        base = os.path.dirname(image_dir)
        readings_dir = os.path.join(base, "ClinicalReadings")
        readings_dir = readings_dir if os.path.isdir(readings_dir) else find_dir(root, ["ClinicalReadings"])
        masks_dir = self._masks_dir(root, options.get("masks"))
        masks = index_masks(masks_dir) if masks_dir else {}
        mask_out = os.path.join(out_dir, "shenzhen_masks")
        items, skipped, used_masks = [], [], set()
        for name in sorted(os.listdir(image_dir)):
            if not name.lower().endswith(".png"):
                continue
            parsed = nlm_name(name, "CHNCXR")
            if parsed is None:
                skipped.append(name)
                continue
            stem, patient, tb = parsed
            path = os.path.join(image_dir, name)
            meta: dict[str, Any] = {"source_id": stem}
            reading = os.path.join(readings_dir, stem + ".txt") if readings_dir else None
            if reading and os.path.isfile(reading):
                meta.update(parse_clinical_reading(read_text(reading)))
            item: dict[str, Any] = {"id": stem, "image": common.rel(path, out_dir), "patient_id": patient,
                                    "label": [tb], "meta": meta}
            mask_path = masks.get(stem.upper())
            if mask_path:
                used_masks.add(stem.upper())
                header = image_header(path)
                meta["size"] = [header["height"], header["width"]]
                mask, resized_from = read_binary_mask(mask_path, (header["height"], header["width"]))
                if resized_from:
                    meta["mask_resized_from"] = list(resized_from)
                meta["mask_source"] = os.path.basename(mask_path)
                item["mask"] = {}
                if mask.any():
                    out = common.write_mask(os.path.join(mask_out, f"{stem}_lungs.png"), mask)
                    item["mask"]["lungs"] = common.rel(out, out_dir)
            items.append(item)
        warn_skipped(self.info.name, skipped, image_dir, "name is not CHNCXR_<number>_<0|1>.png")
        if not items:
            raise DatasetLayoutError(f"{image_dir}: no CHNCXR_<number>_<0|1>.png images found")
        if masks_dir and not used_masks:
            raise DatasetLayoutError(f"{masks_dir}: no mask file matches an image (expected CHNCXR_0001_0_mask.png)")
        warn_skipped(self.info.name, sorted(set(masks) - used_masks), masks_dir or "", "mask without an image")
        tasks: dict[str, Any] = {"classification": {
            "labels": LABELS, "description": "from the file-name suffix: _1 tuberculosis, _0 normal"}}
        if masks_dir:
            tasks["segmentation"] = {"classes": ["lungs"], "mask_format": "per_class",
                                     "description": "both lungs in one mask (third-party, Stirenko et al. 2018)"}
        splits = common.assign_splits(items, seed)
        return common.datalist(self.info.name, tasks, splits, self.info.description, self.info.license,
                               self.info.source)

    @staticmethod
    def _masks_dir(root: str, option: str | None) -> str | None:
        if option:
            folder = option if os.path.isabs(option) else os.path.join(root, str(option))
            folder = common.require_dir(folder, what="Shenzhen lung masks (option masks)")
        else:
            folder = find_dir(root, _MASK_DIR_NAMES)
        # the Kaggle archive nests its masks one level deeper (mask/mask/*.png)
        while folder and not index_masks(folder):
            inner = find_dir(folder, _MASK_DIR_NAMES, depth=0)
            if inner is None:
                break
            folder = inner
        return folder
