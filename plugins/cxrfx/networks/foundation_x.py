"""The Foundation X network: one Swin backbone, per-dataset classification / segmentation / detection heads.

``FoundationX(x, task="seg", head="jsrt")`` runs the backbone and only the parts that task needs (the
task's shared decoder or neck and one head); ``forward_all`` computes every head from one backbone pass. What a
task's heads are is a *head type* from ``cxrfx.networks.heads`` (``head_types``; default UperNet for masks,
RetinaNet for boxes), and :class:`HeadPredictor` turns any head's output into its task's prediction form. The model's
input contract is the project's: (B, 1, H, W) in [0, 1] (see ``cxrfx.io.transforms``), H and W multiples of
32; it standardises internally with ``input_mean`` / ``input_std`` (checkpoints trained on 3-channel
normalised input are folded into the first conv on load, see ``checkpoints.py``).

:class:`TaskNet` wraps one (task, head) as ``image -> pred`` for MONAI bundles (``verify_net_in_out``,
``ckpt_export``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from cxrfx.networks.heads import DEFAULT_HEAD_TYPES, TASKS, get_head_type
from cxrfx.networks.input_contract import create_task_inputs_from_state_dict
from cxrfx.networks.swin import swin

__all__ = ["FoundationX", "TaskNet", "HeadPredictor", "TASKS", "parameter_counts", "scriptable"]

# constructor arguments that configure the default head types (kept: configs and checkpoints' configs use them)
_LEGACY_OPTIONS = {"upernet": {"seg_channels": "channels", "psp_channels": "psp_channels",
                               "shared_fpn_smoothing": "shared_smoothing"},
                   "retinanet": {"det_channels": "channels", "det_strides": "strides", "det_anchors": "shapes",
                                 "num_anchors": "num_anchors"}}


class FoundationX(nn.Module):
    """Swin backbone + heads per dataset.

    Args:
        backbone: Swin size: ``"tiny" | "small" | "base" | "large"``.
        cls_heads, seg_heads, det_heads: ``{dataset name: number of classes}`` for each task.
        in_chans: input channels (1: our grayscale contract).
        dropout: dropout before every head (MC-dropout for MONAI Label's epistemic scoring).
        input_mean, input_std: standardisation applied to the [0, 1] input (chest X-ray statistics of
            Foundation X's classification contract by default).
        head_types: head type per task (registered names, ``cxrfx.networks.heads``); default ``linear`` /
            ``upernet`` / ``retinanet``.
        head_options: options per task for its head type (the type's ``defaults`` keys), e.g.
            ``{"seg": {"channels": 64}}``; they override the arguments below.
        seg_channels, psp_channels, shared_fpn_smoothing: ``upernet`` decoder widths (Foundation X: 128, 1024) and
            the reference code's single shared FPN smoothing conv.
        det_channels, det_strides, det_anchors, num_anchors: ``retinanet`` neck width (256), pyramid levels ((8, 16,
            32, 64) RetinaNet's P3-P6; (4, 8, 16, 32) with the stride-4 level small lesions need), anchor (height,
            width) per anchor per level (e.g. from ``cxrfx.data.propose_anchors``; kept in ``det_anchors.shapes``
            and the checkpoints), anchors per location when ``det_anchors`` is None.
        detector_settings: matching / sampling / post-processing settings every ``build_detector`` of this model
            uses (keys of ``cxrfx.networks.heads.detection.DETECTOR_DEFAULTS``).
        backbone_kwargs: overrides for :class:`SwinTransformer` (window_size, drop_path_rate, stem,
            use_checkpoint, embed_dim, depths, num_heads, ...).
        default_task, default_head: what ``forward(x)`` computes without a task (a bundle's ``pred``).
    """

    def __init__(self, backbone: str = "base", cls_heads: Mapping[str, int] | None = None,
                 seg_heads: Mapping[str, int] | None = None, det_heads: Mapping[str, int] | None = None,
                 in_chans: int = 1, dropout: float = 0.0, input_mean: float = 0.5056, input_std: float = 0.252,
                 num_anchors: int = 6, backbone_kwargs: Mapping | None = None, seg_channels: int = 128,
                 psp_channels: int = 1024, det_channels: int = 256, shared_fpn_smoothing: bool = False,
                 default_task: str = "cls", default_head: str | None = None,
                 det_strides: Sequence[int] = (8, 16, 32, 64), det_anchors: Sequence | None = None,
                 detector_settings: Mapping | None = None, head_types: Mapping[str, str] | None = None,
                 head_options: Mapping[str, Mapping] | None = None):
        super().__init__()
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.backbone = swin(backbone, in_chans=in_chans, **dict(backbone_kwargs or {}))
        self.register_buffer("input_mean", torch.tensor(float(input_mean)))
        self.register_buffer("input_std", torch.tensor(float(input_std)))
        # per-task input contracts (``input_contract.py``): empty (no state-dict keys) unless a load sets some
        self.task_inputs = nn.ModuleDict()
        self.register_load_state_dict_pre_hook(create_task_inputs_from_state_dict)
        unknown = set(head_types or {}) - set(TASKS) | set(head_options or {}) - set(TASKS)
        if unknown:
            raise ValueError(f"head_types / head_options are per task {TASKS}, got {sorted(unknown)}")
        self.head_types = {**DEFAULT_HEAD_TYPES, **dict(head_types or {})}
        self.detector_settings = dict(detector_settings or {})
        dims = self.backbone.num_features
        for task, heads in (("cls", cls_heads), ("seg", seg_heads), ("det", det_heads)):
            head_type = get_head_type(self.head_types[task], task)
            legacy = {option: self.config[arg] for arg, option in _LEGACY_OPTIONS.get(head_type.name, {}).items()}
            options = head_type.options({**legacy, **dict((head_options or {}).get(task) or {})})
            shared = head_type.build_shared(dims, options) if heads else {}
            for attribute in head_type.shared_attributes:  # None without heads: no parameters, no state-dict keys
                setattr(self, attribute, shared.get(attribute))
            self.add_module(f"{task}_heads", nn.ModuleDict(
                {k: head_type.build_head(self, int(n), dropout, options) for k, n in (heads or {}).items()}))
        for attribute in ("seg_decoder", "det_neck", "det_anchors"):  # read by parameter_counts and older callers
            if not hasattr(self, attribute):
                setattr(self, attribute, None)
        self.size_divisible = self.backbone.stride
        self.default_task, self.default_head = default_task, default_head

    def head_type(self, task: str):
        """The :class:`~cxrfx.networks.heads.HeadType` of one task."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        return get_head_type(self.head_types[task], task)

    def heads(self, task: str) -> nn.ModuleDict:
        """The ModuleDict of one task's heads."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        return getattr(self, f"{task}_heads")

    def _head(self, task: str, head: str | None) -> str:
        names = list(self.heads(task))
        if head is None and len(names) == 1:
            return names[0]
        if head not in names:
            raise KeyError(f"no {task} head named {head!r}; this model has {names}")
        return head

    def forward_features(self, x: torch.Tensor, task: str | None = None) -> list[torch.Tensor]:
        """Standardise the [0, 1] input and return the four backbone stage maps (under ``task``'s input contract
        when the model has one for it, ``task_inputs``; otherwise the model's single contract)."""
        if x.shape[1] != self.backbone.in_chans:
            raise ValueError(f"expected {self.backbone.in_chans} input channel(s), got shape {tuple(x.shape)}")
        x = (x - self.input_mean) / self.input_std
        if task is not None and task in self.task_inputs:
            return self.task_inputs[task](self.backbone, x)
        return self.backbone(x)

    def pooled_feature(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """(B, C) pooled embedding: the classification heads' input and the consistency feature."""
        return self.backbone.pooled(feats[-1])

    def task_features(self, feats: list[torch.Tensor], task: str):
        """The shared part of one task on the backbone stage maps (pooled vector, fused map, neck levels...)."""
        if not len(self.heads(task)):
            raise ValueError(f"this model has no {task} heads")
        return self.head_type(task).shared_forward(self, feats)

    def seg_features(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The segmentation heads' shared map (``task_features(feats, "seg")``)."""
        return self.task_features(feats, "seg")

    def det_features(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The detection heads' shared levels (``task_features(feats, "det")``)."""
        return self.task_features(feats, "det")

    def shared_features(self, x: torch.Tensor, task: str):
        """The task's shared feature alone (pooled vector, fused map or neck levels), without any head: what
        the teacher contributes to the consistency loss (a RetinaNet head costs a third of the backbone)."""
        return self.task_features(self.forward_features(x, task), task)

    def forward(self, x: torch.Tensor, task: str | None = None, head: str | None = None,
                return_features: bool = False):
        """One task of one dataset: the head's raw output (cls (B, C) logits; seg (B, C, H, W) logits; det the
        head's maps), computed from the backbone, the task's shared part and that head only.

        Without ``task`` the model's ``default_task`` / ``default_head`` (what a bundle's ``pred`` is).
        ``return_features``: also return the task's shared feature, so training computes output and
        consistency target in one (DDP-synchronised) forward call.
        """
        if task is None:
            task, head = self.default_task, head or self.default_head
        name = self._head(task, head)
        shared = self.task_features(self.forward_features(x, task), task)
        out = self.head_type(task).head_forward(self.heads(task)[name], shared, x.shape[-2:])
        return (out, shared) if return_features else out

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script(model)`` (the Model Zoo's ``ckpt_export``) compiles the default (task, head)."""
        return scriptable(self)

    def forward_all(self, x: torch.Tensor, tasks: Sequence[str] = TASKS) -> dict[str, object]:
        """Every head's raw output from one backbone pass (one per distinct input contract): keys
        ``"<task>/<name>"`` (only ``tasks``)."""
        passes: dict[str | None, list[torch.Tensor]] = {}
        out: dict[str, object] = {}
        for task in tasks:
            if len(self.heads(task)):
                contract = task if task in self.task_inputs else None
                if contract not in passes:
                    passes[contract] = self.forward_features(x, contract)
                head_type, shared = self.head_type(task), self.task_features(passes[contract], task)
                out.update({f"{task}/{k}": head_type.head_forward(h, shared, x.shape[-2:])
                            for k, h in self.heads(task).items()})
        return out


class _ScriptedTask(nn.Module):
    """One (task, head) of a :class:`FoundationX` as plain submodules (shared with the model, no copies) with a
    fixed forward: what ``torch.jit.script`` compiles in place of the model (``__prepare_scriptable__``), since
    the model's own forward picks its parts by name at run time. Subclasses per task kind."""

    def __init__(self, model: FoundationX, task: str, head: str | None):
        super().__init__()
        self.backbone = model.backbone
        contract = model.task_inputs[task] if task in model.task_inputs else None
        if contract is not None:  # the task's input contract baked into a copy of the patch embedding (export only)
            self.backbone = copy.copy(model.backbone)
            self.backbone._modules = dict(model.backbone._modules)
            embed = copy.deepcopy(model.backbone.patch_embed)
            with torch.no_grad():
                embed.proj.weight.add_(contract.weight)
                embed.proj.bias.add_(contract.bias)
            self.backbone._modules["patch_embed"] = embed
        self.register_buffer("input_mean", model.input_mean)
        self.register_buffer("input_std", model.input_std)
        self.in_chans = int(model.backbone.in_chans)
        self.head = model.heads(task)[model._head(task, head)]
        shared = model.head_type(task).shared_attributes
        self.shared = getattr(model, shared[0]) if shared else nn.Identity()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] != self.in_chans:
            raise ValueError("unexpected number of input channels")
        return self.backbone((x - self.input_mean) / self.input_std)


class _ScriptedCls(_ScriptedTask):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.pooled(self.features(x)[-1]))


class _ScriptedSeg(_ScriptedTask):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.shared(self.features(x)), [x.shape[2], x.shape[3]])


class _ScriptedDet(_ScriptedTask):
    def forward(self, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        return self.head(self.shared(self.features(x)))


class _ScriptedDetMaps(_ScriptedDet):
    """TaskNet's detection output: the class maps then the box maps, as one list (a tuple in eager mode)."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        out = self.head(self.shared(self.features(x)))
        return out["classification"] + out["box_regression"]


_SCRIPTED = {"cls": _ScriptedCls, "seg": _ScriptedSeg, "det": _ScriptedDet}


def scriptable(model: FoundationX, task: str | None = None, head: str | None = None) -> nn.Module:
    """``model``'s (task, head) (default: its ``default_task`` / ``default_head``) as a module ``torch.jit.script``
    compiles; it shares the model's parameters and computes what ``model(x, task, head)`` does."""
    if task is None:
        task, head = model.default_task, head or model.default_head
    if task not in _SCRIPTED:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return _SCRIPTED[task](model, task, head)


class HeadPredictor:
    """Predictions of a model's heads in their task's prediction form (``cxrfx.networks.heads.registry``): what
    evaluation, ``cxrfx predict`` and MONAI Label read, whatever the head type. Decoders (e.g. a RetinaNet's
    anchors and NMS) are built once per head and reused.

    Args:
        model: a :class:`FoundationX`.
        settings: decoder settings per task, e.g. ``{"det": {"score_thresh": 0.02}}``.
    """

    def __init__(self, model: FoundationX, settings: Mapping[str, Mapping] | None = None):
        self.model = model.module if hasattr(model, "module") else model
        self.settings = {k: dict(v) for k, v in dict(settings or {}).items()}
        self._decoders: dict = {}

    def decode(self, key: str, out, images: torch.Tensor):
        """One head's raw output (``key`` = ``"<task>/<name>"``) -> its predictions."""
        if key not in self._decoders:
            task, name = key.split("/", 1)
            self._decoders[key] = self.model.head_type(task).decoder(self.model, name, **self.settings.get(task, {}))
        return self._decoders[key](out, images)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, task: str, head: str | None = None):
        """Predictions of one head (eval mode)."""
        self.model.eval()
        name = head if head is not None else self.model._head(task, None)
        return self.decode(f"{task}/{name}", self.model(images, task=task, head=name), images)

    @torch.no_grad()
    def all(self, images: torch.Tensor, tasks: Sequence[str] = TASKS) -> dict[str, object]:
        """Predictions of every head of ``tasks`` from one backbone pass, keyed ``"<task>/<name>"``."""
        self.model.eval()
        return {k: self.decode(k, out, images) for k, out in self.model.forward_all(images, tasks).items()}


class TaskNet(nn.Module):
    """``image -> pred`` for one (task, head) of a :class:`FoundationX`: what a bundle's ``network_def`` is.

    Either wrap an existing model (``network=``) or pass :class:`FoundationX` keyword arguments.
    cls returns (B, C) logits, seg (B, C, H, W) logits, det a tuple of the head's per-level class maps then
    box maps (post-processing runs in Python, see ``build_detector``).
    """

    def __init__(self, task: str = "seg", head: str | None = None, network: FoundationX | None = None, **kwargs):
        super().__init__()
        self.network = network if network is not None else FoundationX(**kwargs)
        self.task = task
        self.head = self.network._head(task, head)

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script``: the wrapped (task, head); detection returns a list of the maps (eager: a tuple)."""
        if self.task == "det":
            return _ScriptedDetMaps(self.network, "det", self.head)
        return scriptable(self.network, self.task, self.head)

    def forward(self, image: torch.Tensor):
        out = self.network(image, task=self.task, head=self.head)
        if isinstance(out, dict) and set(out) == {"classification", "box_regression"}:
            # RetinaNet maps as a flat tuple: traceable, and RetinaNetDetector splits it in halves
            return tuple(out["classification"]) + tuple(out["box_regression"])
        return out


def parameter_counts(model: FoundationX) -> dict[str, int]:
    """Parameters per component (backbone trunk, each task's shared part and heads), and the total."""
    def n(module: nn.Module | None) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    counts = {"backbone": n(model.backbone)}
    for task in TASKS:
        for attribute in model.head_type(task).shared_attributes:
            counts[attribute] = n(getattr(model, attribute, None))
        counts[f"{task}_heads"] = n(model.heads(task))
    decoder = model.seg_decoder
    if decoder is not None and hasattr(decoder, "psp_pools"):  # UperNet's pyramid pooling, the bulk of its size
        counts["seg_decoder_psp"] = n(decoder.psp_pools) + n(decoder.psp_bottleneck)
    counts["total"] = n(model)
    return counts
