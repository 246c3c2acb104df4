"""The ``dino`` detection head type: deformable attention, matching, denoising, the head in FoundationX."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.data.box_utils import box_iou

from cxrfx.data.multitask import build_sources
from cxrfx.data.phantom import generate_phantom
from cxrfx.engines import (
    LockReleaseHandler, MultiTaskEvaluator, MultiTaskScore, MultiTaskTrainer, TeacherHandler, build_optimizer,
)
from cxrfx.label.acft import network_outputs
from cxrfx.networks import FoundationX
from cxrfx.networks.foundation_x import HeadPredictor, parameter_counts
from cxrfx.networks.heads import get_head_type, registered_heads
from cxrfx.networks.heads.dino.attention import multi_scale_deformable_attention
from cxrfx.networks.heads.dino.criterion import SetCriterion, to_normalized_cxcywh
from cxrfx.networks.heads.dino.denoising import denoising_queries
from cxrfx.networks.heads.dino.matcher import HungarianMatcher

TINY_SWIN = {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2), "window_size": 4}
TINY_DINO = {"hidden_dim": 32, "num_queries": 20, "enc_layers": 1, "dec_layers": 2, "ffn_dim": 64, "n_heads": 4}


def _bilinear(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """(D, H, W) sampled at (x, y) in [0, 1] (pixel edges), zero outside: the definition, point by point."""
    _, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = int(torch.floor(torch.tensor(px))), int(torch.floor(torch.tensor(py)))
    out = torch.zeros(img.shape[0], dtype=img.dtype)
    for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
        if 0 <= xi < w and 0 <= yi < h:
            out += img[:, yi, xi] * (1 - abs(px - xi)) * (1 - abs(py - yi))
    return out


def test_deformable_attention_equals_naive_loop():
    g = torch.Generator().manual_seed(0)
    shapes = [(6, 5), (3, 3), (2, 1)]
    b, m, d, q, p = 2, 2, 3, 4, 3
    value = torch.randn(b, sum(h * w for h, w in shapes), m, d, generator=g, dtype=torch.float64)
    loc = torch.rand(b, q, m, len(shapes), p, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2  # some outside
    weights = F.softmax(torch.randn(b, q, m, len(shapes) * p, generator=g, dtype=torch.float64), -1)
    weights = weights.view(b, q, m, len(shapes), p)
    out = multi_scale_deformable_attention(value, shapes, loc, weights)
    expected = torch.zeros(b, q, m * d, dtype=torch.float64)
    for bi in range(b):
        start = 0
        for li, (h, w) in enumerate(shapes):
            level = value[bi, start:start + h * w].reshape(h, w, m, d).permute(2, 3, 0, 1)  # (M, D, H, W)
            start += h * w
            for qi in range(q):
                for mi in range(m):
                    for pi in range(p):
                        x, y = loc[bi, qi, mi, li, pi].tolist()
                        sample = _bilinear(level[mi], x, y)
                        expected[bi, qi, mi * d:(mi + 1) * d] += weights[bi, qi, mi, li, pi] * sample
    assert out.shape == (b, q, m * d)
    assert torch.allclose(out, expected, atol=1e-12)


def test_hungarian_matching_hand_case():
    # three queries, two targets: query 2 sits on target 0 with its class, query 0 on target 1
    logits = torch.tensor([[[-5.0, 5.0], [0.0, 0.0], [5.0, -5.0]]])
    boxes = torch.tensor([[[0.7, 0.7, 0.2, 0.2], [0.5, 0.5, 0.9, 0.9], [0.2, 0.3, 0.1, 0.2]]])
    targets = [{"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.2, 0.3, 0.1, 0.2], [0.7, 0.7, 0.2, 0.2]])}]
    (rows, cols), = HungarianMatcher()({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 2, 1: 0}
    # a perfect prediction: no box loss at the matched pairs
    losses = SetCriterion().set_losses({"pred_logits": logits, "pred_boxes": boxes}, targets, [(rows, cols)], 2.0)
    assert float(losses["loss_bbox"]) == 0.0 and abs(float(losses["loss_giou"])) < 1e-5  # float32 eps in the IoU


def test_box_conversion_and_denoising_layout():
    boxes = torch.tensor([[10.0, 20.0, 40.0, 60.0]])  # [r1, c1, r2, c2] on a 100 (rows) x 200 (cols) image
    assert torch.allclose(to_normalized_cxcywh(boxes, 100, 200), torch.tensor([[0.2, 0.25, 0.2, 0.3]]))
    label_enc = torch.nn.Embedding(5, 8)
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])},
               {"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.1, 0.1], [0.6, 0.6, 0.2, 0.1]])}]
    dn = denoising_queries(targets, label_enc, 3, dn_number=100, label_noise=0.0, box_noise=0.0)
    assert dn.pad == 2 and dn.groups == 50 and dn.tgt.shape == (2, 200, 8)
    # group 1's positive query of image 1, box 1 carries that box's label and (noise-free) box
    assert torch.allclose(dn.tgt[1, 4 + 1], label_enc.weight[2])
    assert torch.allclose(dn.refpoints[1, 4 + 1].sigmoid(), targets[1]["boxes"][1], atol=1e-6)
    assert torch.equal(dn.tgt[0, 1], torch.zeros(8))  # padding: image 0 has one box
    assert not dn.attn_mask[0, 3] and dn.attn_mask[0, 4] and not dn.attn_mask[5, 7]
    q, j = dn.positive_indices(targets)[1]
    assert q[:4].tolist() == [0, 1, 4, 5] and j[:4].tolist() == [0, 1, 0, 1]


def _tiny(**det):
    return FoundationX("tiny", det_heads=det or {"a": 2, "b": 1}, head_types={"det": "dino"},
                       head_options={"det": TINY_DINO}, backbone_kwargs=TINY_SWIN)


def test_dino_head_type_in_foundation_x():
    assert "dino" in registered_heads("det") and get_head_type("dino").task == "det"
    torch.manual_seed(0)
    model = _tiny().eval()
    x = torch.rand(2, 1, 128, 128)
    out = model(x, task="det", head="a")
    assert out["pred_logits"].shape == (2, 20, 2) and out["pred_boxes"].shape == (2, 20, 4)
    assert len(out["aux_outputs"]) == 1
    preds = HeadPredictor(model, {"det": {"num_select": 10}}).all(x)
    assert set(preds) == {"det/a", "det/b"}
    first = preds["det/a"][0]
    assert first["boxes"].shape == (10, 4) and first["labels"].max() <= 1 and (first["scores"] <= 1).all()
    assert (first["boxes"][:, 2:] >= first["boxes"][:, :2]).all()
    # uncertainty scoring reads per-location probabilities: one per encoder token and class, the same positions for
    # every input (ACFT compares them across augmented copies); the selected queries' logits are among them
    probs = model.head_type("det").probabilities(out)[0]
    assert probs.shape == (2, 16 * 16 + 8 * 8 + 4 * 4 + 2 * 2, 2)
    top = out["token_logits"].max(-1)[0].topk(20, dim=1)[1]
    picked = torch.gather(out["token_logits"], 1, top[..., None].expand(-1, -1, 2))
    assert torch.allclose(picked, out["interm_outputs"]["pred_logits"], atol=1e-6)
    copies = network_outputs(model, x[:1])
    assert [tuple(c.shape) for c in copies] == [(4, 340 * 3)]  # det: the 4 unshifted copies, both heads
    counts = parameter_counts(model)
    assert counts["det_neck"] > 0 and counts["det_encoder"] > 0 and counts["det_queries"] == 20 * 32 + 101 * 32


def test_tiny_dino_head_overfits_two_images():
    """Trained on two images with three boxes, the head finds each box (IoU > 0.8) with its label on top."""
    torch.manual_seed(0)
    model = _tiny(a=2)
    x = torch.zeros(2, 1, 128, 128)
    boxes = [torch.tensor([[20.0, 30, 60, 70]]), torch.tensor([[70.0, 10, 110, 50], [16, 80, 48, 112]])]
    labels = [torch.tensor([1]), torch.tensor([0, 1])]
    for img, bb in zip(x, boxes):
        for r1, c1, r2, c2 in bb.long().tolist():
            img[0, r1:r2, c1:c2] = 1.0
    batch = {"boxes": boxes, "box_labels": labels}
    criterion = model.head_type("det").criterion(model, "a")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(120):
        model.train()
        loss = criterion(model(x, task="det", head="a"), x, batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.4 * losses[0]
    found = HeadPredictor(model, {"det": {"num_select": 3}})(x, "det", "a")
    for pred, bb, lab in zip(found, boxes, labels):
        iou = box_iou(pred["boxes"], bb)
        assert (iou.max(0).values > 0.8).all()
        assert torch.equal(pred["labels"][iou.argmax(0)], lab)
        assert (pred["scores"][iou.argmax(0)] > 0.5).all()


def test_state_dict_round_trip_and_teacher_copy():
    torch.manual_seed(1)
    model = _tiny().eval()
    x = torch.rand(1, 1, 96, 96)
    sd = model.state_dict()
    prefixes = {k.split(".")[0] for k in sd if k.startswith("det")}
    assert prefixes == {"det_neck", "det_encoder", "det_queries", "det_heads"}
    torch.manual_seed(2)
    fresh = _tiny().eval()
    fresh.load_state_dict(sd, strict=True)
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        ours = model(x, task="det", head="b")
        for other in (fresh, teacher):
            theirs = other(x, task="det", head="b")
            assert torch.equal(ours["pred_logits"], theirs["pred_logits"])
            assert torch.equal(ours["pred_boxes"], theirs["pred_boxes"])
        # the shared feature (the teacher's consistency target) is the encoder's four levels
        shared = model.shared_features(x, "det")
        assert [tuple(s.shape[-2:]) for s in shared] == [(12, 12), (6, 6), (3, 3), (2, 2)]


@pytest.fixture(scope="module")
def det_loaders(tmp_path_factory):
    root = tmp_path_factory.mktemp("phdet")
    generate_phantom(str(root), count=8, size=64, seed=0, verbose=False)
    sources = {"phantom_det": {"datalist": str(root / "phantom_det" / "datalist.json"), "tasks": ["det"]}}
    # 128 px: the stride-64 level is 2 x 2 (GroupNorm over a single cell and channel cannot train)
    return (build_sources(sources, size=128, batch_size=2),
            build_sources(sources, size=128, batch_size=2, split="validation", train=False))


def test_dino_trains_in_the_lock_release_cycle_and_is_scored(det_loaders):
    """MultiTaskTrainer (lock then release, with the EMA teacher), MultiTaskEvaluator (AP50) and HeadPredictor take
    the dino head with no special case; in Lock only the dataset's decoder and two-stage layers train."""
    train, val = det_loaders
    torch.manual_seed(0)
    model = FoundationX("tiny", det_heads={"phantom_det": 2}, head_types={"det": "dino"},
                        head_options={"det": {**TINY_DINO, "num_queries": 10}}, backbone_kwargs=TINY_SWIN,
                        default_task="det")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    schedule = [{"dataset": "phantom_det", "task": "det", "phase": "lock", "iterations": 2},
                {"dataset": "phantom_det", "task": "det", "phase": "release", "iterations": 2}]
    lock_changed = {}

    def after_lock(engine):
        if engine.state.iteration == 2:
            lock_changed.update({k: not torch.equal(v, before[k]) for k, v in model.state_dict().items()})

    teacher = TeacherHandler(model, momentum=0.5)
    trainer = MultiTaskTrainer("cpu", 1, model, build_optimizer(model, backbone_lr=1e-4, head_lr=1e-3),
                               LockReleaseHandler(schedule, train, model), teacher=teacher)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, after_lock)
    trainer.run()
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert lock_changed["det_heads.phantom_det.decoder.layers.0.cross_attn.value_proj.weight"]
    assert lock_changed["det_heads.phantom_det.enc_output.weight"]
    assert not lock_changed["det_encoder.layers.0.self_attn.value_proj.weight"]
    assert not lock_changed["det_neck.input_proj.0.0.weight"] and not lock_changed["backbone.patch_embed.proj.weight"]
    evaluator = MultiTaskEvaluator("cpu", {"det/phantom_det": val["det/phantom_det"]}, model,
                                   key_val_metric={"ap50": MultiTaskScore()})
    evaluator.run()
    assert 0.0 <= evaluator.state.metrics["ap50"] <= 1.0
