"""Foundation X's localization tensors -> the ``dino`` head type's (what ``load_checkpoint`` uses).

The reference builds one DINO model whose branch keys sit outside the Swin trunk (``backbone.0.``): ``Locnorm1..3``
(inside the trunk), ``input_proj.{l}``, ``label_enc``, ``transformer.{level_embed, tgt_embed, encoder}`` (shared)
and, per localization dataset k (REFERENCE §1.3: the code's indices 0-5), ``transformer.decoder.{k}``, its
two-stage layers ``transformer.enc_output.{k}`` / ``enc_output_norm.{k}`` / ``enc_out_class_embed.{k}`` /
``enc_out_bbox_embed.{k}`` / ``enc_outputMem_LinearProjection.{k}``, the refinement MLP ``bbox_embed.{k}`` and the
output embeddings ``class_embed_.{k}`` / ``bbox_embed_.{k}``.

The reference lists one module under several names: ``bbox_embed.{k}.{j}`` for every decoder layer j and again as
``transformer.decoder.{k}.bbox_embed.{j}`` (one MLP per decoder), likewise ``class_embed_.{k}.{j}`` /
``bbox_embed_.{k}.{j}``. The first name loads; the others are *aliases*, checked equal. ``class_embed.{k}.{j}`` (=
``transformer.decoder.{k}.class_embed.{j}``) is built but never read by the reference's forward (it serves per-layer
query pruning, which Foundation X does not configure): *dropped*, with that reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

__all__ = ["FX_LOCALIZATION_HEADS", "map_fx_localization", "is_fx_localization_key"]

# transformer.decoder index -> dataset (REFERENCE §1.3)
FX_LOCALIZATION_HEADS = ("tbx11k", "node21", "candid_ptx", "rsna_pneumonia", "chestx_det", "siim_acr")

_SHARED = ((r"backbone\.0\.Locnorm([123])\.(weight|bias)", lambda m: f"det_neck.norms.{int(m[1]) - 1}.{m[2]}"),
           (r"input_proj\.(.+)", r"det_neck.input_proj.\1"),
           (r"transformer\.level_embed", "det_encoder.level_embed"),
           (r"transformer\.encoder\.(layers\..+)", r"det_encoder.\1"),
           (r"transformer\.tgt_embed\.weight", "det_queries.tgt_embed.weight"),
           (r"label_enc\.weight", "det_queries.label_enc.weight"))
# (pattern: group 1 = decoder index, last group = the rest) -> our key under det_heads.<name>.
_PER_DECODER = ((r"transformer\.decoder\.(\d+)\.((?:layers|norm|ref_point_head)\..+)", "decoder.{}"),
                (r"bbox_embed\.(\d+)\.\d+\.(.+)", "decoder.bbox_embed.{}"),
                (r"transformer\.decoder\.(\d+)\.bbox_embed\.\d+\.(.+)", "decoder.bbox_embed.{}"),
                (r"class_embed_\.(\d+)\.\d+\.(.+)", "class_embed.{}"),
                (r"bbox_embed_\.(\d+)\.\d+\.(.+)", "bbox_embed.{}"),
                (r"transformer\.enc_output\.(\d+)\.(.+)", "enc_output.{}"),
                (r"transformer\.enc_output_norm\.(\d+)\.(.+)", "enc_output_norm.{}"),
                (r"transformer\.enc_out_class_embed\.(\d+)\.(.+)", "enc_out_class_embed.{}"),
                (r"transformer\.enc_out_bbox_embed\.(\d+)\.(.+)", "enc_out_bbox_embed.{}"),
                (r"transformer\.enc_outputMem_LinearProjection\.(\d+)\.(.+)", "memory_proj.{}"))
_UNUSED = (r"(?:transformer\.decoder\.\d+\.class_embed|class_embed\.\d+)\.\d+\.(?:weight|bias)",
           "class_embed.{k} / transformer.decoder.{k}.class_embed: built by the reference, never read by its forward "
           "(per-layer query pruning, not configured in Foundation X)")


def is_fx_localization_key(key: str) -> bool:
    """Whether a Foundation X checkpoint key belongs to the localization branch."""
    return key.startswith(("backbone.0.Locnorm", "input_proj.", "transformer.", "label_enc.", "bbox_embed",
                           "class_embed"))


def map_fx_localization(sd: Mapping[str, torch.Tensor], heads: Mapping[str, object]) -> dict:
    """Map the localization keys of ``sd`` for a model whose det heads (type ``dino``) are ``heads``.

    Returns ``{"tensors": {our key: tensor}, "aliases": [...], "dropped": [(key, reason)], "unexpected": [...],
    "notes": [...], "decoders": {index: name}}``.
    """
    out: dict = {"tensors": {}, "aliases": [], "dropped": [], "unexpected": [], "notes": [], "decoders": {}}
    source_of: dict[str, str] = {}
    for key, value in sd.items():
        target = None
        if re.fullmatch(_UNUSED[0], key):
            out["dropped"].append((key, _UNUSED[1]))
            continue
        for pattern, repl in _SHARED:
            m = re.fullmatch(pattern, key)
            if m:
                target = repl(m) if callable(repl) else m.expand(repl)
                break
        else:
            for pattern, fmt in _PER_DECODER:
                m = re.fullmatch(pattern, key)
                if m:
                    index = int(m[1])
                    name = FX_LOCALIZATION_HEADS[index] if index < len(FX_LOCALIZATION_HEADS) else None
                    if name is not None and name in heads:
                        target = f"det_heads.{name}." + fmt.format(m[m.lastindex])
                        out["decoders"][index] = name
                    break
        if target is None:
            out["unexpected"].append(key)
        elif target in source_of:
            if torch.equal(value, sd[source_of[target]]):
                out["aliases"].append(key)
            else:
                out["unexpected"].append(key)
                out["notes"].append(f"{key} differs from {source_of[target]} (the same module in the reference): "
                                    "not loaded")
        else:
            source_of[target] = key
            out["tensors"][target] = value
    return out
