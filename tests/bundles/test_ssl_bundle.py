"""bundles/foundation_x/configs/ssl.json: DiRA warm-up on the phantom's images (read as unlabelled), then the
cycle; a run resumed from a checkpoint taken inside the warm-up ends where the uninterrupted run ends."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from finetune_helpers import ROOT, run_bundle

from cxrfx.data.phantom import phantom_sources

BUNDLE = ROOT / "bundles" / "foundation_x"
CONFIGS = ["train.json", "demo.json", "ssl.json"]
SETTINGS = {"epochs": 2, "ssl_warmup_epochs": 1, "phantom_count": 8, "phantom_size": 64, "image_size": 64,
            "batch_size": 4, "num_workers": 0, "checkpoint_interval": 1, "keep_checkpoints": 100,
            "ssl_recipe#queue_size": 64, "ssl_transforms#num_blocks": 100}


def _run(root: Path, data: Path, **overrides):
    return run_bundle(BUNDLE, CONFIGS, root, dataset_dir=str(data), **{**SETTINGS, **overrides})


def _tensors(state, prefix=""):
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    own = [(prefix, state)] if isinstance(state, torch.Tensor) else []
    return own + [leaf for key, value in items for leaf in _tensors(value, f"{prefix}/{key}")]


def test_ssl_warmup_then_cycle_and_resume_inside_the_warmup(tmp_path):
    data = tmp_path / "data"
    phantom_sources(str(data), count=SETTINGS["phantom_count"], size=SETTINGS["phantom_size"])
    proc = _run(tmp_path / "reference", data)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "warm-up release ssl/phantom_images" in log and "step 1/7 release cls/phantom_cls" in log
    reference = torch.load(tmp_path / "reference" / "models" / "last.pt", weights_only=True)
    cycle = reference["trainer"]["epoch_length"]
    assert reference["trainer"]["iteration"] == 2 * cycle
    assert reference["lock_release"]["warmup"]["epochs"] == 1 and set(reference["ssl"]) == {
        "recipe", "optimizer", "disc_optimizer"}
    assert int(reference["ssl"]["recipe"]["key_encoder.queue_ptr"]) > 0  # keys were enqueued

    inside = cycle // 2  # a checkpoint of the warm-up epoch
    start = tmp_path / "reference" / "models" / f"checkpoint_iteration={inside}.pt"
    proc = _run(tmp_path / "resumed", data, resume_from=str(start))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert re.search(rf"resumed from .*checkpoint_iteration={inside}\.pt at iteration {inside}", log), log[-2000:]
    resumed = torch.load(tmp_path / "resumed" / "models" / "last.pt", weights_only=True)
    assert resumed["trainer"] == reference["trainer"] and resumed["lock_release"] == reference["lock_release"]
    pairs = list(zip(_tensors(reference), _tensors(resumed)))
    assert len(pairs) == len(_tensors(resumed))
    differing = [a for (a, x), (b, y) in pairs if a != b or not torch.equal(x, y)]
    assert not differing, differing[:8]


def test_adam_v2_recipe_by_override(tmp_path):
    data = tmp_path / "data"
    phantom_sources(str(data), count=SETTINGS["phantom_count"], size=SETTINGS["phantom_size"])
    adam = {"_target_": "cxrfx.ssl.adam_v2.AdamV2", "network": "@network", "queue_size": 64, "seed": "@seed"}
    proc = _run(tmp_path / "adam", data, epochs=1, ssl_recipe=adam, ssl_transforms={"recipe": "adam_v2"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    state = torch.load(tmp_path / "adam" / "models" / "last.pt", weights_only=True)
    assert any(k.startswith("composer.") for k in state["ssl"]["recipe"]) and "disc_optimizer" not in state["ssl"]
    assert int(state["ssl"]["recipe"]["key_encoder.queue_ptr"]) > 0
