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


def test_tracking_mlflow_writes_loss_and_metrics_to_a_local_store(tmp_path):
    store = tmp_path / "store" / "mlruns.db"
    configs = [str(BUNDLE / "configs" / n) for n in ("train.json", "demo.json")]
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs),
            "--logging_file", str(BUNDLE / "configs" / "logging.conf"), "--bundle_root", str(tmp_path),
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
    run = runs[0]
    iterations = int(run.data.params["epoch_length"]) * TINY["epochs"]
    loss = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in loss) == list(range(1, iterations + 1))  # one point per iteration
    key = client.get_metric_history(run.info.run_id, "val_mean_teacher")
    assert [m.step for m in key] == [1] and 0.0 <= key[0].value <= 1.0  # validation after epoch 1
    # the detailed scores, flattened: every source of both models
    assert {"student/seg/phantom_seg/dice_fx", "teacher/det/phantom_det/ap50",
            "teacher/cls/phantom_cls/auc"} <= {k.split("scores/", 1)[-1] for k in run.data.metrics}
    assert any(k.startswith("lr_group_") for k in run.data.metrics)
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert any(p.startswith("config_") and p.endswith(".json") for p in artifacts)  # the executed config
