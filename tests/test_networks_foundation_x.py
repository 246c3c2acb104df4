"""FoundationX: task-selective forward, heads, detection training without torchvision, dropout, export."""

from __future__ import annotations

import pytest
import torch

from cxrfx.networks import FoundationX, TaskNet, build_detector, parameter_counts
from cxrfx.networks.export import export_onnx, export_torchscript

SMALL = dict(backbone="tiny", backbone_kwargs={"embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 3, 6),
                                               "window_size": 4, "drop_path_rate": 0.0},
             seg_channels=16, psp_channels=32, det_channels=32)
HEADS = dict(cls_heads={"nih14": 14, "rsna": 3}, seg_heads={"jsrt": 3, "siim": 1}, det_heads={"vindr": 2, "node21": 1})


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FoundationX(**SMALL, **HEADS).eval()


def test_output_shapes_for_every_head(model):
    x = torch.rand(2, 1, 64, 96)
    with torch.no_grad():
        out = model.forward_all(x)
    assert sorted(out) == ["cls/nih14", "cls/rsna", "det/node21", "det/vindr", "seg/jsrt", "seg/siim"]
    assert tuple(out["cls/nih14"].shape) == (2, 14) and tuple(out["cls/rsna"].shape) == (2, 3)
    assert tuple(out["seg/jsrt"].shape) == (2, 3, 64, 96) and tuple(out["seg/siim"].shape) == (2, 1, 64, 96)
    cls_maps = out["det/vindr"]["classification"]
    assert [tuple(m.shape) for m in cls_maps] == [(2, 6 * 2, 8, 12), (2, 12, 4, 6), (2, 12, 2, 3), (2, 12, 1, 2)]
    with torch.no_grad():
        for key, value in out.items():
            task, head = key.split("/")
            single = model(x, task=task, head=head)
            if task == "det":
                for a, b in zip(single["box_regression"], value["box_regression"]):
                    torch.testing.assert_close(a, b)
            else:
                torch.testing.assert_close(single, value)


def test_task_selective_forward_runs_only_what_it_needs(model):
    calls = []
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: calls.append(name))
             for name, m in (("seg_decoder", model.seg_decoder), ("det_neck", model.det_neck),
                             ("cls/rsna", model.cls_heads["rsna"]), ("cls/nih14", model.cls_heads["nih14"]),
                             ("seg/jsrt", model.seg_heads["jsrt"]), ("seg/siim", model.seg_heads["siim"]),
                             ("det/vindr", model.det_heads["vindr"]), ("backbone", model.backbone))]
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        model(x, task="cls", head="rsna")
        assert calls == ["backbone", "cls/rsna"]
        calls.clear()
        model(x, task="seg", head="siim")
        assert calls == ["backbone", "seg_decoder", "seg/siim"]
        calls.clear()
        model(x, task="det", head="vindr")
        assert calls == ["backbone", "det_neck", "det/vindr"]
    for h in hooks:
        h.remove()
    with pytest.raises(KeyError, match=r"no seg head named 'nih14'; this model has \['jsrt', 'siim'\]"):
        model(x, task="seg", head="nih14")
    with pytest.raises(ValueError, match="task must be one of"):
        model(x, task="segmentation")
    with pytest.raises(ValueError, match="expected 1 input channel"):
        model(torch.rand(1, 3, 64, 64), task="cls", head="rsna")


def test_detection_trains_without_torchvision_and_predicts_boxes():
    torch.manual_seed(0)
    model = FoundationX(**SMALL, det_heads={"nodes": 2})
    detector = build_detector(model, "nodes", score_thresh=0.0)
    x = torch.rand(2, 1, 64, 64)
    x[0, :, 16:32, 24:40] += 1.0  # a bright "lesion" where the box is
    targets = [{"boxes": torch.tensor([[16.0, 24.0, 32.0, 40.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    detector.train()
    losses = []
    for _ in range(8):
        loss_dict = detector(x, targets)
        loss = loss_dict["classification"] + loss_dict["box_regression"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    detector.eval()
    with torch.no_grad():
        result = detector(x)
    assert len(result) == 2
    boxes, scores = result[0]["boxes"], result[0]["labels_scores"]
    assert boxes.shape[1] == 4 and len(boxes) == len(scores) > 0
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def test_dropout_is_random_in_train_mode_and_off_in_eval():
    torch.manual_seed(0)
    model = FoundationX(**SMALL, cls_heads={"a": 4}, seg_heads={"s": 1}, dropout=0.5)
    x = torch.rand(1, 1, 64, 64)
    model.train()
    assert not torch.equal(model(x, "cls"), model(x, "cls"))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, "seg"), model(x, "seg"))


@pytest.mark.parametrize("task", ["cls", "seg", "det"])
def test_export_torchscript_and_onnx_match_eager(model, task, tmp_path):
    net = TaskNet(task, head={"cls": "nih14", "seg": "jsrt", "det": "vindr"}[task], network=model)
    x = torch.rand(1, 1, 64, 96)
    traced = export_torchscript(net, x, tmp_path / f"{task}.ts")
    with torch.no_grad():
        expected = net(x)
        got = traced(x)
    for a, b in zip(expected if task == "det" else (expected,), got if task == "det" else (got,)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    diff = export_onnx(net, x, tmp_path / f"{task}.onnx")
    assert diff < 1e-4


def test_task_net_builds_from_keyword_arguments():
    net = TaskNet("cls", network=None, **SMALL, cls_heads={"phantom_cls": 5}).eval()
    assert net.head == "phantom_cls"
    with torch.no_grad():
        assert tuple(net(torch.rand(2, 1, 64, 64)).shape) == (2, 5)


def test_parameter_counts_of_the_paper_sized_parts():
    model = FoundationX("base", in_chans=3, cls_heads={"a": 14}, seg_heads={"s": 1})
    counts = parameter_counts(model)
    assert counts["backbone"] == 86_743_224  # Swin-B trunk, REFERENCE §1.4: 86.74 M
    assert round(counts["seg_decoder_psp"] / 1e6, 2) == 19.93  # PSP, REFERENCE §1.4: 19.93 M
    assert counts["cls_heads"] == 1024 * 14 + 14
    assert counts["total"] == sum(v for k, v in counts.items() if k not in ("total", "seg_decoder_psp"))
