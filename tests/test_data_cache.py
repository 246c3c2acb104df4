"""build_sources(cache_dir=...): decoded, resized images on disk; the same samples as without the cache."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from cxrfx.data.multitask import build_sources
from cxrfx.data.phantom import phantom_sources


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return phantom_sources(str(tmp_path_factory.mktemp("ph")), count=8, size=64)


@pytest.mark.parametrize("train", [False, True])
def test_cached_loader_gives_the_same_batches(sources, tmp_path, train):
    spec = {"phantom_seg": {**sources["phantom_seg"], "tasks": ["seg"]}}
    plain = build_sources(spec, size=64, batch_size=2, train=train, seed=3)["seg/phantom_seg"]
    cached = build_sources(spec, size=64, batch_size=2, train=train, seed=3, cache_dir=str(tmp_path))["seg/phantom_seg"]
    for _ in range(2):  # the second pass reads the cache
        for a, b in zip(plain, cached):
            assert torch.allclose(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    files = list((tmp_path / "seg_phantom_seg_64").glob("*.pt"))
    assert len(files) == len(plain.dataset)  # one cached item per training image


def _with_broken_image(sources) -> str:
    """The phantom_cls datalist plus one training item whose PNG is broken; returns its path."""
    datalist = json.loads(Path(sources["phantom_cls"]["datalist"]).read_text())
    root = Path(sources["phantom_cls"]["datalist"]).parent
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    datalist["training"].append({**datalist["training"][0], "id": "broken", "image": "broken.png"})
    path = root / "with_broken.json"
    path.write_text(json.dumps(datalist))
    return str(path)


def test_cache_with_the_skip_policy(sources, tmp_path):
    loader = build_sources({"x": {"datalist": _with_broken_image(sources), "tasks": ["cls"]}}, size=64, batch_size=2,
                           train=False, skip_bad_samples=True, cache_dir=str(tmp_path))["cls/x"]
    assert sum(batch["skipped"] for batch in loader) == 1
    assert sum(batch["skipped"] for batch in loader) == 1  # not cached as a good sample


def test_memory_cache_with_the_skip_policy(sources, caplog):
    """cache_rate used to ignore skip_bad_samples: building the loaders raised on the broken file."""
    spec = {"x": {"datalist": _with_broken_image(sources), "tasks": ["cls"]}}
    with pytest.raises(Exception) as info:  # off by default: the run stops, its cause names the file
        build_sources(spec, size=64, batch_size=2, train=False, cache_rate=1.0)
    assert "broken.png" in str(info.value.__cause__)
    with caplog.at_level(logging.WARNING, logger="cxrfx.data"):
        loader = build_sources(spec, size=64, batch_size=2, train=False, cache_rate=1.0,
                               skip_bad_samples=True)["cls/x"]
        counts = [sum(batch["skipped"] for batch in loader) for _ in range(2)]
        images = sum(len(batch["image"]) for batch in loader if "image" in batch)
    assert counts == [1, 1] and images == len(loader.dataset) - 1
    assert caplog.text.count("skipped sample") == 1 and "broken.png" in caplog.text  # logged once, when cached
