"""``skip_bad_samples`` with the in-memory cache (``cache_rate``): a bad file is skipped and named in a warning,
never a crash, in training loaders (random transforms after the cache), with part of the dataset cached, and
through the evaluator (a batch left empty)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from torch import nn

from cxrfx.data.multitask import build_sources
from cxrfx.data.phantom import phantom_sources
from cxrfx.engines import MultiTaskEvaluator, MultiTaskScore
from cxrfx.networks.heads import DEFAULT_HEAD_TYPES, get_head_type


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict:
    """phantom_cls with a broken PNG added to the training and one to the validation split."""
    sources = phantom_sources(str(tmp_path_factory.mktemp("ph")), count=20, size=64)
    path = Path(sources["phantom_cls"]["datalist"])
    datalist = json.loads(path.read_text())
    for split in ("training", "validation"):
        (path.parent / f"broken_{split}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
        datalist[split].append({**datalist[split][0], "id": f"broken_{split}", "image": f"broken_{split}.png"})
    out = path.parent / "with_broken.json"
    out.write_text(json.dumps(datalist))
    return {"x": {"datalist": str(out), "tasks": ["cls"]}}


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "cxrfx.data" and r.levelno == logging.WARNING]


@pytest.mark.parametrize("cache_rate, logged", [(1.0, 1), (0.5, 2)])
def test_cached_training_loader_skips_the_bad_file(spec, caplog, cache_rate, logged):
    """Fully cached: the failure is met while the cache fills, logged once, and the item reads as skipped in every
    pass. Half cached: the bad item (the last) is read, fails and is logged in each pass."""
    n = len(json.loads(Path(spec["x"]["datalist"]).read_text())["training"])
    with caplog.at_level(logging.WARNING, logger="cxrfx.data"):
        # one batch of every item: no drop_last can leave the bad item out of a pass
        loader = build_sources(spec, size=64, batch_size=n, train=True, cache_rate=cache_rate,
                               skip_bad_samples=True)["cls/x"]
        passes = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)
            passes += [(batch["skipped"], len(batch["image"])) for batch in loader]
    assert passes == [(1, n - 1), (1, n - 1)]
    messages = _warnings(caplog)
    assert len(messages) == logged
    assert all(m.startswith("skipped sample") and "broken_training.png" in m for m in messages)


class Probe(nn.Module):
    """A stand-in classifier: every label's logit is the image mean (the evaluator reads ``head_type`` and calls
    ``network(images, task, head)``)."""

    def __init__(self, labels: int):
        super().__init__()
        self.labels = labels
        self.scale = nn.Parameter(torch.ones(()))

    def head_type(self, task):
        return get_head_type(DEFAULT_HEAD_TYPES[task], task)

    def forward(self, x, task, head):
        return self.scale * x.mean((1, 2, 3))[:, None].repeat(1, self.labels)


def test_evaluator_over_a_cached_source_with_a_bad_file(spec, caplog):
    """Batches of one image: the bad file's batch reaches the evaluator empty; it scores the others."""
    with caplog.at_level(logging.WARNING, logger="cxrfx.data"):
        loaders = build_sources(spec, split="validation", size=64, batch_size=1, train=False, cache_rate=1.0,
                                skip_bad_samples=True)
    good = len(loaders["cls/x"].dataset) - 1
    labels = len(json.loads(Path(spec["x"]["datalist"]).read_text())["tasks"]["classification"]["labels"])
    evaluator = MultiTaskEvaluator("cpu", loaders, Probe(labels), Probe(labels),
                                   key_val_metric={"val_mean": MultiTaskScore(model="teacher")},
                                   additional_metrics={"scores": MultiTaskScore(detailed=True)})
    scored = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: scored.append(len(e.state.output["target"])))
    evaluator.run()
    assert sorted(scored) == [0] + [1] * good  # every good image scored once, the bad one nowhere
    assert set(evaluator.state.metrics["scores"]) >= {"student/cls/x/auc", "teacher/cls/x/auc", "teacher/mean"}
    messages = _warnings(caplog)  # named once, when the cache was filled
    assert len(messages) == 1 and messages[0].startswith("skipped sample") and "broken_validation.png" in messages[0]
