"""``MultiTaskPredictor``: every head of a Foundation X model on each input image, written to disk.

A MONAI ``Evaluator`` over ``{"image": path}`` items (files, a folder, a DICOM series folder): load with
``cxrfx.io`` (orientation and DICOM LUTs handled), normalise, resize to the network size, run all heads
(classification probabilities, segmentation masks, detection boxes after NMS), map the results back to the
original image and hand them to a :class:`PredictionWriter`. An unreadable file is logged with its reason
and skipped; the others are still processed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from monai.data import DataLoader, Dataset
from monai.engines import Evaluator
from monai.transforms import Resized

from cxrfx.errors import CXRReadError
from cxrfx.io.loader import list_images
from cxrfx.io.transforms import LoadCXRd, NormalizeCXRd
from cxrfx.networks.foundation_x import HeadPredictor
from cxrfx.outputs.predictions import PredictionWriter, restore_predictions

__all__ = ["MultiTaskPredictor", "PredictionDataset", "prediction_dataset"]


class _SafeLoad:
    """Load + preprocess one item; an unreadable file becomes an error record instead of an exception."""

    def __init__(self, size: int):
        self.load = LoadCXRd("image")
        self.normalize = NormalizeCXRd("image")
        self.resize = Resized("image", (size, size), mode="area")

    def __call__(self, item: Mapping) -> dict:
        try:
            d = self.load(dict(item))
        except CXRReadError as exc:
            return {"path": item["image"], "error": str(exc)}
        d = self.normalize(d)
        original = d["image"][0].numpy().copy()
        d = self.resize(d)
        return {"path": item["image"], "image": d["image"].as_tensor(), "original": original}


class PredictionDataset(Dataset):
    """Every image under ``input_path``, listed when first used, not when the dataset is built: a bundle's
    inference config then initialises (``check_properties``) before its input exists, e.g. right after
    ``monai.bundle download``, and a missing input is the run's error, naming the path."""

    def __init__(self, input_path: str, size: int = 224, split: str = "test"):
        super().__init__([], _SafeLoad(size))
        self.input_path, self.split, self._listed = str(input_path), split, False

    def _list(self) -> None:
        if self._listed:
            return
        if self.input_path.endswith(".json"):
            from cxrfx.data.datalist import load_datalist

            paths = [item["image"] for item in load_datalist(self.input_path, self.split)]
        else:
            paths = list_images(self.input_path)
        self.data, self._listed = [{"image": p} for p in paths], True

    def __len__(self) -> int:
        self._list()
        return super().__len__()

    def __getitem__(self, index):
        self._list()
        return super().__getitem__(index)


def prediction_dataset(input_path: str, size: int = 224, split: str = "test") -> Dataset:
    """A dataset of every image under ``input_path`` (file or folder; a datalist ``.json``: its ``split``),
    preprocessed for the network (:class:`PredictionDataset`: listed at first use)."""
    return PredictionDataset(input_path, size, split)


class MultiTaskPredictor(Evaluator):
    """Run every head on every image and write the results (see module docstring).

    Args:
        device: torch device. dataset: from :func:`prediction_dataset`. network: a :class:`FoundationX`.
        writer: where results go. image_size: network input side. det_classes: names per detection head.
        box_score_threshold: boxes scoring below it are dropped before writing (the JSON keeps every box at
            or above it; the writer's own ``score_threshold`` only decides which are drawn on the overlay).
            0 keeps every decoded box, e.g. to rank them elsewhere.
    """

    def __init__(self, device, dataset: Dataset, network: torch.nn.Module, writer: PredictionWriter,
                 image_size: int = 224, det_classes: Mapping[str, Sequence[str]] | None = None,
                 box_score_threshold: float = 0.05, **kwargs):
        if not 0.0 <= float(box_score_threshold) <= 1.0:
            raise ValueError(f"box_score_threshold must be in [0, 1], got {box_score_threshold!r}")
        loader = DataLoader(dataset, batch_size=1, num_workers=0, collate_fn=lambda batch: batch[0])
        # the length is known at run time (the dataset lists its input then): a placeholder until run()
        super().__init__(device=device, val_data_loader=loader, epoch_length=1, decollate=False, **kwargs)
        self.network = network.module if hasattr(network, "module") else network
        self.writer, self.image_size = writer, image_size
        self.det_classes = dict(det_classes or {})
        self.predictor = HeadPredictor(self.network, {"det": {"score_thresh": float(box_score_threshold)}})
        self.failures: list[str] = []
        self.run_log = logging.getLogger("cxrfx.predict")  # ignite keeps its own self.logger

    def run(self) -> None:
        self.state.epoch_length = len(self.data_loader)  # lists the input: a missing one is named here
        super().run()

    @torch.no_grad()
    def _iteration(self, engine, item: Mapping) -> dict:
        if "error" in item:
            self.failures.append(item["error"])
            self.run_log.error(f"skipped {item['error']}")
            engine.state.output = {"path": item["path"], "error": item["error"]}
            return engine.state.output
        image = item["image"][None].to(engine.state.device)
        outputs = {k: _first(v) for k, v in self.predictor.all(image).items()}  # one backbone pass, every head
        result = restore_predictions(outputs, item["original"].shape, (self.image_size, self.image_size),
                                     self.det_classes)
        path = self.writer.write(item["path"], item["original"], result)
        engine.state.output = {"path": item["path"], "json": path}
        return engine.state.output


def _first(batch_predictions):
    """The first image's predictions, on the CPU."""
    first = batch_predictions[0]
    return {k: v.cpu() for k, v in first.items()} if isinstance(first, Mapping) else first.cpu()
