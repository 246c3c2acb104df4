"""Optimiser parameter groups: backbone vs heads, weight decay vs none, every trainable parameter exactly once."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping

import torch
from torch import nn

from cxrfx.engines.compat import Compat, reference_unoptimized_parameters
from cxrfx.errors import ConfigError

__all__ = ["param_groups", "check_param_groups", "build_optimizer"]


def _no_decay(name: str, p: nn.Parameter) -> bool:
    # norms, biases and relative-position tables are not decayed (Swin practice)
    return p.ndim <= 1 or name.endswith(".bias") or "relative_position_bias_table" in name


def param_groups(network: nn.Module, backbone_lr: float = 1e-5, head_lr: float = 1e-4,
                 weight_decay: float = 1e-4, left_out: Collection[str] = ()) -> list[dict]:
    """AdamW groups: backbone / heads (every non-backbone module: decoders, necks, heads) x decay / no decay.

    Foundation X uses 1e-5 for the backbone and 1e-4 for heads and decoders (REFERENCE §1.8); unlike the
    reference code, its classification heads are heads here, and no parameter is left out unless named in
    ``left_out`` (the reference's defect, :class:`~cxrfx.engines.compat.Compat`).
    """
    network = network.module if hasattr(network, "module") else network
    groups = {(b, d): [] for b in ("backbone", "heads") for d in (True, False)}
    left_out = set(left_out)
    for name, p in network.named_parameters():
        if name in left_out:
            continue
        groups[("backbone" if name.startswith("backbone.") else "heads", not _no_decay(name, p))].append(p)
    out = []
    for (part, decay), params in groups.items():
        if params:
            out.append({"params": params, "lr": backbone_lr if part == "backbone" else head_lr,
                        "weight_decay": weight_decay if decay else 0.0, "name": f"{part}{'' if decay else '_no_decay'}"})
    return out


def check_param_groups(optimizer: torch.optim.Optimizer, network: nn.Module,
                       left_out: Collection[str] = ()) -> None:
    """Raise unless every parameter of ``network`` is in exactly one optimiser group, except exactly those named in
    ``left_out``, which must be in none."""
    network = network.module if hasattr(network, "module") else network
    seen: dict[int, int] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            seen[id(p)] = seen.get(id(p), 0) + 1
    names = {id(p): n for n, p in network.named_parameters()}
    left_out = set(left_out)
    missing = [n for i, n in names.items() if i not in seen and n not in left_out]
    twice = [names.get(i, "?") for i, c in seen.items() if c > 1]
    included = [n for i, n in names.items() if i in seen and n in left_out]
    if missing or twice or included:
        raise ConfigError(f"optimizer groups: {len(missing)} parameters missing (e.g. {missing[:3]}), "
                          f"{len(twice)} in several groups (e.g. {twice[:3]}), "
                          f"{len(included)} included that should be left out (e.g. {included[:3]})")


def build_optimizer(network: nn.Module, backbone_lr: float = 1e-5, head_lr: float = 1e-4, weight_decay: float = 1e-4,
                    betas: Iterable[float] = (0.9, 0.999), compat: Compat | Mapping | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, checked with :func:`check_param_groups`.

    ``compat``: with ``optimizer_skips_localization`` the ``dino`` parameters the reference never optimises
    (REFERENCE §1.10 item 1, :func:`~cxrfx.engines.compat.reference_unoptimized_parameters`) are in no group.
    """
    left_out: list[str] = []
    if Compat.of(compat).optimizer_skips_localization:
        net = network.module if hasattr(network, "module") else network
        left_out = reference_unoptimized_parameters(net)
        n = sum(p.numel() for name, p in net.named_parameters() if name in set(left_out))
        logging.getLogger("cxrfx.optim").warning(
            f"compat optimizer_skips_localization: {len(left_out)} localization tensors ({n / 1e6:.3f} M parameters) "
            "left out of the optimizer, as the reference code does" if left_out else
            "compat optimizer_skips_localization: the model has no dino localization branch; nothing left out")
    optimizer = torch.optim.AdamW(param_groups(network, backbone_lr, head_lr, weight_decay, left_out),
                                  betas=tuple(betas))
    check_param_groups(optimizer, network, left_out)
    return optimizer
