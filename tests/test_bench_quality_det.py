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
    r = qd.train("cxrfx", datalist, 64, 2, 0, None, budget, save_to=tmp_path / "models" / "cxrfx_time_0.pt")
    assert r["train_cpu_s"] >= budget
    assert r["iterations"] > 10
    assert math.isfinite(r["final_loss"])
    assert 0.0 <= r["ap50"] <= 1.0 and set(r["bins"]) == set(qd.BINS)
    # the trained weights are kept: they load into the arm's network and score as the run did
    net, _, eval_detector, _ = qd.cxrfx_arm(datalist, 64, str(tmp_path))
    net.load_state_dict(torch.load(tmp_path / "models" / "cxrfx_time_0.pt"))
    assert qd.evaluate(net, eval_detector(), datalist, 64, 2)["ap50"] == pytest.approx(r["ap50"])


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
        row = next(line for line in table.splitlines() if f"| {qd.ARM_TEXT[arm]} |" in line
                   and line.startswith("| 15 CPU-minutes" if budget == "time" else "| 400 iterations"))
        assert f"| {len(runs)} |" in row
        assert qd._ms([r["ap50"] for r in runs]) in row
