"""The ``dino`` head loaded from a Foundation X checkpoint equals the reference code's localization branch.

Fixtures: ``tests/fixtures/make_fx_dino_fixture.py`` (built from the reference's module definitions; provenance in
the files): a tiny but complete Foundation X checkpoint (trunk, 11 classification heads, segmentation branch, DINO
branch with six decoders) and the reference's outputs on two 224 px images under the localization contract.
"""

from __future__ import annotations

import os

import pytest
import torch

from cxrfx.networks import FoundationX, load_checkpoint
from cxrfx.networks.checkpoints import FX_LOCALIZATION_HEADS, foundation_x_layout
from cxrfx.networks.foundation_x import HeadPredictor

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
CKPT, REF = os.path.join(FIXTURES, "fx_tiny_dino_ckpt.pth"), os.path.join(FIXTURES, "fx_tiny_dino_reference.pt")
ATOL = 1e-4


@pytest.fixture(scope="module")
def loaded():
    ref = torch.load(REF, weights_only=True)
    cfg = ref["provenance"]["config"]
    trunk = {k: cfg["trunk"][k] for k in ("embed_dim", "depths", "num_heads", "window_size")}
    layout = foundation_x_layout("all", localization=True)
    layout["head_options"]["det"].update({"hidden_dim": cfg["hidden_dim"], "n_heads": cfg["nheads"],
                                          "ffn_dim": cfg["dim_feedforward"], "enc_layers": cfg["enc_layers"],
                                          "dec_layers": cfg["dec_layers"], "num_queries": cfg["num_queries"]})
    model = FoundationX("tiny", backbone_kwargs={**trunk, "drop_path_rate": 0.0}, **layout).eval()
    report = load_checkpoint(model, CKPT)
    return model, report, ref


def _max_diff(a, b):
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def test_fixture_provenance(loaded):
    prov = loaded[2]["provenance"]
    assert prov["repository"] == "https://github.com/jlianglab/Foundation_X" and len(prov["commit"]) == 40
    assert "models/dino/dino_F6.py" in prov["files"] and prov["patch_check_max_abs_at_256"] == 0.0
    assert os.path.getsize(CKPT) < 4_000_000 and os.path.getsize(REF) < 1_000_000


def test_whole_fx_checkpoint_maps(loaded):
    _, report, _ = loaded
    assert report.missing == [] and report.unexpected == [] and not report.mismatched
    file_keys = torch.load(CKPT, weights_only=True)["teacher_model"]
    dropped = {k for k, _ in report.dropped}
    assert {k for k in file_keys if "class_embed." in k and "enc_out" not in k} <= dropped  # never read
    # the per-layer names of one refinement / output MLP are aliases of the first
    assert "bbox_embed.3.2.layers.1.weight" in report.aliases
    assert "bbox_embed.3.0.layers.1.weight" in report.aliases and "bbox_embed_.3.1.layers.0.bias" in report.aliases
    assert any(m.startswith("localization:") and "5 -> det_heads.siim_acr" in m for m in report.mapping)
    assert sum(k.startswith(("det_neck.", "det_encoder.", "det_queries.", "det_heads.")) for k in report.loaded) == 657


def test_localization_equals_reference(loaded):
    model, _, ref = loaded
    x = ref["image_u8"].float() / 255
    with torch.no_grad():
        levels = model.det_neck(model.forward_features(x, "det"))
        memory = model.det_encoder(levels)
        out = model.forward_all(x, ("det",))
    for ours, theirs in zip(levels, ref["levels"]):
        assert _max_diff(ours, theirs) <= ATOL
    flat = torch.cat([m.flatten(2).transpose(1, 2) for m in memory], 1)
    assert _max_diff(flat, ref["memory"]) <= ATOL
    for k, name in enumerate(FX_LOCALIZATION_HEADS):
        o, r = out[f"det/{name}"], ref["decoders"][k]
        assert o["pred_logits"].shape == (2, 30, 14)
        assert _max_diff(o["pred_logits"], r["pred_logits"]) <= ATOL, name
        assert _max_diff(o["pred_boxes"], r["pred_boxes"]) <= ATOL, name
        assert _max_diff(o["interm_outputs"]["pred_logits"], r["interm_logits"]) <= ATOL, name
        assert _max_diff(o["interm_outputs"]["pred_boxes"], r["interm_boxes"]) <= ATOL, name
        for a, la, lb in zip(o["aux_outputs"], r["aux_logits"], r["aux_boxes"]):
            assert _max_diff(a["pred_logits"], la) <= ATOL and _max_diff(a["pred_boxes"], lb) <= ATOL


def test_predictions_are_the_reference_boxes(loaded):
    """The decoder's boxes in pixels are the reference's top-scoring (cx, cy, w, h) boxes, converted."""
    model, _, ref = loaded
    x = ref["image_u8"].float() / 255
    found = HeadPredictor(model, {"det": {"num_select": 5}})(x, "det", "chestx_det")
    r = ref["decoders"][4]
    scores, index = r["pred_logits"][0].sigmoid().flatten().topk(5)
    cx, cy, w, h = r["pred_boxes"][0, index // 14].unbind(-1)
    expected = torch.stack(((cy - h / 2) * 224, (cx - w / 2) * 224, (cy + h / 2) * 224, (cx + w / 2) * 224), -1)
    assert torch.equal(found[0]["labels"], index % 14)
    assert _max_diff(found[0]["scores"], scores) <= ATOL and _max_diff(found[0]["boxes"], expected) <= 1e-2
