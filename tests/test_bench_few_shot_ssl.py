"""bench/few_shot_ssl.py: the SSL arms' lengths at equal CPU cost, their bundle overrides, and the unlabelled
datalist they read (the runs themselves are a benchmark, not a test)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import few_shot  # noqa: E402
import few_shot_ssl  # noqa: E402

from cxrfx.data.datalist import load_datalist, read_datalist  # noqa: E402
from cxrfx.ssl.data import ssl_loaders  # noqa: E402


def test_ssl_lengths_spend_the_cycles_cpu_time():
    cost = {"dira": 1.6, "adam_v2": 2.5}
    assert few_shot_ssl.ssl_lengths("ssl_dira", 8, cost) == (5, 0)  # 8 / 1.6
    assert few_shot_ssl.ssl_lengths("ssl_adam", 8, cost) == (3, 0)  # 8 / 2.5 = 3.2
    assert few_shot_ssl.ssl_lengths("dira_fx", 8, cost) == (2, 4)  # half the cycles, then 4 / 1.6 = 2.5 -> 2
    assert few_shot_ssl.ssl_lengths("ssl_adam", 1, {"dira": 1.0, "adam_v2": 9.0}) == (1, 0)  # never none


def test_ssl_overrides_select_the_recipe_and_count_the_warmup_in_the_epochs():
    base = {"batch_size": 4, "schedule": ["cycle"], "datasets": {"phantom_cls": {}}}
    cost = {"dira": 2.0, "adam_v2": 4.0}
    dira = few_shot_ssl.ssl_overrides("dira_fx", base, "/d/unlabelled.json", 8, cost)
    assert dira["ssl_warmup_epochs"] == 2 and dira["epochs"] == dira["val_interval"] == 6  # 2 SSL + 4 cycles
    assert dira["ssl_recipe#queue_size"] == few_shot_ssl.SSL_QUEUE and "ssl_transforms" not in dira
    assert dira["ssl_datasets"] == {"phantom_images": {"datalist": "/d/unlabelled.json"}}
    assert dira["schedule"] == ["cycle"] and dira["batch_size"] == 4  # the base survives
    adam = few_shot_ssl.ssl_overrides("ssl_adam", base, "/d/unlabelled.json", 8, cost)
    assert adam["ssl_recipe"]["_target_"] == "cxrfx.ssl.adam_v2.AdamV2" and adam["ssl_transforms"] == {
        "recipe": "adam_v2"}
    assert adam["ssl_warmup_epochs"] == adam["epochs"] == 2  # SSL only: every epoch is a warm-up epoch


def _images_datalist(folder: Path, name: str, files: dict[str, list[str]]) -> str:
    items = {split: [{"image": f"img/{f}", "id": f} for f in names] for split, names in files.items()}
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for names in files.values():
        for f in names:
            Image.fromarray(np.full((32, 32), 40 * len(f), np.uint8)).save(folder / "img" / f)
    path = folder / "datalist.json"
    path.write_text(json.dumps({"name": name, "schema_version": 1, "kind": "unlabelled", "tasks": {}, **items}))
    return str(path)


def test_unlabelled_datalist_joins_the_sources_images_split_by_split(tmp_path):
    a = _images_datalist(tmp_path / "a", "a", {"training": ["1.png", "2.png"], "test": ["3.png"]})
    b = _images_datalist(tmp_path / "b", "b", {"training": ["4.png"], "validation": ["5.png"]})
    out = few_shot_ssl.unlabelled_datalist([a, b, a], tmp_path / "pre" / "unlabelled.json")  # a twice: no duplicates
    data = read_datalist(out)
    assert data["kind"] == "unlabelled" and data["tasks"] == {}
    assert {k: len(data[k]) for k in ("training", "validation", "test")} == {"training": 3, "validation": 1, "test": 1}
    assert data["training"][0]["image"] == "../a/img/1.png"  # relative to the new datalist's folder
    assert [Path(i["image"]).name for i in load_datalist(out)] == ["1.png", "2.png", "4.png"]
    loader = ssl_loaders({"phantom_images": {"datalist": out}}, size=32, batch_size=3)["ssl/phantom_images"]
    batch = next(iter(loader))
    assert tuple(batch["view1"].shape) == (3, 1, 32, 32) and set(batch["id"]) == {"1.png", "2.png", "4.png"}


def test_every_pretrained_arm_has_a_spec_and_the_ssl_arms_their_configs(monkeypatch, tmp_path):
    monkeypatch.setattr(few_shot, "_cycle_length", lambda sources, schedule, bs, size: 100)
    data = {"pretrain": {"phantom_cls": "c.json", "phantom_det": "d.json", "phantom_seg": "s.json"},
            "unlabelled": "u.json", "seg": "down.json"}
    specs = few_shot.pretrain_specs(data, tmp_path, 8, 224, cost={"dira": 1.0, "adam_v2": 2.0})
    assert set(specs) == set(few_shot.PRETRAINED)
    assert specs["foundation_x"]["overrides"]["epochs"] == 8 and "configs" not in specs["foundation_x"]
    for arm, (_, key) in few_shot_ssl.SSL_ARMS.items():
        assert specs[arm]["configs"] == ["train.json", "demo.json", "ssl.json"] and specs[arm]["key"] == key
        assert specs[arm]["overrides"]["datasets"] == specs["foundation_x"]["overrides"]["datasets"]
    assert specs["ssl_adam"]["overrides"]["epochs"] == 4 and specs["ssl_dira"]["overrides"]["epochs"] == 8
    assert specs["dira_fx"]["overrides"]["ssl_warmup_epochs"] == 4 and specs["dira_fx"]["overrides"]["epochs"] == 8
