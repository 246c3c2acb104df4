"""bench/demo_tuning.py: the demo's pretraining with recipe variants, scored on every image of a tuning phantom of
other patients, never on the demo's own test split."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    sys.path.insert(0, str(ROOT / "bench"))  # demo_tuning imports quality_det and common from beside it
    return importlib.import_module("demo_tuning")


def test_variants_train_the_demo_and_score_every_tuning_image(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    dt = _module()
    results, doc, work = tmp_path / "tuning.json", tmp_path / "results.md", tmp_path / "runs"
    args = ["--data", str(tmp_path / "demo"), "--tuning-data", str(tmp_path / "tuning"), "--work", str(work),
            "--count", "12", "--size", "64", "--epochs", "1", "--seeds", "0", "--variants", "det_tenth",
            "--results", str(results), "--doc", str(doc)]
    dt.main(args)
    run = json.loads(results.read_text())["runs"]["det_tenth/0"]
    # the variant reached the trainer; the demo phantom trained it (its training images, seed 0)
    log = (work / "det_tenth_0" / "train.log").read_text()
    assert "learning rate per task: det x 0.1" in log
    assert f"phantom under {tmp_path / 'demo'}" in log
    # every image of the tuning phantom (all three splits) is scored, per head; none of the demo's
    tuning = json.loads((tmp_path / "tuning" / "phantom_det" / "datalist.json").read_text())
    demo = json.loads((tmp_path / "demo" / "phantom_det" / "datalist.json").read_text())
    n = sum(len(tuning[s]) for s in ("training", "validation", "test"))
    assert run["eval_images"] == {"cls/phantom_cls": n, "cls/phantom_det": n, "cls/phantom_seg": n,
                                  "det/phantom_det": n, "seg/phantom_seg": n} and n == 12
    tuning_patients = {it["patient_id"] for s in ("training", "validation", "test") for it in tuning[s]}
    demo_patients = {it["patient_id"] for s in ("training", "validation", "test") for it in demo[s]}
    assert len(tuning_patients) == n and len(demo_patients) == n and not tuning_patients & demo_patients
    assert run["eval_boxes"] == sum(len(it.get("boxes", [])) for s in ("training", "validation", "test")
                                    for it in tuning[s])
    assert 0.0 <= run["det_ap50"] <= 1.0 and all(0.0 <= run[k] <= 1.0 for k in ("lung_left", "heart"))
    assert set(run["cls_auc"]) == {"nodule", "mass", "pneumothorax", "effusion", "cardiomegaly"}
    assert not (work / "det_tenth_0" / "models").exists()  # checkpoints are not kept
    text = doc.read_text()
    # a results file of its own name has its own section, whose command reproduces its setting
    assert "<!-- demo_tuning.py (tuning): begin (generated) -->" in text and "# Demo settings: `tuning`" in text
    assert "| det_tenth | 0.001 / 0.002 | det × 0.1 | 1 |" in text and "1 cycles" in text
    assert "`python bench/demo_tuning.py --count 12 --epochs 1 --results bench/results/tuning.json --variants " \
           "det_tenth --seeds 0 1`" in text
    assert dt.markers(dt.DEFAULT_RESULTS)[0] == "<!-- demo_tuning.py: begin (generated) -->"
    # a second call trains nothing again; another setting in the same file is refused
    monkeypatch.setattr(dt, "run_one", lambda *a, **k: pytest.fail("a stored run was run again"))
    dt.main(args)
    with pytest.raises(SystemExit, match="another setting"):
        dt.main([*args[:args.index("--epochs")], "--epochs", "2", *args[args.index("--epochs") + 2:]])
