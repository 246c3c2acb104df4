"""Foundation X's DINO localization branch as the ``"dino"`` detection head type (:mod:`.head_type`), in plain
PyTorch: deformable attention (:mod:`.attention`), neck and shared encoder (:mod:`.encoder`), per-dataset decoders
(:mod:`.decoder`), contrastive denoising (:mod:`.denoising`), Hungarian matching (:mod:`.matcher`) and the set loss
(:mod:`.criterion`). Written for cxrfx from the published method and the reference's parameter names; it contains
no reference code."""

from cxrfx.networks.heads.dino.attention import MSDeformAttn, multi_scale_deformable_attention
from cxrfx.networks.heads.dino.decoder import DINODecoderHead
from cxrfx.networks.heads.dino.head_type import DINOHeads

__all__ = ["DINOHeads", "DINODecoderHead", "MSDeformAttn", "multi_scale_deformable_attention"]
