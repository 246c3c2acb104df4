"""DiRA (Haghighi et al., CVPR 2022): discriminative, restorative and adversarial learning on our Swin backbone.

One recipe, three switches; D, R (close to Models Genesis), DR and DRA are configurations of it:

- **Discriminative** (MoCo-v2): the student backbone sees view 1 (Genesis-distorted when R is on, as in DiRA),
  a *key encoder* (:class:`~cxrfx.ssl.momentum.KeyEncoder`: a copy of backbone + projector, momentum
  ``key_momentum`` updated after every SSL iteration; not the Foundation X EMA teacher) sees view 2; InfoNCE
  against its queue of earlier keys.
- **Restorative**: a segmentation decoder of the head registry (``decoder``, default ``upernet``) on the
  student's stage maps and a 1-channel head restore the undistorted view 1 (sigmoid, MSE). ``share_decoder``
  restores through the network's own segmentation decoder instead, so SSL also pretrains what Foundation X's
  segmentation heads read.
- **Adversarial**: MONAI's ``PatchDiscriminator`` tells restorations from originals (least-squares GAN);
  the restorer gets ``weights["adv"]`` of the generator term. The discriminator has its own optimizer
  (``cxrfx.ssl.step.SSLStep``) and is never trained by the main loss.

Total: ``weights["dis"] * L_D + weights["res"] * L_R + weights["adv"] * L_A``; defaults 1, 10, 0.001 as recalled
from DiRA's MoCo-v2 setting (uncertain: the paper was not at hand). The network is referenced, not owned: its
weights stay in the student checkpoint; this module's state is the recipe's own parts, key encoder and queue.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from monai.networks.nets import PatchDiscriminator
from torch import nn

from cxrfx.errors import ConfigError
from cxrfx.networks.heads import get_head_type
from cxrfx.ssl.losses import discriminator_loss, generator_loss, info_nce, restoration_loss
from cxrfx.ssl.momentum import KeyEncoder

__all__ = ["DiRA", "projection_mlp"]

DEFAULT_WEIGHTS = {"dis": 1.0, "res": 10.0, "adv": 0.001}


def projection_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """MoCo-v2's projector: Linear, ReLU, Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


class DiRA(nn.Module):
    """The DiRA recipe around a :class:`~cxrfx.networks.FoundationX` (see the module docstring).

    ``input_keys``: the batch entries :class:`~cxrfx.ssl.step.SSLStep` passes to :meth:`forward`.

    Args:
        network: the model being pretrained (DDP-wrapped is fine); its backbone is the student encoder.
        discriminative, restorative, adversarial: the three branches (adversarial needs restorative).
        proj_dim, proj_hidden: projector output and hidden width (hidden default: the backbone's width).
        queue_size, temperature, key_momentum: MoCo-v2's K, t and m (65536, 0.2, 0.999 on ImageNet; the queue
            should hold many batches but few passes over a small dataset, hence 4096 by default).
        decoder, decoder_options: registered segmentation head type and its options for the restorer.
        share_decoder: restore through ``network``'s own segmentation decoder (it must have seg heads).
        disc_channels, disc_layers: width and depth of the patch discriminator.
        weights: ``{"dis", "res", "adv"}`` loss weights (missing keys: defaults above).
        seed: seeds the initial queue (random unit vectors), so two runs start identical.
    """

    input_keys = ("view1", "view2", "target")

    def __init__(self, network: nn.Module, discriminative: bool = True, restorative: bool = True,
                 adversarial: bool = False, proj_dim: int = 128, proj_hidden: int | None = None,
                 queue_size: int = 4096, temperature: float = 0.2, key_momentum: float = 0.999,
                 decoder: str = "upernet", decoder_options: Mapping | None = None, share_decoder: bool = False,
                 disc_channels: int = 16, disc_layers: int = 3, weights: Mapping[str, float] | None = None,
                 seed: int = 0):
        super().__init__()
        if not (discriminative or restorative):
            raise ConfigError("DiRA needs the discriminative or the restorative branch (or both)")
        if adversarial and not restorative:
            raise ConfigError("DiRA's adversarial branch judges restorations: it needs restorative=True")
        net = network.module if hasattr(network, "module") else network
        object.__setattr__(self, "network", net)  # a reference, not a submodule: its weights are the student's
        self.discriminative, self.restorative, self.adversarial = discriminative, restorative, adversarial
        self.temperature, self.key_momentum = float(temperature), float(key_momentum)
        self.weights = {**DEFAULT_WEIGHTS, **dict(weights or {})}
        dims = list(net.backbone.num_features)
        if discriminative:
            self.projector = projection_mlp(dims[-1], int(proj_hidden or dims[-1]), proj_dim)
            self.key_encoder = KeyEncoder(net.backbone, self.projector, queue_size, key_momentum, seed)
        if restorative:
            if share_decoder:
                if not len(net.heads("seg")):
                    raise ConfigError("share_decoder: the network has no segmentation decoder (no seg heads)")
                self.decoder_type = net.head_type("seg")
                object.__setattr__(self, "_decoder_owner", net)
            else:
                self.decoder_type = get_head_type(decoder, "seg")
                options = self.decoder_type.options(decoder_options)
                for attribute, module in self.decoder_type.build_shared(dims, options).items():
                    setattr(self, attribute, module)
                object.__setattr__(self, "_decoder_owner", self)  # not a submodule of itself
            options = self.decoder_type.options(None if share_decoder else decoder_options)
            self.restore_head = self.decoder_type.build_head(self._decoder_owner, 1, 0.0, options)
        if adversarial:
            self.discriminator = PatchDiscriminator(spatial_dims=2, channels=disc_channels, in_channels=1,
                                                    out_channels=1, num_layers_d=disc_layers)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The recipe's own parameters the main SSL loss trains (projector, decoder, restore head)."""
        skip = ("key_encoder.", "discriminator.")
        return [p for n, p in self.named_parameters() if not n.startswith(skip)]

    def forward(self, view1: torch.Tensor, view2: torch.Tensor | None = None,
                target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Losses of one batch: ``view1`` (the student's input, distorted when restorative), ``view2`` (the key
        encoder's; discriminative), ``target`` (the undistorted view 1; restorative). Returns ``loss`` (weighted
        total) and each branch's term (``dis``, ``res``, ``adv``), plus ``keys`` and ``restored`` for
        :meth:`after_step` and the discriminator."""
        net = self.network
        feats = net.forward_features(view1)
        out: dict[str, torch.Tensor] = {}
        total = view1.new_zeros(())
        if self.discriminative:
            if view2 is None:
                raise ValueError("the discriminative branch needs the second view")
            query = F.normalize(self.projector(net.pooled_feature(feats)), dim=1)
            keys = self.key_encoder((view2 - net.input_mean) / net.input_std)
            out["dis"] = info_nce(query, keys, self.key_encoder.queue.clone(), self.temperature)
            out["keys"] = keys
            total = total + self.weights["dis"] * out["dis"]
        if self.restorative:
            if target is None:
                raise ValueError("the restorative branch needs the undistorted target")
            shared = self.decoder_type.shared_forward(self._decoder_owner, feats)
            logits = self.decoder_type.head_forward(self.restore_head, shared, view1.shape[-2:])
            if isinstance(logits, (list, tuple)):  # deep supervision heads (UNet++): the final output restores
                logits = logits[-1]
            restored = torch.sigmoid(logits.float())
            out["res"] = restoration_loss(restored, target.float())
            out["restored"] = restored
            total = total + self.weights["res"] * out["res"]
        if self.adversarial:
            out["adv"] = generator_loss(self.discriminator(restored)[-1])
            total = total + self.weights["adv"] * out["adv"]
        out["loss"] = total
        return out

    def discriminator_step_loss(self, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The discriminator's loss on originals vs (detached) restorations."""
        return discriminator_loss(self.discriminator(target.float())[-1], self.discriminator(restored.detach())[-1])

    @torch.no_grad()
    def after_step(self, keys: torch.Tensor | None) -> None:
        """After the optimizer step: momentum-update the key encoder, then enqueue this batch's keys (MoCo order)."""
        if self.discriminative:
            self.key_encoder.update(self.network.backbone, self.projector)
            if keys is not None:
                self.key_encoder.enqueue(keys)
