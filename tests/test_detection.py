"""Detection: the detector can overfit a few images (a broken matcher, box coding, axis order, loss or NMS fails
here), anchors fitted to data and carried by the model, the stride-4 neck, lesion conspicuity."""

import json

import numpy as np
import pytest
import torch

from cxrfx.data.boxes import anchor_shapes_for, box_sizes, fit_anchor_shapes, propose_anchors
from cxrfx.networks.heads.detection import detection_loss
from cxrfx.errors import ConfigError
from cxrfx.metrics import ap50
from cxrfx.networks import FoundationX, build_detector
from cxrfx.networks.heads.anchors import DetectionAnchors, default_anchor_shapes
from cxrfx.networks.heads.detection import DetectionNeck

TINY = dict(backbone="tiny", backbone_kwargs=dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
                                                 window_size=4), det_channels=32, default_task="det")


def _squares(n_images=4, size=96, seed=0):
    """Bright squares (two classes, 16-32 px) on noise: boxes [r1, c1, r2, c2] as the detector takes them."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(n_images):
        im = rng.normal(0.3, 0.05, (size, size)).astype(np.float32)
        boxes, labels = [], []
        for k in range(2):
            side = int(rng.integers(size // 6, size // 3))
            r, c = rng.integers(2, size - side - 2, 2)
            im[r:r + side, c:c + side] += 0.5
            boxes.append([r, c, r + side, c + side])
            labels.append(k)
        images.append(torch.from_numpy(im.clip(0, 1))[None])
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return torch.stack(images), targets


@pytest.mark.parametrize("strides,settings", [((8, 16, 32, 64), {}), ((4, 8, 16, 32), {"sampler": "none"})])
def test_detector_overfits_a_few_images(strides, settings):
    torch.manual_seed(0)
    x, targets = _squares()
    model = FoundationX(det_heads={"d": 2}, det_strides=strides, detector_settings=settings, **TINY)
    detector = build_detector(model, "d")
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    for _ in range(150):
        model.train()
        loss = sum(detection_loss(detector, x, model(x, task="det", head="d"), targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = build_detector(model, "d", score_thresh=0.02).eval()(x)
    preds = [{"boxes": o["boxes"], "scores": o["labels_scores"], "labels": o["labels"]} for o in out]
    assert ap50(preds, targets) >= 0.9


def test_neck_strides_and_validation():
    model = FoundationX(det_heads={"d": 1}, det_strides=(4, 8, 16, 32), **TINY)
    levels = model.det_features(model.forward_features(torch.rand(1, 1, 64, 64)))
    assert [lv.shape[-1] for lv in levels] == [16, 8, 4, 2]
    old = FoundationX(det_heads={"d": 1}, **TINY)  # RetinaNet P3-P6 as before
    assert [lv.shape[-1] for lv in old.det_features(old.forward_features(torch.rand(1, 1, 64, 64)))] == [8, 4, 2, 1]
    for bad in ((4, 16), (8, 16, 32, 64, 128), (2, 4)):
        with pytest.raises(ValueError, match="consecutive"):
            DetectionNeck((16, 32, 64, 128), 32, bad)


def test_default_anchors_reproduce_the_former_generator():
    shapes = np.array(default_anchor_shapes((8, 16, 32, 64), 6))
    # former AnchorGenerator(sizes=((16, 24), ...), aspect_ratios=(0.5, 1, 2)): ratio-major, size-minor
    assert shapes.shape == (4, 6, 2)
    np.testing.assert_allclose(shapes[0, 2:4], [[16, 16], [24, 24]])
    np.testing.assert_allclose(shapes[0, 0], [16 / np.sqrt(0.5), 16 * np.sqrt(0.5)], rtol=1e-3)


def test_fitted_anchors_follow_the_boxes():
    rng = np.random.default_rng(1)
    small = np.exp(rng.normal(np.log(8), 0.15, (60, 2)))  # nodules ~8 px
    large = np.exp(rng.normal(np.log(36), 0.15, (30, 2)))  # masses ~36 px
    shapes = np.array(fit_anchor_shapes(np.concatenate([small, large]), (4, 8, 16, 32), 3))
    assert shapes.shape == (4, 3, 2)
    assert 6 <= np.sqrt(shapes[0].prod(axis=1)).mean() <= 11  # the stride-4 level takes the nodules
    assert 28 <= np.sqrt(shapes[1].prod(axis=1)).mean() <= 45  # stride 8 the masses
    assert (np.diff(np.sqrt(shapes.prod(axis=2)).mean(axis=1)) > 0).all()  # sizes grow with the stride
    with pytest.raises(ValueError, match="2 boxes"):
        fit_anchor_shapes(small[:2], (4, 8), 3)


def test_propose_anchors_from_a_datalist(tmp_path):
    from PIL import Image

    items = []
    for i in range(4):
        Image.fromarray(np.zeros((100, 200), np.uint8)).save(tmp_path / f"im{i}.png")
    for i in range(3):
        # x spans 20 px of 200 (10 px at 100), y 10 px of 100 (10 px at 100)
        items.append({"id": f"i{i}", "image": f"im{i}.png", "label": [1],
                      "boxes": [[10, 10, 30, 20], [50, 50, 90, 70]], "box_labels": [0, 0]})
    items.append({"id": "neg", "image": "im3.png", "label": [0], "boxes": [], "box_labels": []})
    datalist = {"name": "t", "schema_version": 1, "box_mode": "xyxy", "description": "test",
                "tasks": {"classification": {"labels": ["nodule"]}, "detection": {"classes": ["nodule"]}},
                "training": items, "validation": [], "test": []}
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(datalist))
    hw = box_sizes(path, 100)["hw"]
    np.testing.assert_allclose(hw[:2], [[10, 10], [20, 20]])
    proposal = propose_anchors(path, 100, (4, 8), num_anchors=2)
    assert proposal["boxes"] == 6 and np.array(proposal["shapes"]).shape == (2, 2, 2)
    with pytest.raises(ConfigError, match="datalist.json: 6 boxes"):
        propose_anchors(path, 100, (4, 8), num_anchors=7)
    assert anchor_shapes_for(path, 100, (4, 8), 7) is None  # too few boxes: default shapes, logged


def test_anchors_travel_with_the_checkpoint():
    fitted = [[[6.0, 7.0], [9.0, 9.0], [12.0, 10.0]]] * 2 + [[[40.0, 40.0], [50.0, 44.0], [60.0, 60.0]]] * 2
    trained = FoundationX(det_heads={"d": 1}, det_strides=(4, 8, 16, 32), det_anchors=fitted, **TINY)
    fresh = FoundationX(det_heads={"d": 1}, det_strides=(4, 8, 16, 32), num_anchors=3, **TINY)
    detector = build_detector(fresh, "d").eval()  # built before the weights arrive, as an inference engine does
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        detector(x)
    before = detector.anchors[0].clone()
    fresh.load_state_dict(trained.state_dict())
    assert fresh.det_anchors.as_list() == trained.det_anchors.as_list()
    with torch.no_grad():
        detector(x)
    first = detector.anchors[0][:3]  # stride-4 level, first location: the fitted shapes around its centre
    np.testing.assert_allclose((first[:, 2:] - first[:, :2]).numpy(), np.array(fitted[0]), atol=1e-4)
    assert not torch.equal(before, detector.anchors[0])


def test_checkpoints_without_anchors_load_with_the_defaults():
    model = FoundationX(det_heads={"d": 1}, **TINY)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("det_anchors.")}
    other = FoundationX(det_heads={"d": 1}, **TINY)
    other.load_state_dict(state)  # strict: the missing buffer is filled with the default shapes
    assert torch.equal(other.det_anchors.shapes, DetectionAnchors((8, 16, 32, 64)).shapes)


def test_lesion_cnr():
    from cxrfx.data.phantom.render import lesion_cnr

    rng = np.random.default_rng(0)
    image = rng.normal(0.5, 0.01, (64, 64))
    yy, xx = np.mgrid[:64, :64]
    mask = (yy - 32) ** 2 + (xx - 32) ** 2 <= 25
    image[mask] += 0.05
    assert 4.0 < lesion_cnr(image, mask) < 6.0  # contrast 0.05 over noise 0.01
    assert abs(lesion_cnr(rng.normal(0.5, 0.01, (64, 64)), mask)) < 0.5
