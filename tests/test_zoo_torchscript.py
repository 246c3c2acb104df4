"""The Model Zoo's ``ckpt_export`` scripts the network (``torch.jit.script``): the Swin backbone scripts, and the
scripted model computes what the eager one does (both stems, both shift rules, sizes that need window padding),
survives a save / load round trip, and leaves eager training features (gradient checkpointing) and
``torch.export`` as they were."""

from __future__ import annotations

import pytest
import torch

from cxrfx.networks.swin import swin

TINY = {"embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 3, 6), "window_size": 4}


@pytest.mark.parametrize("stem, shift_rule", [("patch", "always"), ("conv", "timm")])
def test_scripted_swin_equals_eager(stem, shift_rule, tmp_path):
    torch.manual_seed(0)
    model = swin("tiny", stem=stem, shift_rule=shift_rule, **TINY).eval()
    scripted = torch.jit.script(model)
    torch.jit.save(scripted, str(tmp_path / "swin.ts"))
    loaded = torch.jit.load(str(tmp_path / "swin.ts"))
    for size in (64, 96, 160):  # 96 / 160: stage maps that are not multiples of the window (padding inside blocks)
        x = torch.rand(2, 1, size, size)
        with torch.no_grad():
            want = model(x)
            for got in (scripted(x), loaded(x)):
                assert [t.shape for t in got] == [t.shape for t in want]
                for g, w in zip(got, want):
                    torch.testing.assert_close(g, w, rtol=0, atol=1e-5)


def test_the_bundles_backbone_options_script():
    """The bundles' settings (conv stem, gradient checkpointing, drop path): the training-only paths stay Python."""
    model = swin("tiny", stem="conv", use_checkpoint=True, drop_path_rate=0.2, **TINY).eval()
    scripted = torch.jit.script(model)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x)[-1], model(x)[-1], rtol=0, atol=1e-5)


def test_gradient_checkpointing_still_runs_eagerly_after_the_change():
    torch.manual_seed(0)
    plain = swin("tiny", **TINY).train()
    ckpt = swin("tiny", use_checkpoint=True, **TINY).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(1, 1, 64, 64)
    torch.manual_seed(1)
    a = sum(t.sum() for t in plain(x))
    torch.manual_seed(1)
    b = sum(t.sum() for t in ckpt(x))
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_torch_export_still_works():
    model = swin("tiny", **TINY).eval()
    x = torch.rand(1, 1, 64, 64)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        for g, w in zip(exported.module()(x), model(x)):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-5)


def test_classification_task_net_scripts_with_its_input_contract():
    """FoundationX / TaskNet hand ``torch.jit.script`` their (task, head) as plain modules (``__prepare_scriptable__``);
    a task's input contract (the patch-embedding correction of a Foundation X load) is baked into the scripted
    copy, the model's own weights untouched. (Segmentation and detection need their heads scriptable too.)"""
    from cxrfx.networks import FoundationX, TaskNet
    from cxrfx.networks.input_contract import TaskInput

    torch.manual_seed(0)
    model = FoundationX("tiny", cls_heads={"a": 3}, backbone_kwargs=TINY).eval()
    proj = model.backbone.patch_embed.proj
    before = proj.weight.detach().clone()
    x = torch.rand(2, 1, 64, 64)
    for contract in (False, True):
        if contract:
            model.task_inputs["cls"] = TaskInput(torch.randn_like(proj.weight) * 0.1, torch.randn_like(proj.bias) * 0.1)
        for net in (model, TaskNet("cls", network=model).eval()):
            scripted = torch.jit.script(net)
            with torch.no_grad():
                torch.testing.assert_close(scripted(x), net(x), rtol=0, atol=1e-5)
    assert torch.equal(proj.weight, before)
