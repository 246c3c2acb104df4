"""Reliability: non-finite loss guard, skipping unreadable samples, up-front validation, unsafe checkpoints."""

from __future__ import annotations

import logging
import os
import pickle

import pytest
import torch
from ignite.engine import Events

from cxrfx.data.multitask import build_sources
from cxrfx.data.phantom import generate_phantom, phantom_sources
from cxrfx.data.validate import validate_sources
from cxrfx.engines import LockReleaseHandler, MultiTaskTrainer, build_optimizer
from cxrfx.errors import CheckpointError, DatalistError
from cxrfx.networks import FoundationX, load_checkpoint

NET = dict(backbone="tiny", backbone_kwargs={"embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 3, 6),
                                             "window_size": 4, "drop_path_rate": 0.0}, seg_channels=16, psp_channels=32)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("ph")
    return phantom_sources(str(root), count=8, size=64)


def _net():
    torch.manual_seed(0)
    return FoundationX(**NET, cls_heads={"phantom_cls": 5})


class NaNOnSecondCall(torch.nn.Module):
    """BCE that returns NaN on its second call: a stand-in for a diverging batch."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, logits, targets):
        self.calls += 1
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.clamp(min=0))
        return loss * float("nan") if self.calls == 2 else loss


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_nonfinite_loss_is_skipped_or_stops_with_a_clear_log(sources, policy, caplog):
    loaders = build_sources({"phantom_cls": {**sources["phantom_cls"], "tasks": ["cls"]}}, size=64, batch_size=2)
    net = _net()
    trainer = MultiTaskTrainer("cpu", 1, net, build_optimizer(net, 1e-3, 1e-2),
                               LockReleaseHandler([{"dataset": "phantom_cls", "task": "cls", "iterations": 3}],
                                                  loaders, net),
                               cls_loss=NaNOnSecondCall(), nonfinite=policy)
    snapshots = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: snapshots.append(
        net.backbone.patch_embed.proj.weight.detach().clone()))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: snapshots.append(
        net.backbone.patch_embed.proj.weight.detach().clone()))
    with caplog.at_level(logging.ERROR, logger="cxrfx.trainer"):
        trainer.run()
    assert trainer.skipped_steps == 1
    assert "non-finite loss (nan) at iteration 2, dataset phantom_cls, task cls (release): update skipped" in caplog.text
    assert torch.equal(snapshots[2], snapshots[3])  # iteration 2 changed nothing
    assert all(torch.isfinite(s).all() for s in snapshots)
    if policy == "stop":
        assert trainer.state.iteration == 2 and "stopping the run" in caplog.text
    else:
        assert trainer.state.iteration == 3 and not torch.equal(snapshots[4], snapshots[5])


def test_bad_samples_are_skipped_and_counted_under_the_policy(tmp_path, caplog):
    root = tmp_path / "ph"
    generate_phantom(str(root), count=6, size=64, datasets=("phantom_cls",), verbose=False)
    bad = root / "phantom_cls" / "images" / "phantom_cls_0000.png"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated after the build
    spec = {"phantom_cls": {"datalist": str(root / "phantom_cls" / "datalist.json"), "tasks": ["cls"]}}
    with pytest.raises(DatalistError, match="phantom_cls_0000.png: cannot decode image"):
        validate_sources(spec)
    strict = build_sources(spec, size=64, batch_size=4, train=False)["cls/phantom_cls"]
    with pytest.raises(Exception) as info:  # off by default: the run stops, the cause names the file
        next(iter(strict))
    cause = info.value
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert "phantom_cls_0000.png: cannot decode image" in str(cause)
    loaders = build_sources(spec, size=64, batch_size=4, train=False, skip_bad_samples=True)
    with caplog.at_level(logging.WARNING, logger="cxrfx.data"):
        batches = list(loaders["cls/phantom_cls"])
    assert sum(b["skipped"] for b in batches) == 1
    assert sum(len(b["image"]) for b in batches if "image" in b) == len(loaders["cls/phantom_cls"].dataset) - 1
    assert "skipped sample" in caplog.text and "phantom_cls_0000.png" in caplog.text
    net = _net()
    loaders = build_sources(spec, size=64, batch_size=2, skip_bad_samples=True)
    trainer = MultiTaskTrainer("cpu", 1, net, build_optimizer(net),
                               LockReleaseHandler([{"dataset": "phantom_cls", "task": "cls", "epoch_fraction": 1.0}],
                                                  loaders, net))
    trainer.run()  # the training loop survives the bad file
    assert trainer.skipped_samples == 1


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {_Exploit.marker}",))


def test_crafted_pickle_checkpoint_is_refused_and_runs_nothing(tmp_path):
    _Exploit.marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"backbone.layers.0.blocks.0.attn.qkv.weight": torch.zeros(1)}, "x": _Exploit()}, f)
    with pytest.raises(CheckpointError, match="refused: .*unpickling would run code from the file.*allow_pickle=True"):
        load_checkpoint(_net(), path)
    assert not os.path.exists(_Exploit.marker)
    torch.save({"payload": _Exploit()}, tmp_path / "evil2.pth")
    assert not os.path.exists(_Exploit.marker)  # saving pickles, it does not run
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(_net(), tmp_path / "evil2.pth")
    assert not os.path.exists(_Exploit.marker)
