"""The Foundation X network: one Swin backbone, per-dataset classification / segmentation / detection heads.

``FoundationX(x, task="seg", head="jsrt")`` runs the backbone and only the parts that task needs (the
UperNet decoder and one head); ``forward_all`` computes every head from one backbone pass. The model's
input contract is the project's: (B, 1, H, W) in [0, 1] (see ``cxrfx.io.transforms``), H and W multiples of
32; it standardises internally with ``input_mean`` / ``input_std`` (checkpoints trained on 3-channel
normalised input are folded into the first conv on load, see ``checkpoints.py``).

:class:`TaskNet` wraps one (task, head) as ``image -> pred`` for MONAI bundles (``verify_net_in_out``,
``ckpt_export``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from cxrfx.networks.heads.anchors import DetectionAnchors
from cxrfx.networks.heads.classification import ClassificationHead
from cxrfx.networks.heads.detection import DetectionNeck, RetinaHead
from cxrfx.networks.heads.segmentation import SegmentationHead, UperNetDecoder
from cxrfx.networks.swin import swin

__all__ = ["FoundationX", "TaskNet", "TASKS", "parameter_counts"]

TASKS = ("cls", "seg", "det")


class FoundationX(nn.Module):
    """Swin backbone + heads per dataset.

    Args:
        backbone: Swin size: ``"tiny" | "small" | "base" | "large"``.
        cls_heads, seg_heads, det_heads: ``{dataset name: number of classes}`` for each task.
        in_chans: input channels (1: our grayscale contract).
        dropout: dropout before every head (MC-dropout for MONAI Label's epistemic scoring).
        input_mean, input_std: standardisation applied to the [0, 1] input (chest X-ray statistics of
            Foundation X's classification contract by default).
        num_anchors: anchors per location of the detection heads when ``det_anchors`` is None (RetinaNet-style
            default shapes; a checkpoint's fitted shapes replace them on load).
        det_strides: detection pyramid levels: (8, 16, 32, 64) RetinaNet's P3-P6 (default), (4, 8, 16, 32) with
            the stride-4 level small lesions need.
        det_anchors: anchor (height, width) per anchor per level, e.g. from ``cxrfx.data.propose_anchors``; kept
            in the model (``det_anchors.shapes``) and its checkpoints.
        detector_settings: matching / sampling / post-processing settings every ``build_detector`` of this model
            uses (keys of ``cxrfx.networks.heads.detection.DETECTOR_DEFAULTS``).
        backbone_kwargs: overrides for :class:`SwinTransformer` (window_size, drop_path_rate,
            use_checkpoint, embed_dim, depths, num_heads, ...).
        seg_channels, psp_channels, det_channels: decoder / neck widths (Foundation X: 128, 1024, 256).
        shared_fpn_smoothing: reproduce the reference code's single shared FPN smoothing conv.
        default_task, default_head: what ``forward(x)`` computes without a task (a bundle's ``pred``).
    """

    def __init__(self, backbone: str = "base", cls_heads: Mapping[str, int] | None = None,
                 seg_heads: Mapping[str, int] | None = None, det_heads: Mapping[str, int] | None = None,
                 in_chans: int = 1, dropout: float = 0.0, input_mean: float = 0.5056, input_std: float = 0.252,
                 num_anchors: int = 6, backbone_kwargs: Mapping | None = None, seg_channels: int = 128,
                 psp_channels: int = 1024, det_channels: int = 256, shared_fpn_smoothing: bool = False,
                 default_task: str = "cls", default_head: str | None = None,
                 det_strides: Sequence[int] = (8, 16, 32, 64), det_anchors: Sequence | None = None,
                 detector_settings: Mapping | None = None):
        super().__init__()
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.backbone = swin(backbone, in_chans=in_chans, **dict(backbone_kwargs or {}))
        self.register_buffer("input_mean", torch.tensor(float(input_mean)))
        self.register_buffer("input_std", torch.tensor(float(input_std)))
        dims = self.backbone.num_features
        self.cls_heads = nn.ModuleDict({k: ClassificationHead(dims[-1], n, dropout) for k, n in (cls_heads or {}).items()})
        self.seg_decoder = (UperNetDecoder(dims, seg_channels, psp_channels, shared_smoothing=shared_fpn_smoothing)
                            if seg_heads else None)
        self.seg_heads = nn.ModuleDict({k: SegmentationHead(seg_channels, n, dropout) for k, n in (seg_heads or {}).items()})
        self.det_neck = DetectionNeck(dims, det_channels, det_strides) if det_heads else None
        self.det_anchors = DetectionAnchors(det_strides, det_anchors, num_anchors) if det_heads else None
        self.det_heads = nn.ModuleDict(
            {k: RetinaHead(det_channels, self.det_anchors.num_anchors, n, dropout) for k, n in (det_heads or {}).items()}
        )
        self.detector_settings = dict(detector_settings or {})
        self.size_divisible = self.backbone.stride
        self.default_task, self.default_head = default_task, default_head

    def heads(self, task: str) -> nn.ModuleDict:
        """The ModuleDict of one task's heads."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        return {"cls": self.cls_heads, "seg": self.seg_heads, "det": self.det_heads}[task]

    def _head(self, task: str, head: str | None) -> str:
        names = list(self.heads(task))
        if head is None and len(names) == 1:
            return names[0]
        if head not in names:
            raise KeyError(f"no {task} head named {head!r}; this model has {names}")
        return head

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Standardise the [0, 1] input and return the four backbone stage maps."""
        if x.shape[1] != self.backbone.in_chans:
            raise ValueError(f"expected {self.backbone.in_chans} input channel(s), got shape {tuple(x.shape)}")
        return self.backbone((x - self.input_mean) / self.input_std)

    def pooled_feature(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """(B, C) pooled embedding: the classification heads' input and the consistency feature."""
        return self.backbone.pooled(feats[-1])

    def seg_features(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """(B, seg_channels, H/4, W/4) fused UperNet map shared by the segmentation heads."""
        if self.seg_decoder is None:
            raise ValueError("this model has no segmentation heads")
        return self.seg_decoder(feats)

    def det_features(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Neck levels (``det_strides``) shared by the detection heads."""
        if self.det_neck is None:
            raise ValueError("this model has no detection heads")
        return self.det_neck(feats)

    def shared_features(self, x: torch.Tensor, task: str):
        """The task's shared feature alone (pooled vector, fused map or neck levels), without any head: what
        the teacher contributes to the consistency loss (a RetinaNet head costs a third of the backbone)."""
        feats = self.forward_features(x)
        if task == "cls":
            return self.pooled_feature(feats)
        return self.seg_features(feats) if task == "seg" else self.det_features(feats)

    def forward(self, x: torch.Tensor, task: str | None = None, head: str | None = None,
                return_features: bool = False):
        """One task of one dataset: cls -> (B, C) logits; seg -> (B, C, H, W) logits; det -> head maps.

        Without ``task`` the model's ``default_task`` / ``default_head`` (what a bundle's ``pred`` is).
        ``return_features``: also return the task's shared feature (pooled vector, fused map or neck levels),
        so training computes output and consistency target in one (DDP-synchronised) forward call.
        """
        if task is None:
            task, head = self.default_task, head or self.default_head
        name = self._head(task, head)
        feats = self.forward_features(x)
        if task == "cls":
            shared = self.pooled_feature(feats)
            out = self.cls_heads[name](shared)
        elif task == "seg":
            shared = self.seg_features(feats)
            out = self.seg_heads[name](shared, x.shape[-2:])
        else:
            shared = self.det_features(feats)
            out = self.det_heads[name](shared)
        return (out, shared) if return_features else out

    def forward_all(self, x: torch.Tensor) -> dict[str, object]:
        """Every head's output from one backbone pass: keys ``"cls/<name>"``, ``"seg/<name>"``, ``"det/<name>"``."""
        feats = self.forward_features(x)
        out: dict[str, object] = {}
        if len(self.cls_heads):
            pooled = self.pooled_feature(feats)
            out.update({f"cls/{k}": h(pooled) for k, h in self.cls_heads.items()})
        if len(self.seg_heads):
            fused = self.seg_features(feats)
            out.update({f"seg/{k}": h(fused, x.shape[-2:]) for k, h in self.seg_heads.items()})
        if len(self.det_heads):
            levels = self.det_features(feats)
            out.update({f"det/{k}": h(levels) for k, h in self.det_heads.items()})
        return out


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

    def forward(self, image: torch.Tensor):
        out = self.network(image, task=self.task, head=self.head)
        if self.task == "det":  # flat tuple: traceable, and RetinaNetDetector splits it in halves
            return tuple(out["classification"]) + tuple(out["box_regression"])
        return out


def parameter_counts(model: FoundationX) -> dict[str, int]:
    """Parameters per component (backbone trunk, each task's shared part and heads), and the total."""
    def n(module: nn.Module | None) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    counts = {
        "backbone": n(model.backbone),
        "cls_heads": n(model.cls_heads),
        "seg_decoder": n(model.seg_decoder),
        "seg_decoder_psp": n(model.seg_decoder.psp_pools) + n(model.seg_decoder.psp_bottleneck)
        if model.seg_decoder is not None else 0,
        "seg_heads": n(model.seg_heads),
        "det_neck": n(model.det_neck),
        "det_heads": n(model.det_heads),
    }
    counts["total"] = n(model)
    return counts
