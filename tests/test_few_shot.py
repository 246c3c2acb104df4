"""cxrfx.data.few_shot (reproducible few-shot datalists, class subsets) and engines.schedule.finetune_schedule."""

from __future__ import annotations

import json

import pytest

from cxrfx.data.datalist import read_datalist
from cxrfx.data.few_shot import few_shot_datalist, select_few_shot, selection_path
from cxrfx.engines.schedule import finetune_schedule, parse_schedule, resolve_lengths
from cxrfx.errors import ConfigError, DatalistError

SEG = ["lung_left", "lung_right", "heart", "clavicle_left", "clavicle_right", "ribs"]


def _seg_datalist(path, n_train=20):
    def item(i):
        return {"id": f"s{i:03d}", "image": f"images/s{i:03d}.png",
                "mask": {c: f"masks/s{i:03d}_{c}.png" for c in SEG}}
    data = {"name": "toy_seg", "schema_version": 1,
            "tasks": {"segmentation": {"classes": SEG, "mask_format": "per_class"}},
            "training": [item(i) for i in range(n_train)], "validation": [item(100)], "test": [item(200), item(201)]}
    path.write_text(json.dumps(data))
    return path


def _det_datalist(path):
    boxes = [[], [[1, 1, 5, 5]], [[2, 2, 9, 9], [20, 20, 30, 30]], [], [[3, 3, 8, 8]], [[4, 4, 6, 6]]]
    labels = [[], [0], [1, 0], [], [1], [1]]
    train = [{"id": f"d{i}", "image": f"d{i}.dcm", "boxes": b, "box_labels": lab}
             for i, (b, lab) in enumerate(zip(boxes, labels))]
    data = {"name": "toy_det", "schema_version": 1, "box_mode": "xyxy",
            "tasks": {"detection": {"classes": ["nodule", "mass"]}}, "training": train,
            "validation": [{"id": "v", "image": "v.dcm", "boxes": [[1, 1, 4, 4]], "box_labels": [1]}], "test": []}
    path.write_text(json.dumps(data))
    return path


def test_selection_is_reproducible_nested_and_seed_dependent():
    items = [{"id": f"x{i:02d}", "image": f"{i}.png"} for i in range(30)]
    a = select_few_shot(items, 8, seed=1)
    assert a == select_few_shot(items, 8, seed=1) and len(set(a)) == 8
    assert select_few_shot(items, 4, seed=1) == a[:4]  # nested: the 4-shot set is inside the 8-shot set
    picks = {tuple(sorted(select_few_shot(items, 4, seed=s))) for s in range(5)}
    assert len(picks) == 5  # each seed its own set
    # the file's order does not matter: the same ids are chosen
    shuffled = items[::-1]
    assert {shuffled[i]["id"] for i in select_few_shot(shuffled, 8, seed=1)} == {items[i]["id"] for i in a}
    assert select_few_shot(items, None) == list(range(30))


def test_selection_refuses_impossible_requests():
    items = [{"id": "a", "image": "a.png"}, {"id": "b", "image": "b.png"}]
    with pytest.raises(ConfigError, match="asks for 3 training images but only 2"):
        select_few_shot(items, 3, where="x.json")
    with pytest.raises(ConfigError, match="positive"):
        select_few_shot(items, 0)


def test_seg_datalist_keeps_chosen_images_and_classes(tmp_path):
    src = _seg_datalist(tmp_path / "src.json")
    out = few_shot_datalist(src, tmp_path / "run" / "ft.json", shots=4, seed=3, seg_classes=SEG[:5], name="organs")
    data = read_datalist(out)  # schema-valid
    assert data["name"] == "organs" and data["tasks"]["segmentation"]["classes"] == SEG[:5]
    assert len(data["training"]) == 4 and len(data["validation"]) == 1 and len(data["test"]) == 2
    for item in data["training"] + data["test"]:
        assert set(item["mask"]) == set(SEG[:5]) and item["image"].startswith(str(tmp_path))
    record = json.loads(open(selection_path(out)).read())
    ids = [item["id"] for item in data["training"]]
    assert record["training_ids"] == ids and record["seed"] == 3 and record["shots"] == 4
    assert str(ids) in data["source"]
    again = few_shot_datalist(src, tmp_path / "again.json", shots=4, seed=3, seg_classes=SEG[:5])
    assert [i["id"] for i in read_datalist(again)["training"]] == ids
    other = few_shot_datalist(src, tmp_path / "other.json", shots=4, seed=4, seg_classes=SEG[:5])
    assert [i["id"] for i in read_datalist(other)["training"]] != ids


def test_det_datalist_remaps_classes_and_draws_annotated_images(tmp_path):
    src = _det_datalist(tmp_path / "det.json")
    out = few_shot_datalist(src, tmp_path / "ft.json", shots=3, seed=0, det_classes=["mass"], annotated_only=True)
    data = read_datalist(out)
    assert data["tasks"]["detection"]["classes"] == ["mass"]
    assert len(data["training"]) == 3
    for item in data["training"]:  # only images with a mass box are eligible; labels renumbered (mass -> 0)
        assert item["boxes"] and set(item["box_labels"]) == {0}
    assert data["validation"][0]["box_labels"] == [0]
    with pytest.raises(ConfigError, match="asks for 4 training images but only 3"):
        few_shot_datalist(src, tmp_path / "x.json", shots=4, det_classes=["mass"], annotated_only=True)


def test_errors_name_the_file_and_the_problem(tmp_path):
    src = _seg_datalist(tmp_path / "src.json")
    with pytest.raises(ConfigError, match=r"src.json: unknown segmentation classes \['spleen'\]"):
        few_shot_datalist(src, tmp_path / "o.json", seg_classes=["spleen"])
    with pytest.raises(ConfigError, match="no detection task"):
        few_shot_datalist(src, tmp_path / "o.json", det_classes=["nodule"])
    with pytest.raises(DatalistError, match="missing.json"):
        few_shot_datalist(tmp_path / "missing.json", tmp_path / "o.json")


def test_finetune_schedule_modes_share_one_budget():
    warm = finetune_schedule("organs", "seg", "warmup", iterations=100, lock_fraction=0.2)
    assert [(s["phase"], s["iterations"]) for s in warm] == [("lock", 20), ("release", 80)]
    assert finetune_schedule("organs", "seg", "full", iterations=100) == [
        {"dataset": "organs", "task": "seg", "phase": "release", "iterations": 100}]
    assert finetune_schedule("n", "det", "frozen", iterations=7)[0]["phase"] == "lock"
    steps = parse_schedule(finetune_schedule("n", "det", "warmup", epochs=10, lock_fraction=0.3))
    assert resolve_lengths(steps, {"det/n": 4}) == [12, 28]
    with pytest.raises(ConfigError, match="mode"):
        finetune_schedule("n", "det", "partial", iterations=5)
    with pytest.raises(ConfigError, match="exactly one"):
        finetune_schedule("n", "det", "full")
    with pytest.raises(ConfigError, match="lock_fraction"):
        finetune_schedule("n", "det", "warmup", iterations=5, lock_fraction=1.0)
