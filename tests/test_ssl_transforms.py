"""Models Genesis distortions in 2D: values, identity cases, reproducibility under a seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrfx.ssl.transforms import (RandBezierIntensity, RandGenesisd, RandInpaint, RandLocalPixelShuffle, RandOutpaint,
                                  bezier_intensity_map)


def _img(size=32, channels=1):
    return np.random.default_rng(0).uniform(0, 1, (channels, size, size)).astype(np.float32)


def test_bezier_map_values():
    x = np.linspace(0, 1, 11, dtype=np.float32)
    np.testing.assert_allclose(bezier_intensity_map(x, (0.2, 0.2), (0.7, 0.7)), x, atol=1e-6)  # diagonal: identity
    np.testing.assert_allclose(bezier_intensity_map(x, (1 / 3, 1 / 3), (2 / 3, 2 / 3), flip=True), 1 - x, atol=1e-6)
    # control points (0, 1), (0, 1): x(t) = t^3, y(t) = 1 - (1 - t)^3; x = 0.5 at t = 0.5^(1/3)
    np.testing.assert_allclose(bezier_intensity_map(np.float32([0.5]), (0, 1), (0, 1), samples=100001),
                               [1 - (1 - 0.5 ** (1 / 3)) ** 3], atol=1e-4)
    bent = bezier_intensity_map(x, (0.1, 0.9), (0.2, 0.95))
    assert np.all(np.diff(bent) >= 0) and bent[0] == 0 and bent[-1] == 1 and bent[5] > 0.5  # monotone, ends fixed


def test_bezier_transform_probability_and_type():
    img = torch.as_tensor(_img())
    assert RandBezierIntensity(prob=0.0)(img) is img  # not applied: the same object back
    out = RandBezierIntensity(prob=1.0).set_random_state(3)(img)
    assert isinstance(out, torch.Tensor) and out.shape == img.shape and not torch.equal(out, img)
    assert 0 <= float(out.min()) and float(out.max()) <= 1


def test_local_shuffle_permutes_within_blocks():
    img = _img(40)
    assert np.array_equal(RandLocalPixelShuffle(1.0, max_fraction=0.01)(img), img)  # 1 px blocks: identity
    one = RandLocalPixelShuffle(1.0, num_blocks=1, max_fraction=0.25).set_random_state(1)
    out = one(img)
    r, c, h, w = one.blocks[0]
    inside = np.zeros(img.shape, bool)
    inside[..., r:r + h, c:c + w] = True
    assert np.array_equal(out[~inside], img[~inside])  # nothing moves outside the block
    assert np.array_equal(np.sort(out[inside]), np.sort(img[inside]))  # inside: the same values, permuted
    assert not np.array_equal(out, img)
    two = _img(24, channels=2)
    two[1] = two[0] * 2  # channels move together: the relation between them survives
    shuffled = RandLocalPixelShuffle(1.0, num_blocks=50).set_random_state(2)(two)
    np.testing.assert_allclose(shuffled[1], shuffled[0] * 2)


def test_inpaint_and_outpaint_values():
    img = np.full((1, 42, 42), 2.0, np.float32)  # outside [0, 1): noise pixels are told apart by value
    inp = RandInpaint(1.0, continue_prob=1.0).set_random_state(0)
    out = inp(img)
    noise = out < 1
    assert len(inp.boxes) == 5
    expected = np.zeros_like(noise)
    for r, c, h, w in inp.boxes:
        assert 7 <= h <= 14 and 7 <= w <= 14 and r >= 3 and r + h <= 39  # 1/6..1/3 of 42, 3 px inside
        expected[..., r:r + h, c:c + w] = True
    assert np.array_equal(noise, expected)
    assert RandInpaint(1.0, continue_prob=0.0)(img) is not None and np.array_equal(
        RandInpaint(1.0, continue_prob=0.0)(img), img)  # no box drawn: unchanged
    outp = RandOutpaint(1.0, continue_prob=0.0).set_random_state(0)
    out = outp(img)
    (r, c, h, w), = outp.boxes
    assert 42 - 24 <= h <= 42 - 18  # side 42 - (3/7 .. 4/7 of 42)
    assert np.all(out[..., r:r + h, c:c + w] == 2) and np.all(out[out != 2] < 1)
    assert (out == 2).sum() == h * w


def test_genesis_composite_is_a_function_of_the_seed():
    data = {"image": torch.as_tensor(_img(32))}
    genesis = RandGenesisd("image", restore_key="target", num_blocks=200)
    a = genesis.set_random_state(7)(data)
    b = genesis.set_random_state(7)(data)
    c = genesis.set_random_state(8)(data)
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])
    assert a["target"] is data["image"]  # the undistorted target kept
    off = RandGenesisd("image", local_prob=0, nonlinear_prob=0, paint_prob=0)(data)
    assert torch.equal(off["image"], data["image"])  # every part off: identity
    np.random.seed(0)  # global generators play no part
    torch.manual_seed(0)
    d = genesis.set_random_state(7)(data)
    assert torch.equal(a["image"], d["image"])


@pytest.mark.parametrize("size", [8, 13])
def test_tiny_images_do_not_break(size):
    img = _img(size)
    for t in (RandLocalPixelShuffle(1.0), RandInpaint(1.0), RandOutpaint(1.0)):
        assert t.set_random_state(0)(img).shape == img.shape


def test_overlapping_shuffle_boxes_apply_in_order():
    img = np.arange(64, dtype=np.float32).reshape(1, 8, 8)  # distinct values: a pixel's origin is its value
    shuffle = RandLocalPixelShuffle(1.0, num_blocks=6, max_fraction=0.5).set_random_state(4)
    out = shuffle(img)
    last_box = np.full((8, 8), -1)
    for i, (r, c, h, w) in enumerate(shuffle.blocks):
        last_box[r:r + h, c:c + w] = i
    assert np.array_equal(out[0][last_box < 0], img[0][last_box < 0])  # outside every box: unchanged
    for i, (r, c, h, w) in enumerate(shuffle.blocks):  # inside: a value from the box written last there
        assert set(out[0][last_box == i].tolist()) <= set(img[0, r:r + h, c:c + w].ravel().tolist())
    r, c, h, w = shuffle.blocks[-1]  # the last box is whole: a permutation of its region
    assert np.array_equal(np.sort(out[0, r:r + h, c:c + w].ravel()), np.sort(img[0, r:r + h, c:c + w].ravel()))
