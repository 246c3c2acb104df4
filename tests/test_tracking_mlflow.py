"""``--tracking mlflow`` on the foundation_x bundle writes a run with the training loss and the validation metrics.

The store is a local SQLite file in a temporary folder: MLflow 3.13+ refuses the plain-folder (``file://``)
store and MONAI 1.6's ``MLFlowHandler`` rejects ``file://`` URIs, so a local store is ``sqlite:///PATH``
(MONAI's default, ``<output_dir>/mlruns.db``). mlflow is not among the test dependencies (mlflow-skinny with
SQLAlchemy and Alembic adds some 35 packages, about 155 MB): without it this test is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "foundation_x"
TINY = {"epochs": 1, "phantom_count": 8, "phantom_size": 64, "image_size": 64, "batch_size": 4}

pytestmark = pytest.mark.skipif(
    not (importlib.util.find_spec("mlflow") and importlib.util.find_spec("sqlalchemy")
         and importlib.util.find_spec("alembic")),
    reason="mlflow is not installed (optional; pip install mlflow-skinny sqlalchemy alembic for a local store)")


def _run_tracked(root: Path, launcher: list[str], *configs: str):
    """The bundle with ``--tracking mlflow`` into ``<root>/store/mlruns.db``; returns (the run, its client)."""
    store = root / "store" / "mlruns.db"
    args = [sys.executable, *launcher, "-m", "monai.bundle", "run",
            "--config_file", json.dumps([str(BUNDLE / "configs" / n) for n in ("train.json", *configs)]),
            "--logging_file", str(BUNDLE / "configs" / "logging.conf"), "--bundle_root", str(root),
            "--tracking", "mlflow", "--tracking_uri", json.dumps(f"sqlite:///{store}"),
            "--experiment_name", json.dumps("cxrfx_test"), "--run_name", json.dumps("tiny")]
    for key, value in TINY.items():
        args += [f"--{key}", json.dumps(value)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=str(BUNDLE),
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("cxrfx_test")
    runs = client.search_runs([experiment.experiment_id])
    assert [(r.info.run_name, r.info.status) for r in runs] == [("tiny", "FINISHED")]  # trainer and validator
    return runs[0], client


def _loss_steps(run, client) -> tuple[list[int], list[int]]:
    """(the steps train_loss was logged at, the steps one point per iteration would give)."""
    iterations = int(run.data.params["epoch_length"]) * TINY["epochs"]
    loss = client.get_metric_history(run.info.run_id, "train_loss")
    return sorted(m.step for m in loss), list(range(1, iterations + 1))


def test_tracking_mlflow_writes_loss_and_metrics_to_a_local_store(tmp_path):
    run, client = _run_tracked(tmp_path, [], "demo.json")
    logged, expected = _loss_steps(run, client)
    assert logged == expected  # one point per iteration
    key = client.get_metric_history(run.info.run_id, "val_mean_teacher")
    assert [m.step for m in key] == [1] and 0.0 <= key[0].value <= 1.0  # validation after epoch 1
    # the detailed scores, flattened: every source of both models
    assert {"student/seg/phantom_seg/dice_fx", "teacher/det/phantom_det/ap50",
            "teacher/cls/phantom_cls/auc"} <= {k.split("scores/", 1)[-1] for k in run.data.metrics}
    assert any(k.startswith("lr_group_") for k in run.data.metrics)
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert any(p.startswith("config_") and p.endswith(".json") for p in artifacts)  # the executed config


def test_tracking_mlflow_under_torchrun_only_rank_0_writes(tmp_path):
    """Two gloo processes: MONAI's tracking handlers are disabled by ``is_not_rank0``, which multi_gpu_train.json
    defines; one run, each iteration logged once (both ranks writing would log every step twice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(port)]
    run, client = _run_tracked(tmp_path, launcher, "multi_gpu_train.json", "demo.json")
    logged, expected = _loss_steps(run, client)
    assert logged == expected
    assert len(client.get_metric_history(run.info.run_id, "val_mean_teacher")) == 1
