"""Head types: one interface for every kind of task head, and the registry the rest of cxrfx reads.

A Foundation X model has three task kinds, fixed by what the datasets annotate: ``cls`` (image labels), ``seg``
(masks) and ``det`` (boxes). Within a kind the *head type* can vary (UperNet or UNet++ for masks, RetinaNet or a
DETR-family head for boxes). A :class:`HeadType` says everything the network, the trainer, the evaluator, the
predictor and the MONAI Label app need to know about one type:

- ``build_shared`` / ``build_head``: the part shared by every dataset of the task (decoder, neck) and one
  dataset's head; ``shared_forward`` / ``head_forward`` run them (the shared output is also the consistency
  feature of the EMA teacher).
- ``criterion``: the training loss of one head, ``(raw output, images, batch) -> scalar``.
- ``decoder``: raw output -> the task's *prediction form*, which every consumer reads and no consumer has to
  know the head type for: ``cls`` (B, C) probabilities; ``seg`` (B, C, H, W) probabilities; ``det`` one
  ``{"boxes" (N, 4) [r1, c1, r2, c2] px, "labels" (N,) 0-based, "scores" (N,)}`` per image.
- ``targets``: a collated batch's ground truth in the form the kind's metrics read.

The three task-kind base classes below hold what follows from the annotation kind (targets, the default
decoding and losses); a new head type subclasses one of them and registers itself::

    @register_head("unetpp")
    class UNetPlusPlusHeads(SegmentationHeadType): ...

and is then selected by configuration: ``FoundationX(head_types={"seg": "unetpp"}, head_options={"seg": {...}})``.
The module attribute names a type builds (``seg_decoder``, ``det_neck``...) are the state-dict prefixes of its
checkpoints, so a type keeps them stable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from cxrfx.networks.heads.losses import DiceBCELoss, MaskedBCEWithLogitsLoss

__all__ = ["HeadType", "ClassificationHeadType", "SegmentationHeadType", "DetectionHeadType", "register_head",
           "get_head_type", "registered_heads", "TASKS", "DEFAULT_HEAD_TYPES", "MAIN_METRIC"]

TASKS = ("cls", "seg", "det")
DEFAULT_HEAD_TYPES = {"cls": "linear", "seg": "upernet", "det": "retinanet"}
MAIN_METRIC = {"cls": "auc", "seg": "dice_fx", "det": "ap50"}  # selects checkpoints; one per task kind

_REGISTRY: dict[str, HeadType] = {}


class HeadType:
    """Interface of a task head type (see the module docstring). Subclass a task-kind base, not this."""

    task: str = ""
    name: str = ""
    #: model attributes ``build_shared`` returns (they become state-dict prefixes)
    shared_attributes: tuple[str, ...] = ()
    #: options and their defaults; ``FoundationX(head_options={task: {...}})`` overrides them
    defaults: Mapping[str, object] = {}

    def options(self, given: Mapping | None) -> dict:
        """Defaults updated with ``given``; an unknown option is a configuration error, not silently ignored."""
        given = dict(given or {})
        unknown = set(given) - set(self.defaults)
        if unknown:
            raise ValueError(f"unknown options {sorted(unknown)} for the {self.task} head type {self.name!r}; "
                             f"known: {sorted(self.defaults)}")
        return {**self.defaults, **given}

    def build_shared(self, stage_channels: Sequence[int], options: Mapping) -> dict[str, nn.Module]:
        """The part every dataset's head of this task reads, as ``{model attribute: module}`` (may be empty)."""
        return {}

    def build_head(self, model: nn.Module, num_classes: int, dropout: float, options: Mapping) -> nn.Module:
        """One dataset's head (``model`` already holds the shared modules and the backbone)."""
        raise NotImplementedError

    def shared_forward(self, model: nn.Module, feats: list[torch.Tensor]):
        """The four backbone stage maps -> the shared feature (also the teacher's consistency target)."""
        raise NotImplementedError

    def head_forward(self, head: nn.Module, shared, image_size: Sequence[int]):
        """One head on the shared feature -> its raw output (logits, or a head's own structure)."""
        return head(shared)

    def criterion(self, model: nn.Module, head: str, loss: nn.Module | None = None):
        """``fn(raw output, images, batch) -> loss`` for one head; ``loss`` replaces the default where the type
        takes a plain loss module."""
        raise NotImplementedError

    def decoder(self, model: nn.Module, head: str, **settings):
        """``fn(raw output, images) -> predictions`` in the task's prediction form (module docstring)."""
        raise NotImplementedError

    def targets(self, batch: Mapping, device=None):
        """A collated batch's ground truth in the form the task's metrics and criterion read."""
        raise NotImplementedError

    def probabilities(self, out) -> list[torch.Tensor]:
        """Per-location class probabilities of a raw output (what uncertainty scoring reads), as (B, ...) maps."""
        return [torch.sigmoid(out.float())]


class _Sigmoid:
    """Decoder of logit heads: probabilities (labels and mask channels may overlap, so never a softmax)."""

    def __call__(self, out: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(out.float())


class TensorLoss:
    """``loss(raw output, the batch's target tensor)`` as a criterion."""

    def __init__(self, loss: nn.Module, key: str):
        self.loss, self.key = loss, key

    def __call__(self, out: torch.Tensor, images: torch.Tensor, batch: Mapping) -> torch.Tensor:
        return self.loss(out, batch[self.key].to(out.device))


class ClassificationHeadType(HeadType):
    """Image-level labels (multi-label, ``-1`` unknown): targets ``batch["label"]`` (B, C)."""

    task = "cls"

    def shared_forward(self, model, feats):
        return model.pooled_feature(feats)

    def criterion(self, model, head, loss=None):
        return TensorLoss(loss or MaskedBCEWithLogitsLoss(), "label")

    def decoder(self, model, head, **settings):
        return _Sigmoid()

    def targets(self, batch, device=None):
        return batch["label"].float().to(device)


class SegmentationHeadType(HeadType):
    """Masks, one (possibly overlapping) channel per class: targets ``batch["mask"]`` (B, C, H, W)."""

    task = "seg"

    def head_forward(self, head, shared, image_size):
        return head(shared, image_size)

    def criterion(self, model, head, loss=None):
        return TensorLoss(loss or DiceBCELoss(), "mask")

    def decoder(self, model, head, **settings):
        return _Sigmoid()

    def targets(self, batch, device=None):
        return batch["mask"].to(device)


class DetectionHeadType(HeadType):
    """Boxes with classes: targets one ``{"boxes": (N, 4) [r1, c1, r2, c2], "labels": (N,) 0-based}`` per image
    from the collated ``batch["boxes"]`` / ``batch["box_labels"]``."""

    task = "det"

    def targets(self, batch, device=None):
        return [{"boxes": torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4).to(device),
                 "labels": torch.as_tensor(lab, dtype=torch.long).reshape(-1).to(device)}
                for b, lab in zip(batch["boxes"], batch["box_labels"])]


def register_head(name: str):
    """Class decorator: register a :class:`HeadType` subclass under ``name`` (its ``name`` attribute is set)."""
    def add(cls: type[HeadType]) -> type[HeadType]:
        if not (isinstance(cls, type) and issubclass(cls, HeadType)) or cls.task not in TASKS:
            raise TypeError(f"register_head({name!r}): {cls!r} must subclass a task-kind HeadType "
                            "(ClassificationHeadType, SegmentationHeadType or DetectionHeadType)")
        if name in _REGISTRY and type(_REGISTRY[name]) is not cls:
            raise ValueError(f"a head type named {name!r} is already registered ({type(_REGISTRY[name]).__name__})")
        cls.name = name
        _REGISTRY[name] = cls()
        return cls
    return add


def get_head_type(name: str, task: str | None = None) -> HeadType:
    """The registered head type ``name`` (checked to be of ``task`` when given)."""
    import cxrfx.networks.heads  # noqa: F401  (registers the built-in types)

    if name not in _REGISTRY:
        raise ValueError(f"unknown head type {name!r}; registered: {registered_heads()}")
    head_type = _REGISTRY[name]
    if task is not None and head_type.task != task:
        raise ValueError(f"head type {name!r} is a {head_type.task} head, not a {task} head")
    return head_type


def registered_heads(task: str | None = None) -> list[str]:
    """Names of the registered head types (of one task kind)."""
    return sorted(n for n, t in _REGISTRY.items() if task is None or t.task == task)
