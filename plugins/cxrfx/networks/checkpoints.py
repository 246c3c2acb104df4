"""``load_checkpoint``: Ark, Ark+, Foundation X and cxrfx weights into a :class:`FoundationX`, by explicit key maps.

Sources (REFERENCE §2.2-2.3):

- ``"ark"``: timm 0.5 ``swin_*_patch4_window*`` state dict (plain, or under ``teacher`` / ``state_dict``).
  Trunk keys keep their names (our Swin has the original layout) under ``backbone.``; ``head*``,
  ``projector*``, ``omni_heads*`` (Ark's heads sit on a 1376-d projector, not on our pooled feature),
  ``attn_mask`` and ``relative_position_index`` are dropped.
- ``"foundation_x"``: training checkpoint ``{model, teacher_model, optimizer, epoch}`` (``teacher_model``
  preferred, as the authors' loader does). ``backbone.0.`` is stripped from trunk keys;
  ``backbone.0.classification_heads.{k}`` loads into our classification head named
  ``FX_CLASSIFICATION_HEADS[k]`` when the model has one with that name and class count. The segmentation branch
  (``segmentation_PPN``, ``segmentation_FPN``, ``segmentation_heads.{k}`` -> ``FX_SEGMENTATION_HEADS[k]``) loads
  into a model whose seg head type is ``upernet_fx`` (``heads/upernet_fx.py``; ``_FX_SEG_KEYS``); the reference's
  ``smooth_conv.1`` / ``.2`` are the same tensor as ``smooth_conv.0`` (one conv shared by three levels) and are
  checked and reported as aliases. ``Segnorm0..3`` (built, never used by the reference) and ``head`` (the
  unused single classifier) are reported as deliberately dropped. The localization branch (``Locnorm1..3``,
  ``input_proj``, ``label_enc``, ``transformer.*``, ``bbox_embed*``, ``class_embed*``: DINO) loads into a model whose
  det head type is ``dino`` (``heads/dino/fx_keys.py``: the shared neck / encoder / query embeddings, and decoder
  ``k`` into the det head named ``FX_LOCALIZATION_HEADS[k]``; the reference's duplicate names of one module are
  checked and reported as aliases, its never-read ``class_embed`` as dropped). Foundation X's per-task
  input contract (``FX_INPUT_CONTRACT``: chest X-ray statistics for classification, ImageNet's for localization,
  ImageNet's std with the mean / 255 for segmentation) is applied per task (``input_contract.py``).
- ``"cxrfx"``: our own state dict (plain, or under ``teacher`` / ``student`` / ``model`` / ``state_dict``).

Adaptations: a 3-channel first conv is turned into our 1-channel one (``adapt="fold"``, exact: the source's
per-channel normalisation and our ``input_mean`` / ``input_std`` are folded into weight and bias, so a
[0, 1] gray image gives the same features as the source model on its normalised 3-channel copy;
``"sum"`` / ``"mean"`` ignore the normalisation); relative-position bias tables are interpolated
(bicubic) for another window size. Files are read with ``torch.load(weights_only=True)``: nothing is
unpickled beyond tensors and plain containers unless ``allow_pickle=True`` is passed explicitly.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cxrfx.errors import CheckpointError
from cxrfx.networks.heads.dino.fx_keys import FX_LOCALIZATION_HEADS, map_fx_localization
from cxrfx.networks.input_contract import TaskInput, create_task_inputs_from_state_dict

__all__ = ["load_checkpoint", "LoadReport", "FX_CLASSIFICATION_HEADS", "FX_SEGMENTATION_HEADS", "FX_HEAD_CLASSES",
           "FX_LOCALIZATION_HEADS", "FX_LOCALIZATION_OPTIONS",
           "FX_INPUT_CONTRACT", "NORMALIZATIONS", "read_state_dict", "foundation_x_layout"]

# The Swin window rule of each source's own forward (SwinTransformer.shift_rule); cxrfx files keep the model's.
_SHIFT_RULE = {"ark": "timm", "foundation_x": "always"}
_SHIFT_RULE_WHY = {"timm": "timm 0.5, as Ark: no window shift, window shrunk, where the map's shorter side fits in "
                           "one window",
                   "always": "the detection Swin of Foundation X: every other block shifts, small maps padded"}

# Foundation X's classification_heads index -> dataset (REFERENCE §1.3, code order).
FX_CLASSIFICATION_HEADS = ("tbx11k", "node21", "candid_ptx", "rsna_pneumonia", "chestx_det", "siim_acr",
                           "chexpert", "nih14", "vindr_cxr", "shenzhen", "mimic_cxr_jpg")
# Foundation X's segmentation_heads index -> dataset; the reference trains 2, 4 and 5 (CANDID-PTX, ChestX-Det with
# 13 channels, SIIM-ACR); 0, 1 and 3 exist (1 channel each) and are never trained.
FX_SEGMENTATION_HEADS = ("tbx11k", "node21", "candid_ptx", "rsna_pneumonia", "chestx_det", "siim_acr")
FX_TRAINED_SEGMENTATION_HEADS = ("candid_ptx", "chestx_det", "siim_acr")
FX_HEAD_CLASSES = {
    "cls": {"tbx11k": 1, "node21": 1, "candid_ptx": 1, "rsna_pneumonia": 3, "chestx_det": 13, "siim_acr": 1,
            "chexpert": 14, "nih14": 14, "vindr_cxr": 6, "shenzhen": 1, "mimic_cxr_jpg": 14},
    "seg": {"tbx11k": 1, "node21": 1, "candid_ptx": 1, "rsna_pneumonia": 1, "chestx_det": 13, "siim_acr": 1},
}
# the reference's DINO layout (REFERENCE §1.2): 14 logits in every decoder, 15 + 1 denoising label embeddings
FX_LOCALIZATION_OPTIONS = {"num_logits": 14, "labelbook": 15}
# Input normalisation the source was trained with, per RGB channel, on [0, 1] images.
NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cxr": ((0.5056, 0.5056, 0.5056), (0.252, 0.252, 0.252)),
    # Foundation X's segmentation pipeline: albumentations Normalize(ImageNet, max_pixel_value=1) on 0-255 pixels,
    # then / 255, i.e. on [0, 1] images the ImageNet std with the ImageNet mean / 255 (REFERENCE §1.9)
    "imagenet_fx_seg": ((0.485 / 255, 0.456 / 255, 0.406 / 255), (0.229, 0.224, 0.225)),
}
# Foundation X's input contract per task (its data pipelines; one shared trunk)
FX_INPUT_CONTRACT = {"cls": "cxr", "det": "imagenet", "seg": "imagenet_fx_seg"}
# reference segmentation-branch key (after backbone.0.) -> ours, for a model whose seg head type is upernet_fx
_FX_SEG_KEYS = ((r"segmentation_PPN\.stages\.(\d+)\.(.+)", r"seg_decoder.psp_branches.\1.\2"),
                (r"segmentation_PPN\.bottleneck\.(.+)", r"seg_decoder.psp_bottleneck.\1"),
                (r"segmentation_FPN\.conv1x1\.(.+)", r"seg_decoder.lateral.\1"),
                (r"segmentation_FPN\.conv_fusion\.(.+)", r"seg_decoder.fuse.\1"))
_FX_DROPPED = {"Segnorm": "Segnorm0..3: built by the reference, never used in its forward",
               "head.": "head: the reference's unused single classifier (per-dataset heads are classification_heads)"}
_DEFAULT_NORMALIZATION = {"ark": "imagenet", "foundation_x": "cxr"}
_NESTED = {"ark": ("teacher", "state_dict", "model"), "foundation_x": ("teacher_model", "teacher", "model"),
           "cxrfx": ("teacher", "model", "state_dict", "student", "network")}
_DROP_SUFFIXES = ("attn_mask", "relative_position_index")


@dataclass
class LoadReport:
    """What a load did: keys loaded / missing (in the model, not loaded) / unexpected (in the file, unused) /
    shape-mismatched, and the adaptations applied."""

    path: str
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    #: file keys deliberately not loaded, with the reason (never used by the source model)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    #: file keys that are the same tensor as a loaded key (the reference's shared smoothing conv)
    aliases: list[str] = field(default_factory=list)
    #: what maps where, one line per group of keys
    mapping: list[str] = field(default_factory=list)

    def missing_in(self, prefix: str) -> list[str]:
        return [k for k in self.missing if k.startswith(prefix)]

    def mismatched_in(self, prefix: str) -> list[str]:
        return [k for k, _, _ in self.mismatched if k.startswith(prefix)]

    def __str__(self) -> str:
        lines = [f"{self.path} ({self.source}): loaded {len(self.loaded)} tensors, missing {len(self.missing)}, "
                 f"unexpected {len(self.unexpected)}, shape-mismatched {len(self.mismatched)}"]
        if self.dropped or self.aliases:
            lines[0] += f", dropped {len(self.dropped)}, aliases {len(self.aliases)}"
        lines += [f"  maps: {m}" for m in self.mapping]
        lines += [f"  adapted: {a}" for a in self.adapted]
        lines += [f"  dropped: {reason} ({sum(r == reason for _, r in self.dropped)} tensors)"
                  for reason in dict.fromkeys(r for _, r in self.dropped)]
        lines += [f"  mismatched: {k} file {a} vs model {b}" for k, a, b in self.mismatched[:20]]
        if self.missing:
            lines.append(f"  missing (first 10): {self.missing[:10]}")
        if self.unexpected:
            lines.append(f"  unexpected (first 10): {self.unexpected[:10]}")
        return "\n".join(lines)


def read_state_dict(path: str | os.PathLike, allow_pickle: bool = False) -> dict:
    """The object stored in a checkpoint file, read without unpickling arbitrary objects."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: file not found")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(f"{path}: reading .safetensors needs the 'safetensors' package") from None
        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as exc:
        if not allow_pickle and "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path}: refused: this file holds pickled Python objects besides tensors, and unpickling runs "
                "code from the file. If you trust its origin, pass allow_pickle=True (load_checkpoint) explicitly."
            ) from None
        detail = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0] if str(exc) else ""
        if not allow_pickle and "unpickl" in type(exc).__name__.lower():
            raise CheckpointError(
                f"{path}: refused: not a readable PyTorch checkpoint of tensors only ({detail[:120]}); if it is a plain "
                "pickle, unpickling would run code from the file. If you trust its origin, pass allow_pickle=True."
            ) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {detail[:200]})") from None


def _unwrap(obj: Mapping, source: str, key: str | None, path: str) -> tuple[dict, str]:
    if key is not None:
        if key not in obj:
            raise CheckpointError(f"{path}: no key {key!r} in the checkpoint; top-level keys: {list(obj)[:10]}")
        obj = obj[key]
    else:
        for k in _NESTED.get(source, ()) if source != "auto" else ("teacher_model", "teacher", "model",
                                                                    "state_dict", "student", "network"):
            if isinstance(obj.get(k), Mapping) and any(torch.is_tensor(v) for v in obj[k].values()):
                obj, key = obj[k], k
                break
    tensors = {k[7:] if k.startswith("module.") else k: v for k, v in obj.items() if torch.is_tensor(v)}
    return tensors, key or ""


def _detect(keys: set[str]) -> str:
    if any(k.startswith("backbone.0.") for k in keys):
        return "foundation_x"
    if any(k.startswith("backbone.layers.") for k in keys):
        return "cxrfx"
    if "layers.0.blocks.0.attn.qkv.weight" in keys or "patch_embed.proj.weight" in keys:
        return "ark"
    raise CheckpointError("cannot tell the checkpoint's layout (no Swin trunk keys found); pass source=")


def foundation_x_layout(seg_heads: str = "trained", localization: bool = False) -> dict:
    """``FoundationX`` keyword arguments for the published Foundation X heads: its 11 classification heads and its
    segmentation branch (``upernet_fx``) with the three trained heads (``seg_heads="trained"``) or all six
    (``"all"``, the reference's layout, so that a whole checkpoint maps); with ``localization`` also its DINO branch
    (``dino``, one decoder per localization dataset, the reference's 14 logits each: ``FX_LOCALIZATION_OPTIONS``).
    Pass them on with a backbone size: ``FoundationX("base", **foundation_x_layout("all", localization=True))``."""
    names = FX_TRAINED_SEGMENTATION_HEADS if seg_heads == "trained" else FX_SEGMENTATION_HEADS
    if seg_heads not in ("trained", "all"):
        raise ValueError(f"seg_heads must be 'trained' or 'all', got {seg_heads!r}")
    layout = {"cls_heads": dict(FX_HEAD_CLASSES["cls"]), "seg_heads": {n: FX_HEAD_CLASSES["seg"][n] for n in names},
              "head_types": {"seg": "upernet_fx"}}
    if localization:
        layout["det_heads"] = {n: FX_LOCALIZATION_OPTIONS["num_logits"] for n in FX_LOCALIZATION_HEADS}
        layout["head_types"]["det"] = "dino"
        layout["head_options"] = {"det": dict(FX_LOCALIZATION_OPTIONS)}
    return layout


def _map_keys(sd: dict, source: str, model: torch.nn.Module, report: LoadReport) -> dict:
    """Our key -> tensor; file keys without a place in our model go to ``report`` (unexpected / dropped / aliases)."""
    if source == "cxrfx":
        return dict(sd)
    out: dict = {}
    for k, v in sd.items():
        if k.endswith(_DROP_SUFFIXES):
            continue
        if source == "ark":
            if k.startswith(("head", "projector", "omni_heads")):
                report.unexpected.append(k)
            else:
                out["backbone." + k] = v
    if source == "ark":
        return out
    return _map_foundation_x(sd, model, report)


def _map_foundation_x(sd: dict, model: torch.nn.Module, report: LoadReport) -> dict:
    out, groups, local = {}, Counter(), []
    seg_type = getattr(model, "head_types", {}).get("seg")
    decoder = getattr(model, "seg_decoder", None)
    fx_seg = seg_type == "upernet_fx" and decoder is not None
    shared_smooth = fx_seg and isinstance(decoder.smooth, torch.nn.Conv2d)
    cls_names, seg_names = getattr(model, "cls_heads", {}), getattr(model, "seg_heads", {})
    heads = {"cls": {}, "seg": {}}
    for k, v in sd.items():
        if k.endswith(_DROP_SUFFIXES):
            continue
        rest = k[len("backbone.0."):] if k.startswith("backbone.0.") else None
        if rest is None or rest.startswith("Locnorm"):
            local.append(k)
        elif rest.startswith(("patch_embed.", "layers.", "norm.")):
            out["backbone." + rest] = v
            groups["trunk"] += 1
        elif rest.startswith(("classification_heads.", "segmentation_heads.")):
            kind, index, param = rest.split(".")[:3]
            task = "cls" if kind.startswith("class") else "seg"
            names = FX_CLASSIFICATION_HEADS if task == "cls" else FX_SEGMENTATION_HEADS
            name = names[int(index)] if int(index) < len(names) else None
            if name is not None and name in (cls_names if task == "cls" else seg_names) and (task == "cls" or fx_seg):
                out[f"{task}_heads.{name}.{'fc' if task == 'cls' else 'conv'}.{param}"] = v
                heads[task][int(index)] = name
            else:
                report.unexpected.append(k)
        elif any(rest.startswith(p) for p in _FX_DROPPED):
            report.dropped.append((k, next(r for p, r in _FX_DROPPED.items() if rest.startswith(p))))
        elif rest.startswith("segmentation_") and not fx_seg:
            report.unexpected.append(k)
            groups["seg_unplaced"] += 1
        elif rest.startswith("segmentation_FPN.smooth_conv."):
            index, param = rest.split(".")[2:4]
            if not shared_smooth:
                out[f"seg_decoder.smooth.{index}.{param}"] = v
            elif index == "0":
                out[f"seg_decoder.smooth.{param}"] = v
            elif torch.equal(v, sd.get(f"backbone.0.segmentation_FPN.smooth_conv.0.{param}", v.new_empty(0))):
                report.aliases.append(k)
            else:
                report.unexpected.append(k)
                report.mapping.append(f"{k} differs from smooth_conv.0: not loaded (this model shares one smoothing "
                                      "conv; build the upernet_fx head with shared_smoothing=False)")
            groups["fpn"] += 1
        else:
            for pattern, target in _FX_SEG_KEYS:
                if re.fullmatch(pattern, rest):
                    out[re.sub(pattern, target, rest)] = v
                    groups["psp" if "PPN" in rest else "fpn"] += 1
                    break
            else:
                report.unexpected.append(k)
    report.mapping.append(f"trunk: {groups['trunk']} tensors backbone.0.{{patch_embed,layers,norm}}.* -> backbone.*")
    for task, placed in heads.items():
        if placed:
            kind = "classification_heads" if task == "cls" else "segmentation_heads"
            report.mapping.append(f"{kind}: " + ", ".join(f"{i} -> {task}_heads.{n}" for i, n in sorted(placed.items())))
    if fx_seg:
        report.mapping.append(f"segmentation_PPN: {groups['psp']} tensors -> seg_decoder.psp_branches / psp_bottleneck; "
                              f"segmentation_FPN: {groups['fpn']} tensors -> seg_decoder.lateral / smooth / fuse"
                              + (" (smooth_conv.1, .2: aliases of smooth_conv.0, one conv shared by three levels)"
                                 if shared_smooth else ""))
    elif groups["seg_unplaced"]:
        report.mapping.append(f"segmentation branch ({groups['seg_unplaced']} tensors) not loaded: the model's seg head "
                              f"type is {seg_type!r}; build it with head_types={{'seg': 'upernet_fx'}} "
                              "(foundation_x_layout())")
    if local:
        out.update(_map_fx_localization({k: sd[k] for k in local}, model, report))
    return out


def _map_fx_localization(sd: dict, model: torch.nn.Module, report: LoadReport) -> dict:
    """The DINO branch's tensors into a model whose det head type is ``dino`` (``heads/dino/fx_keys.py``)."""
    heads = getattr(model, "det_heads", {})
    if getattr(model, "head_types", {}).get("det") != "dino" or not len(heads):
        report.unexpected += list(sd)
        report.mapping.append(f"localization: {len(sd)} tensors of the DINO branch (Locnorm*, input_proj, "
                              "transformer.*, ...) not loaded: the model has no dino det heads; build it with "
                              "head_types={'det': 'dino'} (foundation_x_layout(localization=True))")
        return {}
    found = map_fx_localization(sd, heads)
    report.aliases += found["aliases"]
    report.dropped += found["dropped"]
    report.unexpected += found["unexpected"]
    report.mapping += found["notes"]
    shared = sum(not k.startswith("det_heads.") for k in found["tensors"])
    decoders = ", ".join(f"{i} -> det_heads.{n}" for i, n in sorted(found["decoders"].items()))
    report.mapping.append(f"localization: {shared} shared tensors -> det_neck (Locnorm1..3, input_proj) / "
                          f"det_encoder / det_queries; decoders {decoders} ({len(found['tensors']) - shared} "
                          f"tensors); {len(found['aliases'])} aliases")
    return found["tensors"]


def _install_task_contracts(model, weight, bias, default: str, contracts: Mapping[str, str], report: LoadReport):
    """Per-task corrections of the folded patch-embedding conv (``input_contract.py``) for every task of the model
    whose contract differs from the one folded into ``patch_embed.proj``."""
    inputs = getattr(model, "task_inputs", None)
    if inputs is None:
        return []
    base_w, base_b, _ = _fold_first_conv(weight, bias, model, "fold", default)
    keys = []
    for task, contract in contracts.items():
        if contract == default or not len(getattr(model, f"{task}_heads", ())):
            continue
        w, b, _ = _fold_first_conv(weight, bias, model, "fold", contract)
        own = model.backbone.patch_embed.proj
        inputs[task] = TaskInput((w - base_w).to(own.weight.dtype), (b - base_b).to(own.bias.dtype), contract).to(
            own.weight.device)
        keys += [f"task_inputs.{task}.weight", f"task_inputs.{task}.bias"]
        report.adapted.append(f"task_inputs.{task}: the {task} input contract ({contract} normalisation) folded "
                              "per task (the shared patch_embed.proj carries " + default + ")")
    return keys


def _fold_first_conv(weight: torch.Tensor, bias: torch.Tensor | None, model, mode: str, normalization: str | None):
    """3-channel patch-embedding conv -> 1 channel (see module docstring); returns (weight, bias, note)."""
    if mode in ("sum", "mean"):
        w = weight.sum(1, keepdim=True) if mode == "sum" else weight.mean(1, keepdim=True)
        return w, bias, f"patch_embed.proj: 3 -> 1 input channel ({mode} of the RGB weights)"
    if normalization not in NORMALIZATIONS:
        raise CheckpointError(f"unknown input normalization {normalization!r}; choose from {sorted(NORMALIZATIONS)}")
    mean, std = (torch.tensor(v, dtype=weight.dtype).view(1, 3, 1, 1) for v in NORMALIZATIONS[normalization])
    mu, sigma = float(model.input_mean), float(model.input_std)
    # source: conv(sum_c w_c (x - m_c) / s_c) + b, with x = sigma * x' + mu for our standardised input x'
    w_over_s = weight / std
    new_w = sigma * w_over_s.sum(1, keepdim=True)
    shift = (w_over_s * (mu - mean)).sum(dim=(1, 2, 3))
    new_b = (bias if bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype)) + shift
    return new_w, new_b, f"patch_embed.proj: 3 -> 1 input channel, {normalization} normalisation folded in"


def _resize_bias_table(table: torch.Tensor, target: int) -> torch.Tensor:
    side, heads = int(round(table.shape[0] ** 0.5)), table.shape[1]
    new_side = int(round(target**0.5))
    grid = table.T.reshape(1, heads, side, side)
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return grid.reshape(heads, -1).T.contiguous()


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike, source: str = "auto", key: str | None = None,
                    adapt: str = "fold", normalization: str | None = None, strict: bool = False,
                    allow_pickle: bool = False, task_normalization: Mapping[str, str] | None = None) -> LoadReport:
    """Load a checkpoint into ``model`` (a :class:`FoundationX`) and report what happened.

    Args:
        source: ``"auto" | "ark" | "foundation_x" | "cxrfx"`` (auto: from the key layout).
        key: the entry holding the state dict (default per source: see module docstring).
        adapt: 3-channel first conv -> 1 channel: ``"fold"`` (exact), ``"sum"`` or ``"mean"``.
        normalization: the source's input normalisation for ``fold``: ``"imagenet"`` (Ark default) or
            ``"cxr"`` (Foundation X default).
        task_normalization: per-task contracts that differ from ``normalization``, applied per task
            (``input_contract.py``, ``adapt="fold"`` only); default for Foundation X: ``FX_INPUT_CONTRACT``
            (localization ImageNet, segmentation ImageNet std with mean / 255); ``{}``: one contract for every task.
        strict: raise unless every backbone tensor of the model was loaded.
        allow_pickle: allow full unpickling (runs code from the file: only for files you trust).

    Raises:
        CheckpointError: unreadable or unsafe file, unknown layout, or a load that would leave the model
            untouched (no tensor matched).
    """
    path = os.fspath(path)
    obj = read_state_dict(path, allow_pickle=allow_pickle)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (a mapping), found {type(obj).__name__}")
    sd, used_key = _unwrap(obj, source, key, path)
    if not sd:
        raise CheckpointError(f"{path}: no tensors found (top-level keys: {list(obj)[:10]})")
    try:
        detected = _detect(set(sd)) if source == "auto" else source
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if detected not in ("ark", "foundation_x", "cxrfx"):
        raise CheckpointError(f"{path}: unknown source {source!r}; use auto, ark, foundation_x or cxrfx")
    report = LoadReport(path=path, source=detected + (f" [{used_key}]" if used_key else ""))
    mapped = _map_keys(sd, detected, model, report)
    inputs = getattr(model, "task_inputs", None)
    if inputs is not None:  # per-task contracts belong to the weights they correct: the file's, or none
        for task in [t for t in inputs if f"task_inputs.{t}.weight" not in mapped]:
            del inputs[task]
        create_task_inputs_from_state_dict(model, mapped, "")
    own = model.state_dict()
    folded = None
    ready = {}
    for k, v in list(mapped.items()):  # a copy: the folded bias is written back into mapped
        if k not in own:
            report.unexpected.append(k)
            continue
        target = own[k]
        if k == "backbone.patch_embed.proj.weight" and v.shape[1] == 3 and target.shape[1] == 1:
            bias_key = "backbone.patch_embed.proj.bias"
            folded = (v, mapped.get(bias_key))
            v, new_b, note = _fold_first_conv(v, mapped.get(bias_key), model, adapt,
                                              normalization or _DEFAULT_NORMALIZATION.get(detected, "imagenet"))
            if new_b is not None:
                ready[bias_key] = new_b.to(own[bias_key].dtype)
                mapped[bias_key] = new_b
            report.adapted.append(note)
        elif k.endswith("relative_position_bias_table") and v.shape != target.shape and v.shape[1] == target.shape[1]:
            v = _resize_bias_table(v, target.shape[0])
            report.adapted.append(f"{k}: bias table {tuple(mapped[k].shape)} -> {tuple(v.shape)} (bicubic)")
        if tuple(v.shape) != tuple(target.shape):
            report.mismatched.append((k, tuple(v.shape), tuple(target.shape)))
            continue
        if k not in ready:
            ready[k] = v.to(target.dtype)
    for k in [k for k, v in ready.items() if tuple(v.shape) != tuple(own[k].shape)]:  # e.g. a folded bias
        report.mismatched.append((k, tuple(ready.pop(k).shape), tuple(own[k].shape)))
    n_ok = sum(k.startswith("backbone.") for k in ready)
    n_bad = sum(k.startswith("backbone.") for k, _, _ in report.mismatched)
    if n_bad > n_ok:
        k, a, b = next(m for m in report.mismatched if m[0].startswith("backbone."))
        raise CheckpointError(f"{path}: the backbone architecture differs: {n_bad} backbone tensors have other shapes "
                              f"(e.g. {k}: file {a} vs model {b}), {n_ok} fit; choose the matching backbone size")
    if not ready:
        raise CheckpointError(f"{path}: no tensor of this {detected} checkpoint fits the model: refusing an empty load "
                              f"({len(report.unexpected)} unexpected, {len(report.mismatched)} mismatched keys)")
    model.load_state_dict(ready, strict=False)
    contract_keys = []
    if folded is not None and adapt == "fold" and not report.mismatched_in("backbone.patch_embed"):
        default = normalization or _DEFAULT_NORMALIZATION.get(detected, "imagenet")
        contracts = task_normalization if task_normalization is not None else (
            FX_INPUT_CONTRACT if detected == "foundation_x" else {})
        contract_keys = _install_task_contracts(model, *folded, default, contracts, report)
    # the window rule is no tensor: set it for the source's own forward. Ark trained timm 0.5's classification Swin
    # (no shift, window shrunk, where a map fits in one window: stage 4 at 224 px); Foundation X's trunk is the
    # DINO detection Swin (swin_transformer_CyclicSegmentation.py: every odd block shifts, small maps are padded),
    # although its weights started from Ark's
    backbone = getattr(model, "backbone", None)
    rule = _SHIFT_RULE.get(detected)
    if rule is not None and getattr(backbone, "shift_rule", rule) != rule:
        backbone.shift_rule = rule
        report.adapted.append(f"backbone.shift_rule: {rule!r} ({_SHIFT_RULE_WHY[rule]})")
    report.loaded = sorted([*ready, *contract_keys])
    # the model's own standardisation constants are not weights: a 3-channel source's fold accounts for them
    own_constants = ("input_mean", "input_std") if folded is not None and adapt == "fold" else ()
    report.missing = sorted(k for k in own if k not in ready and k not in own_constants)
    if strict and report.missing_in("backbone."):
        raise CheckpointError(f"{path}: backbone tensors missing from the checkpoint: {report.missing_in('backbone.')[:10]}")
    return report
