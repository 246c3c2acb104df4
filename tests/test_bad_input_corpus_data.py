"""Bad-input corpus (issue 10), part 2: malformed datalists and CSVs, and a live training loop over bad files.

Datalist cases go through :func:`cxrfx.data.validate.assert_valid` (schema, consistency and every file), CSV
cases through :func:`cxrfx.data.adapters.common.read_csv` (what ``python -m cxrfx prepare`` uses); both must
raise a CXRFXError naming the file (and, for CSVs, ``file:line``). The tally of both parts is in
``test_bad_input_corpus.py::test_corpus_summary``.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrfx.data.adapters.common import read_csv
from cxrfx.data.multitask import build_sources
from cxrfx.data.validate import assert_valid
from cxrfx.engines import LockReleaseHandler, MultiTaskTrainer, build_optimizer
from cxrfx.errors import CXRFXError
from cxrfx.networks import FoundationX
from test_bad_input_corpus import CASES as FILE_CASES
from test_bad_input_corpus import CLASSES, H, W, Case, encode_image, noise_image, run_case

LABELS = ["effusion", "nodule"]
CASES: list[Case] = []


def _mask_png(h: int = H, w: int = W) -> bytes:
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4:h // 2, w // 4:w // 2] = 255
    return encode_image(mask)


def _base(folder: Path) -> dict:
    """A valid datalist (one good image and mask) that each case breaks in one place."""
    (folder / "good.png").write_bytes(encode_image(noise_image()))
    (folder / "mask.png").write_bytes(_mask_png())
    return {"name": "corpus", "tasks": {"classification": {"labels": LABELS}, "detection": {"classes": ["nodule"]},
                                        "segmentation": {"classes": CLASSES, "mask_format": "per_class"}},
            "training": [{"image": "good.png", "id": "g1", "label": [0, 1], "mask": {"heart": "mask.png"}}]}


def _datalist(name: str, edit: Callable[[dict, Path], object] | None, *phrases: str,
              raw: Callable[[dict], bytes] | None = None) -> None:
    def build(folder: Path):
        data = _base(folder)
        path = folder / "datalist.json"
        if edit is not None:
            edit(data, folder)
        path.write_bytes(raw(data) if raw else json.dumps(data).encode())
        return (lambda: assert_valid(path)), path

    CASES.append(Case("datalist", name, build, phrases))


def _set(**fields):
    return lambda data, folder: data["training"][0].update(fields)


def _write(name: str, payload: bytes, **fields):
    """Edit: write ``payload`` as ``name`` beside the datalist, then set the item's fields."""
    return lambda data, folder: ((folder / name).write_bytes(payload), data["training"][0].update(fields))


_datalist("missing_image_key", lambda d, f: d["training"][0].pop("image"), "'image' is a required property")
_datalist("missing_tasks", lambda d, f: d.pop("tasks"), "'tasks' is a required property")
_datalist("missing_training", lambda d, f: d.pop("training"), "'training' is a required property")
_datalist("top_level_list", None, "is not of type 'object'", raw=lambda d: json.dumps([d]).encode())
_datalist("bad_dataset_name", lambda d, f: d.update(name="my data/v2"), "does not match")
_datalist("unknown_item_key", _set(imgae="good.png"), "Additional properties")
_datalist("image_is_number", _set(image=42), "is not of type 'string'")
_datalist("image_empty_string", _set(image=""), "should be non-empty")
_datalist("label_is_string", _set(label="0,1"), "is not of type 'array'")
_datalist("label_booleans", _set(label=[True, False]), "True is not one of")
_datalist("label_value_2", _set(label=[0, 2]), "2 is not one of")
_datalist("label_length", _set(label=[0, 1, 1]), "3 entries, expected 2")
_datalist("label_without_cls_task", lambda d, f: d["tasks"].pop("classification"), "no classification task")
_datalist("box_three_numbers", _set(boxes=[[1, 2, 3]], box_labels=[0]), "is too short")
_datalist("box_coordinates_strings", _set(boxes=[["1", "2", "9", "9"]], box_labels=[0]), "is not of type 'number'")
_datalist("box_x2_before_x1", _set(boxes=[[30, 2, 10, 9]], box_labels=[0]), "x1<x2")
_datalist("box_nan", _set(boxes=[[float("nan"), 2, 10, 9]], box_labels=[0]), "NaN is not valid JSON")
_datalist("box_infinite", _set(boxes=[[1, 2, float("inf"), 9]], box_labels=[0]), "Infinity is not valid JSON")
_datalist("box_outside_image", _set(boxes=[[10, 10, 90, 20]], box_labels=[0]), "outside the image", "width 48")
_datalist("box_negative", _set(boxes=[[-6, 2, 10, 9]], box_labels=[0]), "outside the image")
_datalist("box_label_out_of_range", _set(boxes=[[1, 2, 10, 9]], box_labels=[3]), "there are 1 classes")
_datalist("box_label_string", _set(boxes=[[1, 2, 10, 9]], box_labels=["nodule"]), "is not of type 'integer'")
_datalist("boxes_without_box_labels", _set(boxes=[[1, 2, 10, 9]]), "must be given together")
_datalist("box_count_mismatch", _set(boxes=[[1, 2, 10, 9], [3, 3, 9, 9]], box_labels=[0]), "2 boxes but 1 box_labels")
_datalist("duplicate_id", lambda d, f: d["training"].append({"image": "mask.png", "id": "g1"}), "duplicate id")
_datalist("duplicate_image", lambda d, f: d["training"].append({"image": "good.png", "id": "g2"}), "listed twice")
_datalist("image_not_found", _set(image="nowhere/x.png"), "x.png: file not found")
_datalist("image_is_directory", _set(image="."), "is a directory")
_datalist("image_truncated", _write("cut.png", encode_image(noise_image())[:300], image="cut.png"), "cannot decode")
_datalist("mask_not_found", _set(mask={"heart": "nope.png"}), "nope.png: file not found")
_datalist("mask_wrong_size", _write("small.png", _mask_png(H // 2, W), mask={"heart": "small.png"}),
          "differs from image size")
_datalist("mask_unknown_class", _set(mask={"spleen": "mask.png"}), "unknown classes")
_datalist("mask_format_index_given_mapping", lambda d, f: d["tasks"]["segmentation"].update(mask_format="index"),
          "must be one file path")
_datalist("mask_without_seg_task", lambda d, f: d["tasks"].pop("segmentation"), "no segmentation task")
_datalist("truncated_json", None, "not valid JSON", "line 1", raw=lambda d: json.dumps(d).encode()[:60])
_datalist("latin1_bytes", lambda d, f: d.update(description="Radiographies thoraciques"), "not valid UTF-8",
          "0xe9", raw=lambda d: json.dumps(d, indent=1, ensure_ascii=False).replace("thoraciques", "thoraciqu\xe9s")
          .encode("latin-1"))
_datalist("zero_bytes", None, "empty file", raw=lambda d: b"")


def _missing_datalist(folder: Path):
    path = folder / "no_such_datalist.json"
    return (lambda: assert_valid(path)), path


CASES.append(Case("datalist", "datalist_not_found", _missing_datalist, ("file not found",)))


# --- CSVs as the adapters read them: errors name file:line ------------------------------------------------------
HEADER = b"Image Index,Finding Labels,Patient ID\n"


def _csv(name: str, payload: bytes, *phrases: str) -> None:
    def build(folder: Path):
        path = folder / name
        path.write_bytes(payload)
        return (lambda: read_csv(str(path), required=("Image Index", "Finding Labels"))), path

    CASES.append(Case("csv", name.replace(".", "_"), build, phrases))


_csv("latin1_row.csv", HEADER + b"a.png,Effusion,1\nb.png,Epanchement pleural \xe9tendu,2\n", ":3: not valid UTF-8", "0xe9")
_csv("cp1252_quotes.csv", HEADER + b"a.png,No Finding,1\nb.png,No Finding,2\nc.png,\x93Mass\x94,3\n", ":4:", "0x93")
_csv("latin1_header.csv", b"Image Index,Finding Labels,Patient \xc2ge\n", ":1: not valid UTF-8")
_csv("utf16.csv", "\ufeff".encode("utf-16-le") + HEADER.decode().encode("utf-16-le"), ":1:", "UTF-16")
_csv("nul_byte.csv", HEADER + b"a.png,Effusion\x00,1\n", ":2: NUL character")
_csv("unterminated_quote.csv", HEADER + b'a.png,"Effusion|Mass,1\nb.png,No Finding,2\n', "malformed CSV")
_csv("stray_quote.csv", HEADER + b'a.png,"Effusion"x,1\n', ":2: malformed CSV")
_csv("field_too_large.csv", HEADER + b'a.png,"' + b"M" * 200_000 + b'",1\n', ":2: malformed CSV", "field larger")
_csv("missing_column.csv", b"Image Index,Patient ID\na.png,1\n", "missing column(s) ['Finding Labels']")
_csv("short_row.csv", HEADER + b"a.png,Effusion,1\nb.png\n", ":3: 1 fields, expected at least 2")
_csv("empty.csv", b"", "empty file")
_csv("truncated.csv.gz", gzip.compress(HEADER + b"a.png,Effusion,1\n" * 50)[:-30], "cannot read")
_csv("not_gzip.csv.gz", HEADER + b"a.png,Effusion,1\n", "cannot read", "gzip")


@pytest.mark.parametrize("case", CASES, ids=[f"{c.category}:{c.id}" for c in CASES])
def test_bad_datalist_or_csv_gives_a_clear_error(case, tmp_path):
    outcome, message = run_case(case, tmp_path)
    assert outcome == "clear", f"{outcome}: {message}"


# --- a live training loop meeting bad files ---------------------------------------------------------------------
NET = dict(backbone="tiny", backbone_kwargs={"embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 3, 6),
                                             "window_size": 4, "drop_path_rate": 0.0}, seg_channels=16, psp_channels=32)
BAD_IMAGES = ("half_png", "random_jpg", "zero_dcm", "nan_tif", "one_pixel_png", "huge_png", "no_pixel_data_dcm",
              "multi_frame_dcm", "pixels_cut_mha")
BAD_MASKS = ("binary_lossy_levels_png", "binary_alpha_only_png", "binary_rgb_colours_png", "nan_mask_tif",
             "empty_mask_png", "truncated_mask_png", "random_mask_png")


def _corpus_file(case_id: str, folder: Path) -> str:
    case = next(c for c in FILE_CASES if c.id == case_id)
    return str(case.build(folder)[1])


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Two datalists mixing 6 good items with bad ones: images (cls) and masks (seg); returns (sources, bad)."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    good = []
    for i in range(6):
        (root / f"good{i}.png").write_bytes(encode_image(rng.integers(0, 256, (H, W), dtype=np.uint8)))
        (root / f"mask{i}.png").write_bytes(_mask_png())
        good.append({"image": f"good{i}.png", "id": f"good{i}", "label": [i % 2, 1 - i % 2],
                     "mask": {"lung_left": f"mask{i}.png", "heart": f"mask{i}.png"}})
    bad_images = [_corpus_file(c, root) for c in BAD_IMAGES] + [str(root / "never_written.png")]
    bad_masks = [_corpus_file(c, root) for c in BAD_MASKS] + [str(root / "no_mask.png")]
    (root / "small_mask.png").write_bytes(_mask_png(H // 2, W // 2))
    bad_masks.append(str(root / "small_mask.png"))
    cls = [{"image": p, "id": f"bad{i}", "label": [1, 0]} for i, p in enumerate(bad_images)]
    seg = []
    for i, path in enumerate(bad_masks):  # a good image of its own each: an image listed twice is a datalist error
        (root / f"for_mask{i}.png").write_bytes((root / "good0.png").read_bytes())
        seg.append({"image": f"for_mask{i}.png", "id": f"badmask{i}", "mask": {"heart": path}})
    sources = {}
    for name, task, items, tasks in (("bad_cls", "cls", cls, {"classification": {"labels": LABELS}}),
                                     ("bad_seg", "seg", seg, {"segmentation": {"classes": CLASSES,
                                                                               "mask_format": "per_class"}})):
        path = root / f"{name}.json"
        good_items = [{k: v for k, v in g.items() if k != ("mask" if task == "cls" else "label")} for g in good]
        # in file order, batches of 4 are [good, good, bad, bad] x 3, then only bad ones
        ordered = [x for i in range(0, 6, 2) for x in good_items[i:i + 2] + items[i:i + 2]] + items[6:]
        path.write_text(json.dumps({"name": name, "tasks": tasks, "training": ordered}))
        sources[name] = {"datalist": str(path), "tasks": [task]}
    return sources, {"bad_cls": bad_images, "bad_seg": bad_masks}


def _trainer(loaders):
    torch.manual_seed(0)
    net = FoundationX(**NET, cls_heads={"bad_cls": len(LABELS)}, seg_heads={"bad_seg": len(CLASSES)})
    steps = [{"dataset": name.split("/")[1], "task": name.split("/")[0], "epoch_fraction": 1.0} for name in loaders]
    return MultiTaskTrainer("cpu", 1, net, build_optimizer(net), LockReleaseHandler(steps, loaders, net))


def test_training_loop_skips_and_counts_every_bad_sample(mixed, caplog):
    sources, bad = mixed
    # batch size 4: 15 items leave no single-image last batch, so no item is dropped and each is met once
    loaders = build_sources({"bad_cls": sources["bad_cls"]}, size=64, batch_size=4, skip_bad_samples=True)
    # seg in file order (train=False), so that every bad item is met exactly once
    loaders.update(build_sources({"bad_seg": sources["bad_seg"]}, size=64, batch_size=4, train=False,
                                 skip_bad_samples=True))
    trainer = _trainer(loaders)
    with caplog.at_level(logging.WARNING, logger="cxrfx.data"):
        trainer.run()
    met = sum(len(v) for v in bad.values())
    assert trainer.state.iteration == sum(len(loader) for loader in loaders.values())
    assert trainer.skipped_samples == met
    skipped_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped sample")]
    assert len(skipped_lines) == met
    for path in bad["bad_cls"] + bad["bad_seg"]:  # each bad file named in exactly one log line, with the reason
        assert sum(path in line for line in skipped_lines) == 1, path


def test_a_batch_left_with_one_image_by_skipping_does_not_crash(mixed, caplog):
    sources, bad = mixed
    data = json.loads(Path(sources["bad_seg"]["datalist"]).read_text())
    one_good_one_bad = dict(data, training=[data["training"][0], data["training"][-1]])
    path = Path(sources["bad_seg"]["datalist"]).with_name("one_survivor.json")
    path.write_text(json.dumps(one_good_one_bad))
    loaders = build_sources({"bad_seg": {"datalist": str(path), "tasks": ["seg"]}}, size=64, batch_size=2,
                            skip_bad_samples=True)
    trainer = _trainer(loaders)
    with caplog.at_level(logging.WARNING, logger="cxrfx.trainer"):
        trainer.run()  # BatchNorm cannot train on one image: the batch is skipped, not the run
    assert trainer.skipped_samples == 1
    assert any("left with 1 image(s)" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", ["bad_cls", "bad_seg"])
def test_without_the_policy_the_first_bad_sample_stops_the_run_naming_the_file(mixed, name):
    sources, bad = mixed
    loaders = build_sources({name: sources[name]}, size=64, batch_size=4)
    with pytest.raises(Exception) as info:
        _trainer(loaders).run()
    chain, exc = [], info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__
    clear = [e for e in chain if isinstance(e, CXRFXError)]
    assert clear, f"no CXRFXError in the chain: {chain}"
    assert any(path in str(clear[0]) for path in bad[name]), str(clear[0])
