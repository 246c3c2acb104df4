"""Fine-tuning a served bundle on the labels saved in the MONAI Label datastore; the new weights are then served.

MONAI Label runs ``/train/<model>`` in a child process (``monailabel.interfaces.utils.app -m train``) that builds
the app and calls this task. The task

1. collects the datastore's final labels of its kind: index-map images (``.png``, ``.nii.gz``; value k =
   ``classes[k-1]``) for segmentation, ``.json`` files in the detection result format
   (:data:`cxrfx.label.infer.BOX_FORMAT`) for detection;
2. writes them as a cxrfx datalist (:func:`cxrfx.data.datalist.write_datalist`, schema-checked), every labelled
   image in the training split (an annotation session has too few labels to hold some out, and the schema
   refuses an image in two splits); validation is off (``val_interval`` past the run), the served weights are
   the run's final student. At least two labelled images: the decoder's batch statistics need batches of two;
3. runs the bundle's own ``configs/train.json`` (+ the served override configs) through ``monai.bundle.run``
   with overrides: that datalist, ``max_epochs`` passes over it, the served weights as the fine-tuning start
   (``finetune_model_path``), the EMA teacher on (its copy feeds the teacher-student strategy), a run folder
   for checkpoints and logs;
   With ``replay`` (a fraction; ACFT's continual fine-tuning) only the labels saved since the last run plus that
   fraction of the earlier ones are used; without it, every final label;
4. atomically replaces the served ``models/model.pt`` with the trained student (and ``models/last.pt`` with
   student + teacher); the infer tasks reload it at their next request.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import torch

from cxrfx.errors import ConfigError
from cxrfx.label.served import ServedBundle, save_state_dict

from monailabel.interfaces.tasks.train import TrainTask  # noqa: I001 (label venv only)

__all__ = ["BundleFineTuneTask", "seg_datalist", "det_datalist", "read_box_label"]

logger = logging.getLogger(__name__)
SEG_EXTENSIONS = (".png", ".nii.gz", ".nii")


def read_box_label(path: str, classes: list[str]) -> tuple[list[list[float]], list[int]]:
    """Boxes and class indices of a detection label file (the detection result format); named errors."""
    from cxrfx.data.datalist import read_json

    data = read_json(path)
    boxes, labels = [], []
    entries = data.get("boxes") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: not a detection label (expected {{\"boxes\": [...]}})")
    for i, b in enumerate(entries):
        name = b.get("class")
        if name not in classes:
            raise ConfigError(f"{path}: box {i} has class {name!r}; the model's classes are {classes}")
        x1, y1, x2, y2 = (float(v) for v in b["box_xyxy"])
        if not (x2 > x1 and y2 > y1):
            raise ConfigError(f"{path}: box {i} {b['box_xyxy']} is empty (need x1 < x2 and y1 < y2)")
        boxes.append([x1, y1, x2, y2])
        labels.append(classes.index(name))
    return boxes, labels


MIN_LABELS = 2


def _datalist(name: str, tasks: dict, items: list[dict]) -> dict:
    return {"name": name, "schema_version": 1, "box_mode": "xyxy", "tasks": tasks,
            "description": "labels saved in the MONAI Label datastore", "training": items, "validation": [],
            "test": []}


def seg_datalist(pairs: list[dict], name: str, classes: list[str]) -> dict:
    """``[{"image", "label"}]`` with index-map labels -> a segmentation datalist (``mask_format`` index)."""
    items = [{"id": f"{name}_{i:04d}", "image": p["image"], "mask": p["label"]} for i, p in enumerate(pairs)
             if p["label"].lower().endswith(SEG_EXTENSIONS)]
    return _datalist(name, {"segmentation": {"classes": classes, "mask_format": "index"}}, items)


def det_datalist(pairs: list[dict], name: str, classes: list[str]) -> dict:
    """``[{"image", "label"}]`` with box-JSON labels -> a detection datalist. A label file that does not read
    (stored before the server validated labels, or edited by hand) is left out with a warning: one bad label
    must not stop everybody's training."""
    items = []
    for i, p in enumerate(pairs):
        if not p["label"].lower().endswith(".json"):
            continue
        try:
            boxes, labels = read_box_label(p["label"], classes)
        except (ConfigError, KeyError, TypeError, ValueError) as e:
            logger.warning(f"{p['label']}: left out of training ({e})")
            continue
        items.append({"id": f"{name}_{i:04d}", "image": p["image"], "boxes": boxes, "box_labels": labels})
    return _datalist(name, {"detection": {"classes": classes}}, items)


class BundleFineTuneTask(TrainTask):
    """Fine-tune ``served`` (a finetune_seg or finetune_det copy) from the datastore's final labels."""

    def __init__(self, served: ServedBundle, task: str):
        if task not in ("seg", "det"):
            raise ValueError(f"task must be 'seg' or 'det', not {task!r}")
        super().__init__(f"Fine-tune {os.path.basename(served.bundle)} ({task}) on the datastore's final labels")
        self.served, self.task = served, task
        self.classes = list(served.get("classes"))
        self.name = served.get("dataset_name")

    def config(self) -> dict:
        return {"max_epochs": 1, "use_teacher": True, "mode": "full"}

    def count_labels(self, datastore) -> tuple[int, int, str]:
        """(usable final labels of this task's kind, the minimum training needs, their kind): what ``/train``
        checks before it starts a training process (409 when too few)."""
        pairs = datastore.datalist()
        if self.task == "seg":
            n = len(seg_datalist(pairs, self.name, self.classes)["training"])
        else:
            n = len(det_datalist(pairs, self.name, self.classes)["training"])
        return n, MIN_LABELS, "index-map .png/.nii.gz" if self.task == "seg" else ".json box"

    def select_continual(self, pairs: list[dict], replay: float, seed: int = 0) -> tuple[list[dict], int, int]:
        """ACFT's continual fine-tuning set: the labels saved since the last training run (label file newer than
        its end) plus a seeded random ``replay`` fraction (at least one) of the earlier ones, so the model keeps
        what it learnt without retraining on everything. Returns (pairs, new, replayed)."""
        import random

        if not 0 <= replay <= 1:
            raise ConfigError(f"replay: {replay} is not a fraction in [0, 1]")
        since = float(self.stats().get("finished_at") or 0)
        ext = SEG_EXTENSIONS if self.task == "seg" else (".json",)
        pairs = [p for p in pairs if p["label"].lower().endswith(ext)]
        new = [p for p in pairs if os.path.getmtime(p["label"]) > since]
        old = [p for p in pairs if os.path.getmtime(p["label"]) <= since]
        k = min(len(old), max(1, round(replay * len(old)))) if old and replay > 0 else 0
        kept = sorted(random.Random(seed).sample(old, k), key=lambda p: p["label"]) if k else []
        return new + kept, len(new), len(kept)

    def _runs(self) -> str:
        return os.path.join(self.served.bundle, "train_runs")

    def stats(self) -> dict:
        path = os.path.join(self._runs(), "latest.json")
        if not os.path.exists(path):
            return {}
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def __call__(self, request, datastore) -> dict:
        from monai.bundle import run

        from cxrfx.data.datalist import write_datalist

        start = time.time()
        pairs = datastore.datalist()
        replay = request.get("replay")
        new_count = replayed = None
        if replay is not None:  # ACFT's continual fine-tuning: the new labels plus a replay of earlier ones
            pairs, new_count, replayed = self.select_continual(pairs, float(replay))
        data = (seg_datalist if self.task == "seg" else det_datalist)(pairs, self.name, self.classes)
        if len(data["training"]) < MIN_LABELS:
            kind = "index-map .png/.nii.gz" if self.task == "seg" else ".json box"
            raise ConfigError(f"{datastore.name()}: {len(data['training'])} final {kind} label(s); fine-tuning "
                              f"{os.path.basename(self.served.bundle)} needs at least {MIN_LABELS}")
        run_dir = os.path.join(self._runs(), time.strftime("%Y%m%d_%H%M%S") + f"_{os.getpid()}")
        datalist = write_datalist(data, os.path.join(run_dir, "datalist.json"))
        batch = min(int(self.served.get_train("batch_size", 8)), len(data["training"]))
        epochs = max(1, int(request.get("max_epochs", 1)))
        iterations = int(request.get("iterations") or epochs * math.ceil(len(data["training"]) / batch))
        use_teacher = bool(request.get("use_teacher", True))
        overrides = {
            "bundle_root": self.served.bundle, "source_datalist": datalist, "ckpt_dir": os.path.join(run_dir, "models"),
            "output_dir": os.path.join(run_dir, "eval"), "iterations": iterations, "batch_size": batch,
            "val_interval": iterations + 1, "lr_warmup_iterations": iterations // 20, "checkpoint_interval": iterations, "val_at_start": False,
            "num_workers": 0, "progress_bar": False, "few_shot": None, "mode": request.get("mode", "full"),
            "finetune": True, "finetune_model_path": self.served.weights, "finetune_source": "cxrfx",
            "use_teacher": use_teacher, "device": f"$torch.device('{request.get('device', self.served.device)}')",
        }
        configs = [os.path.join(self.served.bundle, "configs", "train.json")]
        configs += [os.path.join(self.served.bundle, "configs", c) for c in self.served.configs]
        logger.info(f"fine-tuning {self.served.bundle}: {len(data['training'])} labelled image(s), "
                    f"{iterations} iteration(s), batch {batch}")
        run(config_file=configs, **overrides)
        last = os.path.join(run_dir, "models", "last.pt")
        if not os.path.exists(last):
            raise ConfigError(f"{last}: the training run wrote no final checkpoint")
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        before = self.served.weights_stamp()
        save_state_dict(ckpt["student"], self.served.weights)
        if use_teacher and "teacher" in ckpt:
            tmp = os.path.join(self.served.bundle, "models", f"last.pt.tmp{os.getpid()}")
            torch.save({"student": ckpt["student"], "teacher": ckpt["teacher"]}, tmp)
            os.replace(tmp, os.path.join(self.served.bundle, "models", "last.pt"))
        stats = {"model": os.path.basename(self.served.bundle), "images": len(data["training"]),
                 "iterations": iterations, "batch_size": batch, "seconds": round(time.time() - start, 1),
                 "run_dir": run_dir, "weights": self.served.weights, "weights_before": before,
                 "weights_after": self.served.weights_stamp(), "teacher": use_teacher and "teacher" in ckpt,
                 "finished_at": time.time(), "new_labels": new_count, "replayed_labels": replayed}
        tmp = os.path.join(self._runs(), f"latest.json.tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(stats, f, indent=1)
        os.replace(tmp, os.path.join(self._runs(), "latest.json"))
        logger.info(f"fine-tuned: {stats}")
        return stats
