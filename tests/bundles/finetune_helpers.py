"""Shared by the finetune_seg / finetune_det bundle tests: tiny settings, bundle runs, start-point checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from monai.bundle import ConfigWorkflow, ckpt_export, verify_net_in_out

from cxrfx.data.phantom import generate_phantom
from cxrfx.packaging.checks import DEFAULT_SCHEMA

ROOT = Path(__file__).resolve().parents[2]
# the Model Zoo schema copy the package ships (packaging checks against it): no ../shared needed
SCHEMA = Path(DEFAULT_SCHEMA)
TINY = {"phantom_count": 12, "phantom_size": 64, "image_size": 64, "batch_size": 2, "iterations": 4,
        "val_interval": 4, "few_shot": 2, "progress_bar": False}
# one thread: on a shared 2-core machine OpenMP spin-waiting makes 2-thread torch 10x slower under load
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def configs(bundle: Path, *names: str) -> list[str]:
    return [str(bundle / "configs" / n) for n in names]


def build_phantom(directory: Path) -> Path:
    """The phantom at the tiny settings (shared by a test module's runs through ``dataset_dir``)."""
    generate_phantom(str(directory), count=TINY["phantom_count"], size=TINY["phantom_size"], verbose=False)
    return directory


def run_bundle(bundle: Path, names: list[str], bundle_root: Path, **overrides) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` with the demo override and the tiny settings (+ ``overrides``)."""
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs(bundle, *names)),
            "--meta_file", str(bundle / "configs" / "metadata.json"),
            "--logging_file", str(bundle / "configs" / "logging.conf"), "--bundle_root", str(bundle_root)]
    for key, value in {**TINY, **overrides}.items():
        args += [f"--{key}", repr(value)]  # python-fire reads Python literals: 'text', False, 2, [...]
    return subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=str(bundle), env=ENV)


def workflow(bundle: Path, names: list[str], kind: str, bundle_root: Path, **overrides) -> ConfigWorkflow:
    """An in-process ConfigWorkflow with the demo override and the tiny settings."""
    return ConfigWorkflow(config_file=configs(bundle, *names), meta_file=str(bundle / "configs" / "metadata.json"),
                          logging_file=str(bundle / "configs" / "logging.conf"), workflow_type=kind,
                          bundle_root=str(bundle_root), **{**TINY, **overrides})


# Published Ark / Foundation X weights have Swin's patch embedding; the demo backbone's convolutional stem is for
# training from scratch, so tests that load those formats build the demo network with the patch embedding.
PATCH_STEM = {"backbone_kwargs#stem": "patch"}


def tiny_network(bundle: Path, bundle_root: Path, **overrides) -> torch.nn.Module:
    """The bundle's ``network_def`` (demo override) built without running anything."""
    wf = workflow(bundle, ["inference.json", "demo.json"], "infer", bundle_root, **overrides)
    wf.initialize()
    return wf.parser.get_parsed_content("network_def")


def trunk_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The Swin trunk of ``model`` in the original (Ark / timm 0.5) key layout, with random values."""
    g = torch.Generator().manual_seed(7)
    params = {k for k, _ in model.named_parameters()}
    # parameters random; buffers (a convolutional stem's BatchNorm statistics) kept valid
    return {k[len("backbone."):]: torch.randn(v.shape, generator=g) * 0.02 if k in params else v.clone()
            for k, v in model.state_dict().items() if k.startswith("backbone.")}


def ark_checkpoint(model: torch.nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """An Ark-6-style file: ``{"teacher": timm-layout trunk}`` with a 3-channel stem, a projector and omni heads."""
    trunk = trunk_state(model)
    trunk["patch_embed.proj.weight"] = trunk["patch_embed.proj.weight"].repeat(1, 3, 1, 1) / 3
    width = trunk["norm.weight"].shape[0]
    state = {**trunk, "projector.0.weight": torch.randn(16, width), "omni_heads.0.weight": torch.randn(3, 16),
             "head.weight": torch.randn(5, width), "head.bias": torch.zeros(5)}
    torch.save({"teacher": state, "epoch": 200}, path)
    return trunk


def foundation_x_checkpoint(model: torch.nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """A Foundation-X-style ``ckpt_E*_TH*.pth``: ``{model, teacher_model, epoch}`` with ``backbone.0.`` trunk keys,
    classification heads, DINO transformer keys and segmentation decoder keys (not ours: reported unexpected)."""
    trunk = trunk_state(model)
    width = trunk["norm.weight"].shape[0]
    teacher = {f"backbone.0.{k}": v for k, v in trunk.items()}
    teacher.update({"backbone.0.classification_heads.0.weight": torch.randn(1, width),
                    "backbone.0.segmentation_heads.0.weight": torch.randn(3, 128, 1, 1),
                    "transformer.encoder.layers.0.linear1.weight": torch.randn(8, 8),
                    "input_proj.0.0.weight": torch.randn(8, width, 1, 1)})
    student = {k: torch.zeros_like(v) for k, v in teacher.items()}
    torch.save({"model": student, "teacher_model": teacher, "epoch": 844}, path)
    return trunk


def cxrfx_checkpoint(model: torch.nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """A foundation_x bundle ``last.pt``-style file: ``{"student", "teacher"}`` cxrfx state dicts (they differ),
    whose heads are the pretraining's (named ``phantom_pretrain``, plus a classification head), not the new one."""
    teacher = {}
    params = {k for k, _ in model.named_parameters()}
    for k, v in model.state_dict().items():
        value = torch.randn(v.shape) * 0.02 if k in params else v.clone()  # buffers (BatchNorm statistics) stay valid
        part = k.split(".")
        if part[0] in ("seg_heads", "det_heads"):
            k = ".".join([part[0], "phantom_pretrain", *part[2:]])
        teacher[k] = value
    width = teacher["backbone.norm.weight"].shape[0]
    teacher.update({"cls_heads.phantom_cls.fc.weight": torch.randn(5, width), "cls_heads.phantom_cls.fc.bias": torch.zeros(5)})
    student = {k: v + 0.01 if k in params else v for k, v in teacher.items()}
    torch.save({"student": student, "teacher": teacher}, path)
    return {k[len("backbone."):]: v for k, v in teacher.items() if k.startswith("backbone.")}


def check_trunk_loaded(network: torch.nn.Module, trunk: dict[str, torch.Tensor], skip_stem: bool = False) -> int:
    """Every trunk tensor of the checkpoint is now in the network (the folded RGB stem aside); returns the count."""
    own = network.state_dict()
    n = 0
    for k, v in trunk.items():
        if skip_stem and k.startswith("patch_embed.proj."):
            continue
        torch.testing.assert_close(own["backbone." + k], v, msg=k)
        n += 1
    return n


def export_round_trip(bundle: Path, root: Path, size: int = 64):
    """``verify_net_in_out``, then ``ckpt_export`` (trace) of the trained ``models/model.pt``; the TorchScript
    output must equal the eager network's. Returns (eager network with the weights, input, TorchScript output)."""
    names = configs(bundle, "inference.json", "demo.json")
    meta = str(bundle / "configs" / "metadata.json")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=names, n=2, device="cpu")
    ts = root / "models" / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(root / "models" / "model.pt"), meta_file=meta,
                config_file=names, use_trace=True, input_shape=[1, 1, size, size])
    loaded = torch.jit.load(str(ts))
    net = tiny_network(bundle, root).eval()
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    x = torch.rand(1, 1, size, size)
    with torch.no_grad():
        out = loaded(x)
        torch.testing.assert_close(out, net(x), atol=1e-5, rtol=1e-4)
    return net, x, out


def check_workflow_properties(bundle: Path, bundle_root: Path, phantom: Path, cases) -> None:
    """``check_properties() == []`` for each (config names, workflow type, overrides) case."""
    for names, kind, extra in cases:
        wf = workflow(bundle, names, kind, bundle_root, dataset_dir=str(phantom), **extra)
        wf.initialize()
        assert wf.check_properties() == [], (names, kind)
