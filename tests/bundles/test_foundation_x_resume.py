"""Crash-safe training: SIGKILL the bundle's training process at random iterations, resume with
``--resume_from auto``, and compare the final state with an uninterrupted run of the same seed."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cxrfx.data.phantom import phantom_sources

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "foundation_x"
# 2 epochs of the 12-iteration phantom cycle; a checkpoint after every iteration, the last 2 kept
SETTINGS = {"epochs": 2, "phantom_count": 8, "phantom_size": 64, "image_size": 64, "batch_size": 4,
            "checkpoint_interval": 1, "keep_checkpoints": 2, "resume_from": "auto"}


def _command(root: Path, data: Path, **overrides) -> list[str]:
    configs = [str(BUNDLE / "configs" / n) for n in ("train.json", "demo.json")]
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs),
            "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
            "--logging_file", str(BUNDLE / "configs" / "logging.conf"), "--bundle_root", str(root),
            "--dataset_dir", json.dumps(str(data))]
    for key, value in {**SETTINGS, **overrides}.items():
        args += [f"--{key}", json.dumps(value)]
    return args


def _saved_iterations(models: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in models.glob("checkpoint_iteration=*.pt")
                  if (m := re.search(r"=(\d+)\.pt$", p.name)))


def _run_and_kill(command: list[str], models: Path, kill_after: int) -> int:
    """Start training, SIGKILL it once a checkpoint of iteration >= ``kill_after`` exists; the newest saved
    iteration at that moment."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(BUNDLE))
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            saved = _saved_iterations(models) if models.exists() else []
            if saved and saved[-1] >= kill_after:
                os.kill(proc.pid, signal.SIGKILL)  # no handler runs: like a power cut or an OOM kill
                proc.wait()
                return saved[-1]
            if proc.poll() is not None:
                raise AssertionError(f"training ended before iteration {kill_after}: {proc.stderr.read()[-3000:]}")
            time.sleep(0.02)
        raise AssertionError("training too slow")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _assert_checkpoints_complete(models: Path) -> None:
    for path in models.glob("*.pt"):  # every named checkpoint loads; partial writes only as hidden .part files
        torch.load(path, map_location="cpu", weights_only=True)


def _final_metrics(log: str) -> list[str]:
    return re.findall(r"(val_mean_teacher: [-0-9.e]+)", log)[-1:]


def _tensors(state, prefix=""):
    if isinstance(state, torch.Tensor):
        yield prefix, state
    elif isinstance(state, dict):
        for key, value in state.items():
            yield from _tensors(value, f"{prefix}/{key}")
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from _tensors(value, f"{prefix}/{i}")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_data")
    phantom_sources(str(root), count=SETTINGS["phantom_count"], size=SETTINGS["phantom_size"])
    return root


@pytest.mark.parametrize("seed,workers", [(0, 0), (1, 2)])
def test_killed_and_resumed_run_equals_the_uninterrupted_run(tmp_path, data, seed, workers):
    reference_root, resumed_root = tmp_path / "reference", tmp_path / "resumed"
    proc = subprocess.run(_command(reference_root, data, seed=seed, num_workers=workers), capture_output=True,
                          text=True, timeout=600, cwd=str(BUNDLE))
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference_metrics = _final_metrics(proc.stdout + proc.stderr)
    assert reference_metrics
    reference = torch.load(reference_root / "models" / "last.pt", weights_only=True)
    total = reference["trainer"]["iteration"]
    assert total == 2 * reference["trainer"]["epoch_length"]

    models = resumed_root / "models"
    rng = random.Random(seed)
    kill_points = sorted(rng.sample(range(2, total - 1), 3))
    resumed_at = []
    for kill_after in kill_points:
        resumed_at.append(_run_and_kill(_command(resumed_root, data, seed=seed, num_workers=workers), models,
                                        kill_after))
        _assert_checkpoints_complete(models)
        assert len(_saved_iterations(models)) <= SETTINGS["keep_checkpoints"] + 1  # + the one a kill interrupted
    proc = subprocess.run(_command(resumed_root, data, seed=seed, num_workers=workers), capture_output=True,
                          text=True, timeout=600, cwd=str(BUNDLE))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert re.search(r"resumed from .*checkpoint_iteration=\d+\.pt at iteration \d+", log), log[-2000:]
    assert not list(models.glob(".*.part")), "a stale partial file survived the restart"
    _assert_checkpoints_complete(models)

    resumed = torch.load(models / "last.pt", weights_only=True)
    assert resumed["trainer"] == reference["trainer"]  # iteration, epoch, skipped counters
    assert resumed["lock_release"] == reference["lock_release"]  # cycle position and every loader's position
    differing = [name for (name, a), (_, b) in zip(_tensors(reference), _tensors(resumed)) if not torch.equal(a, b)]
    assert len(list(_tensors(reference))) == len(list(_tensors(resumed)))
    assert not differing, f"killed at {kill_points} (resumed at {resumed_at}): {differing[:8]}"
    assert _final_metrics(log) == reference_metrics  # the validation after the last epoch, same digits
