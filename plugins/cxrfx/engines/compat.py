"""``Compat``: switches that reproduce defects of the Foundation X reference code (REFERENCE §1.10), all off by default.

cxrfx fixes these defects; each switch brings one back, so a "paper-faithful" run can be compared with a fixed one
and the difference reported. Other §1.10 items have their own parity options where they live: the teacher's
``buffers="none"`` (item 3), the ``dino`` head's ``num_logits: 14`` (item 8) and ``loss: {"interm_weight": 0.0}``.

In a bundle config (``train.json``)::

    "compat": {"optimizer_skips_localization": false, "det_consistency_no_grad": false},
    "train#optimizer#compat": "@compat",
    "train#trainer#det_consistency_gradient": "$not @compat#det_consistency_no_grad",
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from torch import nn

from cxrfx.errors import ConfigError

__all__ = ["Compat", "reference_unoptimized_parameters"]


@dataclasses.dataclass(frozen=True)
class Compat:
    """One boolean per reproduced defect (REFERENCE §1.10).

    Attributes:
        optimizer_skips_localization: item 1. The reference's four optimizer groups select by name (``backbone``,
            ``segmentation_``, ``transformer.encoder``, ``transformer.decoder``) and so leave out ``input_proj``,
            ``level_embed``, ``tgt_embed``, ``label_enc``, every decoder's two-stage layers and its final
            ``class_embed_`` / ``bbox_embed_``: 5.48 M parameters at Swin-B sizes that never change (final class
            logits from a fixed random layer). On: :func:`~cxrfx.engines.build_optimizer` leaves the same parameters
            of a ``dino`` detection branch out (:func:`reference_unoptimized_parameters`).
        det_consistency_no_grad: item 2. The reference computes the student's localization consistency features
            with an eval-mode deep copy of the model, so that term sends no gradient. On: the trainer detaches the
            student's side of the detection consistency term (``MultiTaskTrainer(det_consistency_gradient=False)``).
    """

    optimizer_skips_localization: bool = False
    det_consistency_no_grad: bool = False

    @classmethod
    def of(cls, value: Compat | Mapping | None) -> Compat:
        """A :class:`Compat` from itself, a mapping of its fields (a config block) or None (all off)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"compat must be a mapping of switches, got {type(value).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - fields)
        if unknown:  # a misspelt switch would otherwise silently leave the defect fixed
            raise ConfigError(f"unknown compat switch(es) {unknown}; known: {sorted(fields)}")
        wrong = [k for k, v in value.items() if not isinstance(v, bool)]
        if wrong:
            raise ConfigError(f"compat switches must be true / false: {wrong}")
        return cls(**value)


# Our names of the parameters the reference's optimizer groups leave out (heads/dino/fx_keys.py maps them):
# det_neck.input_proj <- input_proj; det_encoder.level_embed <- transformer.level_embed; det_queries.{tgt_embed,
# label_enc} <- transformer.tgt_embed, label_enc; in each det head everything but its decoder: enc_output,
# enc_output_norm, enc_out_{class,bbox}_embed, memory_proj <- transformer.<same>.{k} / enc_outputMem_LinearProjection,
# class_embed / bbox_embed <- class_embed_ / bbox_embed_. Kept in: the decoder (transformer.decoder.{k}, with its
# refinement MLP bbox_embed), the encoder layers (transformer.encoder) and the LayerNorms det_neck.norms (the
# reference's backbone.0.Locnorm*, in its backbone group).
_UNOPTIMIZED = re.compile(
    r"det_neck\.input_proj\.|det_encoder\.level_embed$|det_queries\.|det_heads\.[^.]+\.(?!decoder\.)")


def reference_unoptimized_parameters(network: nn.Module) -> list[str]:
    """Names of the ``dino`` localization parameters that the reference's optimizer never updates (empty for a model
    without a ``dino`` detection branch)."""
    network = network.module if hasattr(network, "module") else network
    if getattr(network, "det_queries", None) is None:  # no DINO branch (e.g. RetinaNet heads): nothing to leave out
        return []
    return [name for name, _ in network.named_parameters() if _UNOPTIMIZED.match(name)]
