"""bundles/finetune_det: metadata, workflow properties, start points, a short train -> evaluate -> inference run
through ``python -m monai.bundle run``, TorchScript export round trip of the dense detection output."""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import verify_metadata

from cxrfx.networks import build_detector
from cxrfx.networks.dense_detection import split_dense
from finetune_helpers import (
    PATCH_STEM, ROOT, SCHEMA, ark_checkpoint, build_phantom, check_trunk_loaded, check_workflow_properties,
    cxrfx_checkpoint,
    export_round_trip, foundation_x_checkpoint, run_bundle, tiny_network, workflow,
)

BUNDLE = ROOT / "bundles" / "finetune_det"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return build_phantom(tmp_path_factory.mktemp("phantom"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, phantom):
    """A tiny full fine-tune from an official-Foundation-X-layout checkpoint: the run's root and log."""
    root = tmp_path_factory.mktemp("ftdet")
    start = root / "ckpt_E844_TH3.pth"
    foundation_x_checkpoint(tiny_network(BUNDLE, root), start)
    proc = run_bundle(BUNDLE, ["train.json", "demo.json"], root, dataset_dir=str(phantom), mode="full",
                      finetune=True, finetune_model_path=str(start), finetune_source="foundation_x")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc.stdout + proc.stderr


@pytest.mark.skipif(not SCHEMA.exists(), reason="the shared Model Zoo schema is not beside the checkout")
def test_metadata_is_valid_offline():
    verify_metadata(meta_file=str(BUNDLE / "configs" / "metadata.json"), filepath=str(SCHEMA))


def test_workflow_properties(tmp_path, phantom):
    check_workflow_properties(BUNDLE, tmp_path, phantom, (
        (["train.json", "demo.json"], "train", {"finetune": False}),
        (["inference.json", "demo.json"], "infer", {})))  # no weights: loaded at run time


@pytest.mark.parametrize("start", ["scratch", "cxrfx", "ark"])
def test_start_points_load_with_a_report(tmp_path, phantom, capsys, start):
    published = PATCH_STEM if start == "ark" else {}
    net = tiny_network(BUNDLE, tmp_path, **published)
    path = tmp_path / "start.pt"
    trunk = {"cxrfx": cxrfx_checkpoint, "ark": ark_checkpoint}[start](net, path) if start != "scratch" else {}
    wf = workflow(BUNDLE, ["train.json", "demo.json"], "train", tmp_path, dataset_dir=str(phantom),
                  finetune=start != "scratch", finetune_model_path=str(path), **published)
    wf.initialize()
    out = capsys.readouterr().out
    network = wf.parser.get_parsed_content("network_def")
    assert network.det_heads["nodules"].num_classes == 2
    if start == "scratch":
        assert "start point: scratch" in out
        return
    report = wf.parser.get_parsed_content("pretrained")
    assert f"start point: {path}" in out
    assert report.source == {"cxrfx": "cxrfx [teacher]", "ark": "ark [teacher]"}[start]  # teacher by default
    check_trunk_loaded(network, trunk, skip_stem=start == "ark")
    assert not report.missing_in("backbone.") and report.missing_in("det_heads.nodules.")
    assert bool(report.missing_in("det_neck.")) == (start == "ark")  # Ark has no neck; a cxrfx checkpoint does


def test_train_evaluate_inference(trained, phantom):
    root, log = trained
    assert "foundation_x [teacher_model]" in log and "unexpected" in log
    assert "step 1/1 release det/nodules" in log and "lock det/nodules" not in log
    selection = json.loads((root / "eval" / "finetune_datalist.selection.json").read_text())
    assert selection["annotated_only"] and len(selection["training_ids"]) == 2
    chosen = json.loads((root / "eval" / "finetune_datalist.json").read_text())["training"]
    assert all(item["boxes"] for item in chosen)
    proc = run_bundle(BUNDLE, ["train.json", "demo.json", "evaluate.json"], root, dataset_dir=str(phantom))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = (root / "eval" / "metrics.csv").read_text()
    assert "student/det/nodules/ap50" in metrics and "student/det/nodules/map40_fx" in metrics
    proc = run_bundle(BUNDLE, ["inference.json", "demo.json"], root,
                      input_path=str(phantom / "phantom_det" / "datalist.json"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (root / "eval" / "predictions").glob("*.json")]
    assert len(records) == 2 and all(list(r["heads"]) == ["det/nodules"] for r in records)


def test_export_round_trip_and_decoding(trained):
    root, _ = trained
    net, x, dense = export_round_trip(BUNDLE, root)
    with torch.no_grad():
        maps = net(x, task="det", head="nodules")
    assert dense.shape[:2] == (1, 2 + 4)
    # the exported tensor unpacks into the head's per-level maps, which the detector decodes into boxes
    unpacked = split_dense(dense, [m.shape[-2:] for m in maps["classification"]], net.det_anchors.num_anchors, 2)
    for key in maps:
        for a, b in zip(unpacked[key], maps[key]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    detector = build_detector(net, "nodules", score_thresh=0.0).eval()
    with torch.no_grad():
        boxes = detector(x)[0]["boxes"]
    assert boxes.ndim == 2 and boxes.shape[1] == 4
