"""bench/det_tuning.py: recipe variants trained on the benchmark's training images, scored on a tuning phantom of
other patients, never on the benchmark's held-out images."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _module():
    sys.path.insert(0, str(ROOT / "bench"))  # det_tuning imports quality_det and common from beside it
    return importlib.import_module("det_tuning")


def test_variants_reach_the_network_and_optimizer(tmp_path):
    dt = _module()
    datalist = dt.qd.build_phantom(tmp_path / "ph", count=6, size=64, seed=5)
    net, _, _, opt = dt.qd.cxrfx_arm(datalist, 64, str(tmp_path), dt.VARIANTS["lr1x_no_droppath"])
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([3e-4, 1e-3])
    assert {m.p for m in net.modules() if type(m).__name__ == "DropPath"} == {0.0}
    net, _, _, opt = dt.qd.cxrfx_arm(datalist, 64, str(tmp_path), dt.VARIANTS["lr_quarter"])
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([7.5e-5, 2.5e-4])
    net, _, _, opt = dt.qd.cxrfx_arm(datalist, 64, str(tmp_path))  # the bundle's own recipe
    recipe = dt.qd.cxrfx_recipe()
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([recipe["backbone_lr"], recipe["head_lr"]])
    assert max(m.p for m in net.modules() if type(m).__name__ == "DropPath") == pytest.approx(recipe["drop_path_rate"])
    with pytest.raises(ValueError, match="takes no bundle overrides"):
        dt.qd.monai_arm(datalist, 64, str(tmp_path), {"head_lr": 1.0})


def test_runs_score_the_tuning_phantom_and_resume(tmp_path):
    dt = _module()
    torch.set_num_threads(1)
    results, doc = tmp_path / "tuning.json", tmp_path / "results.md"
    args = ["--data", str(tmp_path / "bench"), "--tuning-data", str(tmp_path / "tuning"), "--count", "6",
            "--extra-train", "3", "--tuning-count", "4", "--size", "64", "--iterations", "2", "--batch", "2",
            "--seeds", "0", "--variants", "lr1x", "lr2x", "--results", str(results), "--doc", str(doc)]
    dt.main(args)
    stored = json.loads(results.read_text())
    assert set(stored["runs"]) == {"lr1x/0", "lr2x/0"}
    assert all(r["iterations"] == 2 and 0.0 <= r["ap50"] <= 1.0 for r in stored["runs"].values())
    # the training images are the benchmark's (its training split plus the extra build); every scored image is a
    # tuning patient, none of the benchmark's validation or test images
    train_list = json.loads((tmp_path / "bench" / "phantom_det" / "datalist_tuning.json").read_text())
    bench = json.loads((tmp_path / "bench" / "phantom_det" / "datalist.json").read_text())
    tuning = json.loads((tmp_path / "tuning" / "phantom_det" / "datalist.json").read_text())
    assert len(train_list["training"]) == len(bench["training"]) + 3
    scored = train_list["validation"] + train_list["test"]
    n_tuning = sum(len(tuning[split]) for split in ("training", "validation", "test"))
    assert stored["meta"]["eval_images"] == len(scored) == n_tuning == 4
    assert all(it["id"].startswith("tuning_") for it in scored)
    here = tmp_path / "bench" / "phantom_det"
    assert all((here / it["image"]).resolve().is_file() for it in train_list["training"] + scored)
    # the table, one row per variant with its overrides
    text = doc.read_text()
    assert dt.BEGIN in text and "| lr2x | `head_lr` 0.002, `backbone_lr` 0.0006, `drop_path_rate` 0.1 | 1 |" in text
    # a second call runs nothing again; another setting in the same file is refused
    before = results.read_text()
    dt.main(args)
    assert json.loads(results.read_text())["runs"] == json.loads(before)["runs"]
    with pytest.raises(SystemExit, match="another setting"):
        dt.main([*args[:-4], "--iterations", "3", "--results", str(results), "--doc", str(doc)])
