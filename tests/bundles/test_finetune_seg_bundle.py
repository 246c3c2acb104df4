"""bundles/finetune_seg: metadata, workflow properties, every start point, a short train -> evaluate -> inference
run through ``python -m monai.bundle run``, TorchScript export round trip."""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import verify_metadata

from cxrfx.errors import MissingWeightsError

from finetune_helpers import (
    PATCH_STEM, ROOT, SCHEMA, ark_checkpoint, build_phantom, check_trunk_loaded, check_workflow_properties,
    cxrfx_checkpoint,
    export_round_trip, foundation_x_checkpoint, run_bundle, tiny_network, workflow,
)

BUNDLE = ROOT / "bundles" / "finetune_seg"
CLASSES = ["lung_left", "lung_right", "heart", "clavicle_left", "clavicle_right"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return build_phantom(tmp_path_factory.mktemp("phantom"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, phantom):
    """A tiny fine-tune from a cxrfx (foundation_x bundle style) checkpoint: the run's root and log."""
    root = tmp_path_factory.mktemp("ftseg")
    start = root / "fx_last.pt"
    cxrfx_checkpoint(tiny_network(BUNDLE, root), start)
    proc = run_bundle(BUNDLE, ["train.json", "demo.json"], root, dataset_dir=str(phantom), finetune=True,
                      finetune_model_path=str(start), finetune_key="teacher")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc.stdout + proc.stderr


def test_metadata_is_valid_offline():
    verify_metadata(meta_file=str(BUNDLE / "configs" / "metadata.json"), filepath=str(SCHEMA))


def test_workflow_properties(tmp_path, phantom):
    check_workflow_properties(BUNDLE, tmp_path, phantom, (
        (["train.json", "demo.json"], "train", {"finetune": False}),
        (["train.json", "demo.json", "evaluate.json"], "train", {}),
        (["inference.json", "demo.json"], "infer", {})))  # no weights: loaded at run time


@pytest.mark.parametrize("start", ["scratch", "cxrfx_student", "cxrfx_teacher", "ark", "foundation_x"])
def test_start_points_load_with_a_report(tmp_path, phantom, capsys, start):
    published = PATCH_STEM if start in ("ark", "foundation_x") else {}
    net = tiny_network(BUNDLE, tmp_path, **published)
    path = tmp_path / "start.pt"
    overrides: dict = {"finetune": start != "scratch", "finetune_model_path": str(path), **published}
    if start.startswith("cxrfx"):
        trunk = cxrfx_checkpoint(net, path)
        overrides["finetune_key"] = start.split("_")[1]
        if start == "cxrfx_student":
            params = {k[len("backbone."):] for k, _ in net.named_parameters() if k.startswith("backbone.")}
            trunk = {k: v + 0.01 if k in params else v for k, v in trunk.items()}  # the student's parameters differ
    elif start == "ark":
        trunk = ark_checkpoint(net, path)
    elif start == "foundation_x":
        trunk = foundation_x_checkpoint(net, path)
    wf = workflow(BUNDLE, ["train.json", "demo.json"], "train", tmp_path, dataset_dir=str(phantom), **overrides)
    wf.initialize()
    out = capsys.readouterr().out
    network = wf.parser.get_parsed_content("network_def")
    head = network.seg_heads["organs"]
    assert head.conv.out_channels == len(CLASSES)
    if start == "scratch":
        assert "start point: scratch" in out
        return
    report = wf.parser.get_parsed_content("pretrained")
    assert f"start point: {path}" in out and "loaded" in out
    expected_source = {"cxrfx_student": "cxrfx [student]", "cxrfx_teacher": "cxrfx [teacher]",
                       "ark": "ark [teacher]", "foundation_x": "foundation_x [teacher_model]"}[start]
    assert report.source == expected_source
    n = check_trunk_loaded(network, trunk, skip_stem=start == "ark")
    assert n >= len(trunk) - 2 and not report.missing_in("backbone.")
    assert any(k.startswith("seg_heads.organs.") for k in report.missing)  # the new head starts fresh
    if start == "ark":
        assert any("normalisation folded in" in a for a in report.adapted)
        assert "projector.0.weight" in report.unexpected and "head.weight" in report.unexpected
    if start == "foundation_x":
        assert "transformer.encoder.layers.0.linear1.weight" in report.unexpected


def test_missing_start_checkpoint_is_named(tmp_path, phantom):
    wf = workflow(BUNDLE, ["train.json", "demo.json"], "train", tmp_path, dataset_dir=str(phantom), finetune=True,
                  finetune_model_path=str(tmp_path / "nope.pt"))
    with pytest.raises(MissingWeightsError) as info:  # a SystemExit: one line under monai.bundle run
        wf.initialize()
    assert str(info.value).startswith(f"{tmp_path / 'nope.pt'}: start checkpoint not found")


def test_train_evaluate_inference(trained, phantom):
    root, log = trained
    assert "start point:" in log and "cxrfx [teacher]" in log
    assert "step 1/2 lock seg/organs" in log and "step 2/2 release seg/organs" in log
    assert "val_dice_fx" in log
    selection = json.loads((root / "eval" / "finetune_datalist.selection.json").read_text())
    assert selection["shots"] == 2 and len(selection["training_ids"]) == 2 and selection["seg_classes"] == CLASSES
    assert (root / "models" / "model.pt").exists() and (root / "models" / "last.pt").exists()
    proc = run_bundle(BUNDLE, ["train.json", "demo.json", "evaluate.json"], root, dataset_dir=str(phantom))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = (root / "eval" / "metrics.csv").read_text()
    assert "student/seg/organs/dice_fx" in metrics
    proc = run_bundle(BUNDLE, ["inference.json", "demo.json"], root,
                      input_path=str(phantom / "phantom_seg" / "datalist.json"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = root / "eval" / "predictions"
    record = json.loads(next(out.glob("*.json")).read_text())
    assert list(record["heads"]) == ["seg/organs"]
    for name in CLASSES:  # one mask file per class and test image
        assert len(list(out.glob(f"*_organs_{name}.png"))) == 2, name


def test_export_round_trip(trained):
    root, _ = trained
    _, _, out = export_round_trip(BUNDLE, root)
    assert out.shape == (1, len(CLASSES), 64, 64)


def test_unetpp_head_type_trains_evaluates_and_infers(tmp_path, phantom):
    """``head_type: unetpp`` (the head registry's UNet++) through the whole bundle: train, evaluate, infer."""
    settings = {"head_type": "unetpp", "finetune": False, "iterations": 4, "val_interval": 4}
    proc = run_bundle(BUNDLE, ["train.json", "demo.json"], tmp_path, dataset_dir=str(phantom), **settings)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = torch.load(tmp_path / "models" / "last.pt", map_location="cpu", weights_only=True)["student"]
    assert "seg_decoder.nodes.2.0.1.0.weight" in state  # X[0][3]'s second conv: the nested decoder was trained
    assert state["seg_heads.organs.convs.2.weight"].shape[0] == len(CLASSES)  # a deep-supervision conv per node
    proc = run_bundle(BUNDLE, ["train.json", "demo.json", "evaluate.json"], tmp_path, dataset_dir=str(phantom),
                      head_type="unetpp")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "student/seg/organs/dice_fx" in (tmp_path / "eval" / "metrics.csv").read_text()
    proc = run_bundle(BUNDLE, ["inference.json", "demo.json"], tmp_path, head_type="unetpp",
                      input_path=str(phantom / "phantom_seg" / "datalist.json"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(list((tmp_path / "eval" / "predictions").glob("*_organs_heart.png"))) == 2
