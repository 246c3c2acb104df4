"""``load_checkpoint``: Ark, Ark+, Foundation X and cxrfx weights into a :class:`FoundationX`, by explicit key maps.

Sources (REFERENCE §2.2-2.3):

- ``"ark"``: timm 0.5 ``swin_*_patch4_window*`` state dict (plain, or under ``teacher`` / ``state_dict``).
  Trunk keys keep their names (our Swin has the original layout) under ``backbone.``; ``head*``,
  ``projector*``, ``omni_heads*`` (Ark's heads sit on a 1376-d projector, not on our pooled feature),
  ``attn_mask`` and ``relative_position_index`` are dropped.
- ``"foundation_x"``: training checkpoint ``{model, teacher_model, optimizer, epoch}`` (``teacher_model``
  preferred, as the authors' loader does). ``backbone.0.`` is stripped from trunk keys;
  ``backbone.0.classification_heads.{k}`` loads into our classification head named
  ``FX_CLASSIFICATION_HEADS[k]`` when the model has one with that name and class count. The DINO
  localization modules and the segmentation decoder (whose exact key names are not public) are reported
  as unexpected, not loaded.
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
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cxrfx.errors import CheckpointError

__all__ = ["load_checkpoint", "LoadReport", "FX_CLASSIFICATION_HEADS", "NORMALIZATIONS", "read_state_dict"]

# Foundation X's classification_heads index -> dataset (REFERENCE §1.3, code order).
FX_CLASSIFICATION_HEADS = ("tbx11k", "node21", "candid_ptx", "rsna_pneumonia", "chestx_det", "siim_acr",
                           "chexpert", "nih14", "vindr_cxr", "shenzhen", "mimic")
# Input normalisation the source was trained with, per RGB channel, on [0, 1] images.
NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cxr": ((0.5056, 0.5056, 0.5056), (0.252, 0.252, 0.252)),
}
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

    def missing_in(self, prefix: str) -> list[str]:
        return [k for k in self.missing if k.startswith(prefix)]

    def __str__(self) -> str:
        lines = [f"{self.path} ({self.source}): loaded {len(self.loaded)} tensors, missing {len(self.missing)}, "
                 f"unexpected {len(self.unexpected)}, shape-mismatched {len(self.mismatched)}"]
        lines += [f"  adapted: {a}" for a in self.adapted]
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


def _map_keys(sd: dict, source: str, model: torch.nn.Module) -> tuple[dict, list[str]]:
    """Our key -> tensor, and the file keys that have no place in our model."""
    out, unused = {}, []
    if source == "cxrfx":
        return dict(sd), unused
    for k, v in sd.items():
        if k.endswith(_DROP_SUFFIXES):
            continue
        if source == "ark":
            if k.startswith(("head", "projector", "omni_heads")):
                unused.append(k)
            else:
                out["backbone." + k] = v
            continue
        # foundation_x
        if not k.startswith("backbone.0."):
            unused.append(k)
            continue
        rest = k[len("backbone.0."):]
        if rest.startswith(("patch_embed.", "layers.", "norm.")):
            out["backbone." + rest] = v
        elif rest.startswith("classification_heads."):
            index, param = rest.split(".")[1:3]
            name = FX_CLASSIFICATION_HEADS[int(index)] if int(index) < len(FX_CLASSIFICATION_HEADS) else None
            if name is not None and name in getattr(model, "cls_heads", {}):
                out[f"cls_heads.{name}.fc.{param}"] = v
            else:
                unused.append(k)
        else:
            unused.append(k)
    return out, unused


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
                    allow_pickle: bool = False) -> LoadReport:
    """Load a checkpoint into ``model`` (a :class:`FoundationX`) and report what happened.

    Args:
        source: ``"auto" | "ark" | "foundation_x" | "cxrfx"`` (auto: from the key layout).
        key: the entry holding the state dict (default per source: see module docstring).
        adapt: 3-channel first conv -> 1 channel: ``"fold"`` (exact), ``"sum"`` or ``"mean"``.
        normalization: the source's input normalisation for ``fold``: ``"imagenet"`` (Ark default) or
            ``"cxr"`` (Foundation X default).
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
    mapped, unused = _map_keys(sd, detected, model)
    report = LoadReport(path=path, source=detected + (f" [{used_key}]" if used_key else ""), unexpected=unused)
    own = model.state_dict()
    ready = {}
    for k, v in mapped.items():
        if k not in own:
            report.unexpected.append(k)
            continue
        target = own[k]
        if k == "backbone.patch_embed.proj.weight" and v.shape[1] == 3 and target.shape[1] == 1:
            bias_key = "backbone.patch_embed.proj.bias"
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
    backbone = getattr(model, "backbone", None)
    if detected == "ark" and getattr(backbone, "shift_rule", "timm") != "timm":
        backbone.shift_rule = "timm"  # Ark's timm 0.5 Swin does not shift a stage that fits in one window
        report.adapted.append("backbone.shift_rule: 'timm' (no window shift where one window covers the map)")
    report.loaded = sorted(ready)
    report.missing = sorted(k for k in own if k not in ready)
    if strict and report.missing_in("backbone."):
        raise CheckpointError(f"{path}: backbone tensors missing from the checkpoint: {report.missing_in('backbone.')[:10]}")
    return report
