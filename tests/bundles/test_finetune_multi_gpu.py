"""The fine-tune bundles' ``multi_gpu_train.json`` under torchrun on CPU (gloo; the same configs use NCCL on GPUs):
two processes, one writer (checkpoints, event files and the info log are rank 0's), validation sharded across the
ranks and scored on the gathered predictions (both ranks see the metrics of the whole split), the EMA teacher's
statistics kept equal across ranks. Each rank writes what it saw through a test-only config appended to ``run``.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys

import pytest
import torch
from finetune_helpers import ENV, ROOT, TINY, configs

from cxrfx.data.phantom import generate_phantom

# 20 images: 3 validation images, so each rank has a validation shard (2 + 1)
PHANTOM = {"phantom_count": 20, "phantom_size": 64}
REPORT = {
    "+imports": ["$import json"],
    "+run": ["$open(@bundle_root + '/rank%d.json' % torch.distributed.get_rank(), 'w').write(json.dumps({"
             "'pid': os.getpid(), 'metrics': @validate#evaluator.state.metrics, "
             "'shards': {k: len(v.dataset) for k, v in @validate#dataset.items()}, "
             "'train': {k: len(v.sampler) for k, v in @train#dataset.items()}, "
             "'has_saver': @train#checkpoint_saver is not None, 'iteration': @train#trainer.state.iteration, "
             "'teacher': float(sum(b.double().sum() for b in @train#teacher.teacher.buffers()))}))"],
}
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b or (isinstance(a, float) and math.isnan(a) and isinstance(b, float) and math.isnan(b))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    directory = tmp_path_factory.mktemp("phantom_mgpu")
    generate_phantom(str(directory), count=PHANTOM["phantom_count"], size=PHANTOM["phantom_size"], verbose=False)
    return directory


@pytest.mark.parametrize("name, key", [("finetune_seg", "seg/organs/dice_fx"),
                                       ("finetune_det", "det/nodules/ap50")])
def test_two_processes_one_writer_sharded_validation(name, key, phantom, tmp_path):
    bundle = ROOT / "bundles" / name
    report = tmp_path / "report.json"
    report.write_text(json.dumps(REPORT))
    logs = tmp_path / "logs"
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), "--log_dir", str(logs), "--redirects", "3",
            "-m", "monai.bundle", "run", "--config_file",
            json.dumps([*configs(bundle, "train.json", "multi_gpu_train.json", "demo.json"), str(report)]),
            "--logging_file", str(bundle / "configs" / "logging.conf"), "--bundle_root", str(tmp_path)]
    # 4 training images (2 per rank), 6 iterations, a checkpoint every 2, validation at the end; with the teacher
    settings = {**TINY, **PHANTOM, "few_shot": 4, "iterations": 6, "val_interval": 6, "checkpoint_interval": 2,
                "use_teacher": True, "dataset_dir": str(phantom)}
    for k, v in settings.items():
        args += [f"--{k}", repr(v)]  # python-fire reads Python literals
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=str(bundle), env=ENV)
    rank0, rank1 = ("".join(p.read_text() for p in logs.glob(f"**/attempt_*/{r}/std*.log")) for r in range(2))
    assert proc.returncode == 0, proc.stderr[-2000:] + rank0[-2000:] + rank1[-2000:]
    first, second = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert first["iteration"] == second["iteration"] == 6
    # one writer: the saver, the checkpoints, the event files, the info log
    assert first["has_saver"] and not second["has_saver"]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "checkpoint_iteration=4.pt", "checkpoint_iteration=6.pt", "last.pt", "model.pt"]  # keep_checkpoints 2
    events = list((tmp_path / "eval").glob("events.out.tfevents.*"))
    assert events and {p.name.split(".")[-2] for p in events} == {str(first["pid"])}
    assert "Key metric: val_" in rank0 and "Key metric" not in rank1
    # training images split across the ranks (DistributedSampler), validation sharded 2 + 1, both ranks scoring
    # the whole split
    assert list(first["train"].values()) == list(second["train"].values()) == [2]
    assert list(first["shards"].values()) == [2] and list(second["shards"].values()) == [1]
    assert _same(first["metrics"], second["metrics"])
    assert {f"student/{key}", f"teacher/{key}"} <= set(first["metrics"]["scores"])
    # one teacher: its normalisation statistics broadcast from rank 0 every iteration
    assert first["teacher"] == second["teacher"]
