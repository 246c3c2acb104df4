"""bundles/foundation_x: metadata, workflow properties, a short training run, resume, evaluate, inference."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow, verify_metadata, verify_net_in_out

from cxrfx.packaging.checks import DEFAULT_SCHEMA

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "foundation_x"
# the Model Zoo schema copy the package ships (packaging checks against it): no ../shared needed
SCHEMA = Path(DEFAULT_SCHEMA)
TINY = {"epochs": 1, "phantom_count": 8, "phantom_size": 64, "image_size": 64, "batch_size": 4}


def _configs(*names):
    return [str(BUNDLE / "configs" / n) for n in names]


def _run(bundle_root: Path, configs: list[str], **overrides) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs),
            "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
            "--logging_file", str(BUNDLE / "configs" / "logging.conf"), "--bundle_root", str(bundle_root)]
    for key, value in {**TINY, **overrides}.items():
        args += [f"--{key}", json.dumps(value)]
    return subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=str(BUNDLE))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("fx")
    proc = _run(root, _configs("train.json", "demo.json"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc.stdout + proc.stderr


def test_metadata_is_valid_offline():
    verify_metadata(meta_file=str(BUNDLE / "configs" / "metadata.json"), filepath=str(SCHEMA))


def test_workflow_properties(tmp_path):
    for configs, kind, extra in ((_configs("train.json", "demo.json"), "train", {}),
                                 # no trained weights here: inference.json loads them only when it runs
                                 (_configs("inference.json", "demo.json"), "infer",
                                  {"input_path": str(BUNDLE / "configs")})):
        workflow = ConfigWorkflow(config_file=configs, meta_file=str(BUNDLE / "configs" / "metadata.json"),
                                  logging_file=str(BUNDLE / "configs" / "logging.conf"), workflow_type=kind,
                                  bundle_root=str(tmp_path), **TINY, **extra)
        workflow.initialize()
        assert workflow.check_properties() == [], kind


def test_verify_net_in_out():
    verify_net_in_out(net_id="network_def", meta_file=str(BUNDLE / "configs" / "metadata.json"),
                      config_file=_configs("inference.json", "demo.json"), n=2, device="cpu")


def test_training_run_logs_phases_teacher_and_metrics(trained):
    root, log = trained
    assert "step 3/7 lock det/phantom_det" in log and "teacher update 7" in log
    assert "val_mean_teacher" in log and "student/seg/phantom_seg/dice_fx" in log
    models = root / "models"
    assert (models / "model.pt").exists() and (models / "last.pt").exists()
    state = torch.load(models / "last.pt", weights_only=True)
    assert {"student", "teacher", "optimizer", "lr_scheduler", "lock_release", "teacher_handler", "trainer"} <= set(state)
    assert state["lock_release"]["schedule"][2] == {"dataset": "phantom_det", "task": "det", "phase": "lock",
                                                     "epoch_fraction": 0.5}
    best = torch.load(models / "model.pt", weights_only=True)
    assert set(best) == set(state["teacher"])  # the teacher's weights are the bundle's model


def test_resume_continues_the_cycle(trained, tmp_path):
    root, _ = trained
    state = torch.load(root / "models" / "last.pt", weights_only=True)
    done = state["trainer"]["iteration"]
    proc = _run(root, _configs("train.json", "demo.json"), epochs=2, resume_from=str(root / "models" / "last.pt"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert f"resumed from {root / 'models' / 'last.pt'} at iteration {done}" in log
    assert "Epoch[2] Complete" in log and "Epoch[1] Complete" not in log
    after = torch.load(root / "models" / "last.pt", weights_only=True)
    assert after["trainer"]["iteration"] == 2 * done


def test_evaluate_and_inference(trained):
    root, _ = trained
    proc = _run(root, _configs("train.json", "demo.json", "evaluate.json"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "teacher/mean" in proc.stdout + proc.stderr
    proc = _run(root, _configs("inference.json", "demo.json"), input_path=str(root / "data" / "phantom_demo" / "phantom_det"
                                                                                / "datalist.json"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = root / "eval" / "predictions"
    record = json.loads(next(out.glob("*.json")).read_text())
    assert set(record["heads"]) == {"cls/phantom_cls", "cls/phantom_det", "cls/phantom_seg", "seg/phantom_seg",
                                    "det/phantom_det"}
    assert set(record["heads"]["cls/phantom_det"]) == {"nodule", "mass", "pneumothorax", "effusion", "cardiomegaly"}
    assert len(list(out.glob("*_overlay.png"))) >= 1
    assert (out / "predictions.csv").read_text().count("\n") >= 4


def test_multi_gpu_config_with_two_gloo_processes(tmp_path):
    """torchrun + DistributedDataParallel on 2 CPU processes (gloo): the same command runs on GPUs with NCCL."""
    configs = _configs("train.json", "multi_gpu_train.json", "demo.json")
    with socket.socket() as sock:  # a free port: a fixed one can still be held by an earlier run
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(port),
            "-m", "monai.bundle", "run", "--config_file", json.dumps(configs),
            "--logging_file", str(BUNDLE / "configs" / "logging.conf"), "--bundle_root", str(tmp_path)]
    for key, value in {**TINY, "batch_size": 2}.items():
        args += [f"--{key}", json.dumps(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=str(BUNDLE), env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    # both ranks trained the cycle; rank 1 logs warnings only (tests/test_engines_distributed.py checks the rest)
    assert log.count("MultiTaskTrainer - INFO - Epoch[1] Complete") == 1
    state = torch.load(tmp_path / "models" / "last.pt", weights_only=True)
    assert "student" in state and not any(k.startswith("module.") for k in state["student"])
