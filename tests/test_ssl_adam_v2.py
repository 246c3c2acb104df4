"""Adam-v2: anatomy crops (geometry, identity, seed), the embedding losses by hand, the three terms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.transforms import Resize

from cxrfx.networks import FoundationX
from cxrfx.ssl.adam_v2 import AdamV2, unit_distance
from cxrfx.ssl.transforms import RandAnatomyCropsd

NET = dict(backbone="tiny", backbone_kwargs={"embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 3, 6),
                                             "window_size": 4, "drop_path_rate": 0.0},
           seg_channels=16, psp_channels=32, det_channels=32)


def _area(box):
    return box[2] * box[3]


@pytest.mark.parametrize("seed", range(6))
def test_anatomy_crops_tile_the_whole(seed):
    img = np.arange(40 * 24, dtype=np.float32).reshape(1, 40, 24)
    crops = RandAnatomyCropsd("image", max_level=2).set_random_state(seed)
    out = crops({"image": img})
    (r, c, h, w), parts = crops.whole_box, crops.part_boxes
    assert 0 <= r and r + h <= 40 and 0 <= c and c + w <= 24 and h >= 10 and w >= 6  # at most 2 halvings
    covered = np.zeros((40, 24), int)
    for pr, pc, ph, pw in parts:
        covered[pr:pr + ph, pc:pc + pw] += 1
    assert covered.sum() == _area(crops.whole_box) and covered[r:r + h, c:c + w].min() == 1  # disjoint, tiling
    resize = Resize((40, 24), mode="bilinear")
    np.testing.assert_allclose(out["whole"], resize(img[..., r:r + h, c:c + w]))
    pr, pc, ph, pw = parts[1]
    np.testing.assert_allclose(out["part_b"], resize(img[..., pr:pr + ph, pc:pc + pw]))
    again = RandAnatomyCropsd("image", max_level=2).set_random_state(seed)({"image": img})
    assert all(np.array_equal(out[k], again[k]) for k in ("whole", "part_a", "part_b"))


def test_level_zero_is_the_whole_image():
    img = np.random.default_rng(0).uniform(size=(1, 32, 32)).astype(np.float32)
    crops = RandAnatomyCropsd("image", max_level=0)
    out = crops({"image": img})
    assert crops.whole_box == (0, 0, 32, 32)
    np.testing.assert_allclose(out["whole"], img, atol=1e-6)
    assert {b[2:] for b in crops.part_boxes} in ({(16, 32)}, {(32, 16)})


def test_unit_distance_matches_hand_computation():
    pred = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    target = torch.tensor([[0.0, 2.0], [6.0, 8.0]])
    assert float(unit_distance(pred, target)) == pytest.approx((2.0 + 0.0) / 2)  # orthogonal: 2; parallel: 0
    parts = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (B=1, 2 parts, D=2)
    assert float(unit_distance(parts, -parts)) == pytest.approx(4.0)  # opposite: 4 per part, averaged
    pred.requires_grad_(True)
    target.requires_grad_(True)
    unit_distance(pred, target).backward()
    assert target.grad is None


def test_adam_v2_terms_and_gradients():
    torch.manual_seed(0)
    net = FoundationX(**NET, cls_heads={"a": 2})
    recipe = AdamV2(net, queue_size=8, weights={"loc": 1.0, "comp": 2.0, "dec": 0.5})
    x = [torch.rand(2, 1, 64, 64) for _ in range(4)]
    out = recipe(*x)
    assert out["keys"].shape == (6, 128) and torch.allclose(out["keys"].norm(dim=1), torch.ones(6))
    torch.testing.assert_close(out["loss"], out["loc"] + 2.0 * out["comp"] + 0.5 * out["dec"])
    assert 0 <= float(out["comp"]) <= 4 and 0 <= float(out["dec"]) <= 4
    out["loss"].backward()
    assert net.backbone.patch_embed.proj.weight.grad is not None
    assert recipe.composer[0].weight.grad is not None and recipe.decomposer[0].weight.grad is not None
    assert {id(p) for p in recipe.trainable_parameters()}.isdisjoint(id(p) for p in recipe.key_encoder.parameters())
    recipe.after_step(out["keys"])
    assert int(recipe.key_encoder.queue_ptr) == 6 % 8
    torch.testing.assert_close(recipe.key_encoder.queue[:6], out["keys"])


def test_composability_falls_when_trained():
    torch.manual_seed(0)
    net = FoundationX(**NET, cls_heads={"a": 2})
    recipe = AdamV2(net, queue_size=8, weights={"loc": 0.0, "comp": 1.0, "dec": 1.0})
    opt = torch.optim.Adam(list(net.parameters()) + recipe.trainable_parameters(), lr=1e-3)
    x = [F.avg_pool2d(torch.rand(2, 1, 64, 64), 5, 1, 2) for _ in range(4)]
    losses = []
    for _ in range(12):
        opt.zero_grad()
        out = recipe(*x)
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < 0.5 * losses[0], losses
