"""JSRT (Japanese Society of Radiological Technology) nodule database, optionally with the SCR masks -> datalist.

Layout (JSRT release; the folders may sit anywhere up to three levels below ``--root``)::

    All247images/JPCLN001.IMG ... JPCLN154.IMG   154 images with a nodule
    All247images/JPCNN001.IMG ... JPCNN093.IMG   93 without (also accepted: Nodule154images/, NonNodule93images/)
    CLNDAT_EN.txt                                 one record per nodule image (required)
    CNNDAT_EN.txt                                 one record per non-nodule image (optional)

Images are raw 2048 x 2048 big-endian 12-bit values without header (exactly 8,388,608 bytes; checked by size),
0.175 mm pixels, all PA. ``CLNDAT_EN.txt`` records are tab-separated without header: file name, subtlety (1-5),
nodule size (mm), age, sex, x, y (nodule centre, pixels of the 2048 image, x = column), malignant/benign,
location, diagnosis. Records are located by their file name, so records run together on one line (seen in
circulating copies) still parse; without tabs the fields are split on white space (location and diagnosis then
share the rest of the line). ``CNNDAT_EN.txt``: file name, age, sex, ``non-nodule``.

Tasks: classification ``nodule`` (JPCLN -> 1, JPCNN -> 0; malignancy, subtlety, size, age, sex, location and
diagnosis in meta); detection, class ``nodule``: a square box of side size_mm / 0.175 centred on (x, y), clipped
to the image (non-nodule images: no boxes).

Option ``scr_root=DIR`` adds the SCR database masks (van Ginneken et al. 2006): GIFs at 1024 x 1024 in
per-structure folders below ``fold1`` and ``fold2`` (``scratch/fold1/masks/left lung/JPCLN001.gif``; the folders
``left lung``, ``right lung``, ``heart``, ``left clavicle``, ``right clavicle`` are matched ignoring case, spaces,
``_`` and ``-``; ``masks/`` is optional). Segmentation classes ``lung_left``, ``lung_right``, ``heart``,
``clavicle_left``, ``clavicle_right`` (only the structures found). The masks are written **upsampled to the
stored image size (2048 x 2048, nearest neighbour)** so that they align with the images without any resizing
downstream; ``meta["mask_upsampled_from"]`` records the SCR size. Left/right follow the patient (the left lung
lies on the viewer's right of a PA film); option ``left_side`` (``auto`` (default) / ``patient`` / ``viewer``)
decides what SCR's "left" folders hold, ``auto`` voting with the lung masks (see :mod:`.montgomery`); the
clavicles follow the lungs' convention.

Splits: JSRT has no official split; with SCR masks, ``split="official"`` uses the SCR two-fold split: fold1 ->
training, of which ``val_fraction`` (default 0.15) of the patients are carved out (seeded) as validation, and
fold2 -> test. Without SCR, ``split="official"`` falls back to the random patient split (one image per patient).
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any

from cxrfx.data.adapters import common, register
from cxrfx.data.adapters.base import AdapterInfo, DatasetAdapter
from cxrfx.data.adapters.montgomery import SIDE_CONVENTIONS, resolve_sides, side_vote
from cxrfx.data.adapters.common import check_options
from cxrfx.data.adapters.shenzhen import index_masks, read_binary_mask, read_text
from cxrfx.errors import ConfigError, DatasetLayoutError

__all__ = ["JSRTAdapter", "parse_clndat", "parse_cnndat", "nodule_box"]

SIZE = 2048
SPACING_MM = 0.175
NBYTES = SIZE * SIZE * 2
_IMG = re.compile(r"JPC(LN|NN)\d{3}\.IMG", re.IGNORECASE)
_SCR_STRUCTURES = {"leftlung": "lung_left", "lungleft": "lung_left", "rightlung": "lung_right",
                   "lungright": "lung_right", "heart": "heart", "leftclavicle": "clavicle_left",
                   "clavicleleft": "clavicle_left", "rightclavicle": "clavicle_right",
                   "clavicleright": "clavicle_right"}
SCR_CLASSES = ["lung_left", "lung_right", "heart", "clavicle_left", "clavicle_right"]
_MIRROR = {"lung_left": "lung_right", "lung_right": "lung_left", "clavicle_left": "clavicle_right",
           "clavicle_right": "clavicle_left", "heart": "heart"}


# -------------------------------------------------------------------------------------------- clinical data


def _records(path: str, prefix: str) -> list[tuple[int, str, str]]:
    """(line, image stem, rest of the record) for each record of a JSRT clinical file, found by file name."""
    text = read_text(path).replace("\r\n", "\n").replace("\r", "\n")
    matches = list(re.finditer(rf"{prefix}\d{{3}}(?:\.IMG)?", text, flags=re.IGNORECASE))
    out = []
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        line = text.count("\n", 0, m.start()) + 1
        out.append((line, m.group(0).upper().split(".")[0], text[m.end():end]))
    return out


def _fields(rest: str, n_fixed: int) -> list[str]:
    rest = rest.strip("\n")
    if "\t" in rest:
        return [f.strip() for f in rest.strip().split("\t")]
    tokens = rest.split()
    return tokens[:n_fixed] + ([" ".join(tokens[n_fixed:])] if len(tokens) > n_fixed else [])


def _age(value: str) -> int | None:
    m = re.fullmatch(r"0*(\d+)\s*[yY]?", value.strip())
    return int(m.group(1)) if m else None


def _sex(value: str) -> str | None:
    v = value.strip().lower()
    return "F" if v.startswith("f") else "M" if v.startswith("m") else None


def parse_clndat(path: str) -> dict[str, dict[str, Any]]:
    """``CLNDAT_EN.txt`` -> {stem: {subtlety, size_mm, age, sex, x, y, malignancy, location, diagnosis}}."""
    out: dict[str, dict[str, Any]] = {}
    for line, stem, rest in _records(path, "JPCLN"):
        fields = _fields(rest, 8)
        if len(fields) < 6:
            raise common.row_error(path, line, f"{stem}: {len(fields)} fields, expected subtlety, size, age, sex, "
                                               "x, y, malignancy, ...")
        try:
            rec: dict[str, Any] = {"subtlety": int(fields[0]), "size_mm": float(fields[1]),
                                   "x": float(fields[4]), "y": float(fields[5])}
        except ValueError:
            raise common.row_error(path, line, f"{stem}: subtlety / size / x / y are not numbers: "
                                               f"{fields[0]!r} {fields[1]!r} {fields[4]!r} {fields[5]!r}") from None
        if rec["size_mm"] < 0 or not (0 <= rec["x"] <= SIZE and 0 <= rec["y"] <= SIZE):
            raise common.row_error(path, line, f"{stem}: size {rec['size_mm']} mm or centre ({rec['x']}, {rec['y']}) "
                                               f"outside the {SIZE} x {SIZE} image")
        age, sex = _age(fields[2]), _sex(fields[3])
        if age is not None:
            rec["age"] = age
        if sex:
            rec["sex"] = sex
        for key, idx in (("malignancy", 6), ("location", 7), ("diagnosis", 8)):
            if len(fields) > idx and fields[idx]:
                rec[key] = fields[idx].lower() if key == "malignancy" else fields[idx]
        if stem in out:
            raise common.row_error(path, line, f"{stem} has a second record")
        out[stem] = rec
    return out


def parse_cnndat(path: str) -> dict[str, dict[str, Any]]:
    """``CNNDAT_EN.txt`` -> {stem: {age, sex}} (tolerant: unparsable values are left out)."""
    out = {}
    for _, stem, rest in _records(path, "JPCNN"):
        fields = _fields(rest, 2)
        rec: dict[str, Any] = {}
        if fields and _age(fields[0]) is not None:
            rec["age"] = _age(fields[0])
        if len(fields) > 1 and _sex(fields[1]):
            rec["sex"] = _sex(fields[1])
        out[stem] = rec
    return out


def nodule_box(x: float, y: float, size_mm: float) -> list[float] | None:
    """Square ``[x1, y1, x2, y2]`` of side ``size_mm / 0.175`` px centred on (x, y), clipped to the image."""
    half = size_mm / SPACING_MM / 2
    box = [max(0.0, x - half), max(0.0, y - half), min(float(SIZE), x + half), min(float(SIZE), y + half)]
    return [round(v, 2) for v in box] if box[0] < box[2] and box[1] < box[3] else None


# ---------------------------------------------------------------------------------------------- file search


def _walk(root: str, depth: int):
    base = root.rstrip(os.sep).count(os.sep)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if dirpath.count(os.sep) - base >= depth:
            dirnames[:] = []
        yield dirpath, dirnames, sorted(filenames)


def _find_images(root: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for dirpath, _, filenames in _walk(root, 3):
        for name in filenames:
            if _IMG.fullmatch(name):
                out.setdefault(name[:8].upper(), os.path.join(dirpath, name))
    return out


def _find_file(root: str, name: str) -> str | None:
    for dirpath, _, filenames in _walk(root, 3):
        for f in filenames:
            if f.lower() == name.lower():
                return os.path.join(dirpath, f)
    return None


def _scr_folds(scr_root: str) -> dict[str, dict[str, dict[str, str]]]:
    """{"fold1": {class: {stem: mask file}}, "fold2": {...}} from an SCR tree."""
    folds: dict[str, dict[str, dict[str, str]]] = {}
    for dirpath, dirnames, _ in _walk(scr_root, 4):
        for d in dirnames:
            if d.lower() in ("fold1", "fold2") and d.lower() not in folds:
                fold = os.path.join(dirpath, d)
                inner = next((os.path.join(fold, e) for e in sorted(os.listdir(fold)) if e.lower() == "masks"
                              and os.path.isdir(os.path.join(fold, e))), fold)
                structures: dict[str, dict[str, str]] = {}
                for e in sorted(os.listdir(inner)):
                    key = re.sub(r"[^a-z]", "", e.lower())
                    if key in _SCR_STRUCTURES and os.path.isdir(os.path.join(inner, e)):
                        structures[_SCR_STRUCTURES[key]] = index_masks(os.path.join(inner, e))
                if structures:
                    folds[d.lower()] = structures
    if not folds:
        raise DatasetLayoutError(f"{os.path.join(scr_root, 'fold1', 'masks', 'left lung')}: expected SCR mask folders "
                                 "not found (fold1/fold2 with 'left lung', 'right lung', 'heart', 'left clavicle', "
                                 "'right clavicle'); is scr_root the unpacked SCR folder?")
    return folds


# ------------------------------------------------------------------------------------------------ adapter


@register
class JSRTAdapter(DatasetAdapter):
    info = AdapterInfo(
        name="jsrt",
        tasks=("classification", "detection", "segmentation"),
        source="JSRT database (db.jsrt.or.jp, free registration); SCR masks from the Image Sciences Institute, "
               "UMC Utrecht (scr_root option)",
        license="JSRT: free for research with registration, no redistribution; SCR: research use, cite van Ginneken "
                "et al. 2006",
        description="247 PA CXRs (154 with a lung nodule, 93 without), raw 12-bit 2048x2048; nodule centre and size"
                    " -> box; optional SCR lung/heart/clavicle masks (upsampled to 2048); split=official uses the SCR"
                    " folds when scr_root is given (fold1 training+validation, fold2 test), else the random patient "
                    "split",
        official_split=False,
        views=True,
    )

    def build(self, root: str, out_dir: str, split: str = "official", seed: int = 0,
              views: list[str] | None = None, **options: Any) -> dict:
        check_options(self.info.name, options, ["scr_root", "left_side", "val_fraction"])
        left_option = str(options.get("left_side", "auto"))
        if left_option not in SIDE_CONVENTIONS:
            raise ConfigError(f"jsrt: left_side must be one of {SIDE_CONVENTIONS}, got {left_option!r}")
        try:
            val_fraction = float(options.get("val_fraction", 0.15))
        except (TypeError, ValueError):
            val_fraction = -1.0
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"jsrt: val_fraction must be in [0, 1), got {options.get('val_fraction')!r}")
        images = _find_images(root)
        if not images:
            raise DatasetLayoutError(f"{os.path.join(root, 'All247images')}: no JSRT images (JPCLNxxx.IMG / "
                                     "JPCNNxxx.IMG) found; is --root the unpacked JSRT folder?")
        clndat_path = _find_file(root, "CLNDAT_EN.txt")
        if clndat_path is None:
            common.require_file(root, "CLNDAT_EN.txt", what="JSRT nodule positions (clinical information)")
        clndat = parse_clndat(clndat_path)
        cnndat_path = _find_file(root, "CNNDAT_EN.txt")
        cnndat = parse_cnndat(cnndat_path) if cnndat_path else {}
        keep = {str(v).strip().upper() for v in ([views] if isinstance(views, str) else views)} if views else None

        items, no_record = [], []
        for stem in sorted(images):
            path = images[stem]
            size = os.path.getsize(path)
            if size != NBYTES:
                raise DatasetLayoutError(f"{path}: {size} bytes, a JSRT raw image has exactly {NBYTES} "
                                         f"({SIZE}x{SIZE} big-endian 16-bit)")
            nodule = stem.startswith("JPCLN")
            item: dict[str, Any] = {"id": stem, "image": common.rel(path, out_dir), "patient_id": stem, "view": "PA",
                                    "label": [int(nodule)],
                                    "meta": {"source_id": os.path.basename(path), "size": [SIZE, SIZE],
                                             "bits_stored": 12, "pixel_spacing_mm": [SPACING_MM, SPACING_MM]}}
            if nodule:
                rec = clndat.get(stem)
                if rec is None:
                    no_record.append(stem)  # not annotated for detection
                else:
                    box = nodule_box(rec["x"], rec["y"], rec["size_mm"])
                    item["boxes"], item["box_labels"] = ([box], [0]) if box else ([], [])
                    item["meta"].update({k: v for k, v in rec.items() if k not in ("x", "y")})
                    item["meta"]["nodule_center"] = [rec["x"], rec["y"]]
            else:
                item["boxes"], item["box_labels"] = [], []
                item["meta"].update(cnndat.get(stem, {}))
            if keep is not None and "PA" not in keep:
                continue
            items.append(item)
        if no_record:
            warnings.warn(f"jsrt: {len(no_record)} nodule image(s) have no record in {clndat_path} and no box: "
                          f"{', '.join(no_record[:3])}{', ...' if len(no_record) > 3 else ''}", stacklevel=2)
        orphans = sorted(set(clndat) - set(images))
        if orphans:
            warnings.warn(f"jsrt: {len(orphans)} record(s) in {clndat_path} have no image: {', '.join(orphans[:3])}",
                          stacklevel=2)

        tasks: dict[str, Any] = {
            "classification": {"labels": ["nodule"], "description": "JPCLN images 1, JPCNN images 0; malignancy in "
                                                                    "meta"},
            "detection": {"classes": ["nodule"], "description": "square of side size_mm / 0.175 px centred on the "
                                                                "CLNDAT nodule position (2048 px space)"},
        }
        fold_of: dict[str, str] = {}
        scr_root = options.get("scr_root")
        if scr_root:
            scr_root = str(scr_root)
            scr_root = common.require_dir(scr_root if os.path.isabs(scr_root) else os.path.join(root, scr_root),
                                          what="SCR masks (option scr_root)")
            classes, note = self._add_scr(items, _scr_folds(scr_root), out_dir, left_option, fold_of)
            tasks["segmentation"] = {"classes": classes, "mask_format": "per_class",
                                     "description": "SCR masks upsampled from 1024 to the 2048 image (nearest); "
                                                    "left/right = the patient's sides; " + note}
        if split == "official" and fold_of:
            splits = {"training": [], "validation": [], "test": []}
            train = [it for it in items if fold_of.get(it["id"]) != "fold2"]
            val_ids = {p for p, s in common.patient_split([it["patient_id"] for it in train], seed,
                                                          (1 - val_fraction, val_fraction, 0.0)).items()
                       if s == "validation"}
            for it in items:
                s = "test" if fold_of.get(it["id"]) == "fold2" else \
                    "validation" if it["patient_id"] in val_ids else "training"
                splits[s].append(it)
        else:
            splits = common.assign_splits(items, seed)
        return common.datalist(self.info.name, tasks, splits, self.info.description, self.info.license,
                               self.info.source)

    @staticmethod
    def _add_scr(items: list[dict], folds: dict, out_dir: str, left_option: str,
                 fold_of: dict[str, str]) -> tuple[list[str], str]:
        mask_dir = os.path.join(out_dir, "jsrt_masks")
        found = sorted({c for structures in folds.values() for c in structures}, key=SCR_CLASSES.index)
        votes, incomplete, unfolded = [], [], []
        for item in items:
            stem = item["id"]
            fold = next((f for f in sorted(folds) if any(stem in files for files in folds[f].values())), None)
            if fold is None:
                unfolded.append(stem)
                continue
            fold_of[stem] = fold
            files = {c: folds[fold].get(c, {}).get(stem) for c in found}
            if not all(files.values()):
                incomplete.append(stem)
                continue
            masks = {}
            for cls, file in files.items():
                masks[cls], upsampled_from = read_binary_mask(file, (SIZE, SIZE))
                if upsampled_from:
                    item["meta"]["mask_upsampled_from"] = list(upsampled_from)
            if "lung_left" in masks and "lung_right" in masks:
                item["_vote"] = side_vote(masks["lung_left"], masks["lung_right"])
                votes.append(item["_vote"])
            item["meta"]["scr_fold"] = fold
            item["mask"] = {}
            for cls, mask in masks.items():
                if mask.any():  # written under SCR's own naming, renamed once the convention is known
                    item["mask"][cls] = common.write_mask(os.path.join(mask_dir, f"{stem}_scr_{cls}.png"), mask)
        convention, note = resolve_sides(left_option, votes, "SCR 'left lung'")
        for item in items:
            vote = item.pop("_vote", None)
            if vote and (vote > 0) != (convention == "patient"):
                item["meta"]["lung_sides_contradict"] = True
            if "mask" in item:
                final = {}
                for cls, path in item.pop("mask").items():
                    target = cls if convention == "patient" else _MIRROR[cls]
                    dest = os.path.join(mask_dir, f"{item['id']}_{target}.png")
                    os.replace(path, dest)
                    final[target] = common.rel(dest, out_dir)
                item["mask"] = {c: final[c] for c in SCR_CLASSES if c in final}
        if incomplete:
            warnings.warn(f"jsrt: {len(incomplete)} image(s) lack some SCR structure masks and carry no mask: "
                          f"{', '.join(incomplete[:3])}", stacklevel=3)
        if unfolded:
            warnings.warn(f"jsrt: {len(unfolded)} image(s) are in neither SCR fold (no mask; training under the "
                          f"official split): {', '.join(unfolded[:3])}", stacklevel=3)
        classes = {c if convention == "patient" else _MIRROR[c] for c in found}
        return [c for c in SCR_CLASSES if c in classes], note
