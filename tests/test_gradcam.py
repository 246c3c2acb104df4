"""Grad-CAM of FoundationX classification heads: shape, range, class dependence, agreement with plain autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cxrfx.errors import ConfigError
from cxrfx.networks import FoundationX
from cxrfx.outputs.gradcam import StageMapClassifier, gradcam, render_heatmap, save_heatmap_overlay, unit_scale

TINY = {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 4}
S = 128


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = FoundationX("tiny", cls_heads={"a": 4, "b": 2}, seg_heads={"s": 2}, backbone_kwargs=TINY,
                      seg_channels=16, psp_channels=16).eval()
    with torch.no_grad():  # larger head weights than the init's std 0.02, so classes differ clearly
        net.cls_heads["a"].fc.weight.normal_(0, 1)
    return net


@pytest.fixture(scope="module")
def image():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 1, S, S, generator=g)
    x[..., 20:60, 70:110] += 0.5
    return x.clamp(0, 1)


def test_shape_range_and_class_dependence(model, image):
    maps = gradcam(model, image, "a", [0, 1, 2])
    assert set(maps) == {0, 1, 2}
    for heat in maps.values():
        assert heat.shape == (S, S) and heat.dtype == np.float32
        assert heat.min() >= 0 and heat.max() <= 1
    assert any(h.max() == pytest.approx(1.0) for h in maps.values())  # scaled to the full range
    assert np.abs(maps[0] - maps[1]).mean() > 0.05
    assert not np.allclose(maps[1], maps[2])
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind
    assert not model.training  # and the model's mode unchanged


def test_matches_gradcam_by_hand(model, image):
    """The weights are the spatial mean of d(logit)/d(stage map); CAM = ReLU(sum_c w_c A_c), upsampled, scaled."""
    with torch.no_grad():
        feats = model.forward_features(image)
    stage = feats[-1].clone().requires_grad_(True)
    logit = model.cls_heads["a"](model.pooled_feature([*feats[:-1], stage]))[0, 3]
    (grad,) = torch.autograd.grad(logit, stage)
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * stage).sum(1, keepdim=True)).detach()
    cam = torch.nn.functional.interpolate(cam, size=(S, S), mode="bilinear", align_corners=False)
    expected = unit_scale(cam)[0, 0].numpy()
    np.testing.assert_allclose(gradcam(model, image[0], "a", [3])[3], expected, atol=1e-5)


def test_wrapper_gives_the_heads_logits(model, image):
    with torch.no_grad():
        ref = model(image, task="cls", head="b")
    np.testing.assert_allclose(StageMapClassifier(model, "b")(image).detach(), ref, atol=1e-6)


def test_unit_scale_constant_map_is_zero():
    assert unit_scale(torch.full((1, 1, 4, 4), 3.0)).abs().max() == 0
    np.testing.assert_allclose(unit_scale(torch.tensor([[[[1.0, 3.0]]]])).numpy(), [[[[0.0, 1.0]]]])


def test_errors(model, image):
    with pytest.raises(ConfigError, match="no classification head 'x'"):
        gradcam(model, image, "x", [0])
    with pytest.raises(ConfigError, match="class 2 out of range for head 'b'"):
        gradcam(model, image, "b", [2])


def test_overlay_png(tmp_path):
    image = np.linspace(0, 1, 60 * 80, dtype=np.float32).reshape(60, 80)
    heat = np.zeros((8, 8), np.float32)
    heat[:4, 4:] = 1.0  # top-right
    rgb = render_heatmap(image, heat, caption="a: 0 (0.91)")
    assert rgb.shape[0] == 60 and rgb.shape[1] > 80  # caption panel on the right
    top_right, bottom_left = rgb[5, 75].astype(int), rgb[55, 5].astype(int)
    assert top_right[0] > top_right[2] + 50  # red where the heat is
    assert bottom_left[0] == bottom_left[1] == bottom_left[2]  # plain grey where there is none
    path = save_heatmap_overlay(str(tmp_path / "g" / "x_gradcam.png"), image, heat, caption="a")
    assert Image.open(path).size == (rgb.shape[1], 60)
