"""Bad-input corpus (issue 10), part 1: malformed image and mask files, all made here in ``tmp_path``.

Each case builds one broken input and names the entry point that must refuse it (``load_cxr``, ``read_mask``,
``LoadMaskd``) and the phrases its message must carry. A case passes only when that entry point raises a
:class:`~cxrfx.errors.CXRFXError` whose message holds the file's path and every phrase: a numpy / PIL /
pydicom exception is a crash, a silent success is an acceptance. Part 2 (``test_bad_input_corpus_data.py``)
adds datalists and CSVs and the live training loop; the summary test here tallies both parts.
Run with ``-s`` to see ``corpus: N cases, N clear errors, 0 crashes``.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from cxrfx.errors import CXRFXError
from cxrfx.io import load_cxr
from cxrfx.io.transforms import LoadCXR, LoadMaskd, read_mask
from test_io_dicom import write_dicom

CLASSES = ["lung_left", "lung_right", "heart"]
H, W = 40, 48
MEMORY_LIMIT = 256 * 2**20  # a refused huge-header file must not allocate more than this on the way


@dataclass(frozen=True)
class Case:
    """One malformed input: ``build(folder)`` writes it and returns ``(call, path)``; ``call()`` must raise a
    CXRFXError whose message names ``path`` and contains every phrase (case-insensitive)."""

    category: str
    id: str
    build: Callable[[Path], tuple[Callable[[], object], Path]]
    phrases: tuple[str, ...]


def run_case(case: Case, folder: Path) -> tuple[str, str]:
    """``("clear" | "unclear" | "crash" | "accepted", message)`` for one case; peak Python memory is checked too."""
    folder.mkdir(parents=True, exist_ok=True)
    call, path = case.build(folder)
    tracemalloc.start()
    try:
        call()
    except CXRFXError as exc:
        message = str(exc)
        ok = str(path) in message and all(p.lower() in message.lower() for p in case.phrases)
        return ("clear" if ok else "unclear"), message
    except Exception as exc:  # noqa: BLE001 - anything else is exactly what the corpus looks for
        return "crash", f"{type(exc).__name__}: {exc}"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if peak > MEMORY_LIMIT:
            return "crash", f"allocated {peak / 2**20:.0f} MiB while refusing the file"
    return "accepted", "no error raised"


CASES: list[Case] = []
IMAGE_CASES: list[Case] = []  # the cases read by load_cxr: also checked through ``python -m cxrfx validate``


def _file(category: str, name: str, payload: Callable[[], bytes], *phrases: str, loader=load_cxr) -> None:
    """Register a case: ``payload()`` written to ``name`` must be refused by ``loader(path)``."""

    def build(folder: Path):
        path = folder / name
        path.write_bytes(payload())
        return (lambda: loader(path)), path

    CASES.append(Case(category, name.replace(".", "_"), build, phrases))
    if loader is load_cxr:
        IMAGE_CASES.append(CASES[-1])


def encode_image(arr: np.ndarray, fmt: str = "PNG", mode: str | None = None, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format=fmt, **save)
    return buf.getvalue()


def noise_image(h: int = H, w: int = W) -> np.ndarray:
    """Noise, so that compressed files are long enough to cut in the middle."""
    return np.random.default_rng(0).integers(0, 256, (h, w), dtype=np.uint8)


def _random(n: int = 4096, seed: int = 1) -> Callable[[], bytes]:
    return lambda: np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _dicom_bytes(arr: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    write_dicom(buf, arr, **kwargs)
    return buf.getvalue()


def _without_pixels(data: bytes) -> bytes:
    """A DICOM image with its PixelData element removed (as a report or presentation state has none)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def _lying_length(data: bytes) -> bytes:
    """A DICOM whose PixelData element claims 0x7FFFFFF0 bytes (the file holds a few kB)."""
    at = data.rindex(b"\xe0\x7f\x10\x00OW") + 8  # (7FE0,0010) OW: 2 reserved bytes, then a 4-byte length
    return data[:at] + struct.pack("<I", 0x7FFFFFF0) + data[at + 4:]


def _huge_png() -> bytes:
    """A real 1x1 PNG whose IHDR (CRC recomputed) claims 100000 x 100000 pixels."""
    data = bytearray(encode_image(np.zeros((1, 1), np.uint8)))
    data[16:24] = struct.pack(">II", 100_000, 100_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _huge_jpeg() -> bytes:
    """A real JPEG whose SOF0 frame header claims 60000 x 60000 pixels."""
    data = bytearray(encode_image(noise_image(), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 60_000, 60_000)
    return bytes(data)


def _nifti(arr: np.ndarray, dims: tuple[int, ...] | None = None, gz: bool = False) -> bytes:
    """NIfTI-1 bytes of ``arr``; ``dims`` overwrites the header's dim field afterwards (a lying header)."""
    raw = bytearray(nib.Nifti1Image(arr, np.eye(4)).to_bytes())
    if dims is not None:
        raw[40:56] = struct.pack("<8h", len(dims), *dims, *([1] * (7 - len(dims))))
    return gzip.compress(bytes(raw)) if gz else bytes(raw)


def _metaimage(dims: str, etype: str, payload: bytes, extra: str = "") -> bytes:
    return (f"ObjectType = Image\nNDims = 2\nDimSize = {dims}\nElementType = {etype}\n{extra}"
            f"ElementDataFile = LOCAL\n").encode() + payload


def _nrrd(sizes: str, dtype: str, payload: bytes) -> bytes:
    return f"NRRD0004\ntype: {dtype}\ndimension: 2\nsizes: {sizes}\nendian: little\nencoding: raw\n\n".encode() + payload


def _float_tiff(value: float) -> bytes:
    arr = np.ones((H, W), np.float32)
    arr[3, 5] = value
    return encode_image(arr, "TIFF", mode="F")


# --- empty, truncated, random bytes, not an image --------------------------------------------------------------
for _ext in ("png", "jpg", "dcm", "tif", "nii"):
    _file("empty", f"zero.{_ext}", lambda: b"", "empty file", "0 bytes")
_file("truncated", "half.png", lambda: encode_image(noise_image())[:200], "cannot decode image")
_file("truncated", "signature_only.png", lambda: encode_image(noise_image())[:8], "not an image")
_file("truncated", "half.jpg", lambda: encode_image(noise_image(), "JPEG")[:300], "cannot decode image")
_file("truncated", "half.tif", lambda: encode_image(noise_image(), "TIFF")[:500], "cannot decode image")
_file("truncated", "header_cut.dcm", lambda: _dicom_bytes(noise_image().astype(np.uint16))[:200], "DICOM")
_file("truncated", "pixels_cut.dcm", lambda: _dicom_bytes(noise_image().astype(np.uint16))[:-1000], "pixel data")
_file("truncated", "pixels_cut.mha", lambda: _metaimage(f"{W} {H}", "MET_USHORT", bytes(100)), "truncated")
_file("truncated", "pixels_cut.nrrd", lambda: _nrrd(f"{W} {H}", "uint16", bytes(100)), "truncated")
_file("truncated", "pixels_cut.nii", lambda: _nifti(noise_image().astype(np.int16))[:-1000], "NIfTI")
_file("truncated", "cut.nii.gz", lambda: _nifti(noise_image().astype(np.int16), gz=True)[:-100], "NIfTI")
_file("truncated", "short.IMG", lambda: bytes(2048 * 2048), "exactly 8388608 bytes")
_file("truncated", "idat_corrupt.png", lambda: encode_image(noise_image())[:600] + bytes(300) + encode_image(noise_image())[900:],
      "cannot decode image")
for _ext, _phrase in (("png", "not an image"), ("jpg", "not an image"), ("tif", "not an image"),
                      ("bmp", "not an image"), ("dcm", "not a DICOM"), ("mha", "MetaImage"),
                      ("nrrd", "not a NRRD"), ("nii", "NIfTI")):
    _file("random bytes", f"random.{_ext}", _random(), _phrase)
_file("random bytes", "text.png", lambda: b"patient_id,label\n1,0\n", "not an image")
_file("random bytes", "html.jpg", lambda: b"<html><body>404 Not Found</body></html>", "not an image")
_file("random bytes", "gzip_junk.nii.gz", lambda: gzip.compress(b"not a nifti" * 50), "NIfTI")
_file("random bytes", "dimsize_not_numbers.mha", lambda: _metaimage("48 forty", "MET_UCHAR", bytes(99)), "DimSize")
_file("random bytes", "jsrt_13bit.IMG", lambda: np.full((2048, 2048), 0xFFFF, ">u2").tobytes(), "exceed 12 bits")

# --- DICOM attributes that lie or are missing -------------------------------------------------------------------
_U16 = noise_image().astype(np.uint16)
_file("dicom", "no_pixel_data.dcm", lambda: _without_pixels(_dicom_bytes(_U16)), "no pixel data")
_file("dicom", "bits_allocated_12.dcm", lambda: _dicom_bytes(_U16, bits_allocated=12), "BitsAllocated")
_file("dicom", "bits_allocated_0.dcm", lambda: _dicom_bytes(_U16, bits_allocated=0, bits_stored=1), "BitsAllocated")
_file("dicom", "bits_allocated_32_for_16bit_data.dcm", lambda: _dicom_bytes(_U16, bits_allocated=32), "pixel data")
_file("dicom", "bits_stored_above_allocated.dcm",
      lambda: _dicom_bytes(noise_image(), bits_allocated=8, bits_stored=12), "BitsStored")
_file("dicom", "multi_frame.dcm", lambda: _dicom_bytes(np.tile(_U16, (3, 1)), NumberOfFrames=3, Rows=H), "multi-frame")
_file("dicom", "rows_zero.dcm", lambda: _dicom_bytes(_U16, Rows=0), "0x48")
_file("dicom", "photometric_cmyk.dcm", lambda: _dicom_bytes(_U16, photometric="CMYK"), "PhotometricInterpretation")
_file("dicom", "rgb_with_one_sample.dcm", lambda: _dicom_bytes(noise_image(), bits_allocated=8, bits_stored=8,
                                                               photometric="RGB"), "SamplesPerPixel")
_file("dicom", "window_width_zero.dcm", lambda: _dicom_bytes(_U16, WindowCenter=100, WindowWidth=0), "window")

# --- non-finite pixels: refused (a single NaN turns every loss of the batch into NaN) ---------------------------
_file("non-finite", "nan.tif", lambda: _float_tiff(np.nan), "NaN or infinite", "1 of 1920 pixels")
_file("non-finite", "inf.tif", lambda: _float_tiff(np.inf), "NaN or infinite")
_file("non-finite", "nan.mha", lambda: _metaimage(f"{W} {H}", "MET_FLOAT",
                                                  np.full(H * W, np.nan, "<f4").tobytes()), "NaN or infinite")
_file("non-finite", "inf.nrrd", lambda: _nrrd(f"{W} {H}", "float", np.full(H * W, -np.inf, "<f4").tobytes()),
      "NaN or infinite")
_file("non-finite", "nan.nii", lambda: _nifti(np.where(noise_image() > 200, np.nan, 1.0).astype(np.float32)),
      "NaN or infinite")
_file("non-finite", "nan_rescale_slope.dcm", lambda: _dicom_bytes(_U16, RescaleSlope="NaN", RescaleIntercept=0),
      "NaN or infinite")

# --- degenerate sizes: too small to be a radiograph, or a header claiming an impossible size ---------------------
_file("size", "one_pixel.png", lambda: encode_image(np.full((1, 1), 7, np.uint8)), "1x1", "too small")
_file("size", "one_row.png", lambda: encode_image(noise_image(1, 500)), "1x500", "too small")
_file("size", "one_pixel.dcm", lambda: _dicom_bytes(np.ones((1, 1), np.uint16)), "1x1", "too small")
_file("size", "one_pixel.mha", lambda: _metaimage("1 1", "MET_UCHAR", b"\x07"), "1x1", "too small")
_file("huge header", "huge.png", _huge_png, "pixels")
_file("huge header", "huge.jpg", _huge_jpeg, "pixels")
_file("huge header", "huge.dcm", lambda: _dicom_bytes(_U16, Rows=65535, Columns=65535), "65535x65535")
_file("huge header", "pixel_data_length_2gb.dcm", lambda: _lying_length(_dicom_bytes(_U16)), "truncated pixel data")
_file("huge header", "huge.mha", lambda: _metaimage("200000 200000", "MET_USHORT", bytes(64)), "200000x200000")
_file("huge header", "huge.nrrd", lambda: _nrrd("200000 200000", "float", bytes(64)), "200000x200000")
_file("huge header", "huge.nii", lambda: _nifti(noise_image().astype(np.float32), dims=(32767, 32767)), "32767x32767")
_file("huge header", "huge.nii.gz", lambda: _nifti(noise_image().astype(np.float32), dims=(32767, 32767), gz=True),
      "32767x32767")


# --- masks: read_mask with CLASSES (index maps) or {class: binary file}; LoadMaskd against an image ---------------
def _mask(name: str, payload: Callable[[], bytes], *phrases: str, per_class: bool = False) -> None:
    def loader(path):
        return read_mask({"lung_left": str(path)} if per_class else str(path), CLASSES)

    _file("mask", name, payload, *phrases, loader=loader)


def _index(values: dict[tuple[int, int], int], dtype=np.uint8) -> np.ndarray:
    arr = np.zeros((H, W), dtype)
    for (r, c), v in values.items():
        arr[r:r + 5, c:c + 5] = v
    return arr


def _palette(index: np.ndarray) -> bytes:
    img = Image.fromarray(index, mode="P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [255] * (256 * 3 - 12))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _rgba(rgb: int, alpha: np.ndarray) -> bytes:
    arr = np.zeros((H, W, 4), np.uint8)
    arr[..., 0] = rgb * (alpha > 0)
    arr[..., 3] = alpha
    return encode_image(arr, mode="RGBA")


_mask("index_value_above_classes.png", lambda: encode_image(_index({(2, 2): 1, (20, 20): 7})), "outside 0..3")
_mask("index_saved_as_0_255.png", lambda: encode_image(_index({(2, 2): 255})), "outside 0..3")
_mask("index_negative.tif", lambda: encode_image(_index({(2, 2): -1}, np.float32), "TIFF", mode="F"), "outside 0..3")
_mask("index_fractional.tif", lambda: encode_image(_index({(2, 2): 1.5}, np.float32), "TIFF", mode="F"), "outside 0..3")
_mask("palette_index_above_classes.png", lambda: _palette(_index({(2, 2): 2, (9, 9): 9})), "outside 0..3")
_mask("index_rgba_colours.png", lambda: _rgba(200, _index({(2, 2): 255})), "colour", "RGBA")
_mask("binary_rgb_colours.png", lambda: encode_image(np.stack([_index({(2, 2): 255}), _index({(9, 9): 255}),
                                                          _index({})], -1), mode="RGB"), "colour", "RGB",
      per_class=True)
_mask("binary_alpha_only.png", lambda: _rgba(0, _index({(2, 2): 255})), "alpha", per_class=True)
_mask("binary_lossy_levels.png", lambda: encode_image(_index({(2, 2): 255, (9, 9): 128, (20, 20): 3})),
      "not a binary mask", "3 foreground values", per_class=True)
_mask("binary_negative.tif", lambda: encode_image(_index({(2, 2): -1}, np.float32), "TIFF", mode="F"),
      "negative", per_class=True)
_mask("nan_mask.tif", lambda: encode_image(_index({(2, 2): np.nan}, np.float32), "TIFF", mode="F"), "NaN")
_mask("empty_mask.png", lambda: b"", "empty file")
_mask("truncated_mask.png", lambda: encode_image(_index({(2, 2): 1}))[:60], "cannot decode image")
_mask("random_mask.png", _random(), "not an image")


def _missing(folder: Path):
    path = folder / "never_written.png"
    return (lambda: read_mask(str(path), CLASSES)), path


def _unknown_class(folder: Path):
    path = folder / "m.png"
    path.write_bytes(encode_image(_index({(2, 2): 255})))
    return (lambda: read_mask({"spleen": str(path)}, CLASSES)), path


def _classes_differ_in_size(folder: Path):
    first, second = folder / "left.png", folder / "right.png"
    first.write_bytes(encode_image(_index({(2, 2): 255})))
    second.write_bytes(encode_image(np.zeros((H + 2, W), np.uint8)))
    return (lambda: read_mask({"lung_left": str(first), "lung_right": str(second)}, CLASSES)), second


def _mask_wrong_size_for_image(folder: Path):
    image, mask = folder / "image.png", folder / "mask.png"
    image.write_bytes(encode_image(noise_image()))
    mask.write_bytes(encode_image(np.zeros((H // 2, W // 2), np.uint8)))
    return (lambda: LoadMaskd("mask", CLASSES)({"image": LoadCXR()(str(image)), "mask": str(mask)})), mask


for _build, _phrases in ((_missing, ("file not found",)), (_unknown_class, ("unknown classes",)),
                         (_classes_differ_in_size, ("mask size", "differs")),
                         (_mask_wrong_size_for_image, ("mask size (20, 24)", "image size (40, 48)"))):
    CASES.append(Case("mask", _build.__name__.lstrip("_"), _build, _phrases))


@pytest.mark.parametrize("case", CASES, ids=[f"{c.category}:{c.id}" for c in CASES])
def test_bad_file_gives_a_clear_error(case, tmp_path):
    outcome, message = run_case(case, tmp_path)
    assert outcome == "clear", f"{outcome}: {message}"


def test_cli_validate_reports_each_bad_image_on_one_line(tmp_path, capsys):
    from cxrfx.__main__ import main

    (tmp_path / "good.png").write_bytes(encode_image(noise_image()))
    bad = [str(case.build(tmp_path)[1]) for case in IMAGE_CASES]
    datalist = tmp_path / "all_bad.json"
    datalist.write_text(json.dumps({"name": "corpus", "tasks": {"classification": {"labels": ["x"]}},
                                    "training": [{"image": p} for p in ["good.png", *bad]]}))
    with pytest.raises(SystemExit) as info:
        main(["validate", str(datalist)])
    assert info.value.code == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(bad) == len(IMAGE_CASES), [ln for ln in lines if not any(f"{p}:" in ln for p in bad)]
    for path in bad:
        assert sum(f"{path}:" in line for line in lines) == 1, path
    assert not any("good.png" in line or "Traceback" in line for line in lines)


def test_corpus_summary(tmp_path):
    """Every case of both parts refused as designed: ``corpus: N cases, N clear errors, 0 crashes``."""
    from test_bad_input_corpus_data import CASES as DATA_CASES

    tally: dict[str, list[str]] = {"clear": [], "unclear": [], "crash": [], "accepted": []}
    categories: dict[str, int] = {}
    for i, case in enumerate(CASES + DATA_CASES):
        outcome, message = run_case(case, tmp_path / f"c{i}")
        tally[outcome].append(f"{case.category}:{case.id}: {message}")
        categories[case.category] = categories.get(case.category, 0) + 1
    total = sum(categories.values())
    print(f"\ncorpus: {total} cases, {len(tally['clear'])} clear errors, {len(tally['crash'])} crashes "
          f"({len(tally['unclear'])} unclear, {len(tally['accepted'])} accepted); by category: {categories}")
    assert total >= 50
    assert not tally["crash"] and not tally["accepted"] and not tally["unclear"], tally
    assert len(tally["clear"]) == total
