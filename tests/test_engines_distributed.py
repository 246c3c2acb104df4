"""Multi-process training of the foundation_x bundle with torchrun on CPU (gloo): the same configs run on GPUs
(NCCL). One machine with two processes, then two "nodes" of one process each (c10d rendezvous on 127.0.0.1), one
of them killed and the job resumed: it ends with the same metrics as the run that was not interrupted. Each rank
writes what it saw (metrics, shard sizes, whether it has a checkpoint saver) through a test-only config appended
to ``run``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cxrfx.engines.checkpointing import RNGStates

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "foundation_x"
# 20 phantom images per dataset: 3 validation images each, so both ranks have a validation shard (2 + 1); 3 passes
# of the demo cycle (its length follows demo.json's schedule), a checkpoint every 4, validation after the last pass
TINY = {"epochs": 3, "phantom_count": 20, "phantom_size": 64, "image_size": 64, "batch_size": 2,
        "checkpoint_interval": 4, "val_interval": 3}
# what each rank saw, written after training (test-only: the bundle itself has nothing rank-specific to print)
REPORT = {
    "+imports": ["$import json"],
    "+run": ["$open(@bundle_root + '/rank%d.json' % torch.distributed.get_rank(), 'w').write(json.dumps({"
             "'pid': os.getpid(), 'metrics': @validate#evaluator.state.metrics, "
             "'shards': {k: len(v.dataset) for k, v in @validate#dataset.items()}, "
             "'has_saver': @train#checkpoint_saver is not None, 'iteration': @train#trainer.state.iteration}))"],
}
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")


def _free_port() -> int:
    with socket.socket() as sock:  # a free port: a fixed one can still be held by an earlier run
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _command(root: Path, launcher: list[str], *extra_configs: str, **overrides) -> list[str]:
    report = root / "report.json"
    report.write_text(json.dumps(REPORT))
    configs = [str(BUNDLE / "configs" / n) for n in ("train.json", "multi_gpu_train.json", "demo.json")]
    args = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "monai.bundle", "run",
            "--config_file", json.dumps([*configs, *extra_configs, str(report)]),
            "--logging_file", str(BUNDLE / "configs" / "logging.conf"), "--bundle_root", str(root)]
    for key, value in {**TINY, **overrides}.items():
        args += [f"--{key}", json.dumps(value)]
    return args


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _reports(root: Path) -> list[dict]:
    return [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b or (isinstance(a, float) and math.isnan(a) and isinstance(b, float) and math.isnan(b))


def _rank_log(log_dir: Path, rank: int) -> str:
    return "".join(p.read_text() for p in log_dir.glob(f"**/attempt_*/{rank}/std*.log"))


def test_rng_states_give_each_rank_its_own_streams(monkeypatch):
    """A multi-process checkpoint holds every rank's random states (gathered when rank 0 saves); each rank loads
    its own (``RANK``: torchrun's, read before a process group exists)."""
    states = RNGStates()
    torch.manual_seed(1)
    own = [states.state_dict()]
    torch.manual_seed(2)
    own.append(states.state_dict())
    saved = {**own[0], "ranks": own}
    for rank in (1, 0):
        monkeypatch.setenv("RANK", str(rank))
        states.load_state_dict(saved)
        assert torch.equal(torch.get_rng_state(), own[rank]["torch"])


_TEARDOWN = """
import os, sys
import ignite.distributed as idist
import torch, torch.distributed as dist
from cxrfx.engines import distributed
os.environ.update(RANK=sys.argv[1], WORLD_SIZE="2", LOCAL_RANK=sys.argv[1], MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=sys.argv[2])
distributed.setup()
seen = distributed.all_gather_objects(int(sys.argv[1]))
distributed.teardown()
distributed.teardown()  # a second call (a finalize run twice) is a no-op
print("ok", seen, dist.is_initialized(), idist.get_world_size())
"""


def test_teardown_leaves_the_group_on_every_rank(tmp_path):
    """The bundles' ``finalize``: both ranks leave the group together and nothing (ignite included) holds it
    afterwards; each process then exits cleanly (status 0), five times over, as the flaky SIGABRT at exit seen
    once in CI came from a group that outlived its run."""
    script = tmp_path / "teardown.py"
    script.write_text(_TEARDOWN)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    for _ in range(5):
        port = str(_free_port())
        procs = [subprocess.Popen([sys.executable, str(script), str(r), port], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env) for r in (0, 1)]
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, err[-2000:]
            assert out.strip() == "ok [0, 1] False 1", out + err[-2000:]


# handlers that write files or logs: on rank 0 only (MONAI's MetricsSaver is not one of them: it gathers from every
# rank and writes on rank 0 itself, so it runs on every rank)
WRITERS = {"ignite.handlers.ProgressBar", "StatsHandler", "TensorBoardStatsHandler",
           "cxrfx.engines.checkpointing.CheckpointSaver"}


@pytest.mark.parametrize("bundle, base_name, overlay_name, sections", [
    (BUNDLE, "train.json", "multi_gpu_train.json", ("train", "validate")),
    (BUNDLE, "evaluate.json", "multi_gpu_evaluate.json", ("validate",)),
    (ROOT / "bundles" / "finetune_seg", "train.json", "multi_gpu_train.json", ("train", "validate")),
    (ROOT / "bundles" / "finetune_det", "train.json", "multi_gpu_train.json", ("train", "validate"))])
def test_config_disables_exactly_the_writing_handlers_on_other_ranks(bundle, base_name, overlay_name, sections):
    """The overlays disable handlers by position: this holds them to the base configs' lists (a reordered list must
    not silently leave a writer on every rank, or take validation or a weights loader away from some)."""
    base = json.loads((bundle / "configs" / base_name).read_text())
    overlay = json.loads((bundle / "configs" / overlay_name).read_text())
    for section in sections:
        handlers = base[f"{section}#handlers"] if f"{section}#handlers" in base else base[section]["handlers"]
        disabled = {i for i in range(len(handlers)) if overlay.get(f"{section}#handlers#{i}#_disabled_")}
        writers = {i for i, h in enumerate(handlers) if h["_target_"] in WRITERS}
        assert disabled == writers and all(overlay[f"{section}#handlers#{i}#_disabled_"] == "@is_not_rank0"
                                           for i in disabled), section
    assert overlay["validate#dataset#distributed"] is True
    if "train" in sections:
        assert overlay["train#checkpoint_saver#_disabled_"] == "@is_not_rank0"
        assert overlay["train#dataset#distributed"] is True


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Two processes on one machine, not interrupted: (bundle root, rank 0's log, rank 1's log)."""
    root = tmp_path_factory.mktemp("two_processes")
    logs = root / "logs"
    launcher = ["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                "--log_dir", str(logs), "--redirects", "3"]
    proc = subprocess.run(_command(root, launcher), capture_output=True, text=True, timeout=600, cwd=str(BUNDLE),
                          env=_env())
    rank0, rank1 = _rank_log(logs, 0), _rank_log(logs, 1)
    assert proc.returncode == 0, proc.stderr[-2000:] + rank0[-2000:] + rank1[-2000:]
    return root, rank0, rank1


def test_two_processes_one_writer_sharded_validation_equal_metrics(uninterrupted):
    root, rank0, rank1 = uninterrupted
    first, second = _reports(root)
    # one writer: only rank 0 has a checkpoint saver, and every event file is rank 0's
    assert first["has_saver"] and not second["has_saver"]
    # the demo cycle's length decides the total: the last three multiples of the interval are kept
    total = TINY["epochs"] * torch.load(root / "models" / "last.pt", map_location="cpu",
                                        weights_only=True)["trainer"]["epoch_length"]
    last = total - total % TINY["checkpoint_interval"]
    kept = [f"checkpoint_iteration={last - k * TINY['checkpoint_interval']}.pt" for k in (2, 1, 0)]
    assert sorted(p.name for p in (root / "models").iterdir()) == sorted([*kept, "last.pt", "model.pt"])
    events = list((root / "eval").glob("events.out.tfevents.*"))
    assert events and {p.name.split(".")[-2] for p in events} == {str(first["pid"])}
    # one log: rank 0 logs training and validation, rank 1 only warnings once the process group is up
    assert "MultiTaskTrainer - INFO - Epoch[3] Complete" in rank0 and "val_mean_teacher" in rank0
    assert "Epoch[" not in rank1 and "val_mean_teacher" not in rank1
    # validation sharded: disjoint shards covering the split (3 images per source: 2 on rank 0, 1 on rank 1) ...
    assert all(first["shards"][k] == 2 and second["shards"][k] == 1 for k in first["shards"])
    # ... and every rank scores the whole split, so their metrics are the same
    assert _same(first["metrics"], second["metrics"])
    scores = first["metrics"]["scores"]
    assert {"teacher/seg/phantom_seg/dice_fx", "student/det/phantom_det/ap50"} <= set(scores)
    assert first["metrics"]["val_mean_teacher"] == scores["teacher/mean"]


def _evaluate(root: Path, launcher: list[str], configs: list[str], out: Path) -> str:
    """evaluate.json on ``root``'s last.pt, metrics written by MetricsSaver to ``out``; returns metrics.csv."""
    args = [sys.executable, *launcher, "-m", "monai.bundle", "run",
            "--config_file", json.dumps([str(BUNDLE / "configs" / n) for n in configs]),
            "--logging_file", str(BUNDLE / "configs" / "logging.conf"), "--bundle_root", str(root),
            "--output_dir", json.dumps(str(out))]
    for key, value in TINY.items():
        args += [f"--{key}", json.dumps(value)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=str(BUNDLE), env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return (out / "metrics.csv").read_text()


def test_multi_gpu_evaluate_equals_one_process(uninterrupted):
    """multi_gpu_evaluate.json: each rank scores its shard, the metrics of the gathered predictions are those of
    one process scoring the whole split; rank 0 alone writes them."""
    root = uninterrupted[0]
    configs = ["train.json", "demo.json", "evaluate.json"]
    one = _evaluate(root, [], configs, root / "eval_one")
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port())]
    two = _evaluate(root, launcher, [*configs, "multi_gpu_evaluate.json"], root / "eval_two")
    assert "val_mean_teacher" in one and two == one
    assert sorted(p.name for p in (root / "eval_two").iterdir()) == ["metrics.csv"]


def _launch_node(root: Path, port: int, run_id: str, log: Path, **overrides) -> subprocess.Popen:
    launcher = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint",
                f"127.0.0.1:{port}", "--rdzv_id", run_id, "--max_restarts", "0",
                "--local_addr", "127.0.0.1"]  # not the host name, which need not resolve on a CI machine
    return subprocess.Popen(_command(root, launcher, **overrides), stdout=log.open("w"), stderr=subprocess.STDOUT,
                            cwd=str(BUNDLE), env=_env())


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own, so killing the
    agent's process group leaves them running)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def _kill_node(proc: subprocess.Popen) -> None:
    """SIGKILL a node: its torchrun agent and every worker, no clean-up."""
    for pid in [proc.pid, *_descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            _kill_node(proc)


@pytest.mark.skipif(sys.platform != "linux", reason="finds a node's worker processes through /proc")
def test_two_nodes_resume_after_one_node_is_killed(tmp_path, uninterrupted):
    overrides = {"resume_from": "auto"}
    models = tmp_path / "models"
    port = _free_port()
    nodes = [_launch_node(tmp_path, port, "first", tmp_path / f"node{n}.log", **overrides) for n in range(2)]
    try:
        deadline = time.monotonic() + 300
        while not list(models.glob("checkpoint_*.pt")):  # the first interval checkpoint has landed
            assert time.monotonic() < deadline and all(p.poll() is None for p in nodes), \
                "\n".join((tmp_path / f"node{n}.log").read_text()[-2000:] for n in range(2))
            time.sleep(0.5)
        _kill_node(nodes[1])
        assert nodes[0].wait(timeout=120) != 0  # the other node's worker loses its peer and the job fails
    finally:
        _stop(*nodes)
    saved = torch.load(sorted(models.glob("checkpoint_*.pt"), key=os.path.getmtime)[-1], weights_only=True)
    done = saved["trainer"]["iteration"]
    total = TINY["epochs"] * saved["trainer"]["epoch_length"]
    assert 0 < done < total
    # the same command on both nodes again: resume_from auto picks the newest complete checkpoint
    port = _free_port()
    nodes = [_launch_node(tmp_path, port, "second", tmp_path / f"again{n}.log", **overrides) for n in range(2)]
    try:
        codes = [p.wait(timeout=600) for p in nodes]
    finally:
        _stop(*nodes)
    logs = [(tmp_path / f"again{n}.log").read_text() for n in range(2)]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert sum("resumed from" in log and f"at iteration {done}" in log for log in logs) == 1  # rank 0 logs it
    final = torch.load(models / "last.pt", weights_only=True)
    assert final["trainer"]["iteration"] == total
    first, second = _reports(tmp_path)
    assert first["iteration"] == second["iteration"] == total and _same(first["metrics"], second["metrics"])
    # exact resume across ranks: the same metrics, to the last bit, as the run that was not interrupted (every
    # rank's teacher is rank 0's, and every rank's random streams come back from the checkpoint)
    assert _same(first["metrics"], _reports(uninterrupted[0])[0]["metrics"])
