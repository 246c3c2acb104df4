"""Per-task input contracts of a shared backbone: one patch-embedding correction per task.

Foundation X feeds one Swin trunk three differently normalised inputs (REFERENCE §1.9): classification images with
its chest X-ray mean / std, localization images with ImageNet's, segmentation images with ImageNet's std but the
mean divided by 255 (its albumentations pipeline). cxrfx models take a [0, 1] gray image and fold the source's
normalisation into the first (patch-embedding) convolution when a 3-channel checkpoint is loaded
(``checkpoints.py``). Because that convolution is linear and is the first operation, a second task's contract is
exactly the same convolution with other folded weights: ``W_task = W + dW_task``, ``b_task = b + db_task``. A
:class:`TaskInput` holds ``(dW, db)`` for one task as buffers (``task_inputs.<task>.weight`` / ``.bias`` in the
state dict); the shared weights stay trainable and every task sees their updates.

A model gets entries only from a load that needs them (``load_checkpoint(..., source="foundation_x")``); models
without entries compute exactly as before and have the same state-dict keys.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TaskInput", "create_task_inputs_from_state_dict"]


class TaskInput(nn.Module):
    """One task's correction of the backbone's patch-embedding convolution (``weight`` / ``bias`` buffers, the
    shapes of ``backbone.patch_embed.proj``)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, contract: str = ""):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", bias.detach().clone())
        self.contract = contract

    def extra_repr(self) -> str:
        return f"contract={self.contract!r}, weight={tuple(self.weight.shape)}"

    def forward(self, backbone: nn.Module, x: torch.Tensor):
        """The backbone's forward on the standardised input ``x`` with the corrected patch embedding."""
        proj = backbone.patch_embed.proj
        corrected = {"patch_embed.proj.weight": proj.weight + self.weight, "patch_embed.proj.bias": proj.bias + self.bias}
        # torch.func.functional_call refuses to run under torch.jit.trace; the context manager it wraps does not
        with torch.nn.utils.stateless._reparametrize_module(backbone, corrected):
            return backbone(x)


def create_task_inputs_from_state_dict(module: nn.Module, state_dict, prefix: str, *args) -> None:
    """``load_state_dict`` pre-hook of a model with a ``task_inputs`` ModuleDict: entries present in the incoming state
    dict but not in the model are created (zeros; the load fills them), so a checkpoint saved from a model with
    per-task contracts loads into a freshly built one, strictly or not."""
    inputs = getattr(module, "task_inputs", None)
    if inputs is None:
        return
    head = prefix + "task_inputs."
    for key in state_dict:
        if key.startswith(head) and key.endswith(".weight"):
            task = key[len(head):-len(".weight")]
            bias = state_dict.get(f"{head}{task}.bias")
            if task not in inputs and "." not in task and bias is not None:
                device = next(module.buffers(), torch.empty(0)).device  # the model's, not the incoming tensors' (map_location)
                inputs[task] = TaskInput(torch.zeros_like(state_dict[key]), torch.zeros_like(bias)).to(device)
