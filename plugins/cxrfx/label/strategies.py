"""Active learning strategies: which unlabelled image to annotate next (``/activelearning/<strategy>``).

- ``random``: MONAI Label's stock strategy (an unlabelled image, older suggestions favoured).
- ``epistemic``: MC dropout. The served network is rebuilt with its ``dropout`` option (FoundationX puts
  dropout before every head) and the served weights; with dropout active and everything else in eval mode, ``T``
  stochastic passes per image; the score is the mean per-pixel (segmentation) or per-label (classification)
  variance of the sigmoid outputs. The image with the highest variance is returned.
- ``acft``: ACFT (Zhou et al., CVPR 2017 / MedIA 2021; :mod:`cxrfx.label.acft`): the served model (the
  pretrained weights until the first ``/train``, then the continually fine-tuned ones) predicts on augmented
  copies of each image (gamma, contrast, small shifts undone on the output); the score is the entropy of the
  predictions plus their diversity (symmetric KL between copies), averaged over the image's most uncertain
  ``alpha`` fraction of locations. Works before any training.
- ``disagreement`` (teacher-student): the EMA teacher and the student of the last fine-tuning run
  (``models/last.pt`` with both) run on each candidate; the score is the mean absolute difference of their
  sigmoid outputs over every head. Where the slow-moving teacher and the student disagree most, the model is
  least settled: those images are worth labelling. Before any training there is no teacher: the request fails
  with a message saying so.

Candidates: the unlabelled images (``final`` tag), at most ``max_samples`` of them (a seeded random subset when
there are more), so a request stays within seconds on a CPU. The response adds ``"score"`` and ``"scores"``.
"""

from __future__ import annotations

import logging
import os
import random
import threading

import torch

from cxrfx.errors import ConfigError, CXRReadError
from cxrfx.label.served import ServedBundle

from monailabel.interfaces.tasks.strategy import Strategy  # noqa: I001 (label venv only)

__all__ = ["ScoredStrategy", "EpistemicStrategy", "DisagreementStrategy", "ACFTStrategy", "sigmoid_outputs"]

logger = logging.getLogger(__name__)


def sigmoid_outputs(network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Every head's per-location class probabilities (``HeadType.probabilities``) of ``network`` on ``x``, flattened."""
    parts = []
    for key, out in network.forward_all(x).items():  # one backbone pass, every head whatever its type
        parts += [p.flatten() for p in network.head_type(key.split("/")[0]).probabilities(out)]
    return torch.cat(parts)


class ScoredStrategy(Strategy):
    """Score every candidate image with :meth:`score` and return the highest."""

    def __init__(self, description: str, served: ServedBundle, max_samples: int = 16, seed: int = 0):
        super().__init__(description)
        self.served, self.max_samples, self.seed = served, max_samples, seed
        self._lock = threading.Lock()

    def info(self) -> dict:
        return {"description": self.description, "model": os.path.basename(self.served.bundle),
                "max_samples": self.max_samples}

    def score(self, x: torch.Tensor) -> float:
        raise NotImplementedError

    def prepare(self) -> None:
        """Load what :meth:`score` needs (called once per request)."""

    def ready(self) -> str | None:
        """Why the strategy cannot run now (the request is refused with 409), or None."""
        return None

    def __call__(self, request, datastore) -> dict | None:
        images = sorted(datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels")))
        if not images:
            return None
        limit = int(request.get("max_samples") or self.max_samples)  # checked by cxrfx.label.validation
        if limit < 1:
            raise ConfigError(f"max_samples: {limit} is not a positive integer")
        if len(images) > limit:
            images = sorted(random.Random(self.seed).sample(images, limit))
        scores = {}
        with self._lock, torch.no_grad():
            self.prepare()
            for image_id in images:
                try:
                    _, x, _ = self.served.load_image(datastore.get_image_uri(image_id))
                except CXRReadError as e:  # one unreadable file must not stop everybody's selection
                    logger.warning(f"{image_id}: skipped by {request.get('strategy')} ({e})")
                    continue
                scores[image_id] = float(self.score(x))
        if not scores:
            return None
        best = max(scores, key=scores.get)
        logger.info(f"{request.get('strategy')}: {best} (score {scores[best]:.3g}) among {len(scores)} image(s)")
        return {"id": best, "score": scores[best], "scores": scores}


class EpistemicStrategy(ScoredStrategy):
    """MC-dropout variance (see module docstring)."""

    def __init__(self, served: ServedBundle, dropout: float = 0.2, samples: int = 5, max_samples: int = 16):
        super().__init__(f"Epistemic uncertainty: MC-dropout variance ({samples} passes, p={dropout}) of "
                         f"{os.path.basename(served.bundle)}", served, max_samples)
        self.dropout, self.samples = dropout, samples
        self._net: torch.nn.Module | None = None

    def prepare(self) -> None:
        net = self.served.load_into(self.served.build_network(dropout=self.dropout))
        for m in net.modules():  # dropout on, everything else (drop path, batch statistics) as at inference
            if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d)):
                m.train()
        self._net = net

    def score(self, x: torch.Tensor) -> float:
        torch.manual_seed(self.seed)  # the same masks for every image: scores compare images, not draws
        outs = torch.stack([sigmoid_outputs(self._net, x) for _ in range(self.samples)])
        return outs.var(dim=0).mean().item()


class DisagreementStrategy(ScoredStrategy):
    """Teacher-student disagreement (see module docstring)."""

    def __init__(self, served: ServedBundle, max_samples: int = 16):
        super().__init__(f"Teacher-student disagreement of {os.path.basename(served.bundle)} (EMA teacher vs "
                         f"student of models/last.pt)", served, max_samples)
        self._student = self._teacher = None

    def checkpoint(self) -> str:
        return os.path.join(self.served.bundle, "models", "last.pt")

    def ready(self) -> str | None:
        if not os.path.exists(self.checkpoint()):
            return (f"no student/teacher checkpoint yet ({os.path.basename(self.served.bundle)} has not been "
                    f"trained); run /train/<model> first")
        return None

    def prepare(self) -> None:
        path = self.checkpoint()
        if not os.path.exists(path):
            raise ConfigError(f"{path}: no student/teacher checkpoint yet; run /train on this model first")
        self._student = self.served.load_into(self.served.build_network(), path, key="student")
        self._teacher = self.served.load_into(self.served.build_network(), path, key="teacher")

    def score(self, x: torch.Tensor) -> float:
        return (sigmoid_outputs(self._student, x) - sigmoid_outputs(self._teacher, x)).abs().mean().item()


class ACFTStrategy(ScoredStrategy):
    """ACFT entropy + diversity over augmented copies (see the module docstring and :mod:`cxrfx.label.acft`)."""

    def __init__(self, served: ServedBundle, max_samples: int = 16, alpha: float = 0.25,
                 lambda_entropy: float = 1.0, lambda_diversity: float = 1.0):
        super().__init__(f"ACFT: entropy + diversity of {os.path.basename(served.bundle)}'s predictions over "
                         f"augmented copies (top {alpha:g} of locations)", served, max_samples)
        self.alpha, self.lambda_entropy, self.lambda_diversity = alpha, lambda_entropy, lambda_diversity
        self._net: torch.nn.Module | None = None

    def prepare(self) -> None:
        self._net = self.served.network()

    def score(self, x: torch.Tensor) -> float:
        from cxrfx.label.acft import acft_score, network_outputs

        return acft_score(network_outputs(self._net, x), self.alpha, self.lambda_entropy, self.lambda_diversity)
