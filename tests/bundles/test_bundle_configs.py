"""The three bundles' configs as the Model Zoo reads them: no logic or side effects while parsed, inference and
evaluation that initialise without weights (loaded at run time, a missing file named in one line), the zoo's
preferred train / validate keys, multi_gpu_train.json extending ``initialize`` instead of copying it."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from cxrfx.data.phantom.files import write_png
from cxrfx.errors import CheckpointError, MissingWeightsError
from finetune_helpers import ENV, ROOT, TINY, build_phantom

BUNDLES = ("foundation_x", "finetune_seg", "finetune_det")
# the tiny settings of the other bundle tests, in the key each bundle has (epochs vs iterations)
FX_TINY = {"epochs": 1, "phantom_count": TINY["phantom_count"], "phantom_size": TINY["phantom_size"],
           "image_size": 64, "batch_size": 2}


def _settings(name: str) -> dict:
    return FX_TINY if name == "foundation_x" else TINY


def _bare_copy(name: str, dest: Path) -> Path:
    """The bundle as a zoo download has it before ``download_large_files``: configs, docs, LICENSE; no models/."""
    src = ROOT / "bundles" / name
    for entry in ("configs", "docs"):
        shutil.copytree(src / entry, dest / entry)
    shutil.copy(src / "LICENSE", dest / "LICENSE")
    assert not (dest / "models").exists()
    return dest


def _workflow(bundle: Path, names: list[str], kind: str, **overrides) -> ConfigWorkflow:
    configs = bundle / "configs"
    return ConfigWorkflow(config_file=[str(configs / n) for n in names], meta_file=str(configs / "metadata.json"),
                          logging_file=str(configs / "logging.conf"), workflow_type=kind, bundle_root=str(bundle),
                          **overrides)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return build_phantom(tmp_path_factory.mktemp("phantom"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    write_png(str(folder / "a.png"), np.random.default_rng(0).random((60, 64)), 8)
    return folder


# ------------------------------------------------------------------ inference / evaluation without weights


@pytest.mark.parametrize("name", BUNDLES)
def test_inference_initialises_without_weights_and_names_the_missing_file(name, tmp_path, images):
    bundle = _bare_copy(name, tmp_path / name)
    wf = _workflow(bundle, ["inference.json", "demo.json"], "infer", image_size=64, input_path=str(images))
    wf.initialize()  # used to load models/model.pt here and fail
    assert wf.check_properties() == []
    handlers = wf.parser.get_parsed_content("handlers")
    assert [type(h).__name__ for h in handlers] == ["CheckpointLoader"]
    with pytest.raises(MissingWeightsError) as info:
        wf.run()
    assert str(info.value).startswith(f"{bundle / 'models' / 'model.pt'}: no weights file there")


@pytest.mark.parametrize("name", BUNDLES)
def test_inference_initialises_before_its_input_exists(name, tmp_path):
    """A fresh download: neither weights nor the default input (the phantom's datalist) exist yet; the config
    still initialises, and running it names the missing input."""
    from cxrfx.errors import CXRFXError

    bundle = _bare_copy(name, tmp_path / name)
    wf = _workflow(bundle, ["inference.json"], "infer", input_path=str(tmp_path / "not_yet"))
    wf.initialize()
    assert wf.check_properties() == []
    evaluator = wf.parser.get_parsed_content("evaluator")
    with pytest.raises(CXRFXError, match="not_yet: input not found"):
        evaluator.run()  # the run itself (the weights loader would name its missing file first)


def test_missing_weights_is_one_line_under_monai_bundle_run(tmp_path, images):
    bundle = _bare_copy("foundation_x", tmp_path / "fx")
    configs = bundle / "configs"
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file",
         json.dumps([str(configs / "inference.json"), str(configs / "demo.json")]),
         "--logging_file", str(configs / "logging.conf"), "--bundle_root", str(bundle),
         "--image_size", "64", "--input_path", repr(str(images))],
        capture_output=True, text=True, timeout=600, cwd=str(bundle), env=ENV)
    missing = bundle / "models" / "model.pt"
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {missing}: no weights file there")
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ["foundation_x", "finetune_seg"])
def test_evaluate_initialises_without_weights(name, tmp_path, phantom):
    bundle = _bare_copy(name, tmp_path / name)
    wf = _workflow(bundle, ["train.json", "demo.json", "evaluate.json"], "train", dataset_dir=str(phantom),
                   **_settings(name))
    wf.initialize()
    assert wf.check_properties() == []
    loader = wf.parser.get_parsed_content("validate#handlers")[0]
    assert type(loader).__name__ == "CheckpointLoader" and loader.strict
    expected = "last.pt" if name == "foundation_x" else "model.pt"
    with pytest.raises(MissingWeightsError, match=expected):
        wf.parser.get_parsed_content("validate#evaluator").run()


def test_checkpoint_loader_reads_cxrfx_files_at_start(tmp_path, images, caplog):
    """One entry: a plain state dict or a training checkpoint (its teacher); several: each entry by name;
    strict refuses a partial load; a StatsHandler listed after it logs no traceback for a missing file."""
    from ignite.engine import Engine
    from monai.handlers import StatsHandler

    from cxrfx.engines.handlers import CheckpointLoader

    bundle = _bare_copy("foundation_x", tmp_path / "fx")
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "inference.json"), str(bundle / "configs" / "demo.json")])
    parser.update({"bundle_root": str(bundle), "image_size": 64, "input_path": str(images)})
    student, teacher = parser.get_parsed_content("network_def", lazy=False), parser.get_parsed_content(
        "network_def", lazy=False)
    torch.manual_seed(1)
    source = parser.get_parsed_content("network_def", lazy=False)
    other = {k: v + 1 if v.is_floating_point() else v for k, v in source.state_dict().items()}
    torch.save({"student": source.state_dict(), "teacher": other}, tmp_path / "last.pt")

    engine = Engine(lambda e, b: None)
    CheckpointLoader(tmp_path / "last.pt", {"student": student, "teacher": teacher}).attach(engine)
    engine.run([0])
    for net, sd in ((student, source.state_dict()), (teacher, other)):
        for k, v in net.state_dict().items():
            torch.testing.assert_close(v, sd[k], msg=k)

    single = CheckpointLoader(tmp_path / "last.pt", {"model": student})
    assert single.load()["model"].source == "cxrfx [teacher]"  # load_checkpoint's choice: the teacher
    torch.save(source.state_dict(), tmp_path / "model.pt")
    assert CheckpointLoader(tmp_path / "model.pt", {"model": student}).load()["model"].source == "cxrfx"

    partial = {k: v for k, v in source.state_dict().items() if not k.startswith("seg_heads.")}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="does not fit the network 'model'"):
        CheckpointLoader(tmp_path / "partial.pt", {"model": student}).load()
    report = CheckpointLoader(tmp_path / "partial.pt", {"model": student}, strict=False).load()["model"]
    assert report.missing_in("seg_heads.")

    engine = Engine(lambda e, b: None)
    CheckpointLoader(tmp_path / "gone.pt", {"model": student}).attach(engine)
    StatsHandler(iteration_log=False).attach(engine)
    with caplog.at_level(logging.INFO), pytest.raises(MissingWeightsError, match="gone.pt"):
        engine.run([0])
    assert not any(r.exc_info for r in caplog.records)  # StatsHandler's logged traceback did not run


# ------------------------------------------------------------------ start points, no side effects while parsed


def test_start_point_missing_file_and_scratch(tmp_path, caplog):
    from cxrfx.engines.checkpointing import load_start_point

    net = torch.nn.Linear(2, 2)
    with caplog.at_level(logging.INFO, logger="cxrfx.start_point"):
        assert load_start_point(net, tmp_path / "x.pt", enabled=False) is None
        assert load_start_point(net, None) is None
    assert caplog.text.count("start point: scratch") == 2
    with pytest.raises(MissingWeightsError, match="start checkpoint not found"):
        load_start_point(net, tmp_path / "x.pt")


@pytest.mark.parametrize("name", BUNDLES)
def test_reading_the_train_config_builds_and_writes_nothing(name, tmp_path):
    """Parsing the data description and the network is side-effect free; the phantom is built in initialize."""
    bundle = _bare_copy(name, tmp_path / name)
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "train.json"), str(bundle / "configs" / "demo.json")])
    parser.update({"bundle_root": str(bundle)})
    before = sorted(p for p in bundle.rglob("*"))
    key = "datasets" if name == "foundation_x" else "source_datalist"
    value = parser.get_parsed_content(key)
    assert sorted(p for p in bundle.rglob("*")) == before  # no phantom under data/, no datalist under eval/
    text = json.dumps(value)
    assert str(bundle / "data" / "phantom_demo") in text
    init = parser["initialize"]
    assert not any("print(" in e for e in init) and any("prepare_phantom" in e for e in init)


def test_prepare_phantom_only_for_the_phantom(tmp_path, monkeypatch):
    from cxrfx.data import sources

    calls = []
    monkeypatch.setattr("cxrfx.data.phantom.writer.generate_phantom", lambda root, **kw: calls.append((root, kw)))
    mine = {"nih14": {"datalist": str(tmp_path / "nih14.json"), "tasks": ["cls"]}}
    assert not sources.prepare_phantom(mine, tmp_path / "data" / "phantom")
    assert not sources.prepare_phantom(str(tmp_path / "jsrt.json"), tmp_path / "data" / "phantom")
    assert calls == []
    assert sources.prepare_phantom(sources.phantom_datasets(tmp_path / "ph"), tmp_path / "ph", count=8, size=64)
    assert sources.prepare_phantom(str(tmp_path / "ph" / "phantom_seg" / "datalist.json"), str(tmp_path / "ph"))
    assert calls == [(str(tmp_path / "ph"), {"count": 8, "size": 64, "seed": 0, "verbose": False}),
                     (str(tmp_path / "ph"), {"count": 64, "size": 256, "seed": 0, "verbose": False})]


# ------------------------------------------------------------------ the zoo's preferred keys, checkpoint objects


@pytest.mark.parametrize("name", BUNDLES)
def test_preferred_keys_resolve_to_the_objects_the_engines_use(name, tmp_path, phantom):
    bundle = _bare_copy(name, tmp_path / name)
    wf = _workflow(bundle, ["train.json", "demo.json"], "train", dataset_dir=str(phantom), **_settings(name))
    wf.initialize()
    assert wf.check_properties() == []
    get = wf.parser.get_parsed_content
    data, datasets = get("train#dataset#data"), get("datasets")
    assert data == datasets and get("validate#dataset#data") == datasets
    train, val = get("train#dataset"), get("validate#dataset")
    assert set(train) == set(val) and all("/" in k for k in train)  # "<task>/<dataset>" loaders
    assert {k: v.loader for k, v in get("train#lock_release").loaders.items()} == train  # wrapped, same loaders
    assert wf.parser["validate#evaluator#loaders"] == "@validate::dataset"  # "#" is stored as "::"
    assert wf.train_dataset is train and wf.val_dataset is val  # what MONAI's workflow properties return
    for key, loader in train.items():
        assert loader.sampler.shuffle and not val[key].sampler.shuffle
    objects = get("train#checkpoint_objects")
    expected = ["student", "optimizer", "lr_scheduler", "lock_release", "trainer", "rng", "best_model_saver"]
    if name == "foundation_x":
        expected[1:1] = ["teacher"]
        expected[5:5] = ["teacher_handler"]
        assert objects["teacher"] is get("train#teacher").teacher
    assert list(objects) == expected
    assert objects["student"] is get("network") and objects["trainer"] is get("train#trainer")
    assert objects["best_model_saver"] is get("validate#handlers")[2]


def test_training_state_with_and_without_teacher():
    from cxrfx.engines.checkpointing import RNGStates, training_state

    class Teacher:
        teacher = object()

    handler = Teacher()
    state = training_state("net", "opt", "sched", "lr", "trainer", best_model_saver="best", teacher_handler=handler)
    assert list(state) == ["student", "teacher", "optimizer", "lr_scheduler", "lock_release", "teacher_handler",
                           "trainer", "rng", "best_model_saver"]
    assert state["teacher"] is handler.teacher and isinstance(state["rng"], RNGStates)
    assert list(training_state("net", "opt", "sched", "lr", "trainer")) == [
        "student", "optimizer", "lr_scheduler", "lock_release", "trainer", "rng"]


@pytest.mark.parametrize("name", BUNDLES)
def test_multi_gpu_config_extends_initialize(name):
    configs = ROOT / "bundles" / name / "configs"
    overlay = json.loads((configs / "multi_gpu_train.json").read_text())
    assert "initialize" not in overlay and "train#dataset#distributed" in overlay
    base = ConfigParser.load_config_file(str(configs / "train.json"))["initialize"]
    merged = ConfigParser()
    merged.read_config([str(configs / "train.json"), str(configs / "multi_gpu_train.json")])
    assert merged["initialize"] == base + overlay["+initialize"]
    assert merged["train#dataset#distributed"] is True


@pytest.mark.parametrize("name", BUNDLES)
def test_no_long_expressions_left(name):
    """Logic lives in named cxrfx functions: no expression in the bundle's configs longer than 130 characters
    (the old checkpoint_objects one was 327)."""
    configs = ROOT / "bundles" / name / "configs"
    long = []

    def walk(value, where):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}#{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{where}#{i}")
        elif isinstance(value, str) and value.startswith("$") and len(value) > 130:
            long.append((where, len(value)))

    for path in configs.glob("*.json"):
        walk(json.loads(path.read_text()), path.name)
    assert long == []


def test_bundle_docs_name_no_removed_keys():
    for name in BUNDLES:
        text = (ROOT / "bundles" / name / "docs" / "README.md").read_text()
        assert "#loaders" not in text and "prints its report" not in text, name
