"""DiRA: losses against hand computations, the branch switches, the key encoder and queue, a falling loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cxrfx.errors import ConfigError
from cxrfx.networks import FoundationX
from cxrfx.ssl.dira import DiRA
from cxrfx.ssl.losses import discriminator_loss, generator_loss, info_nce, restoration_loss

NET = dict(backbone="tiny", backbone_kwargs={"embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 3, 6),
                                             "window_size": 4, "drop_path_rate": 0.0},
           seg_channels=16, psp_channels=32, det_channels=32)
SMALL_DECODER = {"channels": 16, "psp_channels": 32}


def _net(seg=False):
    torch.manual_seed(0)
    return FoundationX(**NET, cls_heads={"a": 2}, seg_heads={"s": 2} if seg else None)


def test_info_nce_matches_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    queue = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, -1.0]])
    t = 0.5
    # query 0: positive 0.6, negatives 1, -1, 0; query 1: positive 1, negatives 0, 0, -1
    expected = (-math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(2) + math.exp(-2) + 1))
                - math.log(math.exp(2) / (math.exp(2) + 1 + 1 + math.exp(-2)))) / 2
    assert float(info_nce(q, k, queue, t)) == pytest.approx(expected, rel=1e-6)
    q.requires_grad_(True)
    k.requires_grad_(True)
    info_nce(q, k, queue, t).backward()
    assert q.grad is not None and k.grad is None  # keys never get a gradient


def test_restoration_and_adversarial_losses_match_hand_computation():
    restored, target = torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.0, 1.0, 0.0])
    assert float(restoration_loss(restored, target)) == pytest.approx((0 + 0.25 + 1) / 3)
    fake, real = torch.tensor([[0.5, -1.0]]), torch.tensor([[2.0, 1.0]])
    assert float(generator_loss(fake)) == pytest.approx((0.25 + 4) / 2)  # mean (D - 1)^2
    assert float(discriminator_loss(real, fake)) == pytest.approx(0.5 * ((1 + 0) / 2 + (0.25 + 1) / 2))


@pytest.mark.parametrize("branches,terms", [
    (dict(restorative=False), {"dis"}),                                    # D
    (dict(discriminative=False), {"res"}),                                 # R (Models Genesis)
    (dict(), {"dis", "res"}),                                              # DR
    (dict(adversarial=True), {"dis", "res", "adv"}),                       # DRA
])
def test_branch_switches(branches, terms):
    net = _net()
    recipe = DiRA(net, queue_size=8, decoder_options=SMALL_DECODER, weights={"dis": 2.0, "res": 3.0, "adv": 0.5},
                  **branches)
    x = torch.rand(2, 1, 64, 64)
    out = recipe(x, torch.rand(2, 1, 64, 64), x)
    assert {k for k in ("dis", "res", "adv") if k in out} == terms
    expected = sum({"dis": 2.0, "res": 3.0, "adv": 0.5}[k] * out[k] for k in terms)
    torch.testing.assert_close(out["loss"], expected)
    out["loss"].backward()
    assert any(p.grad is not None for p in net.backbone.parameters())  # every configuration trains the backbone
    assert all(p.grad is None for p in net.heads("cls").parameters())
    names = {n.split(".")[0] for n, _ in recipe.named_parameters()}
    assert ("projector" in names) == ("dis" in terms) and ("restore_head" in names) == ("res" in terms)
    assert ("discriminator" in names) == ("adv" in terms)
    assert not any(n.startswith(("backbone", "cls_heads")) for n, _ in recipe.named_parameters())  # not owned


def test_configuration_errors_and_shared_decoder():
    net = _net()
    with pytest.raises(ConfigError, match="discriminative or the restorative"):
        DiRA(net, discriminative=False, restorative=False)
    with pytest.raises(ConfigError, match="needs restorative"):
        DiRA(net, restorative=False, adversarial=True)
    with pytest.raises(ConfigError, match="no segmentation decoder"):
        DiRA(net, share_decoder=True)
    seg_net = _net(seg=True)
    shared = DiRA(seg_net, discriminative=False, share_decoder=True)
    x = torch.rand(2, 1, 64, 64)
    shared(x, None, x)["loss"].backward()
    assert seg_net.seg_decoder.fuse[0].weight.grad is not None  # restored through the network's own decoder
    assert not hasattr(shared, "seg_decoder") or shared.seg_decoder is None


def test_key_encoder_momentum_and_queue():
    net = _net()
    recipe = DiRA(net, restorative=False, queue_size=5, key_momentum=0.9)
    keys_encoder = recipe.key_encoder
    key_before = keys_encoder.backbone.patch_embed.proj.weight.clone()
    torch.testing.assert_close(key_before, net.backbone.patch_embed.proj.weight)  # starts as the student
    with torch.no_grad():
        net.backbone.patch_embed.proj.weight.add_(1.0)
    keys = F.normalize(torch.randn(3, 128), dim=1)
    keys_encoder.queue_ptr.fill_(3)
    recipe.after_step(keys)
    torch.testing.assert_close(keys_encoder.backbone.patch_embed.proj.weight, key_before + 0.1)  # 0.9 k + 0.1 (k + 1)
    torch.testing.assert_close(keys_encoder.queue[[3, 4, 0]], keys)  # written at the pointer, wrapping around
    assert int(keys_encoder.queue_ptr) == 1
    recipe.train()
    assert not keys_encoder.training and recipe.projector.training
    assert not any(p.requires_grad for p in keys_encoder.parameters())


def test_restoration_loss_falls_on_a_fixed_batch():
    net = _net()
    recipe = DiRA(net, discriminative=False, decoder_options=SMALL_DECODER)
    opt = torch.optim.Adam(list(net.parameters()) + recipe.trainable_parameters(), lr=2e-3)
    torch.manual_seed(1)
    target = F.avg_pool2d(torch.rand(2, 1, 64, 64), 5, 1, 2)  # smooth, like a radiograph
    distorted = target.clone()
    distorted[..., 16:40, 16:40] = torch.rand(2, 1, 24, 24)  # an in-painted hole
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = recipe(distorted, None, target)["res"]
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses
