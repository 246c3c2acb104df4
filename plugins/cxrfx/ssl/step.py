"""The ``ssl`` step of the Lock-Release cycle: one self-supervised iteration inside the multi-task trainer.

:class:`SSLStep` runs a recipe (:class:`~cxrfx.ssl.dira.DiRA`) on one SSL batch: the main optimizer updates the
network (backbone, and the shared seg decoder when the recipe restores through it), the step's own optimizer the
recipe's parts (projector, decoder, restore head...), a third one the discriminator; then the key encoder moves and
the queue advances. :class:`SSLMultiTaskTrainer` is :class:`~cxrfx.engines.MultiTaskTrainer` handing ``ssl``
steps to it, so the cycle, the EMA teacher (updated after every step, SSL ones included), LR schedule, logging and
checkpoints treat an SSL step like any other. ``lock`` in an SSL step freezes the whole network: only the
recipe's own parts learn (a fresh projector / decoder catching up with a pretrained backbone).

Resuming: the recipe's state (key encoder, queue and pointer, its parts) and its two optimizers are one checkpoint
object, ``ssl`` (:func:`ssl_training_state`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from cxrfx.engines.checkpointing import training_state
from cxrfx.engines.lock_release import freeze_norm_statistics
from cxrfx.engines.workflow import MultiTaskTrainer
from cxrfx.errors import ConfigError

__all__ = ["SSLStep", "SSLMultiTaskTrainer", "ssl_training_state"]


class SSLStep:
    """One SSL iteration of ``recipe``: its ``forward`` takes the batch entries named by its ``input_keys`` and
    returns ``loss``, its terms and ``keys``; then ``after_step(keys)``; ``discriminator_step_loss`` when
    ``adversarial`` (:class:`~cxrfx.ssl.dira.DiRA`, :class:`~cxrfx.ssl.adam_v2.AdamV2`).

    Args:
        recipe: e.g. :class:`~cxrfx.ssl.dira.DiRA` (on the trainer's device).
        lr, weight_decay: AdamW for the recipe's own parts.
        disc_lr: Adam (betas 0.5, 0.999, the GAN custom) for the discriminator.
        clip_grad_norm: max gradient norm over network + recipe parameters (None: no clipping).
    """

    def __init__(self, recipe: nn.Module, lr: float = 1e-3, weight_decay: float = 1e-4, disc_lr: float = 2e-4,
                 clip_grad_norm: float | None = 1.0):
        self.recipe = recipe
        own = recipe.trainable_parameters() if hasattr(recipe, "trainable_parameters") else list(recipe.parameters())
        self.optimizer = torch.optim.AdamW(own, lr=lr, weight_decay=weight_decay) if own else None
        self.disc_optimizer = (torch.optim.Adam(recipe.discriminator.parameters(), lr=disc_lr, betas=(0.5, 0.999))
                               if getattr(recipe, "adversarial", False) else None)
        self.clip_grad_norm = clip_grad_norm
        self.log = logging.getLogger("cxrfx.ssl")

    def _optimizers(self, main: torch.optim.Optimizer) -> list[torch.optim.Optimizer]:
        return [main] + ([self.optimizer] if self.optimizer is not None else [])

    def __call__(self, trainer: MultiTaskTrainer, engine, batch: Mapping) -> dict:
        step = engine.state.cxrfx_step
        engine.state.skipped_samples += int(batch.get("skipped", 0)) if batch else 0
        names = self.recipe.input_keys  # the batch entries the recipe's forward takes, in order
        if not batch or names[0] not in batch or len(batch[names[0]]) < 2:
            trainer.run_log.warning(f"iteration {engine.state.iteration} ({step.key}): fewer than 2 readable images "
                                    "in the batch: skipped")
            engine.state.output = {"loss": torch.tensor(float("nan")), "step": step.key, "phase": step.phase}
            return engine.state.output
        device = engine.state.device
        views = {k: batch[k].to(device, non_blocking=engine.non_blocking) for k in names if k in batch}
        engine.network.train()
        self.recipe.train()
        if step.phase == "lock":
            freeze_norm_statistics(trainer.model)
        optimizers = self._optimizers(engine.optimizer)
        # the discriminator too: the generator term reaches its weights, and a gradient left from the last
        # iteration would otherwise ride along (and a resumed run, which has none, would differ)
        for opt in optimizers + ([self.disc_optimizer] if self.disc_optimizer is not None else []):
            opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type if isinstance(device, torch.device) else str(device).split(":")[0],
                            dtype=torch.bfloat16, enabled=trainer.bf16):
            out = self.recipe(*[views.get(k) for k in names])
        loss = out["loss"]
        terms = {k: v.detach() for k, v in out.items() if k != "loss" and v.ndim == 0}  # the recipe's terms
        if not torch.isfinite(loss.detach()):
            engine.state.skipped_steps += 1
            self.log.error(f"non-finite SSL loss ({float(loss.detach())}) at iteration {engine.state.iteration} "
                           f"({step.key}, {step.phase}): update skipped")
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            engine.state.output = {"loss": loss.detach(), "step": step.key, "phase": step.phase, "skipped": True,
                                   **terms}
            if trainer.nonfinite == "stop":
                engine.terminate()
            return engine.state.output
        loss.backward()
        if self.clip_grad_norm:
            own = self.optimizer.param_groups[0]["params"] if self.optimizer is not None else []
            params = [p for p in list(engine.network.parameters()) + list(own) if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        for opt in optimizers:
            opt.step()
        if self.disc_optimizer is not None:
            self.disc_optimizer.zero_grad(set_to_none=True)  # drop the generator term's gradient
            d_loss = self.recipe.discriminator_step_loss(out["restored"], views["target"])
            d_loss.backward()
            self.disc_optimizer.step()
            terms["disc"] = d_loss.detach()
        self.recipe.after_step(out.get("keys"))
        engine.state.output = {"loss": loss.detach(), "task_loss": loss.detach(),
                               "consistency": torch.zeros((), device=loss.device), "step": step.key,
                               "phase": step.phase, **terms}
        return engine.state.output

    def state_dict(self) -> dict:
        state = {"recipe": self.recipe.state_dict()}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        if self.disc_optimizer is not None:
            state["disc_optimizer"] = self.disc_optimizer.state_dict()
        return state

    def load_state_dict(self, state: Mapping) -> None:
        self.recipe.load_state_dict(state["recipe"])
        for key in ("optimizer", "disc_optimizer"):
            opt = getattr(self, key)
            if (opt is None) != (key not in state):
                raise ConfigError(f"the checkpoint's SSL state {'lacks' if opt else 'has'} {key}: written with "
                                  "other DiRA branches switched on")
            if opt is not None:
                opt.load_state_dict(state[key])


class SSLMultiTaskTrainer(MultiTaskTrainer):
    """:class:`~cxrfx.engines.MultiTaskTrainer` whose ``ssl`` steps run :class:`SSLStep` ``ssl`` (every other
    argument as there). A schedule with ``ssl`` steps and no ``ssl`` here is refused when the trainer is made."""

    def __init__(self, *args, ssl: SSLStep | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.ssl = ssl
        has_ssl = any(s.task == "ssl" for s in self.lock_release.all_steps)
        if ssl is None and has_ssl:
            raise ConfigError("the schedule has ssl steps but the trainer was given no SSL step (ssl=SSLStep(...))")
        if has_ssl and isinstance(self.network, torch.nn.parallel.DistributedDataParallel):
            # the recipes call the unwrapped network, so DDP would not average their gradients across processes
            raise ConfigError("ssl steps do not support DistributedDataParallel yet: train them in one process")

    def _iteration(self, engine, batchdata: Mapping) -> dict:
        if engine.state.cxrfx_step.task == "ssl":
            return self.ssl(self, engine, batchdata)
        return super()._iteration(engine, batchdata)


def ssl_training_state(ssl: SSLStep, **kwargs) -> dict:
    """:func:`~cxrfx.engines.checkpointing.training_state` (``kwargs``) with the SSL state as ``ssl``, placed
    before the trainer and the random generators (those are restored last)."""
    state = training_state(**kwargs)
    out = {}
    for key, value in state.items():
        if key == "trainer":
            out["ssl"] = ssl
        out[key] = value
    return out
