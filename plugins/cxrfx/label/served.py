"""A bundle as the MONAI Label server serves it: config, network, weights (reloaded when they change), inputs.

The bundle's ``configs/inference.json`` (+ override configs such as ``demo.json``) is read through
:func:`cxrfx.predict.load_bundle_config` — the same reading as ``python -m cxrfx predict`` — so the served network
is exactly the bundle's ``network_def``. Weights are ``<bundle>/models/model.pt``; when training replaces that
file (atomically) the next request loads the new weights (checked by modification time and size, under a lock,
so concurrent requests never see a half-loaded network).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence

import numpy as np
import torch

from cxrfx.errors import ConfigError

__all__ = ["ServedBundle", "resolve_image", "save_state_dict"]

logger = logging.getLogger(__name__)


def resolve_image(path: str) -> str:
    """A DICOMweb series folder (what MONAI Label's DICOMweb datastore hands over) -> its single instance file;
    a file stays as it is."""
    if not os.path.isdir(path):
        return path
    files = sorted(os.path.join(path, f) for f in os.listdir(path) if not f.startswith("."))
    files = [f for f in files if os.path.isfile(f)]
    if not files:
        raise ConfigError(f"{path}: the series folder holds no file")
    if len(files) > 1:
        logger.warning(f"{path}: {len(files)} instances in the series; using {os.path.basename(files[0])}")
    return files[0]


def save_state_dict(state_dict: dict, path: str) -> str:
    """Write ``{"model": state_dict}`` atomically (temporary file + rename), so a reader never sees half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
    torch.save({"model": {k: v.detach().cpu() for k, v in state_dict.items()}}, tmp)
    os.replace(tmp, path)
    return path


class ServedBundle:
    """One bundle folder served by the app.

    Args:
        bundle: the served copy of the bundle (its ``models/`` is written by training).
        configs: override configs merged over ``inference.json`` (e.g. ``["demo.json"]``).
        device: torch device for inference.
        seed: seed of the initial weights written when the bundle has none yet (see :meth:`ensure_weights`).
    """

    def __init__(self, bundle: str, configs: Sequence[str] = (), device: str = "cpu", seed: int = 0):
        from cxrfx.predict import load_bundle_config

        self.bundle, self.configs, self.device, self.seed = os.path.abspath(bundle), list(configs), device, seed
        self.parser = load_bundle_config(self.bundle, self.configs, device)
        self.image_size = int(self.parser.get_parsed_content("image_size"))
        self.weights = os.path.join(self.bundle, "models", "model.pt")
        self._lock = threading.Lock()
        self._net: torch.nn.Module | None = None
        self._stamp: tuple | None = None
        self.initialised = False  # True when the served weights are the seeded initial ones (never trained)

    # -- configuration -------------------------------------------------------------------------------------
    def get(self, key: str, default=None):
        """A parsed config value (``default`` when the id is absent)."""
        return self.parser.get_parsed_content(key) if key in self.parser else default

    def get_train(self, key: str, default=None):
        """A value of the bundle's ``train.json`` (+ the served override configs)."""
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config([os.path.join(self.bundle, "configs", c) for c in ["train.json", *self.configs]])
        parser["bundle_root"] = self.bundle
        return parser.get_parsed_content(key) if key in parser else default

    def metadata(self) -> dict:
        import json

        path = os.path.join(self.bundle, "configs", "metadata.json")
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def build_network(self, dropout: float | None = None) -> torch.nn.Module:
        """A fresh instance of the bundle's ``network_def`` (``dropout`` overrides its dropout: MC-dropout)."""
        from monai.bundle import ConfigParser

        parser = ConfigParser(self.parser.get())  # a copy: the served parser stays untouched
        if dropout is not None:
            parser["network_def"]["dropout"] = float(dropout)
        return parser.get_parsed_content("network_def", lazy=False).to(self.device)

    # -- weights -------------------------------------------------------------------------------------------
    def ensure_weights(self) -> None:
        """A bundle without ``models/model.pt`` (a fresh checkout: weights are not in git) gets the network's
        seeded initial weights, flagged as untrained in ``info``; ``/train`` replaces them."""
        if os.path.exists(self.weights):
            return
        torch.manual_seed(self.seed)
        save_state_dict(self.build_network().state_dict(), self.weights)
        self.initialised = True
        st = os.stat(self.weights)
        with open(self._seeded_marker(), "w", encoding="utf-8") as f:
            f.write(f"{st.st_mtime_ns} {st.st_size}\n")
        logger.warning(f"{self.weights}: no trained weights; serving seeded initial weights until /train runs")

    def _seeded_marker(self) -> str:
        return os.path.join(self.bundle, "models", ".seeded_weights")

    def untrained(self) -> bool:
        """True while the served weights are still the seeded initial ones (:meth:`ensure_weights`): the marker
        written then names the file's stamp, and training replaces the file (a new stamp). Survives restarts."""
        marker = self._seeded_marker()
        if not os.path.exists(marker) or not os.path.exists(self.weights):
            return False
        st = os.stat(self.weights)
        with open(marker, encoding="utf-8") as f:
            return f.read().strip() == f"{st.st_mtime_ns} {st.st_size}"

    def load_into(self, network: torch.nn.Module, path: str | None = None, key: str | None = None) -> torch.nn.Module:
        from cxrfx.networks import load_checkpoint

        path = path or self.weights
        if not os.path.exists(path):
            raise ConfigError(f"{path}: weights not found")
        report = load_checkpoint(network, path, source="cxrfx", key=key)
        if report.mismatched:
            raise ConfigError(f"{path}: weights do not fit the bundle's network ({report})")
        return network.eval()

    def network(self) -> torch.nn.Module:
        """The served network with the current weights (reloaded after training rewrote them)."""
        self.ensure_weights()
        st = os.stat(self.weights)
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if self._net is None or stamp != self._stamp:
                net = self.load_into(self.build_network())
                self._net, self._stamp = net, stamp
                logger.info(f"{self.weights}: loaded")
            return self._net

    def weights_stamp(self) -> str:
        """A short fingerprint of the served weights file (changes when training replaces it)."""
        import hashlib

        self.ensure_weights()
        with open(self.weights, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]

    # -- inputs --------------------------------------------------------------------------------------------
    def load_image(self, path: str) -> tuple[str, torch.Tensor, np.ndarray]:
        """(file, network input (1, 1, s, s), normalised original (H, W)) with the cxrfx reading of the file
        (orientation, DICOM LUTs, MONOCHROME1) and the same resize as ``cxrfx.engines.inference``."""
        from monai.transforms import Resized

        from cxrfx.io.transforms import LoadCXRd, NormalizeCXRd

        path = resolve_image(path)
        d = NormalizeCXRd("image")(LoadCXRd("image")({"image": path}))
        original = d["image"][0].numpy().copy()
        d = Resized("image", (self.image_size, self.image_size), mode="area")(d)
        return path, d["image"].as_tensor()[None].float().to(self.device), original
