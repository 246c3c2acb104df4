"""``compat`` switches reproducing the reference code's defects (REFERENCE §1.10 items 1 and 2)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser

from cxrfx.engines import LockReleaseHandler, MultiTaskTrainer, TeacherHandler, build_optimizer
from cxrfx.engines.compat import Compat, reference_unoptimized_parameters
from cxrfx.errors import ConfigError
from cxrfx.networks import FoundationX
from cxrfx.networks.checkpoints import foundation_x_layout
from test_networks_dino import TINY_DINO, TINY_SWIN, det_loaders  # noqa: F401 (det_loaders: a fixture)

BUNDLE = os.path.join(os.path.dirname(__file__), "..", "bundles", "foundation_x")
SKIP = {"optimizer_skips_localization": True}


def _tiny_dino(**kwargs):
    torch.manual_seed(0)
    return FoundationX("tiny", det_heads={"a": 2, "b": 1}, cls_heads={"c": 3}, head_types={"det": "dino"},
                       head_options={"det": {**TINY_DINO, **kwargs}}, backbone_kwargs=TINY_SWIN)


def _in_groups(optimizer):
    return {id(p) for g in optimizer.param_groups for p in g["params"]}


def test_compat_settings():
    assert Compat.of(None) == Compat() == Compat.of({})
    assert not Compat().optimizer_skips_localization and not Compat().det_consistency_no_grad
    assert Compat.of({"det_consistency_no_grad": True}).det_consistency_no_grad
    with pytest.raises(ConfigError, match="unknown compat switch.*skip_localization"):
        Compat.of({"skip_localization": True})
    with pytest.raises(ConfigError, match="true / false"):
        Compat.of({"det_consistency_no_grad": "yes"})


def test_optimizer_skips_exactly_the_reference_unoptimized_localization_parameters():
    model = _tiny_dino()
    names = dict(model.named_parameters())
    default = build_optimizer(model)
    assert _in_groups(default) == {id(p) for p in model.parameters()}  # fixed: every parameter optimised
    parity = build_optimizer(model, compat=SKIP)
    absent = {n for n, p in names.items() if id(p) not in _in_groups(parity)}
    # the reference's groups keep backbone*, segmentation_*, transformer.encoder*, transformer.decoder*: in our names
    # the trunk, cls heads, the Locnorm LayerNorms, the encoder layers and each decoder (with its refinement MLP)
    kept_prefixes = ("backbone.", "cls_heads.", "det_neck.norms.", "det_encoder.layers.", "det_heads.a.decoder.",
                     "det_heads.b.decoder.")
    assert absent == {n for n in names if not n.startswith(kept_prefixes)}
    assert {n.split(".")[0] + "." + n.split(".")[1] for n in absent if not n.startswith("det_heads.")} == {
        "det_neck.input_proj", "det_encoder.level_embed", "det_queries.tgt_embed", "det_queries.label_enc"}
    per_head = {n.split(".", 2)[2].split(".")[0] for n in absent if n.startswith("det_heads.a.")}
    assert per_head == {"enc_output", "enc_output_norm", "enc_out_class_embed", "enc_out_bbox_embed", "memory_proj",
                        "class_embed", "bbox_embed"}
    # an AdamW step moves every parameter that has a gradient except those
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = {n: p.detach().clone() for n, p in names.items()}
    parity.step()
    changed = {n for n, p in names.items() if not torch.equal(p, before[n])}
    assert changed == set(names) - absent


def test_optimizer_switch_without_a_dino_branch_leaves_nothing_out():
    torch.manual_seed(0)
    model = FoundationX("tiny", det_heads={"a": 2}, backbone_kwargs=TINY_SWIN)  # RetinaNet heads
    assert reference_unoptimized_parameters(model) == []
    assert _in_groups(build_optimizer(model, compat=SKIP)) == {id(p) for p in model.parameters()}


def test_reference_unoptimized_count_at_swin_b_sizes():
    # the published layout (Swin-B, hidden 256, 900 queries, six decoders with 14 logits), on the meta device
    with torch.device("meta"):
        model = FoundationX("base", **foundation_x_layout("all", localization=True))
    params = dict(model.named_parameters())
    count = sum(params[n].numel() for n in reference_unoptimized_parameters(model))
    d, c = 256, 14
    linear = d * d + d
    input_proj = sum(d * ch + d + 2 * d for ch in (256, 512, 1024)) + (d * 1024 * 9 + d + 2 * d)
    box_mlp = 2 * linear + d * 4 + 4
    per_decoder = linear + 2 * d + (d * c + c) + box_mlp + linear + (d * c + c) + box_mlp  # two-stage + outputs
    queries = 900 * d + 16 * d + 4 * d  # tgt_embed, label_enc (label book 15 + 1), level_embed
    assert count == input_proj + 6 * per_decoder + queries == 5_483_736  # REFERENCE §1.10: 5.48 M


def _consistency_grads(loaders, no_grad: bool) -> dict:
    """One release step of the trainer whose det task loss is replaced by a constant: every gradient then comes from
    the consistency term."""
    torch.manual_seed(0)
    model = FoundationX("tiny", det_heads={"phantom_det": 2}, head_types={"det": "dino"},
                        head_options={"det": {**TINY_DINO, "num_queries": 10}}, backbone_kwargs=TINY_SWIN,
                        default_task="det")
    schedule = [{"dataset": "phantom_det", "task": "det", "phase": "release", "iterations": 1}]
    compat = Compat.of({"det_consistency_no_grad": no_grad})
    # what the bundle wires: train#trainer#det_consistency_gradient = not compat#det_consistency_no_grad
    trainer = MultiTaskTrainer("cpu", 1, model, build_optimizer(model, 0.0, 0.0),
                               LockReleaseHandler(schedule, loaders, model),
                               teacher=TeacherHandler(model, momentum=0.5),
                               det_consistency_gradient=not compat.det_consistency_no_grad, clip_grad_norm=None)
    trainer.criteria[("det", "phantom_det")] = lambda out, images, batch: torch.zeros((), requires_grad=True)
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output))
    trainer.run()
    assert float(outputs[0]["consistency"]) > 0  # the term is computed either way
    return {n: p.grad for n, p in model.named_parameters()}


def test_det_consistency_no_grad_sends_no_gradient_through_the_term(det_loaders):  # noqa: F811
    train, _ = det_loaders
    fixed = _consistency_grads(train, no_grad=False)
    assert fixed["det_encoder.layers.0.self_attn.value_proj.weight"].abs().sum() > 0
    assert fixed["backbone.patch_embed.proj.weight"].abs().sum() > 0
    parity = _consistency_grads(train, no_grad=True)
    assert all(g is None or not g.any() for g in parity.values())


def test_bundle_config_exposes_the_switches():
    parser = ConfigParser()
    parser.read_config(os.path.join(BUNDLE, "configs", "train.json"))
    assert parser["compat"] == {"optimizer_skips_localization": False, "det_consistency_no_grad": False}
    assert parser.get_parsed_content("train#trainer#det_consistency_gradient") is True
    parser["compat"]["det_consistency_no_grad"] = True
    parser.parse()
    assert parser.get_parsed_content("train#trainer#det_consistency_gradient") is False
    assert parser["train"]["optimizer"]["compat"] == "@compat"
    with open(os.path.join(BUNDLE, "configs", "paper.json")) as f:
        assert "compat" not in json.load(f)  # the paper recipe keeps cxrfx's fixes unless asked
