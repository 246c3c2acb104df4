"""Optimiser parameter groups: backbone vs heads, weight decay vs none, every trainable parameter exactly once."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from cxrfx.errors import ConfigError

__all__ = ["param_groups", "check_param_groups", "build_optimizer"]


def _no_decay(name: str, p: nn.Parameter) -> bool:
    # norms, biases and relative-position tables are not decayed (Swin practice)
    return p.ndim <= 1 or name.endswith(".bias") or "relative_position_bias_table" in name


def param_groups(network: nn.Module, backbone_lr: float = 1e-5, head_lr: float = 1e-4,
                 weight_decay: float = 1e-4) -> list[dict]:
    """AdamW groups: backbone / heads (every non-backbone module: decoders, necks, heads) x decay / no decay.

    Foundation X uses 1e-5 for the backbone and 1e-4 for heads and decoders (REFERENCE §1.8); unlike the
    reference code, its classification heads are heads here, and no parameter is left out.
    """
    network = network.module if hasattr(network, "module") else network
    groups = {(b, d): [] for b in ("backbone", "heads") for d in (True, False)}
    for name, p in network.named_parameters():
        groups[("backbone" if name.startswith("backbone.") else "heads", not _no_decay(name, p))].append(p)
    out = []
    for (part, decay), params in groups.items():
        if params:
            out.append({"params": params, "lr": backbone_lr if part == "backbone" else head_lr,
                        "weight_decay": weight_decay if decay else 0.0, "name": f"{part}{'' if decay else '_no_decay'}"})
    return out


def check_param_groups(optimizer: torch.optim.Optimizer, network: nn.Module) -> None:
    """Raise unless every parameter of ``network`` is in exactly one optimiser group."""
    network = network.module if hasattr(network, "module") else network
    seen: dict[int, int] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            seen[id(p)] = seen.get(id(p), 0) + 1
    names = {id(p): n for n, p in network.named_parameters()}
    missing = [n for i, n in names.items() if i not in seen]
    twice = [names.get(i, "?") for i, c in seen.items() if c > 1]
    if missing or twice:
        raise ConfigError(f"optimizer groups: {len(missing)} parameters missing (e.g. {missing[:3]}), "
                          f"{len(twice)} in several groups (e.g. {twice[:3]})")


def build_optimizer(network: nn.Module, backbone_lr: float = 1e-5, head_lr: float = 1e-4, weight_decay: float = 1e-4,
                    betas: Iterable[float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, checked with :func:`check_param_groups`."""
    optimizer = torch.optim.AdamW(param_groups(network, backbone_lr, head_lr, weight_decay), betas=tuple(betas))
    check_param_groups(optimizer, network)
    return optimizer
