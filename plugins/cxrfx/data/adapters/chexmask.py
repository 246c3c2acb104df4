"""CheXmask (Gaggion et al., PhysioNet 2023): HybridGNet lung and heart masks for six public CXR datasets.

CheXmask ships masks only; the images come from the source dataset. Layout (PhysioNet release)::

    <root>/OriginalResolution/VinDr-CXR.csv      one CSV per source: CANDID-PTX, ChestX-Ray8, CheXpert,
    <root>/OriginalResolution/ChestX-Ray8.csv    MIMIC-CXR-JPG, Padchest, VinDr-CXR
    <root>/Preprocessed/...                      1024 x 1024 masks of the preprocessed images (not used)

Columns: the image identifier (its name depends on the source: ``image_id`` (VinDr-CXR), ``Image Index``
(ChestX-Ray8), ``Path`` (CheXpert), ``dicom_id`` (MIMIC-CXR-JPG), ``ImageID`` (Padchest, CANDID-PTX); option
``id_column`` for others), ``Dice RCA (Mean)``, ``Dice RCA (Max)``, ``Landmarks``, ``Left Lung``, ``Right Lung``,
``Heart`` (run-length encoded: absolute 1-based starts, row-major over Height x Width, decoded with
:func:`common.rle_decode_absolute`), ``Height``, ``Width``. The CSVs are streamed row by row (they reach several
GB and single RLE cells exceed the csv module's default field limit).

Options:
- ``source`` (default ``"VinDr-CXR"``): which CSV; ``csv=PATH`` names the file directly.
- ``images_root=DIR`` (required): the source dataset's images; ``image_pattern`` (``|``-separated alternatives,
  ``{id}`` = the identifier) locates each one, default per source (VinDr-CXR: ``train/{id}.dicom|test/{id}.dicom|
  {id}.dicom|...``); an identifier none of them finds is looked up by file name under ``images_root`` (only
  identifiers without a folder part, and only names found once); rows whose image is still missing are skipped
  with a warning.
- ``min_dice_rca`` (default 0.7, the CheXmask authors' advice): rows with ``Dice RCA (Mean)`` below it are
  dropped (0 keeps every row).
- ``check_size`` (default True): the mask's Height x Width must equal the image's size (read from its header);
  rows that differ are skipped with a warning (the MIMIC / PadChest reverse-preprocessing scripts swap width and
  height, so mismatches are possible).
- ``left_lung`` (``auto`` default / ``patient`` / ``viewer``): which side the ``Left Lung`` column is. CheXmask's
  HybridGNet lists the right lung first (44 points, drawn on the image's left) and the left lung second (50
  points), i.e. ``Left Lung`` should be the patient's left, on the viewer's right; ``auto`` checks it on the data
  by majority (see :mod:`.montgomery`) and records the vote in the task description.

Tasks: segmentation ``lung_left``, ``lung_right``, ``heart`` (left/right = the patient's sides). There is no
official split: random patient split; patient ids come from the identifier where it holds one (ChestX-Ray8
``00000001_000.png`` -> ``00000001``; CheXpert ``patient00001``; MIMIC ``p10000032`` from the image path),
else the split is image level (VinDr-CXR, PadChest, CANDID-PTX: check leakage against the source datasets'
own splits with ``cxrfx leakage``). No view metadata in CheXmask: ``views`` is refused.
"""

from __future__ import annotations

import csv
import os
import re
import sys
import warnings
from typing import Any

from cxrfx.data.adapters import common, register
from cxrfx.data.adapters.base import AdapterInfo, DatasetAdapter
from cxrfx.data.adapters.montgomery import SIDE_CONVENTIONS, resolve_sides, side_vote
from cxrfx.data.adapters.common import check_options, refuse_views
from cxrfx.data.adapters.shenzhen import image_header
from cxrfx.errors import ConfigError, DatasetLayoutError

__all__ = ["CheXmaskAdapter", "ID_COLUMNS", "DEFAULT_PATTERNS"]

CLASSES = ["lung_left", "lung_right", "heart"]
ID_COLUMNS = {"VinDr-CXR": "image_id", "ChestX-Ray8": "Image Index", "CheXpert": "Path",
              "MIMIC-CXR-JPG": "dicom_id", "Padchest": "ImageID", "CANDID-PTX": "ImageID"}
DEFAULT_PATTERNS = {
    "VinDr-CXR": "train/{id}.dicom|test/{id}.dicom|{id}.dicom|train/{id}.dcm|test/{id}.dcm|{id}.dcm|{id}.png",
    "ChestX-Ray8": "images/{id}|{id}",
    "CheXpert": "{id}",
    "MIMIC-CXR-JPG": "{id}.jpg|{id}",
    "Padchest": "{id}",
    "CANDID-PTX": "{id}",
}
_COLUMNS = {"Left Lung": "named_left", "Right Lung": "named_right", "Heart": "heart"}
_DICOM = (".dcm", ".dicom")


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _source_key(source: str) -> str | None:
    return next((k for k in ID_COLUMNS if _normalise(k) == _normalise(source)), None)


def _patient(source: str | None, ident: str, image: str) -> str | None:
    if source == "ChestX-Ray8":
        m = re.match(r"(\d{8})_\d+", os.path.basename(ident))
        return m.group(1) if m else None
    if source == "CheXpert":
        m = re.search(r"(patient\d+)", ident)
        return m.group(1) if m else None
    if source == "MIMIC-CXR-JPG":
        m = re.search(r"[/\\]p\d{2}[/\\](p\d+)[/\\]", image)
        return m.group(1) if m else None
    return None


def _size(path: str) -> tuple[int, int]:
    if path.lower().endswith(_DICOM):
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["Rows", "Columns"])
            return int(ds.Rows), int(ds.Columns)
        except Exception as exc:
            raise DatasetLayoutError(f"{path}: cannot read the DICOM header ({type(exc).__name__}: {exc})") from None
    header = image_header(path)
    return header["height"], header["width"]


def _stream_csv(path: str, required: list[str]):
    """(line, {column: value}) rows of a (large) CSV, one at a time, with the field size limit raised while
    this file is read (the limit is process-wide: other CSV readers keep the default)."""
    limit = sys.maxsize
    while True:  # the largest value the platform's C long accepts
        try:
            previous = csv.field_size_limit(limit)
            break
        except OverflowError:
            limit //= 2
    try:
        yield from _read_rows(path, required)
    finally:
        csv.field_size_limit(previous)


def _read_rows(path: str, required: list[str]):
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetLayoutError(f"{path}: cannot open ({exc.strerror})") from None
    with f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DatasetLayoutError(f"{path}: empty file, expected a CSV header") from None
        except csv.Error as exc:
            raise DatasetLayoutError(f"{path}:1: unreadable CSV header ({exc})") from None
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetLayoutError(f"{path}: missing column(s) {missing}; header is {header}")
        needed = max(header.index(c) for c in required) + 1
        line = 1
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise common.row_error(path, reader.line_num, f"unreadable CSV row ({exc})") from None
            line = reader.line_num
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) < needed:
                raise common.row_error(path, line, f"{len(values)} fields, expected at least {needed} "
                                                   f"({header[:needed]})")
            yield line, {h: values[i].strip() for i, h in enumerate(header) if i < len(values)}


class _Locator:
    def __init__(self, images_root: str, patterns: list[str]):
        self.root = images_root
        self.patterns = patterns
        self._by_name: dict[str, str] | None = None

    def __call__(self, ident: str) -> str | None:
        for pattern in self.patterns:
            path = os.path.join(self.root, pattern.replace("{id}", ident))
            if os.path.isfile(path):
                return path
        if "/" in ident or "\\" in ident:
            return None  # a path (CheXpert): file names repeat across folders, so no search by name
        if self._by_name is None:
            self._by_name = {}
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for f in sorted(filenames):
                    path = os.path.join(dirpath, f)
                    for key in {f, os.path.splitext(f)[0]}:
                        # a name found twice is ambiguous: never guess between two files
                        self._by_name[key] = path if key not in self._by_name else None
        return self._by_name.get(ident) or self._by_name.get(os.path.splitext(ident)[0])


@register
class CheXmaskAdapter(DatasetAdapter):
    info = AdapterInfo(
        name="chexmask",
        tasks=("segmentation",),
        source="CheXmask on PhysioNet (physionet.org/content/chexmask-cxr-segmentation-data); the images from the "
               "source dataset (VinDr-CXR, ChestX-ray8, CheXpert, MIMIC-CXR-JPG, PadChest, CANDID-PTX)",
        license="CheXmask: PhysioNet (licence terms uncertain); images: the source dataset's licence",
        description="HybridGNet left/right lung and heart masks (RLE, original resolution) for one source dataset's "
                    "images; rows below Dice RCA (Mean) 0.7 dropped by default; no official split: random patient "
                    "split (image level where the source id holds no patient)",
        official_split=False,
        views=False,
    )

    def build(self, root: str, out_dir: str, split: str = "official", seed: int = 0,
              views: list[str] | None = None, **options: Any) -> dict:
        check_options(self.info.name, options, ["source", "csv", "id_column", "images_root", "image_pattern",
                                                "min_dice_rca", "check_size", "left_lung"])
        refuse_views(self.info.name, views)
        source_name = str(options.get("source", "VinDr-CXR"))
        source = _source_key(source_name)
        left_option = str(options.get("left_lung", "auto"))
        if left_option not in SIDE_CONVENTIONS:
            raise ConfigError(f"chexmask: left_lung must be one of {SIDE_CONVENTIONS}, got {left_option!r}")
        try:
            min_dice = float(options.get("min_dice_rca", 0.7))
        except (TypeError, ValueError):
            raise ConfigError(f"chexmask: min_dice_rca must be a number, got {options.get('min_dice_rca')!r}") from None
        check_size = options.get("check_size", True)
        check_size = str(check_size).lower() not in ("false", "0", "no") if isinstance(check_size, str) else \
            bool(check_size)
        images_root = options.get("images_root")
        if not images_root:
            raise ConfigError("chexmask ships masks only: give images_root=DIR, the folder of the source dataset's "
                              "images (and image_pattern if the default for this source does not fit)")
        images_root = common.require_dir(os.path.abspath(os.path.join(root, str(images_root))),
                                         what="source images (option images_root)")
        csv_path = self._csv_path(root, options.get("csv"), source_name)
        id_column = options.get("id_column") or (ID_COLUMNS.get(source) if source else None) or \
            self._guess_id_column(csv_path)
        pattern = str(options.get("image_pattern") or DEFAULT_PATTERNS.get(source, "{id}"))
        locate = _Locator(images_root, [p for p in pattern.split("|") if p])
        required = [id_column, "Dice RCA (Mean)", "Left Lung", "Right Lung", "Heart", "Height", "Width"]

        mask_dir = os.path.join(out_dir, "chexmask_masks", re.sub(r"[^A-Za-z0-9_.-]", "_", source or source_name))
        items, votes, missing, mismatched, low = [], [], [], [], 0
        seen: dict[str, int] = {}
        for line, row in _stream_csv(csv_path, required):
            ident = row[id_column]
            if not ident:
                raise common.row_error(csv_path, line, f"empty {id_column!r}")
            if ident in seen:
                raise common.row_error(csv_path, line, f"{ident!r} is listed twice (also line {seen[ident]})")
            seen[ident] = line
            try:
                dice_mean = float(row["Dice RCA (Mean)"])
                dice_max = float(row["Dice RCA (Max)"]) if row.get("Dice RCA (Max)") else None
                height, width = int(float(row["Height"])), int(float(row["Width"]))
            except ValueError:
                raise common.row_error(csv_path, line, f"Dice RCA / Height / Width not numeric: "
                                                       f"{row['Dice RCA (Mean)']!r}, {row['Height']!r}, "
                                                       f"{row['Width']!r}") from None
            if height <= 0 or width <= 0:
                raise common.row_error(csv_path, line, f"Height x Width {height} x {width} is empty")
            if dice_mean < min_dice:
                low += 1
                continue
            image = locate(ident)
            if image is None:
                missing.append(ident)
                continue
            if check_size and _size(image) != (height, width):
                mismatched.append(f"{ident} ({height}x{width} mask, {'x'.join(map(str, _size(image)))} image)")
                continue
            masks = {}
            for column, key in _COLUMNS.items():
                try:
                    masks[key] = common.rle_decode_absolute(row[column], height, width)
                except ValueError as exc:
                    raise common.row_error(csv_path, line, f"{column}: {exc}") from None
            vote = side_vote(masks["named_left"], masks["named_right"])
            votes.append(vote)
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", ident.replace("/", "__"))
            written = {}
            for key, mask in masks.items():
                if mask.any():  # named after the CSV column, renamed once the side convention is known
                    written[key] = common.write_mask(os.path.join(mask_dir, f"{safe}_{key}.png"), mask)
            meta: dict[str, Any] = {"source_id": ident, "source_dataset": source or source_name, "csv_line": line,
                                    "dice_rca_mean": dice_mean, "size": [height, width]}
            if dice_max is not None:
                meta["dice_rca_max"] = dice_max
            item: dict[str, Any] = {"id": ident, "image": common.rel(image, out_dir), "mask": written,
                                    "meta": meta, "_vote": vote, "_safe": safe}
            patient = _patient(source, ident, image)
            if patient:
                item["patient_id"] = patient
            items.append(item)

        convention, note = resolve_sides(left_option, votes, "CheXmask 'Left Lung'")
        target = {"named_left": "lung_left", "named_right": "lung_right", "heart": "heart"} if \
            convention == "patient" else {"named_left": "lung_right", "named_right": "lung_left", "heart": "heart"}
        for item in items:
            vote, safe = item.pop("_vote"), item.pop("_safe")
            if vote and (vote > 0) != (convention == "patient"):
                item["meta"]["lung_sides_contradict"] = True
            final = {}
            for key, path in item.pop("mask").items():
                dest = os.path.join(mask_dir, f"{safe}_{target[key]}.png")
                os.replace(path, dest)
                final[target[key]] = common.rel(dest, out_dir)
            item["mask"] = {c: final[c] for c in CLASSES if c in final}
        self._warn(missing, "have no image under " + images_root, csv_path)
        self._warn(mismatched, "have a mask size different from their image's and were skipped", csv_path)
        if not items:
            raise DatasetLayoutError(f"{csv_path}: no usable row ({len(seen)} rows, {low} below Dice RCA (Mean) "
                                     f"{min_dice}, {len(missing)} without image, {len(mismatched)} size mismatches)")
        tasks = {"segmentation": {
            "classes": list(CLASSES), "mask_format": "per_class",
            "description": f"CheXmask {source or source_name} (HybridGNet, original resolution), rows with Dice RCA "
                           f"(Mean) >= {min_dice} ({low} dropped); lung_left = the patient's left lung; " + note}}
        splits = common.assign_splits(items, seed)
        return common.datalist(self.info.name, tasks, splits, self.info.description, self.info.license,
                               self.info.source)

    @staticmethod
    def _csv_path(root: str, option: Any, source: str) -> str:
        if option:
            return common.require_file(os.path.join(root, str(option)), what="CheXmask CSV (option csv)")
        wanted = _normalise(source) + "csv"
        for folder in (os.path.join(root, "OriginalResolution"), root):
            if os.path.isdir(folder):
                for name in sorted(os.listdir(folder)):
                    if _normalise(name) == wanted and os.path.isfile(os.path.join(folder, name)):
                        return os.path.join(folder, name)
        return common.require_file(root, "OriginalResolution", f"{source}.csv",
                                   what=f"CheXmask masks of {source} (option source)")

    @staticmethod
    def _guess_id_column(csv_path: str) -> str:
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as f:
                header = [h.strip() for h in next(csv.reader(f), [])]
        except (OSError, csv.Error):
            header = []
        for name in dict.fromkeys(ID_COLUMNS.values()):
            if name in header:
                return name
        raise DatasetLayoutError(f"{csv_path}: no known image identifier column ({sorted(set(ID_COLUMNS.values()))});"
                                 f" header is {header}; give id_column=NAME")

    @staticmethod
    def _warn(idents: list[str], what: str, csv_path: str) -> None:
        if idents:
            examples = ", ".join(idents[:3]) + (", ..." if len(idents) > 3 else "")
            warnings.warn(f"chexmask: {len(idents)} row(s) of {csv_path} {what}: {examples}", stacklevel=3)
