"""``cxrfx convert``: a user's own copy of the published Foundation X or Ark weights -> a bundle's ``models/model.pt``.

The official weights are released by their authors under a non-commercial licence and are never redistributed
with the bundles (docs/model_zoo.md); whoever has a copy turns it into the weights a bundle runs with:

    python -m cxrfx convert --from foundation_x ckpt.pth bundles/cxr_organ_segmentation
    python -m cxrfx convert --from ark ark6_teacher_ep200_swinb.pth.tar OUT.pt --bundle bundles/foundation_x

The bundle's ``network_def`` (its ``configs/inference.json``) is built, the file is loaded into it through
:func:`cxrfx.networks.load_checkpoint` with that ``source`` (key maps, the exact 3 -> 1 channel fold, the per-task
input contracts), and the network's whole state dict is written: what the bundle's ``CheckpointLoader`` reads
(plain, ``source="cxrfx"``), every tensor present, those the file has no counterpart for at their initial values.
The load report says which: tensors of the network the file did not fill (e.g. a fine-tuning bundle's own head)
and tensors of the file the network has no place for (e.g. Foundation X's classification heads in a
segmentation bundle).

Refused, with one line naming the file and the problem: a file that is no PyTorch checkpoint, that holds no
Swin trunk, or whose layout is another source's than ``--from`` says; an existing output (``--overwrite``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from cxrfx.errors import CheckpointError, ConfigError

__all__ = ["SOURCES", "ConvertResult", "convert_checkpoint", "bundle_network"]

#: what ``--from`` accepts: the published checkpoints (our own files need no conversion)
SOURCES = ("foundation_x", "ark")
_LAYOUTS = {"foundation_x": "a Foundation X checkpoint", "ark": "an Ark checkpoint", "cxrfx": "a cxrfx state dict"}


@dataclass
class ConvertResult:
    out: str
    bundle: str
    report: object  # cxrfx.networks.checkpoints.LoadReport
    tensors: int
    #: how the bundle, loading the file, would differ from the converted network (see ``_round_trip``)
    warnings: list[str]


def _bundle_and_out(out: str, bundle: str) -> tuple[Path, Path]:
    """The bundle whose network the weights are for, and the file to write (see ``convert_checkpoint``)."""
    def is_bundle(p: Path) -> bool:
        return (p / "configs" / "inference.json").is_file()

    target = Path(out) if out else None
    if bundle:
        root = Path(bundle)
        if not is_bundle(root):
            raise ConfigError(f"{root}: not a bundle (no configs/inference.json)")
    elif target is not None and is_bundle(target):
        root = target
    elif target is not None and is_bundle(target.parent.parent):  # <bundle>/models/model.pt
        root = target.parent.parent
    else:
        raise ConfigError(f"{out or 'OUT'}: not a bundle folder nor <bundle>/models/<file>: name the bundle with "
                          "--bundle DIR")
    if target is None or is_bundle(target):
        target = root / "models" / "model.pt"
    return root, target


def bundle_network(bundle: str | os.PathLike) -> torch.nn.Module:
    """The bundle's ``network_def`` from its ``configs/inference.json``, built by the installed cxrfx (the one whose
    ``load_checkpoint`` maps the file; a packaged bundle's ``$import scripts`` is skipped, so its vendored copy does
    not replace the running one)."""
    return _parser(bundle).get_parsed_content("network_def")


def _parser(bundle: str | os.PathLike):
    from monai.bundle import ConfigParser

    from cxrfx.packaging.vendor import BOOTSTRAP_IMPORT

    root = Path(bundle)
    config = json.loads((root / "configs" / "inference.json").read_text(encoding="utf-8"))
    config["imports"] = [i for i in config.get("imports", []) if i != BOOTSTRAP_IMPORT]
    parser = ConfigParser(config)
    meta = root / "configs" / "metadata.json"
    if meta.is_file():
        parser.read_meta(str(meta))
    parser["bundle_root"] = str(root)
    return parser


def _settings(network: torch.nn.Module) -> dict[str, dict[str, object]]:
    """Plain Python settings of every submodule (not in a state dict), by attribute: ``{name: {module: value}}``."""
    found: dict[str, dict[str, object]] = {}
    for path, module in network.named_modules():
        for name, value in vars(module).items():
            if not name.startswith("_") and name != "training" and isinstance(value, (str, int, float, bool)):
                found.setdefault(name, {})[path] = value
    return found


def _outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in (out.values() if isinstance(out, Mapping) else out) for t in _outputs(item)]


def _round_trip(network: torch.nn.Module, root: Path, target: Path) -> list[str]:
    """The written file as the bundle will use it: a fresh ``network_def`` loads it (``source="cxrfx"``, what its
    ``CheckpointLoader`` does) and must compute what the converted network computes. ``load_checkpoint`` may also
    adapt settings that no state dict holds (Ark's Swin: ``shift_rule`` 'timm'); where the bundle builds another
    value, the problems name the setting, so the bundle's configs can be set to it."""
    from cxrfx.networks import load_checkpoint

    parser = _parser(root)
    fresh = parser.get_parsed_content("network_def").eval()
    report = load_checkpoint(fresh, target, source="cxrfx")
    problems = []
    if report.missing or report.unexpected:
        problems.append(f"the file does not fit network_def ({len(report.missing)} of its tensors missing, "
                        f"{len(report.unexpected)} unexpected)")
    size = int(parser.get_parsed_content("image_size", default=224))
    channels = int(parser.get("_meta_#network_data_format#inputs#image#num_channels", 1))
    x = torch.rand(1, channels, size, size, generator=torch.Generator().manual_seed(0))
    network.eval()
    with torch.no_grad():
        want, got = _outputs(network(x)), _outputs(fresh(x))
    diff = max((a - b).abs().max().item() for a, b in zip(want, got, strict=True))
    if diff <= 1e-5:
        return problems
    # the outputs differ: name the settings that differ too (labels such as an input contract's name may differ
    # harmlessly, so they are named only here, as candidates)
    ours, theirs = _settings(network), _settings(fresh)
    causes = []
    for name, where in ours.items():
        differ = [m for m, v in where.items() if theirs.get(name, {}).get(m, v) != v]
        if differ:
            more = f" and {len(differ) - 1} more modules" if len(differ) > 1 else ""
            causes.append(f"{name} {where[differ[0]]!r} where the bundle's network_def builds "
                          f"{theirs[name][differ[0]]!r} ({differ[0] or 'the network'}{more})")
    problems.append(f"the bundle's network with this file computes other outputs (max |difference| {diff:.2g})"
                    + (f"; settings outside the state dict differ: {'; '.join(causes)}; set them in the bundle's "
                       "configs (the backbone's: backbone_kwargs)" if causes else ""))
    return problems


def _check_layout(path: str, source: str, allow_pickle: bool) -> None:
    """Refuse a file that is not a checkpoint of ``source``'s layout before anything is built, naming what it is."""
    # the layout rules of load_checkpoint itself (module-private there), so the two never disagree
    from cxrfx.networks.checkpoints import _detect, _unwrap, read_state_dict

    obj = read_state_dict(path, allow_pickle=allow_pickle)  # CheckpointError: missing, unreadable, unsafe
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: not a checkpoint: it holds a {type(obj).__name__}, not a state dict")
    tensors, _ = _unwrap(obj, "auto", None, path)
    if not tensors:
        raise CheckpointError(f"{path}: not a checkpoint: no tensors in it (top-level keys: {list(obj)[:5]})")
    try:
        found = _detect(set(tensors))
    except CheckpointError:
        raise CheckpointError(f"{path}: not a Foundation X or Ark checkpoint: no Swin trunk tensors in it "
                              f"(first keys: {list(tensors)[:3]})") from None
    if found == "cxrfx":
        raise CheckpointError(f"{path}: {_LAYOUTS[found]}, not {_LAYOUTS[source]}: it needs no conversion "
                              "(copy it to the bundle's models/model.pt)")
    if found != source:
        raise CheckpointError(f"{path}: {_LAYOUTS[found]}, not {_LAYOUTS[source]}: use --from {found}")


def convert_checkpoint(checkpoint: str | os.PathLike, source: str, out: str = "", bundle: str = "",
                       overwrite: bool = False, allow_pickle: bool = False) -> ConvertResult:
    """Load ``checkpoint`` (``source``: ``foundation_x`` or ``ark``) into the bundle's network; write its state dict.

    Args:
        out: the file to write, or a bundle folder (then ``<out>/models/model.pt``); default
            ``<bundle>/models/model.pt``. The bundle is ``bundle``, else ``out`` itself or the bundle that
            ``out`` lies in as ``<bundle>/models/<file>``.
        overwrite: replace an existing output (never by default: it may hold trained weights).
        allow_pickle: passed to ``load_checkpoint`` (unpickling runs code from the file: only for files you trust).

    Raises:
        CheckpointError: not a checkpoint, or not ``source``'s layout, or nothing of it fits the network.
        ConfigError: unknown ``source``, no bundle, an existing output.
    """
    from cxrfx.networks import load_checkpoint

    if source not in SOURCES:
        raise ConfigError(f"--from must be one of {', '.join(SOURCES)}, got {source!r}")
    path = os.fspath(checkpoint)
    root, target = _bundle_and_out(os.fspath(out), os.fspath(bundle))
    if target.exists() and not overwrite:
        raise ConfigError(f"{target}: exists (it may hold trained weights); pass --overwrite to replace it")
    _check_layout(path, source, allow_pickle)
    network = bundle_network(root)
    report = load_checkpoint(network, path, source=source, allow_pickle=allow_pickle)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, target)  # never a half-written model.pt where the bundle looks for it
    return ConvertResult(out=str(target), bundle=str(root), report=report, tensors=len(state),
                         warnings=_round_trip(network, root, target))
