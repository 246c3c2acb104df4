"""``cxrfx convert --from foundation_x|ark``: published checkpoints (tiny synthetic ones in the reference key layouts:
``tests/fixtures/fx_tiny_ckpt.pth`` from the reference's own modules, an Ark / timm Swin state dict written from its
layout) -> a bundle's ``models/model.pt`` that the bundle's ``CheckpointLoader`` loads, computing what the reference
computes; files that are not such checkpoints refused in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxrfx.__main__ import main
from cxrfx.convert import bundle_network
from cxrfx.engines.handlers import CheckpointLoader

from test_networks_checkpoints import timm_swin_state_dict

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
FX_CKPT = FIXTURES / "fx_tiny_ckpt.pth"
ATOL = 1e-4  # the fidelity contract of issue 17
ARK_TINY = {"embed_dim": 24, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 3, 6], "window_size": 7}


@pytest.fixture(scope="module")
def fx_reference():
    return torch.load(FIXTURES / "fx_tiny_reference.pt", weights_only=True)


def _bundle(tmp_path, name, backbone, **settings):
    """The bundle's configs in a fresh folder (as after a download: no models/), with a tiny backbone that matches
    the synthetic checkpoint, and ``settings`` over the inference config's top-level values."""
    bundle = tmp_path / name
    shutil.copytree(ROOT / "bundles" / name / "configs", bundle / "configs")
    config_file = bundle / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    config.update(backbone="tiny", backbone_kwargs={**backbone, "drop_path_rate": 0.0}, **settings)
    config_file.write_text(json.dumps(config))
    return bundle


def _fx_bundle(tmp_path, fx_reference, name="finetune_seg", **settings):
    cfg = fx_reference["provenance"]["config"]
    return _bundle(tmp_path, name, {k: cfg[k] for k in ("embed_dim", "depths", "num_heads", "window_size")},
                   **settings)


def _reload(bundle, path):
    """A fresh network_def with the file loaded by the bundle's own handler, strictly (every tensor, no other)."""
    net = bundle_network(bundle).eval()
    CheckpointLoader(load_path=str(path), load_dict={"model": net}, strict=True).load()
    return net


def _convert(*args):
    main(["convert", *map(str, args)])


def test_foundation_x_into_a_segmentation_bundle_computes_the_reference(tmp_path, fx_reference, capsys):
    # the bundle set up for Foundation X's own segmentation branch and its CANDID-PTX head
    bundle = _fx_bundle(tmp_path, fx_reference, head_type="upernet_fx", dataset_name="candid_ptx",
                        classes=["pneumothorax"])
    _convert("--from", "foundation_x", FX_CKPT, bundle)  # OUT = the bundle folder
    out, err = capsys.readouterr()
    assert "warning" not in err  # the bundle, loading the file, computes what the converted network does
    assert f"{FX_CKPT} (foundation_x [teacher_model]): loaded" in out and ", missing 0," in out
    assert "not for redistribution" in out
    model_pt = bundle / "models" / "model.pt"
    net = _reload(bundle, model_pt)
    x = fx_reference["image_u8"].float() / 255
    with torch.no_grad():
        logits = net(x)
    diff = (logits - fx_reference["seg_logits_head2_full"]).abs().max().item()
    assert logits.shape == fx_reference["seg_logits_head2_full"].shape and diff <= ATOL, diff
    assert not list((bundle / "models").glob("*.partial"))


def test_report_names_what_the_bundle_network_has_no_place_for(tmp_path, fx_reference, capsys):
    # finetune_seg as shipped: cxrfx's UperNet and its own organ head, which Foundation X has no weights for
    bundle = _fx_bundle(tmp_path, fx_reference)
    target = bundle / "models" / "model.pt"
    _convert("--from", "foundation_x", FX_CKPT, target)  # OUT = <bundle>/models/model.pt: the bundle is found
    out, err = capsys.readouterr()
    assert "warning" not in err
    assert "missing (first 10): ['seg_decoder." in out  # the network's tensors the file did not fill
    assert "unexpected (first 10): ['backbone.0.classification_heads." in out  # the file's, no place here
    net = _reload(bundle, target)  # still every tensor of network_def: the bundle loads it strictly
    with torch.no_grad():
        stages = net.forward_features(fx_reference["image_u8"].float() / 255, "seg")
    for ours, theirs in zip(stages, fx_reference["seg_stages"], strict=True):
        assert (ours - theirs).abs().max().item() <= ATOL  # the trunk under the segmentation input contract


def _ark_bundle(tmp_path, **backbone):
    bundle = _bundle(tmp_path, "foundation_x", {**ARK_TINY, **backbone})
    config_file = bundle / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    config["imports"] = ["$import scripts"] + config["imports"]  # as the packager writes it; no scripts/ needed
    config_file.write_text(json.dumps(config))
    trunk = timm_swin_state_dict(**ARK_TINY)
    ark = tmp_path / "ark6_teacher_ep200_swin_tiny.pth.tar"
    torch.save({"teacher": trunk, "epoch": 200}, ark)
    return bundle, ark, trunk


def test_ark_into_a_packaged_pretraining_bundle(tmp_path, capsys):
    # Ark's timm Swin shifts no stage that fits one window: the bundle set so, as the warning below asks
    bundle, ark, trunk = _ark_bundle(tmp_path, shift_rule="timm")
    out = tmp_path / "elsewhere" / "ark.pt"
    _convert("--from", "ark", ark, out, "--bundle", bundle)
    printed = capsys.readouterr()
    assert f"{ark} (ark [teacher]): loaded" in printed.out and "adapted: patch_embed.proj: 3 -> 1" in printed.out
    assert "warning" not in printed.err
    net = _reload(bundle, out)
    layers = {k[len("backbone."):]: v for k, v in net.state_dict().items() if k.startswith("backbone.layers.")}
    same = [k for k in layers if k in trunk and not k.endswith("relative_position_index")]
    assert len(same) > 50 and all(torch.equal(layers[k], trunk[k]) for k in same)
    assert not (bundle / "models").exists()  # written only where asked


def test_a_setting_the_bundle_lacks_is_named(tmp_path, capsys):
    bundle, ark, _ = _ark_bundle(tmp_path)  # the bundle's default shift rule, not Ark's
    _convert("--from", "ark", ark, bundle)
    err = capsys.readouterr().err
    assert "shift_rule 'timm' where the bundle's network_def builds 'always'" in err
    assert "set them in the bundle's configs (the backbone's: backbone_kwargs)" in err
    assert "computes other outputs" in err  # the consequence, measured on a probe image


def _refused(capsys, *args):
    with pytest.raises(SystemExit) as info:
        _convert(*args)
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.count("\n") == 1 and err.startswith("error: ")
    return err


def _not_checkpoints(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listed)
    other = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(2, 3, 7, 7)}, other)
    ours = tmp_path / "model.pt"
    torch.save({"backbone.layers.0.blocks.0.norm1.weight": torch.ones(8)}, ours)
    ark = tmp_path / "ark.pth"
    torch.save(timm_swin_state_dict(**ARK_TINY), ark)
    return [
        ("foundation_x", text, "not a readable PyTorch checkpoint"),
        ("foundation_x", listed, "not a checkpoint: it holds a list, not a state dict"),
        ("ark", other, "not a Foundation X or Ark checkpoint: no Swin trunk tensors in it"),
        ("foundation_x", ours, "a cxrfx state dict, not a Foundation X checkpoint: it needs no conversion"),
        ("foundation_x", ark, "an Ark checkpoint, not a Foundation X checkpoint: use --from ark"),
        ("ark", FX_CKPT, "a Foundation X checkpoint, not an Ark checkpoint: use --from foundation_x"),
        ("ark", tmp_path / "absent.pth", "file not found"),
    ]


def test_files_that_are_not_such_checkpoints_are_refused_in_one_line(tmp_path, fx_reference, capsys):
    bundle = _fx_bundle(tmp_path, fx_reference)
    for source, path, problem in _not_checkpoints(tmp_path):
        err = _refused(capsys, "--from", source, path, bundle)
        assert err.startswith(f"error: {path}: ") and problem in err, err
    assert not (bundle / "models").exists()


def test_an_existing_model_is_kept_unless_overwrite(tmp_path, fx_reference, capsys):
    bundle = _fx_bundle(tmp_path, fx_reference)
    target = bundle / "models" / "model.pt"
    target.parent.mkdir()
    target.write_bytes(b"trained weights")
    with pytest.raises(SystemExit) as info:
        _convert("--from", "foundation_x", FX_CKPT, bundle)
    assert info.value.code == 2 and "exists (it may hold trained weights); pass --overwrite" in capsys.readouterr().err
    assert target.read_bytes() == b"trained weights"
    _convert("--from", "foundation_x", FX_CKPT, bundle, "--overwrite")
    assert _reload(bundle, target) is not None


def test_usage_errors(tmp_path, capsys):
    for args, message in ((["--from", "timm", FX_CKPT, tmp_path], "--from must be one of foundation_x, ark"),
                          ([FX_CKPT, tmp_path], "convert needs --from foundation_x|ark"),
                          (["--from", "ark", FX_CKPT, tmp_path / "x.pt"], "name the bundle with --bundle DIR")):
        with pytest.raises(SystemExit) as info:
            _convert(*args)
        assert info.value.code == 2 and message in capsys.readouterr().err


def test_refusal_from_the_command_line_has_no_traceback(tmp_path):
    bundle = _bundle(tmp_path, "finetune_seg", ARK_TINY)
    run = subprocess.run([sys.executable, "-m", "cxrfx", "convert", "--from", "ark", str(FX_CKPT), str(bundle)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (f"error: {FX_CKPT}: a Foundation X checkpoint, not an Ark "
                                                   "checkpoint: use --from foundation_x")
