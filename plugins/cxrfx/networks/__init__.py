"""Networks: the Swin backbone, Foundation X heads, checkpoint loading and export (plain PyTorch + MONAI)."""

from cxrfx.networks.checkpoints import FX_CLASSIFICATION_HEADS, LoadReport, load_checkpoint
from cxrfx.networks.foundation_x import TASKS, FoundationX, TaskNet, parameter_counts
from cxrfx.networks.heads.detection import build_detector
from cxrfx.networks.swin import SWIN_CONFIGS, SwinTransformer, swin

__all__ = [
    "FoundationX", "TaskNet", "TASKS", "parameter_counts", "load_checkpoint", "LoadReport", "FX_CLASSIFICATION_HEADS",
    "SwinTransformer", "SWIN_CONFIGS", "swin", "build_detector",
]
