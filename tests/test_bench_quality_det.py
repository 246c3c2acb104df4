"""bench/quality_det.py: a CPU-budget run follows warm-up + cosine over the budget and spends all of it."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("quality_det", ROOT / "bench" / "quality_det.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_budget_schedule_shape_per_group():
    qd = _module()
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-4}])
    sched = qd.BudgetSchedule(opt, budget_s=100.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-6)  # warm-up starts near zero
    sched.step(2.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5e-3)  # half-way through the 5 % warm-up
    sched.step(5.0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-4])  # peak: each group its own base
    sched.step(52.5)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.5e-4)  # cosine half-way
    factors = [sched.factor(t) for t in range(5, 101, 5)]
    assert all(x >= y for x, y in zip(factors, factors[1:]))
    assert sched.factor(100.0) == pytest.approx(0.0, abs=1e-12) and sched.factor(250.0) == sched.factor(100.0)
    assert not math.isnan(sched.factor(-1.0))


def test_budget_run_spends_its_whole_budget(tmp_path):
    """The flaw fixed: the schedule's length was guessed from the first 10 (slow) iterations, and runs ended early."""
    qd = _module()
    torch.set_num_threads(1)
    datalist = qd.build_phantom(tmp_path / "ph", count=12, size=64, seed=3)
    budget = 4.0
    r = qd.train("cxrfx", datalist, 64, 2, 0, None, budget, save_to=tmp_path / "models" / "cxrfx_time_0.pt",
                 ema=(0.9,))
    assert r["train_cpu_s"] >= budget
    assert r["iterations"] > 10
    assert math.isfinite(r["final_loss"])
    assert 0.0 <= r["ap50"] <= 1.0 and set(r["bins"]) == set(qd.BINS)
    # the trained weights are kept: they load into the arm's network and score as the run did
    net, _, eval_detector, _ = qd.cxrfx_arm(datalist, 64, str(tmp_path))
    net.load_state_dict(torch.load(tmp_path / "models" / "cxrfx_time_0.pt"))
    assert qd.evaluate(net, eval_detector(), datalist, 64, 2)["ap50"] == pytest.approx(r["ap50"])
    # the weight average is its own model, saved beside the last iterate, and scores as the run reported it
    average = torch.load(tmp_path / "models" / "cxrfx_time_0_ema0.9.pt")
    last = torch.load(tmp_path / "models" / "cxrfx_time_0.pt")
    assert any(not torch.equal(average[k], last[k]) for k in last if last[k].is_floating_point())
    net.load_state_dict(average)
    scored = qd.evaluate(net, eval_detector(), datalist, 64, 2)
    assert scored["ap50"] == pytest.approx(r["ema"]["0.9"]["ap50"]) and scored["cpm"] == r["ema"]["0.9"]["cpm"]


def test_report_only_writes_both_tables_from_the_stored_runs(tmp_path):
    """--report-only uses the setting the runs were measured in (it once compared it with the command line's
    defaults, filed every run as another setting's and wrote empty tables)."""
    qd = _module()
    stored = json.loads((ROOT / "bench" / "results" / "quality_det.json").read_text())
    results, doc, readme = tmp_path / "q.json", tmp_path / "results.md", tmp_path / "README.md"
    results.write_text(json.dumps(stored))
    doc.write_text("# Results\n\nkept above\n")
    readme.write_text(f"## Performance\n\n{qd.README_BEGIN}\nold\n{qd.README_END}\n\nkept below\n")
    qd.main(["--report-only", "--results", str(results), "--doc", str(doc), "--readme", str(readme),
             "--threads", "7", "--data", str(tmp_path / "never_built")])
    assert json.loads(results.read_text()) == stored  # nothing rewritten, nothing superseded
    assert not (tmp_path / "never_built").exists()
    text, table = doc.read_text(), readme.read_text()
    assert text.startswith("# Results\n\nkept above\n") and qd.BEGIN in text and qd.END in text
    assert table.endswith("kept below\n") and "old" not in table
    for key in stored["runs"]:
        arm, budget, _ = key.split("/")
        runs = [r for r in stored["runs"].values() if (r["arm"], r["budget"]) == (arm, budget)]
        row = next(line for line in table.splitlines() if f"| {qd.ARM_TEXT[arm]} |" in line  # e.g. "30 CPU-minutes"
                   and line.startswith(f"| {qd.budget_title(budget)} |"))
        assert f"| {len(runs)} |" in row
        assert qd._ms([r["ap50"] for r in runs]) in row


def _add_runs(results: str, prefix: str, n: int) -> None:
    qd = _module()
    for i in range(n):
        with qd.locked_store(Path(results)) as stored:
            stored["runs"][f"{prefix}/{i}"] = {"i": i}


def test_two_processes_fill_one_results_file(tmp_path):
    """One benchmark process per core, one results file: neither overwrites the other's runs."""
    import multiprocessing

    results = str(tmp_path / "q.json")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_add_runs, args=(results, name, 25)) for name in ("cxrfx", "monai")]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    runs = json.loads(Path(results).read_text())["runs"]
    assert sorted(runs) == sorted(f"{name}/{i}" for name in ("cxrfx", "monai") for i in range(25))


def test_a_new_setting_keeps_the_old_runs_curves_and_remeasurements_apart():
    qd = _module()
    # a setting with runs, learning curves and re-measurements: the 80-image held-out setting, as it was stored
    earlier = next(e for e in json.loads((ROOT / "bench" / "results" / "quality_det.json").read_text())["superseded"]
                   if e.get("curves") and e.get("replaced"))
    stored = {k: v for k, v in earlier.items()}
    old_meta = dict(stored["meta"])
    before = {k: stored.get(k) for k in ("runs", "curves", "replaced")}
    meta = {**old_meta, "count": old_meta["count"] * 3, "eval_images": 238, "train_images": 2354}
    qd.adopt_setting(stored, meta)
    assert stored["meta"] == meta and stored["runs"] == {} and "curves" not in stored and "replaced" not in stored
    moved = stored["superseded"][-1]
    assert moved["meta"] == old_meta and {k: moved.get(k) for k in before} == before
    text = qd.report(stored["runs"], meta, curves=stored.get("curves"), superseded=stored["superseded"])
    setting = f"{old_meta['train_images']} training images, {old_meta['eval_images']} held-out images"
    assert f"Earlier setting ({setting}" in text and f"Measured again (earlier setting: {setting}" in text
    assert f"**Learning curve and training-set size**; earlier setting: {setting}" in text
    qd.adopt_setting(stored, dict(meta))  # the same setting again: nothing moves
    assert len(stored["superseded"]) == 1 and stored["runs"] == {}


def test_weight_average_table_pairs_each_run_with_its_average():
    qd = _module()
    run = {"iterations": 10, "train_wall_s": 60.0, "ap50_per_class": {"0": 0.1, "1": 0.2}, "map40_fx": 0.2,
           "coco_map": 0.1, "ap50_visible": 0.2, "cpm": 0.3, "froc": [0.1] * 7,
           "bins": {b: {"ap50": 0.1, "sens_1fp": 0.2} for b in qd.BINS}}
    results = {f"cxrfx/time/{s}": {**run, "arm": "cxrfx", "budget": "time", "seed": s, "ap50": 0.30 + s / 10,
                                   "ema": {"0.99": {**run, "ap50": 0.40 + s / 10}}} for s in range(2)}
    meta = json.loads((ROOT / "bench" / "results" / "quality_det.json").read_text())["meta"]
    text = qd.report(results, meta)
    row = next(line for line in text.splitlines() if line.startswith("| 15 CPU-min | cxrfx |"))
    assert "| 2 | 0.350 ± 0.071 | 0.450 ± 0.071 | 0.100 ± 0.000 |" in row


def test_another_budget_gets_a_table_of_its_own():
    """A 30-minute run neither collides with the 15-minute runs' keys nor relabels their table."""
    qd = _module()
    assert [qd.budget_label("time", 15.0), qd.budget_label("time", 30.0), qd.budget_label("iterations", 400),
            qd.budget_label("iterations", 1600)] == ["time", "time30", "iterations", "iterations1600"]
    for label in ("time", "time30", "iterations", "iterations1600", "time7.5"):
        assert qd.budget_label(*qd.budget_size(label)) == label
    stored = json.loads((ROOT / "bench" / "results" / "quality_det.json").read_text())
    runs = {k: r for k, r in stored["runs"].items() if r["budget"] == "time"}
    runs.update({k.replace("/time/", "/time30/"): {**r, "budget": "time30", "ap50": 0.9} for k, r in runs.items()})
    text = qd.report(runs, {**stored["meta"], "budget_minutes": 30.0})
    assert "**Budget: 15 CPU-minutes" in text and "**Budget: 30 CPU-minutes" in text
    assert text.index("**Budget: 15 CPU-minutes") < text.index("**Budget: 30 CPU-minutes")
    fifteen = text[text.index("**Budget: 15"):text.index("**Budget: 30")]
    assert "0.900" not in fifteen and "0.900" in text[text.index("**Budget: 30"):]
    table = qd.readme_table(runs, stored["meta"])
    assert "| 15 CPU-minutes | this bundle" in table and "| 30 CPU-minutes | this bundle" in table


def test_the_report_names_the_commands_that_made_its_runs():
    qd = _module()
    stored = json.loads((ROOT / "bench" / "results" / "quality_det.json").read_text())
    assert "`python bench/quality_det.py --threads 1 --seeds 0 1 2`" in qd.report(stored["runs"], stored["meta"])
    home = str(Path.home())
    text = qd.report(stored["runs"], stored["meta"], commands=[f"python bench/quality_det.py --data {home}/x",
                                                                "python bench/quality_det.py --arms monai"])
    assert ("Reproduce (resumes; `--report-only` rewrites this): `python bench/quality_det.py --data ~/x`; "
            "`python bench/quality_det.py --arms monai`.") in text
    moved = {"meta": {**stored["meta"], "count": 1}, "runs": {"a": {}}, "commands": ["python bench/quality_det.py"]}
    qd.adopt_setting(moved, stored["meta"])  # a new setting: the old commands go with the old runs
    assert "commands" not in moved and moved["superseded"][-1]["commands"] == ["python bench/quality_det.py"]


def test_a_new_cxrfx_recipe_retires_its_old_runs_and_keeps_the_baselines():
    """finetune_det's learning rates changed (bench/det_tuning.py): the cxrfx runs of the earlier recipe no longer
    measure the bundle and move under 'superseded' with their recipe named; MONAI's runs stay in the table."""
    qd = _module()
    stored = json.loads((ROOT / "bench" / "results" / "quality_det.json").read_text())
    stored["meta"].pop("cxrfx_recipe", None)
    for r in stored["runs"].values():
        r.pop("recipe", None)
    cxrfx = {k for k, r in stored["runs"].items() if r["arm"] == "cxrfx"}
    monai = set(stored["runs"]) - cxrfx
    assert cxrfx and monai
    recipe = {"head_lr": 2.5e-4, "backbone_lr": 7.5e-5, "drop_path_rate": 0.1}
    n_superseded = len(stored.get("superseded", []))
    qd.retire_other_recipes(stored, recipe, None)
    assert set(stored["runs"]) == monai
    moved = stored["superseded"][-1]
    assert len(stored["superseded"]) == n_superseded + 1
    assert set(moved["runs"]) == cxrfx and moved["meta"]["cxrfx_recipe"] == qd.EARLIER_RECIPE
    # a run of the new recipe stays; calling again moves nothing
    stored["runs"]["cxrfx/iterations/0"] = {**moved["runs"]["cxrfx/iterations/0"], "recipe": recipe}
    qd.retire_other_recipes(stored, recipe, recipe)
    assert "cxrfx/iterations/0" in stored["runs"] and len(stored["superseded"]) == n_superseded + 1
    text = qd.report(stored["runs"], {**stored["meta"], "cxrfx_recipe": recipe}, superseded=stored["superseded"])
    assert "cxrfx learning rates (the bundle's demo recipe, chosen with `bench/det_tuning.py`): 0.00025 heads" in text
    assert "cxrfx learning rates 0.001 heads / 0.0003 backbone), held-out AP50: cxrfx iterations" in text
