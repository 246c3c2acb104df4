"""bundles/foundation_x configs/paper.json: the paper's recipe on prepared datalists, and its dry run.

The dry run builds everything (stand-in datalists for the 11 datasets, network with heads read from them, loaders,
optimiser, teacher, Lock-Release) and runs one iteration per step of the whole 29-step cycle.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow

from cxrfx.data.adapters import list_adapters
from cxrfx.data.sources import paper_datasets, schedule_tasks, write_stand_in
from cxrfx.engines import LockReleaseEvents, paper_cycle
from cxrfx.engines.schedule import PAPER_TASK_ORDER
from cxrfx.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "foundation_x"
CONFIGS = [str(BUNDLE / "configs" / n) for n in ("train.json", "paper.json")]


def _parser(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(CONFIGS)
    parser.update({"bundle_root": str(BUNDLE), **overrides})
    return parser


def test_paper_settings_are_the_published_ones():
    """What a real run uses (REFERENCE §1.5-1.9), read without any data."""
    parser = _parser()
    got = {k: parser.get_parsed_content(k) for k in (
        "image_size", "batch_size", "epochs", "lr_cycles", "backbone", "backbone_kwargs", "backbone_lr", "head_lr",
        "train#optimizer#weight_decay", "train#teacher#momentum", "train#teacher#update_on",
        "train#trainer#consistency_weight", "datalists_dir", "ckpt_dir", "validate_data")}
    assert got["image_size"] == 224 and got["batch_size"] == 24
    assert got["backbone"] == "base" and got["backbone_kwargs"] == {"drop_path_rate": 0.2, "use_checkpoint": True}
    assert (got["backbone_lr"], got["head_lr"], got["train#optimizer#weight_decay"]) == (1e-5, 1e-4, 1e-4)
    assert (got["train#teacher#momentum"], got["train#teacher#update_on"]) == (0.8, "step")
    assert got["train#trainer#consistency_weight"] == 0.5
    assert got["epochs"] == got["lr_cycles"] == 150  # total_epochs 3000 task-epochs / 20 per cycle
    assert got["datalists_dir"] == str(BUNDLE / "data" / "datalists")
    assert got["ckpt_dir"] == str(BUNDLE / "models")
    assert got["validate_data"] is False  # decoding ~1 M images at every (re)start: `cxrfx validate` once instead
    steps = parser.get_parsed_content("schedule")
    assert len(steps) == 29 and all("epoch_fraction" in s for s in steps)
    assert len(_parser(lock_cls=True).get_parsed_content("schedule")) == 40  # Foundation X+: cls locked first too


def test_paper_dataset_names_are_the_adapters():
    adapters = {info.name: set(info.tasks) for info in list_adapters()}
    full = {"cls": "classification", "det": "detection", "seg": "segmentation"}
    for dataset, task in PAPER_TASK_ORDER:
        assert dataset in adapters, dataset
        assert full[task] in adapters[dataset], (dataset, task)


def test_head_sizes_come_from_the_datalists(tmp_path):
    order = schedule_tasks(paper_cycle())
    folder = Path(write_stand_in(tmp_path, order, images=2, size=32))
    data = json.loads((folder / "chexpert.json").read_text())
    data["tasks"]["classification"]["labels"] = data["tasks"]["classification"]["labels"][:3]
    for split in ("training", "validation"):
        for item in data[split]:
            item["label"] = item["label"][:3]
    (folder / "chexpert.json").write_text(json.dumps(data))
    got = paper_datasets(folder, paper_cycle())
    assert got["cls_heads"]["chexpert"] == 3
    assert got["det_heads"] == {"tbx11k": 3, "node21": 1, "candid_ptx": 3, "rsna_pneumonia": 1, "chestx_det": 13,
                                "siim_acr": 1}
    assert got["seg_heads"] == {"candid_ptx": 3, "chestx_det": 13, "siim_acr": 1}
    assert got["datasets"]["chestx_det"] == {"datalist": str(folder / "chestx_det.json"),
                                             "tasks": ["cls", "det", "seg"]}
    assert list(got["datasets"]) == list(order)

    # every problem at once, each with what to do
    (folder / "siim_acr.json").unlink()
    data = json.loads((folder / "tbx11k.json").read_text())
    del data["tasks"]["detection"]
    for split in ("training", "validation"):
        for item in data[split]:
            del item["boxes"], item["box_labels"]
    (folder / "tbx11k.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        paper_datasets(folder, paper_cycle())
    message = str(info.value)
    assert "2 problem(s)" in message
    assert (f"python -m cxrfx prepare siim_acr --root <siim_acr as downloaded> --out {folder / 'siim_acr.json'}"
            in message)
    assert "tbx11k.json: no detection task, which the schedule trains (det/tbx11k)" in message


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    workflow = ConfigWorkflow(config_file=CONFIGS, meta_file=str(BUNDLE / "configs" / "metadata.json"),
                              logging_file=str(BUNDLE / "configs" / "logging.conf"), workflow_type="train",
                              bundle_root=str(root), dry_run=True, dry_run_dir=str(root / "dry_run"))
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    record = {"steps": [], "losses": [], "completed": 0}

    def started(engine):
        step = engine.state.cxrfx_step
        record["steps"].append((step.dataset, step.task, step.phase))

    trainer.add_event_handler(Events.ITERATION_STARTED, started)
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda e: record["losses"].append(float(e.state.output["loss"])))
    trainer.add_event_handler(LockReleaseEvents.STEP_COMPLETED,
                              lambda e: record.__setitem__("completed", record["completed"] + 1))
    workflow.run()
    record["workflow"] = workflow
    record["root"] = root
    return record


def test_dry_run_walks_the_whole_cycle(dry_run):
    expected = [(s["dataset"], s["task"], s["phase"]) for s in paper_cycle()]
    assert dry_run["steps"] == expected  # one iteration per step, in the paper's order
    assert len(expected) == 29
    assert sum(t == "cls" for _, t, _ in expected) == 11
    assert sum(t == "det" for _, t, _ in expected) == 12 and sum(t == "seg" for _, t, _ in expected) == 6
    assert {(d, t) for d, t, p in expected if p == "lock"} == {(d, t) for d, t in PAPER_TASK_ORDER if t != "cls"}
    assert dry_run["completed"] == 29  # STEP_COMPLETED: the teacher updates after each step
    assert len(dry_run["losses"]) == 29 and all(math.isfinite(v) for v in dry_run["losses"])


def test_dry_run_builds_the_recipe_from_its_datalists(dry_run):
    parser = dry_run["workflow"].parser
    root = dry_run["root"]
    data = parser.get_parsed_content("paper_data")
    assert data["datalists_dir"] == str(root / "dry_run" / "datalists")
    network = parser.get_parsed_content("network")
    for task in ("cls", "det", "seg"):
        assert set(network.heads(task)) == set(data[f"{task}_heads"]), task
    assert network.config["cls_heads"] == data["cls_heads"] and network.config["seg_heads"] == data["seg_heads"]
    assert parser.get_parsed_content("train#lr_scheduler").t_total == 150 * 29
    teacher = parser.get_parsed_content("train#teacher")
    assert (teacher.momentum, teacher.updates) == (0.8, 29)  # m = 0.8 after each step
    # everything the dry run writes stays under dry_run_dir
    assert (root / "dry_run" / "models" / "last.pt").is_file()
    assert not (root / "models").exists()
    state = torch.load(root / "dry_run" / "models" / "last.pt", map_location="cpu", weights_only=False)
    assert state["trainer"]["iteration"] == 29


def test_real_path_reads_datalists_dir_and_sizes_steps_by_epochs(tmp_path):
    """Not the dry run: ``datalists_dir`` pointed at prepared datalists (here a stand-in written beforehand), step
    lengths as fractions of each loader (lock half an epoch, release one), checkpoints in the bundle's models/."""
    folder = write_stand_in(tmp_path / "prepared", schedule_tasks(paper_cycle()), images=4, size=32)
    small = {"image_size": 32, "batch_size": 2, "num_workers": 0, "epochs": 1, "backbone": "tiny",
             "backbone_kwargs": "$@dry_run_backbone", "network_def#psp_channels": 32, "network_def#seg_channels": 16,
             "network_def#det_channels": 32}
    workflow = ConfigWorkflow(config_file=CONFIGS, meta_file=str(BUNDLE / "configs" / "metadata.json"),
                              logging_file=str(BUNDLE / "configs" / "logging.conf"), workflow_type="train",
                              bundle_root=str(tmp_path / "bundle"), datalists_dir=folder, **small)
    workflow.initialize()
    lock_release = workflow.parser.get_parsed_content("train#lock_release")
    assert lock_release.lengths == [1 if s["phase"] == "lock" else 2 for s in paper_cycle()]  # 4 images, batch 2
    workflow.run()
    assert workflow.parser.get_parsed_content("train#trainer").state.iteration == 9 * 1 + 20 * 2
    assert (tmp_path / "bundle" / "models" / "last.pt").is_file()
    assert not (tmp_path / "bundle" / "eval" / "paper_dry_run").exists()


def _write_and_read(folder: str) -> int:
    """One torchrun process of a dry run: write the stand-in, then read every file its datalists name."""
    order = schedule_tasks(paper_cycle())
    out = Path(write_stand_in(folder, order, images=2, size=32))
    files = 0
    for name in order:
        data = json.loads((out / f"{name}.json").read_text())
        for item in data["training"] + data["validation"]:
            for rel in [item["image"], *item.get("mask", {}).values()]:
                assert (out / rel).stat().st_size > 0, rel
                files += 1
    return files


def test_stand_in_written_once_for_concurrent_processes(tmp_path):
    """Processes of one dry run write the stand-in at the same moment: one writes, the others reuse it, and no
    process removes files another one reads; other parameters rewrite it."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(3) as pool:
        counts = pool.map(_write_and_read, [str(tmp_path)] * 3)
    assert len(set(counts)) == 1 and counts[0] > 0
    first = tmp_path / "datalists" / "chexpert" / "training_0.png"
    stamp = first.stat().st_mtime_ns
    _write_and_read(str(tmp_path))
    assert first.stat().st_mtime_ns == stamp  # same parameters: left alone
    write_stand_in(tmp_path, schedule_tasks(paper_cycle()), images=3, size=32)
    assert (tmp_path / "datalists" / "chexpert" / "training_2.png").exists()  # other parameters: rewritten


def test_dry_run_under_torchrun_with_multi_gpu_train(tmp_path):
    """paper.json with multi_gpu_train.json: two gloo processes write and share one stand-in, walk the cycle (29
    steps on the sharded loaders) and rank 0 alone saves the final checkpoint."""
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    configs = [str(BUNDLE / "configs" / n) for n in ("train.json", "paper.json", "multi_gpu_train.json")]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(port), "-m", "monai.bundle", "run", "--config_file", json.dumps(configs),
         "--logging_file", str(BUNDLE / "configs" / "logging.conf"), "--bundle_root", str(tmp_path),
         "--dry_run", "True"],
        capture_output=True, text=True, timeout=600, cwd=str(BUNDLE), env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "eval" / "paper_dry_run"
    assert sorted(p.name for p in (out / "models").iterdir()) == ["last.pt", "model.pt"]
    state = torch.load(out / "models" / "last.pt", map_location="cpu", weights_only=False)
    assert state["trainer"]["iteration"] == 29
    assert len(list((out / "datalists").glob("*.json"))) == 11


def test_ssl_steps_read_any_datalist_and_size_no_head(tmp_path):
    """A self-supervised warm-up on unlabelled images before the paper's cycle: the ssl dataset needs no task
    section and gets no head; the stand-in writes it as an unlabelled datalist; an unknown task is named."""
    from cxrfx.data.datalist import is_unlabelled, read_datalist

    schedule = [{"dataset": "hospital", "task": "ssl", "phase": "release", "epoch_fraction": 1.0},
                {"dataset": "chexpert", "task": "ssl", "phase": "release", "epoch_fraction": 1.0}, *paper_cycle()]
    got = paper_datasets(None, schedule, stand_in=tmp_path, stand_in_images=2, stand_in_size=32)
    assert got["datasets"]["hospital"]["tasks"] == ["ssl"]
    assert got["datasets"]["chexpert"]["tasks"] == ["ssl", "cls"]  # a labelled datalist serves ssl steps too
    assert "hospital" not in got["cls_heads"] and got["cls_heads"]["chexpert"] == 14
    hospital = read_datalist(got["datasets"]["hospital"]["datalist"])
    assert is_unlabelled(hospital) and len(hospital["training"]) == 2
    bad = [{"dataset": "chexpert", "task": "depth", "phase": "release", "epoch_fraction": 1.0}]
    write_stand_in(tmp_path / "other", {"chexpert": ["cls"]}, images=2, size=32)
    with pytest.raises(ConfigError, match="task 'depth' for chexpert"):
        paper_datasets(tmp_path / "other" / "datalists", bad)
