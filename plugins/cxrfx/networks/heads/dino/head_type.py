"""The ``"dino"`` detection head type: Foundation X's localization branch (DINO, Zhang et al. 2023) behind the
head registry, so ``FoundationX(head_types={"det": "dino"})`` trains, scores and predicts with it through the same
trainer, evaluator and predictor as RetinaNet.

Shared by every dataset (``build_shared``; state-dict prefixes):

- ``det_neck`` (:class:`~.encoder.DINONeck`): LayerNorm of Swin stages 1-3, ``input_proj`` to ``hidden_dim``, a
  stride-64 level;
- ``det_encoder`` (:class:`~.encoder.DeformableEncoder`): ``level_embed`` + the deformable encoder; its output
  levels are the shared feature (also the teacher's consistency target);
- ``det_queries``: ``tgt_embed`` (the content of the ``num_queries`` selected queries) and ``label_enc`` (the
  denoising queries' label embedding), both shared as in the reference.

Per dataset (``build_head``): :class:`~.decoder.DINODecoderHead`, the two-stage selection layers, the decoder and its
embeddings. In a Lock step only the dataset's head trains (``engines/lock_release.py``); that is the reference's
localization lock rule (trunk and encoder frozen; decoder and two-stage layers trainable) except that ``input_proj``,
``level_embed``, ``tgt_embed`` and ``label_enc`` — parameters the reference never optimises at all (REFERENCE §1.10
item 1) — are frozen in Lock and train in Release.

Raw output: ``{"pred_logits" (B, Q, K), "pred_boxes" (B, Q, 4) normalised (cx, cy, w, h), "aux_outputs",
"interm_outputs", "token_logits", "hidden", "memory", "shapes"}``; the decoder turns it into the detection
prediction form (boxes ``[r1, c1, r2, c2]`` pixels, 0-based labels, scores): DINO's top-``num_select`` over
queries x classes, no NMS unless ``nms_thresh`` is set. ``probabilities`` (uncertainty scoring for MONAI Label) are
the query selection's per-token class probabilities, at fixed locations.

Differences from the reference, deliberate: the denoising queries run in their own decoder pass (each group sees
only itself; in the reference they also read the matching queries, which never read them — so the matching
queries' outputs are the same either way); the number of selected queries is capped at the number of encoder tokens
(the reference fails below it: 900 queries need inputs of at least 224 px); logits per dataset are the dataset's
classes unless ``num_logits`` is set (Foundation X: 14 everywhere, REFERENCE §1.10 item 8).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from monai.data.box_utils import batched_nms
from torch import nn

from cxrfx.networks.heads.dino.criterion import LOSS_DEFAULTS, SetCriterion, to_normalized_cxcywh
from cxrfx.networks.heads.dino.decoder import DINODecoderHead
from cxrfx.networks.heads.dino.denoising import denoising_queries
from cxrfx.networks.heads.dino.encoder import DeformableEncoder, DINONeck
from cxrfx.networks.heads.registry import DetectionHeadType, register_head

__all__ = ["DINOHeads", "DINOQueries", "EncoderLevels", "DECODE_DEFAULTS"]

DECODE_DEFAULTS = {"num_select": 300, "score_thresh": 0.0, "nms_thresh": None}


class DINOQueries(nn.Module):
    """Query embeddings every dataset's decoder reads: ``tgt_embed`` (Q, C), ``label_enc`` (labelbook + 1, C)."""

    def __init__(self, num_queries: int, d_model: int, labelbook: int):
        super().__init__()
        self.tgt_embed = nn.Embedding(num_queries, d_model)
        self.label_enc = nn.Embedding(labelbook + 1, d_model)
        nn.init.normal_(self.tgt_embed.weight)


class EncoderLevels(list):
    """The encoder's output levels (B, C, H, W) (a list: what the consistency loss compares), carrying the shared
    query embeddings the heads read."""

    queries: DINOQueries


class _Criterion:
    def __init__(self, head_type, model, head: str):
        self.head_type, self.model, self.name = head_type, model, head
        self.options = model.det_heads[head].train_options
        self.set_criterion = SetCriterion(self.options["loss"])

    def __call__(self, out: dict, images: torch.Tensor, batch) -> torch.Tensor:
        h, w = images.shape[-2:]
        targets = [{"labels": t["labels"], "boxes": to_normalized_cxcywh(t["boxes"], h, w)}
                   for t in self.head_type.targets(batch, images.device)]
        head = self.model.det_heads[self.name]
        dn = None
        if head.training and self.options["dn_number"] > 0:
            queries = denoising_queries(targets, self.model.det_queries.label_enc, head.num_classes,
                                        self.options["dn_number"], self.options["dn_label_noise"],
                                        self.options["dn_box_noise"])
            if queries is not None:
                logits, boxes, _ = head.decode(queries.tgt, queries.refpoints, out["memory"], out["shapes"],
                                               queries.attn_mask)
                dn_out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1],
                          "aux_outputs": [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]}
                dn = (dn_out, queries.positive_indices(targets), queries.groups)
        losses = self.set_criterion(out, targets, dn)
        return sum(losses.values())


class _Decoder:
    def __init__(self, settings: Mapping):
        unknown = set(settings) - set(DECODE_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown dino decoder settings {sorted(unknown)}; known: {sorted(DECODE_DEFAULTS)}")
        self.cfg = {**DECODE_DEFAULTS, **dict(settings)}

    def __call__(self, out: dict, images: torch.Tensor) -> list[dict]:
        h, w = images.shape[-2:]
        logits = out["pred_logits"].float()
        b, q, k = logits.shape
        scores, index = torch.topk(logits.sigmoid().reshape(b, -1), min(self.cfg["num_select"], q * k), dim=1)
        query, labels = torch.div(index, k, rounding_mode="floor"), index % k
        cx, cy, bw, bh = torch.gather(out["pred_boxes"].float(), 1, query[..., None].expand(-1, -1, 4)).unbind(-1)
        boxes = torch.stack(((cy - bh / 2) * h, (cx - bw / 2) * w, (cy + bh / 2) * h, (cx + bw / 2) * w), -1)
        found = []
        for s, lab, box in zip(scores, labels, boxes):
            keep = s >= self.cfg["score_thresh"]
            s, lab, box = s[keep], lab[keep], box[keep]
            if self.cfg["nms_thresh"] is not None and len(s):
                kept = batched_nms(box, s, lab, self.cfg["nms_thresh"])
                s, lab, box = s[kept], lab[kept], box[kept]
            found.append({"boxes": box, "labels": lab, "scores": s})
        return found


@register_head("dino")
class DINOHeads(DetectionHeadType):
    """Foundation X's DINO localization branch (module docstring).

    Options: ``hidden_dim`` (256), ``num_queries`` (900), ``enc_layers`` / ``dec_layers`` (6 / 6), ``ffn_dim``
    (2048), ``n_heads`` (8), ``n_points`` (4), ``dropout`` (0), ``extra_levels`` (1: stride 64),
    ``pos_temperature`` (20), ``groupnorm_groups`` (32), ``labelbook`` (denoising label embeddings: labelbook + 1
    rows; Foundation X 15), ``num_logits`` (None: each dataset's classes; Foundation X 14), denoising ``dn_number``
    (100), ``dn_label_noise`` (0.5), ``dn_box_noise`` (1.0, Foundation X's run script), ``loss`` (overrides of
    :data:`~.criterion.LOSS_DEFAULTS`).
    """

    shared_attributes = ("det_neck", "det_encoder", "det_queries")
    defaults = {"hidden_dim": 256, "num_queries": 900, "enc_layers": 6, "dec_layers": 6, "ffn_dim": 2048,
                "n_heads": 8, "n_points": 4, "dropout": 0.0, "extra_levels": 1, "pos_temperature": 20.0,
                "groupnorm_groups": 32, "labelbook": 100, "num_logits": None, "dn_number": 100,
                "dn_label_noise": 0.5, "dn_box_noise": 1.0, "loss": {}}

    def options(self, given):
        options = super().options(given)
        unknown = set(options["loss"] or {}) - set(LOSS_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown dino loss settings {sorted(unknown)}; known: {sorted(LOSS_DEFAULTS)}")
        return options

    def build_shared(self, stage_channels, options):
        d, levels = int(options["hidden_dim"]), 3 + int(options["extra_levels"])
        return {"det_neck": DINONeck(stage_channels, d, (1, 2, 3), int(options["extra_levels"]),
                                     int(options["groupnorm_groups"])),
                "det_encoder": DeformableEncoder(d, int(options["enc_layers"]), int(options["ffn_dim"]),
                                                 float(options["dropout"]), levels, int(options["n_heads"]),
                                                 int(options["n_points"]), float(options["pos_temperature"])),
                "det_queries": DINOQueries(int(options["num_queries"]), d, int(options["labelbook"]))}

    def build_head(self, model, num_classes, dropout, options):
        logits = int(options["num_logits"] or num_classes)
        if logits < num_classes:
            raise ValueError(f"num_logits ({logits}) is below the dataset's {num_classes} classes")
        head = DINODecoderHead(logits, int(options["hidden_dim"]), int(options["dec_layers"]),
                               int(options["ffn_dim"]), int(options["n_heads"]), int(options["n_points"]),
                               3 + int(options["extra_levels"]), int(options["num_queries"]),
                               float(options["dropout"]) or float(dropout))
        # what the criterion reads (a plain attribute: settings, not weights)
        head.train_options = {k: options[k] for k in ("dn_number", "dn_label_noise", "dn_box_noise", "loss")}
        return head

    def shared_forward(self, model, feats):
        levels = EncoderLevels(model.det_encoder(model.det_neck(feats)))
        levels.queries = model.det_queries
        return levels

    def head_forward(self, head, shared, image_size):
        return head(list(shared), shared.queries.tgt_embed.weight)

    def criterion(self, model, head, loss=None):
        if loss is not None:
            raise ValueError("the dino head's loss is set by its 'loss' option (LOSS_DEFAULTS keys), not a module")
        return _Criterion(self, model, head)

    def decoder(self, model, head, **settings):
        return _Decoder(settings)

    def probabilities(self, out):
        # per location, not per query: the queries are re-selected for every input, so the i-th query of two
        # augmented copies (ACFT) or two dropout samples (epistemic scoring) is not the same object; the selection
        # scores every encoder token, at fixed positions, as a dense head scores its anchors
        return [torch.sigmoid(out["token_logits"].float())]
