"""bench/few_shot_det.py: the detection stage of the transfer benchmark, end to end at a tiny size."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import few_shot  # noqa: E402
import few_shot_det  # noqa: E402


def test_overrides_share_head_name_and_start_point():
    job = {"arm": "foundation_x", "shots": 4, "seed": 3, "datalist": "/d/phantom_det/datalist.json",
           "settings": {"iterations": 10, "val_interval": 10, "det_anchors": [[[4.0, 4.0]]]},
           "pretrained": {"checkpoint": "/p/last.pt", "key": "teacher"}}
    got = few_shot_det.finetune_overrides(job)
    assert got["dataset_name"] == "phantom_det"  # the pretraining's head name: its weights load
    assert (got["finetune"], got["finetune_model_path"], got["finetune_key"]) == (True, "/p/last.pt", "teacher")
    assert (got["few_shot"], got["few_shot_seed"], got["seed"]) == (4, 3, 3)
    assert got["det_anchors"] == [[[4.0, 4.0]]] and got["batch_size"] == 4
    scratch = few_shot_det.finetune_overrides({**job, "pretrained": None})
    assert scratch["finetune"] is False and "finetune_model_path" not in scratch


def test_det_scores_and_curve_read_the_bundles_names():
    metrics = {"student/det/phantom_det/ap50": 0.4, "student/det/phantom_det/map40_fx": 0.2, "student/mean": 0.4}
    assert few_shot_det.det_scores(metrics) == {"ap50": 0.4, "map40_fx": 0.2}
    assert all(v != v for v in few_shot_det.det_scores({}).values())  # NaN, not a silent 0
    log = "Epoch[1] Metrics -- val_ap50: 0.1000 x\nEpoch[1] Metrics -- val_ap50: 0.2500\n"
    assert few_shot.validation_curve(log, 5, "ap50") == {5: 0.1, 10: 0.25}


def test_tiny_stage_loads_the_pretrained_head_pairs_and_resumes(tmp_path, capsys):
    """Pretraining (c), then a scratch and a (c) fine-tuning at 64 px: the pretrained localization branch and
    head load whole, both runs are scored and paired, the report is written, and a second call runs nothing."""
    args = ["--out", str(tmp_path / "out"), "--store", str(tmp_path / "store.json"), "--results",
            str(tmp_path / "results.md"), "--size", "64", "--phantom_size", "64", "--pretrain_count", "24",
            "--downstream_count", "24", "--iterations", "2", "--pretrain_cycles", "1", "--seeds", "0", "--shots", "2",
            "--arms", "scratch", "foundation_x"]
    few_shot_det.main(args)
    store = json.loads((tmp_path / "store.json").read_text())
    assert set(store["runs"]) == {"scratch/2/0", "foundation_x/2/0"}
    fx, scratch = store["runs"]["foundation_x/2/0"], store["runs"]["scratch/2/0"]
    assert fx["loaded"] and not scratch["loaded"]
    assert all(0.0 <= r["ap50"] <= 1.0 and 0.0 <= r["map40_fx"] <= 1.0 for r in (fx, scratch))
    assert store["pretraining"]["foundation_x"]["key"] == "teacher" and store["test_boxes"] >= 1
    # the pretraining's per-task rates: the demo config's, stored, passed to the bundle and said in the report
    assert store["settings"]["task_lr_scale"] == few_shot.demo_task_lr_scale()
    assert store["pretraining"]["foundation_x"]["call"]["overrides"]["task_lr_scale"] == few_shot.demo_task_lr_scale()
    pretrain_log = (tmp_path / "out" / "pretrain" / "foundation_x" / "train.log").read_text()
    assert "learning rate per task: " + ", ".join(
        f"{task} x {v:g}" for task, v in sorted(few_shot.demo_task_lr_scale().items())) in pretrain_log
    report = (tmp_path / "out" / "finetune" / "foundation_x_n2_s0" / "run.log").read_text()
    loaded = re.search(r"start point: .*loaded (\d+) tensors, missing (\d+)", report)
    assert loaded and int(loaded.group(1)) > 0 and loaded.group(2) == "0"  # backbone, branch and head: all of it
    text = (tmp_path / "results.md").read_text()
    assert "few_shot_det.py: begin" in text and "| (c) − (a) | 2 | 1 |" in text
    assert few_shot.pretraining_rates(store["settings"]) and few_shot.pretraining_rates(store["settings"]) in text
    capsys.readouterr()
    few_shot_det.main(args)  # everything is stored: nothing runs again
    assert "ap50" not in "".join(line for line in capsys.readouterr().out.splitlines() if "/2/0:" in line)
    assert json.loads((tmp_path / "store.json").read_text())["runs"] == store["runs"]
    # another command into the same store (here: one arm, nothing left to run): the report shows both commands
    few_shot_det.main(args[:-2] + ["scratch"])
    commands = json.loads((tmp_path / "store.json").read_text())["commands"]
    assert len(commands) == 2 and commands[0].endswith("--arms scratch foundation_x")
    assert commands[1].endswith("--arms scratch")
    text = (tmp_path / "results.md").read_text()
    assert "each command adds its arms and shot counts" in text and text.count("python bench/few_shot_det.py") == 2


def test_a_store_records_every_distinct_command_keeping_an_older_stores_one():
    old = {"command": "python bench/few_shot_det.py --shots 2 4"}
    few_shot.record_command(old, "python bench/few_shot_det.py --shots 8")
    few_shot.record_command(old, "python bench/few_shot_det.py --shots 8")
    assert old["commands"] == ["python bench/few_shot_det.py --shots 2 4", "python bench/few_shot_det.py --shots 8"]
    new = {}
    few_shot.record_command(new, "python bench/few_shot.py")
    assert new["commands"] == ["python bench/few_shot.py"]


def test_curve_table_means_each_validation_over_seeds():
    runs = [{"arm": "foundation_x", "shots": 2, "seed": s, "val_curve": {"25": 0.2 + s / 10, "50": 0.1}}
            for s in range(2)]
    runs.append({"arm": "scratch", "shots": 2, "seed": 0, "val_curve": {"50": 0.0}})  # one point: no curve
    text = few_shot_det.curve_table(runs)
    row = "| (c) Foundation X (Lock-Release + teacher) | 2 (2 seeds) | 0.250 | 0.100 |"
    assert "| it 25 | it 50 |" in text and row in text and "(a)" not in text
    assert few_shot_det.curve_table(runs[-1:]) == ""
