"""``bundles/finetune_det`` with the DINO head: ``configs/dino.json`` switches the head type (train, validate,
inference through the bundle's own workflows, no other change)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "bundles"))
from finetune_helpers import ROOT, build_phantom, workflow  # noqa: E402

from cxrfx.networks.heads.dino import DINODecoderHead  # noqa: E402

BUNDLE = ROOT / "bundles" / "finetune_det"
# small enough for a CPU test; 64 channels keep two channels per GroupNorm group on the 1 x 1 stride-64 level
TINY_DINO = {"hidden_dim": 64, "num_queries": 20, "enc_layers": 1, "dec_layers": 2, "ffn_dim": 64, "n_heads": 4}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return build_phantom(tmp_path_factory.mktemp("phantom"))


def test_finetune_det_trains_validates_and_predicts_with_dino(tmp_path, phantom):
    train = workflow(BUNDLE, ["train.json", "demo.json", "dino.json"], "train", tmp_path, dataset_dir=str(phantom),
                     dino_options=TINY_DINO)
    train.initialize()
    network = train.parser.get_parsed_content("network_def")
    assert network.head_types["det"] == "dino" and isinstance(network.det_heads["nodules"], DINODecoderHead)
    assert network.det_heads["nodules"].num_classes == 2
    train.run()
    metrics = train.parser.get_parsed_content("validate#evaluator").state.metrics
    assert 0.0 <= metrics["student/det/nodules/ap50"] <= 1.0
    last = tmp_path / "models" / "last.pt"
    assert last.exists()

    infer = workflow(BUNDLE, ["inference.json", "demo.json", "dino.json"], "infer", tmp_path,
                     dataset_dir=str(phantom), dino_options=TINY_DINO, ckpt_path=str(last), box_score_threshold=0.0)
    infer.initialize()
    infer.run()
    written = sorted((tmp_path / "eval" / "predictions").glob("*.json"))
    assert written
    # four iterations teach the head little: with no score floor, every decoded query is written, whatever it scores
    boxes = json.loads(written[0].read_text())["heads"]["det/nodules"]
    assert boxes and all(len(b["box_xyxy"]) == 4 and 0.0 <= b["score"] <= 1.0 and b["label"] in (0, 1)
                         for b in boxes)
    assert all(math.isfinite(v) for b in boxes for v in b["box_xyxy"])

    # the bundle's box_score_threshold is the floor of what is written: the median score drops the lower half
    floor = sorted(b["score"] for b in boxes)[len(boxes) // 2]
    infer = workflow(BUNDLE, ["inference.json", "demo.json", "dino.json"], "infer", tmp_path,
                     dataset_dir=str(phantom), dino_options=TINY_DINO, ckpt_path=str(last), box_score_threshold=floor)
    infer.initialize()
    infer.run()
    kept = json.loads(written[0].read_text())["heads"]["det/nodules"]
    assert 0 < len(kept) < len(boxes) and all(b["score"] >= floor - 1e-6 for b in kept)

    bad = workflow(BUNDLE, ["inference.json", "demo.json", "dino.json"], "infer", tmp_path, dataset_dir=str(phantom),
                   dino_options=TINY_DINO, ckpt_path=str(last), box_score_threshold=1.5)
    bad.initialize()
    with pytest.raises(RuntimeError) as failure:  # MONAI's config parser wraps the predictor's ValueError
        bad.parser.get_parsed_content("evaluator")
    assert "box_score_threshold must be in [0, 1], got 1.5" in str(failure.value.__cause__)
