"""bench/few_shot.py's statistics and tables (the runs themselves are a benchmark, not a test)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import few_shot  # noqa: E402


def _runs(values: dict) -> list[dict]:
    return [{"arm": arm, "shots": 2, "seed": seed, "dice_fx": v, "train_cpu_s": 10.0}
            for arm, per_seed in values.items() for seed, v in enumerate(per_seed)]


def test_exact_wilcoxon_by_hand():
    # 8 pairs all favouring one arm: the exact two-sided p is 2 / 2**8
    assert few_shot.wilcoxon([0.1, 0.2, 0.05, 0.3, 0.15, 0.25, 0.12, 0.02]) == pytest.approx(2 / 256)
    # 5 pairs can never reach p < 0.0625 (why the issue asks for >= 8 seeds)
    assert few_shot.wilcoxon([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(0.0625)
    assert few_shot.wilcoxon([0.1, 0.0]) != few_shot.wilcoxon([0.1, 0.0])  # NaN: fewer than 2 non-zero pairs


def test_tables_pair_by_seed_and_count_pairs():
    runs = _runs({"scratch": [0.5, 0.6, 0.7], "foundation_x": [0.6, 0.65, 0.6]})
    paired = few_shot.paired(runs)
    row = next(line for line in paired.splitlines() if line.startswith("| (c) − (a)"))
    assert "| 2 | 3 | +0.017 | 2 / 1 |" in row  # differences +0.1, +0.05, -0.1
    table = few_shot.table(runs)
    assert "| (a) from scratch | 0.600 ± 0.100 (3) |" in table and "(f)" not in table  # arms without runs left out


def test_equal_cpu_picks_the_nearest_curve_point():
    runs = [{"arm": "foundation_x", "shots": 4, "seed": 0, "dice_fx": 0.8, "train_cpu_s": 100.0},
            {"arm": "monai_unet", "shots": 4, "seed": 0, "dice_fx": 0.7, "train_cpu_s": 30.0,
             "curve": {"50": {"dice_fx": 0.5, "train_cpu_s": 30.0}, "200": {"dice_fx": 0.75, "train_cpu_s": 110.0}}}]
    assert "| 4 | 100 | 0.800 | 200, 110, 0.750 |" in few_shot.equal_cpu(runs)


def test_equal_time_is_wall_time_on_a_gpu():
    runs = [{"arm": "foundation_x", "shots": 4, "seed": 0, "dice_fx": 0.8, "train_cpu_s": 100.0, "train_s": 15.0,
             "device": "NVIDIA H200"},
            {"arm": "monai_unet", "shots": 4, "seed": 0, "dice_fx": 0.7, "train_cpu_s": 30.0, "train_s": 8.0,
             "device": "NVIDIA H200",
             "curve": {"50": {"dice_fx": 0.5, "train_cpu_s": 30.0, "train_s": 8.0},
                       "200": {"dice_fx": 0.75, "train_cpu_s": 110.0, "train_s": 30.0}}}]
    text = few_shot.equal_cpu(runs)
    assert "wall s" in text and "| 4 | 15 | 0.800 | 50, 8, 0.500 |" in text  # by CPU time it would be 200


def test_job_order_follows_the_issue_stages():
    order = few_shot.job_order([0, 1], [2, 4, 8], list(few_shot.ARMS))
    assert len(order) == 2 * 3 * 10 and len(set(order)) == len(order)
    first = order[:16]  # (a), (b), (c), (f) at 2 and 4 images, seed by seed
    assert {a for a, _, _ in first} == set(few_shot.FIRST_ARMS) and {n for _, n, _ in first} == {2, 4}
    assert [s for _, _, s in first] == [0] * 8 + [1] * 8
    assert {a for a, _, _ in order[16:40]} == {"fx_no_lock", "fx_no_teacher", "ssl_dira", "ssl_adam", "dira_fx",
                                               "det_only"}
    assert {n for _, n, _ in order[40:]} == {8}


def _double(job: dict) -> dict:  # a task for execute(), importable by its worker processes
    if job["x"] < 0:
        raise ValueError("negative")
    return {"x": 2 * job["x"], "got": job.get("got")}


@pytest.mark.parametrize("workers", [1, 2])
def test_execute_runs_dependencies_first_and_survives_a_failure(workers):
    tasks = [{"key": "pre", "fn": _double, "job": {"x": 1}, "after": None},
             {"key": "bad", "fn": _double, "job": {"x": -1}, "after": None},
             {"key": "a", "fn": _double, "job": {"x": 3}, "after": "pre"},
             {"key": "b", "fn": _double, "job": {"x": 4}, "after": "bad"},  # skipped: what it needs failed
             {"key": "c", "fn": _double, "job": {"x": 5}, "after": None}]
    results = {}

    def prepare(task):  # what a dependent learns from its dependency when it starts
        return {**task["job"], "got": results.get(task["after"], {}).get("x")}

    def done(task, result, cpu):
        assert cpu >= 0
        results[task["key"]] = result

    failed = few_shot.execute(tasks, workers, 1, None, prepare, done)
    assert sorted(failed) == ["b", "bad"]
    assert results == {"pre": {"x": 2, "got": None}, "a": {"x": 6, "got": 2}, "c": {"x": 10, "got": None}}


def test_execute_starts_nothing_after_the_deadline():
    import time

    ran = []
    tasks = [{"key": str(i), "fn": _double, "job": {"x": i}, "after": None} for i in range(3)]
    failed = few_shot.execute(tasks, 1, 1, time.monotonic() - 1, lambda t: t["job"],
                              lambda t, r, c: ran.append(t["key"]))
    assert ran == [] and failed == []
    # a dependency already finished in an earlier session counts as done
    few_shot.execute([{"key": "a", "fn": _double, "job": {"x": 1}, "after": "pre"}], 1, 1, None, lambda t: t["job"],
                     lambda t, r, c: ran.append(t["key"]), finished={"pre"})
    assert ran == ["a"]


def test_pretraining_metrics_reads_the_teachers_last_validation(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("Epoch[4] Metrics -- teacher/cls/a/auc: 0.4000 teacher/mean: 0.2\n"
                   "noise\n"
                   "Message: 'Epoch[8] Metrics -- student/cls/a/auc: 0.9 teacher/cls/a/auc: 0.6250 "
                   "teacher/det/phantom_det/ap50: 1.5e-03 teacher/mean: 0.3 val_mean_teacher: 0.3 '\n")
    assert few_shot.pretraining_metrics(log) == {"cls/a/auc": 0.625, "det/phantom_det/ap50": 0.0015}
    assert few_shot.pretraining_metrics(tmp_path / "gone.log") == {}


def test_a_runs_log_handlers_write_into_the_next_runs_log():
    """A handler a run bound to its log (MONAI's StatsHandler adds one once per process, without propagation)
    writes the next run's messages into the next run's log, not into the closed one nor nowhere."""
    import contextlib
    import io
    import logging

    first, second, other = io.StringIO(), io.StringIO(), io.StringIO()
    logger = logging.getLogger("cxrfx.test.few_shot_handlers")
    logger.propagate, logger.level = False, logging.INFO
    with contextlib.redirect_stdout(first):
        logger.addHandler(logging.StreamHandler(sys.stdout))
        logger.addHandler(logging.StreamHandler(other))
        logger.info("run 1")
    few_shot._release_handlers_from(first)
    first.close()
    with contextlib.redirect_stdout(second):
        logger.info("run 2 Metrics")
    logger.handlers.clear()
    assert second.getvalue() == "run 2 Metrics\n" and other.getvalue() == "run 1\nrun 2 Metrics\n"


def _store(cycles: int, fx: list[float], scratch: list[float] | None, shots: int = 2) -> dict:
    runs = {f"foundation_x/{shots}/{s}": {"arm": "foundation_x", "shots": shots, "seed": s, "dice_fx": v}
            for s, v in enumerate(fx)}
    runs.update({f"scratch/{shots}/{s}": {"arm": "scratch", "shots": shots, "seed": s, "dice_fx": v}
                 for s, v in enumerate(scratch or [])})
    return {"settings": {"pretrain_cycles": cycles, "size": 224},
            "pretraining": {"foundation_x": {"iterations": 100 * cycles, "cpu_seconds": 60.0 * cycles,
                                             "checkpoint": "/nowhere/models/last.pt",
                                             "validation": {"cls/a/auc": 0.6, "cls/b/auc": 0.8,
                                                            "seg/phantom_seg/dice_fx": 0.5}}},
            "runs": runs}


def test_lengths_table_pairs_each_length_with_the_shared_scratch_runs():
    import few_shot_lengths

    short = _store(8, [0.70, 0.80, 0.90], [0.75, 0.75, 0.75])
    long = _store(32, [0.80, 0.85, 0.70], None)  # no scratch runs of its own: they come from the other store
    rows = [line for line in few_shot_lengths.lengths_table([long, short]).splitlines() if line[2].isdigit()]
    assert rows[0].startswith("| 8 | 800 | 8.0 | AUC 0.70 · Dice 0.50 | 2 | 0.800 ± 0.100 | 0.750 ± 0.000 | +0.050 "
                              "| 2 / 1 |")
    assert rows[1].startswith("| 32 | 3200 | 32.0 |") and "| +0.033 | 2 / 1 |" in rows[1]
    clash = _store(32, [0.8], [0.5])  # the same scratch run with another value: stores made differently
    with pytest.raises(SystemExit, match="differs between stores"):
        few_shot_lengths.lengths_table([short, clash])


def test_lengths_of_detection_stores_pair_ap50_and_write_their_own_section(tmp_path):
    import json

    import few_shot_lengths

    def det_store(cycles, fx, scratch):
        store = _store(cycles, fx, scratch)
        for run in store["runs"].values():
            run["ap50"] = run.pop("dice_fx")
        return store

    short, long = det_store(8, [0.20, 0.30], [0.05, 0.10]), det_store(32, [0.40, 0.25], None)
    # a pretraining whose log is gone keeps the summary read from it while it was there
    del long["pretraining"]["foundation_x"]["validation"]
    long["pretraining"]["foundation_x"]["validation_text"] = "AUC 0.47 · AP50 0.021"
    rows = [line for line in few_shot_lengths.lengths_table([short, long], "ap50").splitlines() if line[2].isdigit()]
    assert "| 0.250 ± 0.071 | 0.075 ± 0.035 | +0.175 | 2 / 0 |" in rows[0]
    assert rows[1].startswith("| 32 | 3200 | 32.0 | AUC 0.47 · AP50 0.021 | 2 | 0.325 ± 0.106 |")
    paths = []
    for i, store in enumerate((short, long)):
        paths.append(tmp_path / f"s{i}.json")
        paths[-1].write_text(json.dumps(store))
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\n<!-- few_shot_lengths.py: begin (generated) -->\n\norgans\n\n"
                   "<!-- few_shot_lengths.py: end -->\n")
    few_shot_lengths.main([*map(str, paths), "--metric", "ap50", "--results", str(doc)])
    text = doc.read_text()
    assert "organs" in text and "few_shot_lengths.py (detection): begin" in text and "test AP50" in text
    with pytest.raises(SystemExit, match="organ"):
        few_shot_lengths.main([*map(str, paths), "--metric", "ap50", "--frozen", str(paths[0])])


def test_frozen_table_puts_the_probe_beside_full_fine_tuning_per_length():
    import few_shot_lengths

    full = [_store(8, [0.80, 0.84], [0.82, 0.86]), _store(32, [0.78, 0.80], None)]
    frozen = [_store(8, [0.50, 0.54], [0.10, 0.10]), _store(32, [0.60, 0.64], None)]
    rows = [line for line in few_shot_lengths.frozen_table(full, frozen).splitlines() if line.startswith("| (")]
    assert rows == ["| (a) scratch (random features) | – | 2 | 0.100 ± 0.000 (2) | 0.840 ± 0.028 (2) |",
                    "| (c) Foundation X | 8 | 2 | 0.520 ± 0.028 (2) | 0.820 ± 0.028 (2) |",
                    "| (c) Foundation X | 32 | 2 | 0.620 ± 0.028 (2) | 0.790 ± 0.014 (2) |"]


def test_pretrainings_are_borrowed_only_from_a_store_with_the_same_pretraining_settings():
    settings = {"size": 224, "pretrain_cycles": 8, "phantom_size": 256, "pretrain_count": 96, "pretrain_seed": 100}
    done = {"checkpoint": "/x/last.pt", "key": "teacher"}
    mine = {"settings": {**settings, "mode": "frozen"}, "pretraining": {}}
    few_shot.borrow_pretraining(mine, {"settings": {**settings, "mode": "full"}, "pretraining": {"foundation_x": done}},
                                "full.json")
    assert mine["pretraining"] == {"foundation_x": done}
    with pytest.raises(SystemExit, match="pretrain_cycles 32 here 8"):
        few_shot.borrow_pretraining(mine, {"settings": {**settings, "pretrain_cycles": 32}, "pretraining": {}}, "x")
    with pytest.raises(SystemExit, match=r"task_lr_scale \{'det': 0.1\} here None"):
        few_shot.borrow_pretraining(mine, {"settings": {**settings, "task_lr_scale": {"det": 0.1}}, "pretraining": {}},
                                    "x")


def test_recipes_pair_each_recipe_with_its_own_scratch_runs():
    import few_shot_recipes

    full = _store(8, [0.80, 0.84], [0.82, 0.86])
    full["settings"].update(mode="full", iterations=200)
    warm = _store(8, [0.83, 0.80], [0.81, 0.79])
    warm["settings"].update(mode="warmup", iterations=200, backbone_lr=1e-4)
    rows = few_shot_recipes.recipes_table([full, warm]).splitlines()[2:]
    assert rows == ["| full, backbone lr 3e-04, head lr 1e-03, 200 it | 8 | 2 | 0.820 ± 0.028 | 0.840 ± 0.028 | -0.020 "
                    "| 0 / 2 | 0.5 |",
                    "| warmup, backbone lr 1e-04, head lr 1e-03, 200 it | 8 | 2 | 0.815 ± 0.021 | 0.800 ± 0.014 | "
                    "+0.015 | 2 / 0 | 0.5 |"]
    assert few_shot_recipes.recipe({"mode": "full", "iterations": 200, "backbone_lr": 0.0}) == \
        "full, backbone lr 0 (backbone frozen), head lr 1e-03, 200 it"
    assert few_shot_recipes.recipe({"mode": "full", "iterations": 200, "decoder_channels": [8, 16]}).endswith(
        "200 it, decoder 8/16 channels (mostly new)")
    assert few_shot.decoder_settings([8, 16]) == {"network_def#seg_channels": 8, "network_def#psp_channels": 16}
    assert few_shot.decoder_settings(None) == {}


def test_organ_scores_follow_the_channel_order():
    metrics = {f"student/seg/organs/dice_fx_{c}": 0.1 * c for c in range(5)} | {"student/seg/organs/dice_fx": 0.2}
    assert few_shot.organ_scores(metrics) == {"lung_left": 0.0, "lung_right": 0.1, "heart": 0.2,
                                              "clavicle_left": pytest.approx(0.3), "clavicle_right": 0.4}
    assert few_shot.organ_scores({"student/seg/organs/dice_fx": 0.2}) == {}  # an evaluation from before


def test_organ_report_pairs_the_clavicles_and_leaves_out_runs_without_organs():
    import few_shot_organs

    def run(arm, seed, clavicle, big=0.9):
        return {"arm": arm, "shots": 2, "seed": seed, "dice_fx": 0.0,
                "per_organ": {"lung_left": big, "lung_right": big, "heart": big,
                              "clavicle_left": clavicle, "clavicle_right": clavicle + 0.1}}

    runs = [run("scratch", 0, 0.5), run("scratch", 1, 0.6), run("foundation_x", 0, 0.7), run("foundation_x", 1, 0.5),
            {"arm": "foundation_x", "shots": 2, "seed": 2, "dice_fx": 0.8}]  # no per-organ values: left out
    text = few_shot_organs.report(runs)
    assert "| (c) Foundation X (Lock-Release + teacher) | 0.650 ± 0.141 (2) |" in text  # clavicles 0.75 and 0.55
    assert "| (a) from scratch | 0.900 ± 0.000 (2) |" in text  # lungs and heart
    assert "| (c) − (a) | 2 | 2 | +0.050 | 1 / 1 |" in text
    assert "(f)" not in text
    assert few_shot_organs.report(runs[-1:]).startswith("No run has per-organ Dice")


def test_validation_curve_reads_one_point_per_validation():
    log = ("x Metrics -- student/mean: 0.5 val_dice_fx: 0.5000 \n"
           "Message: 'Epoch[1] Metrics -- student/mean: 0.6 val_dice_fx: 0.6250 '\nnoise val_dice_fx: 0.9\n")
    assert few_shot.validation_curve(log, 100) == {100: 0.5, 200: 0.625}


def test_curve_table_means_per_point_and_pairs_by_seed():
    import few_shot_curve

    def run(arm, seed, values, test):
        return {"arm": arm, "shots": 2, "seed": seed, "dice_fx": test,
                "val_curve": {str(100 * (k + 1)): v for k, v in enumerate(values)}}  # JSON keys are strings

    runs = [run("scratch", 0, [0.5, 0.7], 0.70), run("scratch", 1, [0.6, 0.7], 0.72),
            run("foundation_x", 0, [0.6, 0.8], 0.80), run("foundation_x", 1, [0.5, 0.6], 0.60)]
    text = few_shot_curve.curve_table(runs)
    assert "| (a) from scratch | 2 | 2 | 0.550 ± 0.071 | 0.700 ± 0.000 | 0.710 ± 0.014 |" in text
    assert "| (c) − (a) | 2 | 2 | +0.000 (1/2) | +0.000 (1/2) | |" in text
    assert few_shot_curve.curve_table([{**runs[0], "val_curve": {}}]).startswith("No run has a validation curve")


def test_curves_are_recovered_from_the_runs_tensorboard_files(tmp_path):
    import few_shot_curve
    from torch.utils.tensorboard import SummaryWriter

    folder = tmp_path / "scratch_n2_s0" / "eval"
    writer = SummaryWriter(log_dir=str(folder))
    for value in (0.5, 0.7, 0.75):  # MONAI's validation handler writes each at the trainer's epoch: one step
        writer.add_scalar("val_dice_fx", value, 1)
        writer.add_scalar("train_loss", 1.0 - value, 1)
    writer.close()
    assert few_shot_curve.curve_from_events(folder, 100, 3) == pytest.approx({100: 0.5, 200: 0.7, 300: 0.75})
    assert few_shot_curve.curve_from_events(folder, 100, 4) == {}  # a count that does not fit: nothing guessed
    store = {"settings": {"iterations": 300, "val_interval": 100},
             "runs": {"a": {"val_curve": {}, "calls": [{"root": str(folder.parent)}]},
                      "b": {"val_curve": {"100": 0.1}, "calls": [{"root": str(folder.parent)}]}}}
    assert few_shot_curve.recover(store) == 1
    assert store["runs"]["a"]["val_curve"] == pytest.approx({100: 0.5, 200: 0.7, 300: 0.75})
    assert store["runs"]["b"]["val_curve"] == {"100": 0.1}


def test_partial_start_points_keep_only_their_part_and_pair_with_both_arms(tmp_path):
    import few_shot_partial
    import torch

    weights = {"input_mean": torch.zeros(1), "backbone.layers.2.blocks.0.w": torch.ones(1),
               "backbone.layers.3.blocks.0.w": torch.ones(1), "backbone.norm.weight": torch.ones(1),
               "seg_decoder.fuse.0.weight": torch.ones(1), "cls_heads.a.weight": torch.ones(1)}
    torch.save({"teacher": weights, "student": {}}, tmp_path / "last.pt")
    early = few_shot_partial.partial_checkpoint(tmp_path / "last.pt", "teacher", "early_stages")
    assert sorted(torch.load(early)["teacher"]) == ["backbone.layers.2.blocks.0.w", "input_mean"]
    whole = few_shot_partial.partial_checkpoint(tmp_path / "last.pt", "teacher", "backbone")
    assert sorted(torch.load(whole)["teacher"]) == ["backbone.layers.2.blocks.0.w", "backbone.layers.3.blocks.0.w",
                                                    "backbone.norm.weight", "input_mean"]
    store = {"runs": {f"{arm}/4/{s}": {"dice_fx": v} for arm, values in
                      (("scratch", [0.80, 0.80]), ("foundation_x", [0.70, 0.90])) for s, v in enumerate(values)}}
    partial = {f"backbone/4/{s}": {"arm": "backbone", "shots": 4, "seed": s, "dice_fx": v}
               for s, v in enumerate([0.85, 0.95])}
    row = few_shot_partial.report(store, partial).splitlines()[-1]
    assert row.startswith("| (c), backbone only | 4 | 2 | 0.900 ± 0.071 | +0.100, 2 / 0, ")
    assert row.split("|")[6].startswith(" +0.100, 2 / 0, ")  # against (c): +0.15 and +0.05


def test_task_lr_scale_is_parsed_refused_with_its_reason_and_stored_as_used(tmp_path):
    import argparse

    assert few_shot.parse_task_lr_scale('{"det": 0.1, "cls": 1}') == {"cls": 1.0, "det": 0.1}
    assert few_shot.parse_task_lr_scale("{}") == {}
    with pytest.raises(argparse.ArgumentTypeError, match="is not JSON"):
        few_shot.parse_task_lr_scale("{det: 0.1}")
    with pytest.raises(argparse.ArgumentTypeError, match="positive numbers by task"):
        few_shot.parse_task_lr_scale('{"det": 0}')
    with pytest.raises(argparse.ArgumentTypeError, match="positive numbers by task"):
        few_shot.parse_task_lr_scale("[0.1]")
    demo = few_shot.demo_task_lr_scale()
    assert demo and all(v > 0 for v in demo.values())  # the demo config's recipe sets per-task rates

    parser = argparse.ArgumentParser()
    few_shot.add_population_arguments(parser, downstream_count=80)
    parser.add_argument("--pretrained_from", default=None)
    store = tmp_path / "store.json"
    summary = {"pretraining": {}, "runs": {}, "cpu_seconds": 0.0}
    # the default is resolved to the demo config's value and stored, so the store says which recipe it holds
    few_shot.claim_store(summary, store, parser.parse_args([]), (), "python bench/few_shot.py", [])
    assert summary["settings"]["task_lr_scale"] == demo
    assert "Pretraining learning rate per task (`task_lr_scale`): " in few_shot.pretraining_rates(summary["settings"])
    # a store made with one rate for every task refuses runs of another recipe
    with pytest.raises(SystemExit, match="other settings"):
        few_shot.claim_store({**summary, "settings": {**summary["settings"], "task_lr_scale": {}}}, store,
                             parser.parse_args([]), (), "python bench/few_shot.py", [])
    equal = parser.parse_args(["--task_lr_scale", "{}"])
    few_shot.claim_store({**summary, "settings": {**summary["settings"], "task_lr_scale": {}}}, store, equal, (),
                         "python bench/few_shot.py", [])
    assert few_shot.pretraining_rates({"task_lr_scale": {}}).endswith("one rate for every task.")
    assert few_shot.pretraining_rates({}) == ""  # a store that does not say: nothing is claimed
    # a store made with other rates than today's default reproduces with its own
    old = {"commands": ["python bench/few_shot.py --jobs 2"], "settings": {"task_lr_scale": {}}}
    assert "python bench/few_shot.py --jobs 2 --task_lr_scale '{}'" in few_shot.reproduce_lines(old)
    same = {"commands": ["python bench/few_shot.py"], "settings": {"task_lr_scale": demo}}
    assert "python bench/few_shot.py" in few_shot.reproduce_lines(same)


def test_pretraining_specs_pass_the_per_task_rates_to_every_arm(monkeypatch, tmp_path):
    monkeypatch.setattr(few_shot, "_cycle_length", lambda sources, schedule, bs, size: 100)
    data = {"pretrain": {"phantom_cls": "c.json", "phantom_det": "d.json", "phantom_seg": "s.json"},
            "unlabelled": "u.json", "seg": "down.json"}
    specs = few_shot.pretrain_specs(data, tmp_path, 8, 224, task_lr_scale={"det": 0.1})
    assert all(spec["overrides"]["task_lr_scale"] == {"det": 0.1} for spec in specs.values())
    det = specs["det_only"]["overrides"]  # (j): the boxes alone, plain release steps, (c)'s iterations
    assert det["datasets"] == {"phantom_det": {"datalist": "d.json", "tasks": ["det"]}}
    assert [s["phase"] for s in det["schedule"]] == ["release"] and det["epochs"] == 8
    assert specs["det_only"]["key"] == "teacher"
    unsaid = few_shot.pretrain_specs(data, tmp_path, 8, 224)
    assert not any("task_lr_scale" in spec["overrides"] for spec in unsaid.values())


def test_a_pretraining_command_states_the_stores_per_task_rates():
    call = {"bundle": "foundation_x", "configs": ["train.json", "demo.json"], "root": "/r", "overrides": {"epochs": 8}}
    summary = {"settings": {"task_lr_scale": {}}, "pretraining": {"foundation_x": {"call": call}}}
    assert few_shot.pretraining_command(summary, "foundation_x").endswith("--epochs 8 --task_lr_scale \"{}\")")
    said = {**call, "overrides": {"epochs": 8, "task_lr_scale": {"det": 0.1}}}
    summary["pretraining"]["foundation_x"]["call"] = said  # a call that says its rates keeps them
    assert few_shot.pretraining_command(summary, "foundation_x").count("task_lr_scale") == 1
    assert "{'det': 0.1}" in few_shot.pretraining_command(summary, "foundation_x")
