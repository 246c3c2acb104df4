"""bench/quality_seg.py --quick: every arm trains and is scored; the results file and both generated sections."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("quality_seg", ROOT / "bench" / "quality_seg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_results_and_sections(tmp_path):
    qs = _module()
    doc, readme, results = tmp_path / "results.md", tmp_path / "README.md", tmp_path / "quality_seg.json"
    # another script's section and the text around ours must survive
    doc.write_text("# Results\n\n<!-- quality_det.py: begin (generated) -->\ndet table\n<!-- quality_det.py: end -->\n")
    readme.write_text(f"## Performance\n\nbefore\n\n{qs.README_BEGIN}\nold table\n{qs.README_END}\n\nafter\n")
    args = ["--quick", "--data", str(tmp_path / "data"), "--results", str(results), "--doc", str(doc),
            "--readme", str(readme)]
    qs.main(args + ["--step-cost", "1"])
    stored = json.loads(results.read_text())
    assert set(stored["runs"]) == {f"{arm}/2/0" for arm in qs.ARMS}
    for run in stored["runs"].values():
        assert run["iterations"] == 2 and run["params"]["total"] > 0 and run["train_cpu_s"] >= 0
        for split in ("validation", "test"):
            scores = run[split]
            assert 0.0 <= scores["dice_fx"] <= 1.0 and 0.0 <= scores["dice_global"] <= 1.0
            assert set(scores["per_class"]) == set(qs.CLASSES)
    assert stored["meta"]["splits"] == {"training": 4, "validation": 1, "test": 1}
    assert 0.0 < stored["meta"]["ceiling"]["dice_fx"] <= 1.0
    assert set(stored["step_cost"]["cpu_s"]) == set(qs.ARMS)
    text = doc.read_text()
    assert "det table" in text and text.count(qs.BEGIN) == 1 and text.count(qs.END) == 1
    section = text[text.index(qs.BEGIN):text.index(qs.END)]
    for arm in qs.ARMS:
        assert f"| {arm} | 1 |" in section
    assert "A perfect stride-4 output" in section and "One training step on CPU" in section
    table = readme.read_text()
    assert "before" in table and "after" in table and "old table" not in table
    assert table.count(qs.README_BEGIN) == 1 and qs.ARM_TEXT["monai_unet"] in table

    # stored runs are not trained again; --report-only rewrites the sections in place
    mtime = results.stat().st_mtime_ns
    qs.main(args + ["--report-only"])
    assert results.stat().st_mtime_ns == mtime
    assert doc.read_text().count(qs.BEGIN) == 1


def test_check_line_pairs_reruns_with_stored_runs():
    qs = _module()
    stored = {"upernet/400/0": {"test": {"dice_fx": 0.898}, "device": "NVIDIA H200"}}
    checks = {"upernet/400/0": {"test": {"dice_fx": 0.9}, "device": "cpu", "threads": 1},
              "unetpp/400/0": {"test": {"dice_fx": 0.5}, "device": "cpu"}}  # no stored counterpart: left out
    (line, _) = qs.check_report(stored, checks)
    assert line == "Same runs on another machine (test `dice_fx`): upernet/400/0 0.900 on CPU (1 thread(s)) vs " \
                   "0.898 on NVIDIA H200."
    assert qs.check_report(stored, {}) == []
