"""Training method of Foundation X: the Lock-Release cycle, the EMA teacher, losses and the trainer."""

from cxrfx.engines.lock_release import InfiniteLoader, LockReleaseEvents, LockReleaseHandler, set_phase
from cxrfx.engines.losses import DiceBCELoss, MaskedBCEWithLogitsLoss, consistency_loss
from cxrfx.engines.optim import build_optimizer, check_param_groups, param_groups
from cxrfx.engines.evaluation import MultiTaskEvaluator, MultiTaskScore
from cxrfx.engines.schedule import Step, expand_tasks, paper_cycle, parse_schedule, phantom_cycle
from cxrfx.engines.teacher import TeacherHandler, ema_update
from cxrfx.engines.workflow import MultiTaskTrainer

__all__ = [
    "LockReleaseHandler", "LockReleaseEvents", "InfiniteLoader", "set_phase", "TeacherHandler", "ema_update",
    "MaskedBCEWithLogitsLoss", "DiceBCELoss", "consistency_loss", "param_groups", "check_param_groups",
    "build_optimizer", "Step", "parse_schedule", "paper_cycle", "phantom_cycle", "expand_tasks", "MultiTaskTrainer",
    "MultiTaskEvaluator", "MultiTaskScore",
]
