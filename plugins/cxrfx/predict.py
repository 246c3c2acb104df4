"""``python -m cxrfx predict`` and ``calibrate``: a bundle's network on images, and its decision thresholds.

Bundle-generic: the bundle's ``configs/inference.json`` (plus optional override configs, e.g. ``demo.json``)
is read with MONAI's ``ConfigParser``; ``bundle_root``, ``input_path`` and ``output_dir`` are overridden,
its ``initialize`` expressions run, the weights load through its ``handlers`` (a
:class:`~cxrfx.engines.handlers.CheckpointLoader`; read once, before the progress bar, with the load report
printed), and its ``evaluator`` runs with a progress bar.
Any bundle whose inference config follows the foundation_x pattern (``network_def`` / ``network``,
``ckpt_path``, ``input_path``, ``output_dir``, ``image_size``, ``handlers``, ``writer``, ``evaluator``) works; when its
``writer`` is :class:`~cxrfx.outputs.predictions.PredictionWriter` predict turns on every output: CSV
tables with calibrated thresholds and yes / no, NIfTI masks, DICOM SEG for DICOM inputs
(``models/thresholds.json`` is used when present).

Unreadable files are reported one line each (file and problem) as they occur, the others still run;
:class:`PredictSummary` lists them and the command exits 1 when any failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from cxrfx.errors import ConfigError, CXRFXError
from cxrfx.metrics.calibration import load_thresholds

__all__ = ["PredictSummary", "load_bundle_config", "predict", "main_predict", "calibrate_bundle", "GradCamHandler"]

_LOG = "cxrfx.predict"


def _config_paths(bundle: str, configs: str | Sequence[str] | None) -> list[str]:
    if isinstance(configs, str):
        configs = [c for c in configs.split(",") if c.strip()]
    paths = [os.path.join(bundle, "configs", "inference.json")]
    for c in configs or ():
        c = str(c).strip()
        paths.append(c if os.path.exists(c) else os.path.join(bundle, "configs", c))
    for p in paths:
        if not os.path.isfile(p):
            raise ConfigError(f"{p}: bundle config not found")
    return paths


def load_bundle_config(bundle: str, configs: str | Sequence[str] | None = None, device: str | None = None,
                       **overrides):
    """The bundle's inference config (``configs/inference.json`` + ``configs``) as a MONAI ``ConfigParser``,
    with ``bundle_root`` set to ``bundle`` and ``overrides`` (config ids -> values) applied."""
    from monai.bundle import ConfigParser

    bundle = os.path.abspath(os.fspath(bundle))
    if not os.path.isdir(bundle):
        raise ConfigError(f"{bundle}: bundle folder not found")
    parser = ConfigParser()
    parser.read_config(_config_paths(bundle, configs))
    parser["bundle_root"] = bundle
    if device:
        parser["device"] = f"$torch.device('{device}')"
    for key, value in overrides.items():
        parser[key] = value
    return parser


@contextlib.contextmanager
def _plain_errors():
    """MONAI wraps errors raised while instantiating or evaluating config items in RuntimeError; give back
    the cxrfx error inside (it names the file and the problem) so the CLI prints it as one line."""
    try:
        yield
    except RuntimeError as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, CXRFXError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


def _initialize(parser) -> None:
    """Run the bundle's ``initialize`` expressions after checking the weights exist."""
    if "ckpt_path" in parser:
        ckpt = parser.get_parsed_content("ckpt_path")
        if not os.path.isfile(ckpt):
            raise ConfigError(f"{ckpt}: the bundle has no trained weights there (train it, or set --ckpt_path)")
    if "initialize" in parser:
        with _plain_errors():
            parser.get_parsed_content("initialize", instantiate=True)


def _load_weights(parser, evaluator=None) -> None:
    """Load the weights now through the bundle's ``CheckpointLoader`` handlers and print their reports, as the
    bundle's run would at its start; with ``evaluator``, take those handlers off its start so the file is read
    once. (Bundles that load their weights in ``initialize`` have no such handler: nothing to do.)"""
    from cxrfx.engines.handlers import CheckpointLoader
    from cxrfx.errors import MissingWeightsError

    if "handlers" not in parser:
        return
    with _plain_errors():
        handlers = parser.get_parsed_content("handlers")
    for handler in handlers or ():
        if not isinstance(handler, CheckpointLoader):
            continue
        try:
            reports = handler.load()
        except MissingWeightsError as exc:  # a SystemExit for `monai.bundle run`; here the CLI's one-line error
            raise ConfigError(str(exc)) from None
        for report in reports.values():
            print(report)
        if evaluator is not None:
            from ignite.engine import Events

            if evaluator.has_event_handler(handler, Events.STARTED):
                evaluator.remove_event_handler(handler, Events.STARTED)


def _core_network(network: torch.nn.Module) -> torch.nn.Module:
    net = network.module if hasattr(network, "module") else network
    return getattr(net, "network", net)  # TaskNet wraps a FoundationX


@dataclass
class PredictSummary:
    """What a predict run did: inputs seen, images written, one ``"path: problem"`` line per failure;
    ``seconds`` in all, ``run_seconds`` for the images alone (without imports and model set-up)."""

    inputs: int
    written: int
    output_dir: str
    seconds: float
    run_seconds: float
    failures: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        per = self.run_seconds / max(self.inputs, 1)
        head = (f"{self.written}/{self.inputs} image(s) predicted into {self.output_dir} in {self.seconds:.1f} s "
                f"({per:.2f} s per image after {self.seconds - self.run_seconds:.1f} s of set-up)")
        if not self.failures:
            return [head]
        return [head, f"{len(self.failures)} problem(s):"] + [f"  {f}" for f in self.failures]


class GradCamHandler:
    """Ignite handler: after each image, Grad-CAM overlays for its classification heads.

    For every head, the labels predicted positive (threshold from the writer's calibration), or the most
    probable label when none is: ``<stem>_gradcam_<head>_<label>.png`` in the writer's output folder.
    """

    def __init__(self, network: torch.nn.Module, writer):
        self.network, self.writer = _core_network(network), writer
        self.written: list[str] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        import json

        from cxrfx.outputs.gradcam import gradcam, save_heatmap_overlay
        from cxrfx.outputs.tables import decide

        item, output = engine.state.batch, engine.state.output or {}
        if not isinstance(item, Mapping) or "error" in item or "json" not in output:
            return
        with open(output["json"], encoding="utf-8") as f:
            record = json.load(f)
        stem = self.writer.stem_for(item["path"])
        for key, probs in record["heads"].items():
            task, head = key.split("/", 1)
            if task != "cls" or head not in getattr(self.network, "cls_heads", {}):
                continue
            decisions = decide(head, probs, getattr(self.writer, "thresholds", None))
            labels = [lab for lab, d in decisions.items() if d["positive"]] or [max(probs, key=probs.get)]
            names = list(probs)
            maps = gradcam(self.network, item["image"], head, [names.index(lab) for lab in labels])
            for lab in labels:
                d = decisions[lab]
                caption = f"{head}\n{lab}\np={d['probability']:.2f} ({'yes' if d['positive'] else 'no'})"
                path = os.path.join(self.writer.output_dir, f"{stem}_gradcam_{head}_{lab}.png")
                self.written.append(save_heatmap_overlay(path, item["original"], maps[names.index(lab)], caption))


class _TqdmHandler(logging.Handler):
    """Per-file error lines printed above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(f"error: {record.getMessage()}", file=sys.stderr)


def predict(bundle: str, input: str, output: str, configs: str | Sequence[str] | None = None, gradcam: bool = False,
            thresholds: str | None = None, device: str | None = None, progress: bool = True,
            **overrides) -> PredictSummary:
    """Run a bundle's inference on a file, a folder (recursive) or a DICOM series folder.

    Args:
        bundle: bundle folder (with ``configs/inference.json`` and its weights).
        input: image file, folder, or datalist ``.json`` (its test split).
        output: output folder.
        configs: extra config files merged over inference.json (names under ``configs/`` or paths).
        gradcam: also write Grad-CAM overlays for the classification heads.
        thresholds: thresholds JSON (default: the bundle's ``models/thresholds.json`` when present).
        device: e.g. ``cpu`` or ``cuda:0`` (default: the bundle's choice).
        progress: show a progress bar.
        overrides: config ids -> values (e.g. ``image_size=512``, ``ckpt_path=...``).
    """
    from tqdm import tqdm

    start = time.perf_counter()
    if not os.path.exists(input):
        raise ConfigError(f"{input}: input not found")
    bundle = os.path.abspath(bundle)
    parser = load_bundle_config(bundle, configs, device, input_path=os.path.abspath(input),
                                output_dir=os.path.abspath(output), **overrides)
    thresholds = thresholds or os.path.join(bundle, "models", "thresholds.json")
    if os.path.exists(thresholds):
        load_thresholds(thresholds)  # a broken file is named here, not deep inside the writer's construction
    writer_cfg = parser.get("writer", {})
    if isinstance(writer_cfg, Mapping) and str(writer_cfg.get("_target_", "")).endswith("PredictionWriter"):
        extras = {"tables": True, "nifti": True, "dicom_seg": True, "input_root": os.path.abspath(input),
                  "thresholds": os.path.abspath(thresholds) if os.path.exists(thresholds) else None}
        for key, value in extras.items():
            parser[f"writer#{key}"] = value
    else:
        logging.getLogger(_LOG).warning("the bundle's writer is not a PredictionWriter: tables, NIfTI, DICOM SEG "
                                        "and thresholds are left to it")
    _initialize(parser)
    with _plain_errors():
        evaluator = parser.get_parsed_content("evaluator")
    _load_weights(parser, evaluator)
    total = len(evaluator.data_loader.dataset)
    if total == 0:
        raise ConfigError(f"{input}: no images found")
    writer = parser.get_parsed_content("writer") if "writer" in parser else None
    if gradcam:
        GradCamHandler(parser.get_parsed_content("network"), writer).attach(evaluator)
    from ignite.engine import Events

    bar = tqdm(total=total, desc="predict", unit="image", disable=not progress, file=sys.stderr)
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda _: bar.update(1))
    log = logging.getLogger(_LOG)
    handler, propagate = _TqdmHandler(logging.ERROR), log.propagate
    log.addHandler(handler)
    log.propagate = False
    run_start = time.perf_counter()
    try:
        evaluator.run()
    finally:
        bar.close()
        log.removeHandler(handler)
        log.propagate = propagate
    failures = list(getattr(evaluator, "failures", [])) + list(getattr(writer, "failures", []))
    unread = len(getattr(evaluator, "failures", []))
    return PredictSummary(inputs=total, written=total - unread, output_dir=os.path.abspath(output),
                          seconds=time.perf_counter() - start, run_seconds=time.perf_counter() - run_start,
                          failures=failures)


def _datalists(bundle: str, parser, datalists, heads: Sequence[str], configs, overrides) -> dict[str, str]:
    """Head name -> datalist path: given explicitly (``{head: path}``, or paths whose ``name`` is the head),
    else the ``datasets`` entry of the bundle's ``train.json`` (``{name: {"datalist": path}}``)."""
    import json

    if isinstance(datalists, str):
        datalists = [d for d in datalists.split(",") if d.strip()]
    if isinstance(datalists, Mapping):
        return {str(k): str(v) for k, v in datalists.items()}
    if datalists:
        found = {}
        for path in datalists:
            try:
                with open(path, encoding="utf-8") as f:
                    found[json.load(f)["name"]] = str(path)
            except (OSError, ValueError, KeyError) as exc:
                raise ConfigError(f"{path}: not a readable datalist ({type(exc).__name__}: {exc})") from None
        return found
    train = os.path.join(bundle, "configs", "train.json")
    if not os.path.isfile(train):
        raise ConfigError(f"{bundle}: no train.json to take the validation datalists from; pass --datalist")
    from monai.bundle import ConfigParser

    tp = ConfigParser()
    tp.read_config([train] + [p for p in _config_paths(bundle, configs)[1:]])
    tp["bundle_root"] = bundle
    for key, value in overrides.items():
        tp[key] = value
    if "datasets" not in tp:
        raise ConfigError(f"{train}: has no 'datasets' entry; pass --datalist")
    sources = tp.get_parsed_content("datasets")
    return {name: src["datalist"] for name, src in sources.items() if name in heads and "datalist" in src}


@torch.no_grad()
def calibrate_bundle(bundle: str, datalists=None, configs: str | Sequence[str] | None = None,
                     split: str = "validation", out: str | None = None, device: str | None = None, **overrides):
    """Per-label Youden-J thresholds of every classification head on its dataset's ``split``; written to
    ``out`` (default ``<bundle>/models/thresholds.json``). Returns ``(path, {head: {label: ThresholdResult}})``.

    Images that cannot be read are skipped (and reported in the log); labels ``-1`` (unknown) are left out.
    """
    from cxrfx.data.datalist import load_datalist, read_datalist
    from cxrfx.engines.inference import prediction_dataset
    from cxrfx.metrics.calibration import calibrate_scores, save_thresholds

    bundle = os.path.abspath(bundle)
    parser = load_bundle_config(bundle, configs, device, **overrides)
    _initialize(parser)
    _load_weights(parser)
    network = _core_network(parser.get_parsed_content("network")).eval()
    heads = list(getattr(network, "cls_heads", {}) or {})
    if not heads:
        raise ConfigError(f"{bundle}: the bundle's network has no classification heads to calibrate")
    sources = _datalists(bundle, parser, datalists, heads, configs, overrides)
    if not sources:
        raise ConfigError(f"{bundle}: no datalist for any classification head {heads}")
    size = parser.get_parsed_content("image_size")
    dev = next(network.parameters()).device
    log = logging.getLogger(_LOG)
    results = {}
    for head, path in sources.items():
        if head not in heads:
            raise ConfigError(f"{path}: dataset {head!r} has no classification head (heads: {heads})")
        names = read_datalist(path).get("tasks", {}).get("classification", {}).get("labels")
        items = load_datalist(path, split)
        dataset = prediction_dataset(path, size, split)
        scores, labels = [], []
        for item, sample in zip(items, dataset):
            if "error" in sample:
                log.error(f"skipped {sample['error']}")
                continue
            logits = network(sample["image"][None].to(dev), task="cls", head=head)
            scores.append(torch.sigmoid(logits)[0].cpu().numpy())
            labels.append(np.asarray(item.get("label", [-1] * scores[-1].size), dtype=np.float64))
        if not scores:
            raise ConfigError(f"{path}: no readable images in split {split!r}")
        n = scores[0].size
        names = list(names or [str(i) for i in range(n)])
        if len(names) != n or any(lab.size != n for lab in labels):
            raise ConfigError(f"{path}: {len(names)} labels in the datalist, head {head!r} has {n} outputs")
        results[head] = calibrate_scores(np.stack(scores), np.stack(labels), names)
    target = out or os.path.join(bundle, "models", "thresholds.json")
    return save_thresholds(target, results, split=split, source=", ".join(sorted(sources.values()))), results


def main_predict(*args, **kwargs) -> int:
    """CLI wrapper: run :func:`predict`, print the summary (problems on stderr), return the exit code
    (1 when any file failed)."""
    summary = predict(*args, **kwargs)
    first, *rest = summary.lines()
    print(first)
    for line in rest:
        print(line, file=sys.stderr)
    return 1 if summary.failures else 0
