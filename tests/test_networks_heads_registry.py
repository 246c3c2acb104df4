"""The head-type registry: one interface for every task head, read by the network, trainer, evaluator, predictor.

The proof that a head type is one module: ``CenterConvHeads`` below is defined here, in the test, and nothing
else of cxrfx is changed for it to be built, trained by ``MultiTaskTrainer``, scored by ``MultiTaskEvaluator``
and predicted by ``HeadPredictor``.
"""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from torch import nn

from cxrfx.data.multitask import build_sources
from cxrfx.data.phantom import generate_phantom
from cxrfx.engines import LockReleaseHandler, MultiTaskEvaluator, MultiTaskScore, MultiTaskTrainer, build_optimizer
from cxrfx.networks import FoundationX, build_detector
from cxrfx.networks.foundation_x import HeadPredictor
from cxrfx.networks.heads import SegmentationHeadType, get_head_type, register_head, registered_heads
from cxrfx.networks.heads.unetpp import UNetPlusPlusDecoder

TINY = dict(backbone="tiny", backbone_kwargs={"embed_dim": 24, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1),
                                              "window_size": 4, "drop_path_rate": 0.0})


@register_head("test_center_conv")
class CenterConvHeads(SegmentationHeadType):
    """A new segmentation head type in one class: a 1x1 conv on the stride-4 stage, nothing shared but that."""

    shared_attributes = ("seg_decoder",)
    defaults = {"channels": 8}

    def build_shared(self, stage_channels, options):
        return {"seg_decoder": nn.Conv2d(stage_channels[0], options["channels"], 1)}

    def build_head(self, model, num_classes, dropout, options):
        return nn.Conv2d(model.seg_decoder.out_channels, num_classes, 1)

    def shared_forward(self, model, feats):
        return model.seg_decoder(feats[0])

    def head_forward(self, head, shared, image_size):
        return nn.functional.interpolate(head(shared), size=tuple(image_size), mode="bilinear", align_corners=False)


def test_registry_lists_and_checks_types():
    assert {"linear", "upernet", "unetpp", "retinanet", "test_center_conv"} <= set(registered_heads())
    assert registered_heads("det") == ["dino", "retinanet"]
    assert get_head_type("unetpp", "seg").task == "seg"
    with pytest.raises(ValueError, match="unknown head type 'detr'; registered: .*retinanet"):
        get_head_type("detr")
    with pytest.raises(ValueError, match="'unetpp' is a seg head, not a det head"):
        get_head_type("unetpp", "det")
    with pytest.raises(ValueError, match="already registered"):
        register_head("upernet")(CenterConvHeads)
    with pytest.raises(TypeError, match="must subclass a task-kind HeadType"):
        register_head("broken")(nn.Module)


def test_model_configuration_errors_name_the_problem():
    with pytest.raises(ValueError, match="'retinanet' is a det head, not a seg head"):
        FoundationX(**TINY, seg_heads={"s": 1}, head_types={"seg": "retinanet"})
    with pytest.raises(ValueError, match=r"unknown options \['width'\] for the seg head type 'unetpp'; known: \['channels'\]"):
        FoundationX(**TINY, seg_heads={"s": 1}, head_types={"seg": "unetpp"}, head_options={"seg": {"width": 8}})
    with pytest.raises(ValueError, match=r"per task .*got \['ssl'\]"):
        FoundationX(**TINY, head_types={"ssl": "linear"})


def test_legacy_arguments_and_head_options_build_the_same_model():
    torch.manual_seed(0)
    a = FoundationX(**TINY, seg_heads={"s": 2}, det_heads={"d": 1}, seg_channels=16, psp_channels=32, det_channels=16,
                    det_strides=(4, 8, 16, 32), num_anchors=3)
    torch.manual_seed(0)
    b = FoundationX(**TINY, seg_heads={"s": 2}, det_heads={"d": 1},
                    head_options={"seg": {"channels": 16, "psp_channels": 32},
                                  "det": {"channels": 16, "strides": (4, 8, 16, 32), "num_anchors": 3}})
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    # the checkpoints' prefixes of the default types
    assert {k.split(".")[0] for k in sa} == {"backbone", "input_mean", "input_std", "seg_decoder", "seg_heads",
                                             "det_neck", "det_anchors", "det_heads"}


def test_predictor_decodes_every_head_from_one_pass_as_the_detector_does():
    torch.manual_seed(0)
    model = FoundationX(**TINY, cls_heads={"c": 3}, seg_heads={"s": 2}, det_heads={"d": 2}, seg_channels=8,
                        psp_channels=8, det_channels=8, det_strides=(4, 8, 16, 32), num_anchors=3).eval()
    x = torch.rand(2, 1, 64, 96)
    calls = []
    model.backbone.register_forward_hook(lambda *a: calls.append(1))
    predictor = HeadPredictor(model, {"det": {"score_thresh": 0.0}})
    every = predictor.all(x)
    assert len(calls) == 1 and sorted(every) == ["cls/c", "det/d", "seg/s"]
    with torch.no_grad():
        assert torch.allclose(every["cls/c"], torch.sigmoid(model(x, "cls", "c")))
        assert torch.allclose(every["seg/s"], torch.sigmoid(model(x, "seg", "s")))
        reference = build_detector(model, "d", score_thresh=0.0).eval()(x)
    for mine, theirs in zip(every["det/d"], reference):
        assert len(mine["boxes"]) == 100 and torch.equal(mine["boxes"], theirs["boxes"])
        assert torch.equal(mine["scores"], theirs["labels_scores"]) and torch.equal(mine["labels"], theirs["labels"])
    assert torch.equal(predictor(x, "seg")[1], every["seg/s"][1])  # one head alone: the same


@pytest.fixture(scope="module")
def seg_loaders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ph")
    generate_phantom(str(root), count=8, size=64, seed=0, verbose=False)
    sources = {"phantom_seg": {"datalist": str(root / "phantom_seg" / "datalist.json"), "tasks": ["seg"]}}
    train = build_sources(sources, size=64, batch_size=4)
    val = build_sources(sources, size=64, batch_size=4, split="validation", train=False)
    return train, val


@pytest.mark.parametrize("head_type", ["test_center_conv", "unetpp", "upernet_fx"])
def test_a_new_head_type_trains_and_is_scored_without_other_changes(seg_loaders, head_type):
    train, val = seg_loaders
    torch.manual_seed(0)
    model = FoundationX(**TINY, seg_heads={"phantom_seg": 8}, head_types={"seg": head_type}, default_task="seg")
    schedule = [{"dataset": "phantom_seg", "task": "seg", "phase": "release", "iterations": 30}]
    trainer = MultiTaskTrainer("cpu", 1, model, build_optimizer(model, backbone_lr=2e-3, head_lr=1e-2),
                               LockReleaseHandler(schedule, train, model))
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    trainer.run()
    assert len(losses) == 30 and sum(losses[-5:]) < 0.9 * sum(losses[:5])  # it learns
    evaluator = MultiTaskEvaluator("cpu", {"seg/phantom_seg": val["seg/phantom_seg"]}, model,
                                   key_val_metric={"dice": MultiTaskScore()})
    evaluator.run()
    assert 0.0 < evaluator.state.metrics["dice"] <= 1.0
    masks = HeadPredictor(model).all(torch.rand(1, 1, 64, 64))["seg/phantom_seg"]
    assert masks.shape == (1, 8, 64, 64) and 0 <= float(masks.min()) and float(masks.max()) <= 1


def test_unetpp_nested_nodes_and_deep_supervision():
    decoder = UNetPlusPlusDecoder([24, 48, 96, 192], channels=8)
    assert [len(column) for column in decoder.nodes] == [3, 2, 1]  # X[i][j] for j = 1..3, i <= 3 - j
    # X[0][3] reads X[0][0..2] (8 channels each) and up(X[1][2]) (16): 40 in, 8 out
    assert decoder.nodes[2][0][0][0].in_channels == 3 * 8 + 16
    feats = [torch.rand(2, c, 16 // 2**i, 16 // 2**i) for i, c in enumerate([24, 48, 96, 192])]
    row = decoder(feats)
    assert [tuple(r.shape) for r in row] == [(2, 8, 16, 16)] * 3
    model = FoundationX(**TINY, seg_heads={"s": 2}, head_types={"seg": "unetpp"}, head_options={"seg": {"channels": 8}})
    x, mask = torch.rand(2, 1, 64, 64), (torch.rand(2, 2, 64, 64) > 0.5).float()
    model.train()
    stacked = model(x, "seg")
    assert stacked.shape == (2, 3, 2, 64, 64)  # every supervised output while training
    loss = model.head_type("seg").criterion(model, "s")(stacked, x, {"mask": mask})
    from cxrfx.engines.losses import DiceBCELoss

    by_hand = torch.stack([DiceBCELoss()(stacked[:, k], mask) for k in range(3)]).mean()
    assert torch.allclose(loss, by_hand)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x, "seg"), model.head_type("seg").head_forward(
            model.seg_heads["s"], model.seg_features(model.forward_features(x)), (64, 64)))
        assert model(x, "seg").shape == (2, 2, 64, 64)  # the branches' mean in evaluation
