"""One dataset's DINO decoder: two-stage query selection on the shared encoder's memory, then ``num_layers``
deformable decoder layers with iterative box refinement, and the class / box embeddings that give the outputs.

Foundation X gives each localization dataset its own copy of all of this (``transformer.decoder.{k}`` and the
per-dataset two-stage layers, REFERENCE §1.2); the parameter names here follow the reference so that its key map
(``fx_keys.py``) is a renaming of prefixes (ours under ``det_heads.<name>.``, the checkpoint's for dataset
index ``k``):

- ``memory_proj``: ``transformer.enc_outputMem_LinearProjection.{k}``;
- ``enc_output``, ``enc_output_norm``, ``enc_out_class_embed``, ``enc_out_bbox_embed``: ``transformer.<same>.{k}``;
- ``decoder.layers``, ``decoder.norm``, ``decoder.ref_point_head``: ``transformer.decoder.{k}.<same>``;
- ``decoder.bbox_embed`` (the refinement inside the decoder): ``bbox_embed.{k}.*`` (=
  ``transformer.decoder.{k}.bbox_embed``);
- ``class_embed``, ``bbox_embed`` (the outputs): ``class_embed_.{k}.*``, ``bbox_embed_.{k}.*``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cxrfx.networks.heads.dino.attention import MSDeformAttn
from cxrfx.networks.heads.dino.encoder import flatten_levels, level_shapes
from cxrfx.networks.heads.dino.position import inverse_sigmoid, sine_box_embedding

__all__ = ["MLP", "DeformableDecoderLayer", "DeformableDecoder", "DINODecoderHead", "encoder_proposals"]


class MLP(nn.Module):
    """Linear layers with ReLU between them (DETR's box head)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class DeformableDecoderLayer(nn.Module):
    """Self-attention among the queries, deformable cross-attention into the memory, ReLU FFN; post-norm."""

    def __init__(self, d_model: int = 256, d_ffn: int = 2048, dropout: float = 0.0, n_levels: int = 4,
                 n_heads: int = 8, n_points: int = 4):
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt, query_pos, reference_points, memory, shapes, self_attn_mask=None):
        q = tgt + query_pos
        tgt = self.norm2(tgt + self.dropout(self.self_attn(q, q, tgt, attn_mask=self_attn_mask, need_weights=False)[0]))
        tgt = self.norm1(tgt + self.dropout(self.cross_attn(tgt + query_pos, reference_points, memory, shapes)))
        return self.norm3(tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(tgt))))))


class DeformableDecoder(nn.Module):
    """``num_layers`` decoder layers; each layer's box refinement (``bbox_embed``, one MLP shared by the layers)
    moves the reference boxes the next layer reads. Returns the normed hidden states of every layer and the
    reference boxes each layer read (plus the last refined ones)."""

    def __init__(self, d_model: int = 256, num_layers: int = 6, d_ffn: int = 2048, dropout: float = 0.0,
                 n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(DeformableDecoderLayer(d_model, d_ffn, dropout, n_levels, n_heads, n_points)
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.bbox_embed = MLP(d_model, d_model, 4, 3)

    def forward(self, tgt, refpoints_unsigmoid, memory, shapes, self_attn_mask=None):
        ref = refpoints_unsigmoid.sigmoid()
        refs, hidden = [ref], []
        for layer in self.layers:
            ref_in = ref[:, :, None].expand(-1, -1, len(shapes), -1)  # no padding: valid ratios are 1
            query_pos = self.ref_point_head(sine_box_embedding(ref, self.d_model))
            tgt = layer(tgt, query_pos, ref_in, memory, shapes, self_attn_mask)
            new_ref = (self.bbox_embed(tgt) + inverse_sigmoid(ref)).sigmoid()
            refs.append(new_ref)
            ref = new_ref.detach()
            hidden.append(self.norm(tgt))
        return hidden, refs


def encoder_proposals(memory: torch.Tensor, shapes) -> tuple[torch.Tensor, torch.Tensor]:
    """One proposal box per memory token: its cell centre, side 0.05 * 2^level (unsigmoided); tokens whose box
    leaves (0.01, 0.99) get an infinite proposal and a zeroed memory (DINO's ``gen_encoder_output_proposals``)."""
    proposals = []
    for level, (h, w) in enumerate(shapes):
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=memory.device),
                                torch.arange(w, dtype=torch.float32, device=memory.device), indexing="ij")
        xy = torch.stack(((xs + 0.5) / w, (ys + 0.5) / h), -1).reshape(-1, 2)
        proposals.append(torch.cat((xy, torch.full_like(xy, 0.05 * 2.0**level)), -1))
    props = torch.cat(proposals, 0)[None].expand(memory.shape[0], -1, -1)
    valid = ((props > 0.01) & (props < 0.99)).all(-1, keepdim=True)
    props = torch.log(props / (1 - props)).masked_fill(~valid, float("inf"))
    return memory.masked_fill(~valid, 0.0), props


class DINODecoderHead(nn.Module):
    """One dataset's localization head (module docstring): memory levels -> class logits and boxes per query.

    Args:
        num_classes: logits per query (the dataset's classes; Foundation X's checkpoints have 14 everywhere).
        d_model, num_layers, d_ffn, n_heads, n_points, n_levels, dropout: decoder sizes.
        num_queries: queries selected from the encoder's tokens (at most the number of tokens).
    """

    def __init__(self, num_classes: int, d_model: int = 256, num_layers: int = 6, d_ffn: int = 2048,
                 n_heads: int = 8, n_points: int = 4, n_levels: int = 4, num_queries: int = 900, dropout: float = 0.0):
        super().__init__()
        self.num_classes, self.num_queries, self.d_model = num_classes, num_queries, d_model
        self.memory_proj = nn.Linear(d_model, d_model)
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self.enc_out_class_embed = nn.Linear(d_model, num_classes)
        self.enc_out_bbox_embed = MLP(d_model, d_model, 4, 3)
        self.decoder = DeformableDecoder(d_model, num_layers, d_ffn, dropout, n_levels, n_heads, n_points)
        self.class_embed = nn.Linear(d_model, num_classes)
        self.bbox_embed = MLP(d_model, d_model, 4, 3)
        for p in self.decoder.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.decoder.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        prior = -math.log((1 - 0.01) / 0.01)  # 1 % foreground prior (focal loss)
        for lin in (self.class_embed, self.enc_out_class_embed):
            nn.init.constant_(lin.bias, prior)
        for mlp in (self.bbox_embed, self.enc_out_bbox_embed, self.decoder.bbox_embed):
            nn.init.zeros_(mlp.layers[-1].weight)
            nn.init.zeros_(mlp.layers[-1].bias)

    def select_queries(self, memory: torch.Tensor, shapes):
        """Two-stage selection: the ``num_queries`` tokens whose best class logit is highest give the initial
        reference boxes (detached). Returns (refpoints unsigmoided, the selected tokens' class logits and sigmoid
        boxes for the intermediate loss, every token's class logits)."""
        out_memory, proposals = encoder_proposals(memory, shapes)
        out_memory = self.enc_output_norm(self.enc_output(out_memory))
        logits = self.enc_out_class_embed(out_memory)
        boxes_unsig = self.enc_out_bbox_embed(out_memory) + proposals
        k = min(self.num_queries, logits.shape[1])
        top = torch.topk(logits.max(-1)[0], k, dim=1)[1]
        ref = torch.gather(boxes_unsig, 1, top.unsqueeze(-1).expand(-1, -1, 4))
        interm = {"pred_logits": self.enc_out_class_embed(torch.gather(
            out_memory, 1, top.unsqueeze(-1).expand(-1, -1, self.d_model))), "pred_boxes": ref.sigmoid()}
        return ref.detach(), interm, logits

    def decode(self, tgt, refpoints_unsigmoid, memory, shapes, self_attn_mask=None):
        """Decoder + output embeddings: per layer (B, Q, K) logits and (B, Q, 4) sigmoid (cx, cy, w, h) boxes."""
        hidden, refs = self.decoder(tgt, refpoints_unsigmoid, memory, shapes, self_attn_mask)
        logits = [self.class_embed(h) for h in hidden]
        boxes = [(self.bbox_embed(h) + inverse_sigmoid(r)).sigmoid() for h, r in zip(hidden, refs[:-1])]
        return logits, boxes, hidden

    def forward(self, levels: list[torch.Tensor], tgt_embed: torch.Tensor) -> dict:
        """Memory levels (B, C, H, W) and the shared query content embedding (Q, C) -> raw output:
        ``pred_logits`` (B, Q, K), ``pred_boxes`` (B, Q, 4) of the last layer, ``aux_outputs`` of the others,
        ``interm_outputs`` of the query selection, ``token_logits`` (B, S, K): the selection's class logits of every
        encoder token (one per location of the four levels, like a dense head's anchors), ``hidden`` (L, B, Q, C)."""
        shapes = level_shapes(levels)
        memory = self.memory_proj(flatten_levels(levels))
        ref, interm, token_logits = self.select_queries(memory, shapes)
        tgt = tgt_embed[: ref.shape[1]].unsqueeze(0).expand(memory.shape[0], -1, -1)
        logits, boxes, hidden = self.decode(tgt, ref, memory, shapes)
        return {"pred_logits": logits[-1], "pred_boxes": boxes[-1],
                "aux_outputs": [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])],
                "interm_outputs": interm, "token_logits": token_logits, "hidden": torch.stack(hidden),
                "memory": memory, "shapes": shapes}
