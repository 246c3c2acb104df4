"""Validation of every (task, dataset) source for the student and the teacher, in one MONAI evaluator.

``MultiTaskEvaluator`` walks all validation loaders in one epoch; ``MultiTaskScore`` (an ignite Metric)
collects predictions per source and model and computes, per source: ``auc`` (mean per-label AUC over
labels with both classes, unknown labels masked) for cls, ``ap50`` and ``map40_fx`` for det, ``dice_fx``
(per image, empty/empty = 1), ``dice_global`` and, for a multi-channel head, ``dice_fx_<channel>`` for seg.
The scalar form (``detailed=False``) is the mean of the main score of each source (auc / ap50 / dice_fx) for
one model: the key metric that selects the best checkpoint, always on the validation split.

Multi-process runs shard the validation split across ranks (``build_sources(distributed=True)``, no padding, so
no image counts twice); with sharded sources ``compute`` gathers every rank's predictions first, so every rank
gets the metrics of the whole split, equal on all ranks (:mod:`cxrfx.engines.distributed`). Unsharded sources
(every rank reads the whole split) are scored per rank, as before: gathering them would count each image once per
rank.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from monai.engines import Evaluator
from monai.utils import optional_import
from torch import nn

from cxrfx.engines.distributed import all_gather_objects, broadcast_buffers, is_distributed
from cxrfx.metrics import ap50, dice_global, dice_per_image, map40_fx, multilabel_auc
from cxrfx.networks.foundation_x import HeadPredictor
from cxrfx.networks.heads import MAIN_METRIC

Metric, _ = optional_import("ignite.metrics", name="Metric")
Events, _ = optional_import("ignite.engine", name="Events")

__all__ = ["MultiTaskEvaluator", "MultiTaskScore", "SourceChain", "MAIN_METRIC"]


def _cls_scores(preds: list, targets: list) -> dict[str, float]:
    return {"auc": multilabel_auc(torch.stack(preds), torch.stack(targets))["auc_all"]}


def _seg_scores(preds: list, targets: list) -> dict[str, float]:
    masks, truth = torch.stack(preds).float(), torch.stack(targets).float()
    per_image = dice_per_image(masks, truth)  # (N, C): dice_fx is its mean, so it is computed once
    scores = {"dice_fx": _exact_mean(per_image), "dice_global": dice_global(masks, truth)}
    if masks.shape[1] > 1:  # per class too (``dice_fx_<channel>``): a mean over organs hides the hard one
        scores.update({f"dice_fx_{c}": _exact_mean(per_image[:, c]) for c in range(per_image.shape[1])})
    return scores


def _exact_mean(values: np.ndarray) -> float:
    """Mean by an exactly rounded sum: the same bits whatever the image order (ranks gather in their own order)."""
    return math.fsum(np.ravel(values).tolist()) / max(np.size(values), 1)


def _det_scores(preds: list, targets: list) -> dict[str, float]:
    return {"ap50": ap50(preds, targets), "map40_fx": map40_fx(preds, targets)}


# the metrics of each task kind (its annotation kind; any head type of the task is scored the same way)
SCORES = {"cls": _cls_scores, "seg": _seg_scores, "det": _det_scores}
# what is kept of each image's prediction and target until the epoch ends (masks as booleans: 1/32 the memory)
_KEEP = {"seg": lambda x: x > 0.5}


class SourceChain:
    """Every batch of every loader once, as ``(key, batch)`` pairs (one evaluator epoch).

    ``sharded``: a loader is one rank's share of its source (``build_sources`` marks them). A rank whose shards
    are all empty (more ranks than validation images) yields one empty batch: MONAI skips an evaluator run
    without data, and this rank must still join the others in gathering predictions and broadcasting buffers.
    """

    def __init__(self, loaders: Mapping[str, Iterable]):
        self.loaders = dict(loaders)
        self.sharded = any(getattr(loader, "sharded", False) for loader in self.loaders.values())

    def _placeholder(self) -> bool:
        return self.sharded and is_distributed() and not sum(len(v) for v in self.loaders.values())

    def __len__(self) -> int:
        return sum(len(v) for v in self.loaders.values()) or int(self._placeholder())

    def __iter__(self):
        if self._placeholder():
            yield next(iter(self.loaders)), {"skipped": 0}
        for key, loader in self.loaders.items():
            for batch in loader:
                yield key, batch


class MultiTaskScore(Metric):
    """Collects ``{"key", "target", "student", "teacher"}`` outputs; computes per-source metrics.

    Args:
        model: ``"student"`` or ``"teacher"`` for the scalar form.
        detailed: False: one float (mean main score of ``model``); True: a dict of every metric of both
            models, ``"<model>/<task>/<dataset>/<metric>"`` plus ``"<model>/mean"``.
    """

    required_output_keys = ("key", "target", "student", "teacher")

    def __init__(self, model: str = "student", detailed: bool = False, output_transform=lambda x: x, device="cpu"):
        self.model, self.detailed = model, detailed
        self._gather = False
        super().__init__(output_transform=output_transform, device=device)

    def completed(self, engine, name: str) -> None:
        # gather the ranks' predictions only when each rank scored its own shard (the evaluator says so)
        self._gather = bool(getattr(engine, "sharded", False))
        super().completed(engine, name)

    def reset(self) -> None:
        self._preds = defaultdict(lambda: defaultdict(list))
        self._targets = defaultdict(list)

    def update(self, output) -> None:
        key, target, student, teacher = output  # ignite hands over the required_output_keys in order
        self._targets[key].extend(target)
        for model, preds in (("student", student), ("teacher", teacher)):
            if preds is not None:
                self._preds[model][key].extend(preds)

    def _gathered(self) -> tuple[dict, dict]:
        """(predictions, targets) of every rank, merged per model and source; this rank's alone in a
        single-process run or with unsharded sources. Collective: every rank computes the metric, so every rank
        calls this."""
        preds: dict = defaultdict(lambda: defaultdict(list))
        targets: dict = defaultdict(list)
        mine = ({m: dict(v) for m, v in self._preds.items()}, dict(self._targets))
        for rank_preds, rank_targets in (all_gather_objects(mine) if self._gather else [mine]):
            for key, values in rank_targets.items():
                targets[key].extend(values)
            for model, per_key in rank_preds.items():
                for key, values in per_key.items():
                    preds[model][key].extend(values)
        return preds, targets

    def _scores(self, model: str, preds: dict, targets: dict) -> dict[str, float]:
        scores = {}
        for key, values in preds[model].items():
            if not values:  # every image of this source unreadable (skip_bad_samples): no score
                continue
            task = key.split("/")[0]
            scores.update({f"{key}/{name}": v for name, v in SCORES[task](values, targets[key]).items()})
        mains = [v for k, v in scores.items() if k.rsplit("/", 1)[1] == MAIN_METRIC[k.split("/")[0]] and np.isfinite(v)]
        scores["mean"] = float(np.mean(mains)) if mains else float("nan")
        return scores

    def compute(self):
        preds, targets = self._gathered()
        if not self.detailed:
            return self._scores(self.model, preds, targets)["mean"]
        return {f"{m}/{k}": v for m in ("student", "teacher") if preds[m]
                for k, v in self._scores(m, preds, targets).items()}


class MultiTaskEvaluator(Evaluator):
    """Runs the student (and the teacher) over every validation source; outputs feed :class:`MultiTaskScore`.

    Args:
        device: torch device.
        loaders: ``{"<task>/<dataset>": DataLoader}`` (validation split, no augmentation).
        network: the student :class:`FoundationX`; teacher: its EMA teacher or None.
        key_val_metric / additional_metrics / val_handlers: as MONAI's ``Evaluator``.
    """

    def __init__(self, device, loaders: Mapping[str, Iterable], network: nn.Module, teacher: nn.Module | None = None,
                 key_val_metric: dict | None = None, additional_metrics: dict | None = None,
                 val_handlers=None, amp: bool = False, **kwargs):
        chain = SourceChain(loaders)
        super().__init__(device=device, val_data_loader=chain, epoch_length=len(chain), key_val_metric=key_val_metric,
                         additional_metrics=additional_metrics, val_handlers=val_handlers, decollate=False, **kwargs)
        self.network = network.module if hasattr(network, "module") else network
        self.teacher = teacher
        self.bf16 = bool(amp)
        self.sharded = chain.sharded  # read by MultiTaskScore: gather the ranks' predictions
        self._predictors: dict = {}
        # multi-process runs: every rank scores rank 0's model (the one rank 0 saves); no-op otherwise
        self.add_event_handler(Events.STARTED, lambda _: broadcast_buffers([self.network, self.teacher]))

    @torch.no_grad()
    def _predict(self, model: nn.Module, task: str, head: str, images: torch.Tensor) -> list:
        if id(model) not in self._predictors:  # decoders (e.g. anchors) built once per model and head
            self._predictors[id(model)] = HeadPredictor(model, {"det": {"score_thresh": 0.02}})
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            preds = self._predictors[id(model)](images, task, head)
        return _per_image(preds, _KEEP.get(task))

    def _iteration(self, engine, batchdata) -> dict:
        key, batch = batchdata
        task, head = key.split("/", 1)
        if "image" not in batch:  # every sample of the batch unreadable (skip_bad_samples): nothing to score
            engine.state.output = {"key": key, "target": [], "student": [], "teacher": None}
            return engine.state.output
        images = batch["image"].to(engine.state.device)
        target = _per_image(self.network.head_type(task).targets(batch), _KEEP.get(task))
        output = {"key": key, "target": target, "student": self._predict(self.network, task, head, images),
                  "teacher": self._predict(self.teacher, task, head, images) if self.teacher is not None else None}
        engine.state.output = output
        return output


def _per_image(batch_values, keep=None) -> list:
    """A batch's predictions or targets as one CPU item per image (float tensors, boxes as float32)."""
    items = list(batch_values)
    if items and isinstance(items[0], Mapping):
        return [{k: (v.float() if v.is_floating_point() else v).cpu() for k, v in item.items()} for item in items]
    items = [x.float().cpu() if x.is_floating_point() else x.cpu() for x in items]
    return [keep(x) for x in items] if keep else items
