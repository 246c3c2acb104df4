"""build_sources(cache_dir=...): decoded, resized images on disk; the same samples as without the cache."""

from __future__ import annotations

import json
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


def test_cache_with_the_skip_policy(sources, tmp_path):
    datalist = json.loads(Path(sources["phantom_cls"]["datalist"]).read_text())
    root = Path(sources["phantom_cls"]["datalist"]).parent
    bad = root / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    datalist["training"].append({**datalist["training"][0], "id": "broken", "image": "broken.png"})
    path = root / "with_broken.json"
    path.write_text(json.dumps(datalist))
    loader = build_sources({"x": {"datalist": str(path), "tasks": ["cls"]}}, size=64, batch_size=2, train=False,
                           skip_bad_samples=True, cache_dir=str(tmp_path))["cls/x"]
    assert sum(batch["skipped"] for batch in loader) == 1
    assert sum(batch["skipped"] for batch in loader) == 1  # not cached as a good sample
