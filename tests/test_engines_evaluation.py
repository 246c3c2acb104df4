"""MultiTaskScore and MultiTaskEvaluator: values per source, student vs teacher keys, detailed mode, and which
model the best-checkpoint saver keeps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cxrfx.engines import MultiTaskEvaluator, MultiTaskScore
from cxrfx.engines.checkpointing import CheckpointSaver
from cxrfx.networks.heads import DEFAULT_HEAD_TYPES, get_head_type

COCO_HALF = 51 / 101  # COCO's 101-point AP when precision is 1 up to recall 0.5 and nothing is found beyond


class Probe(nn.Module):
    """A stand-in network whose quality is one number: cls logits ``sign * (mean - 0.5)`` for both labels,
    seg logits ``sign * (pixel - 0.5)``. sign +1 ranks and segments the batches below right, -1 wrong."""

    def __init__(self, sign: float):
        super().__init__()
        self.sign = nn.Parameter(torch.tensor(float(sign)))

    def head_type(self, task):  # the FoundationX interface the evaluator reads: decoding and targets per task
        return get_head_type(DEFAULT_HEAD_TYPES[task], task)

    def forward(self, x, task, head):
        if task == "cls":
            return (self.sign * (x.mean((1, 2, 3)) - 0.5))[:, None].repeat(1, 2)
        return self.sign * (x - 0.5)


VALUES = torch.tensor([0.1, 0.2, 0.8, 0.9])
# label 0 follows the intensity (AUC 1 for sign +1); label 1 is positive for 0.2 only, against 0.1 and 0.8
# (0.9 unknown, so masked): AUC 1/2 either way. Mean AUC: 0.75 for sign +1, 0.25 for sign -1.
LABELS = torch.tensor([[0, 0], [0, 1], [1, 0], [1, -1]], dtype=torch.float32)


def _loaders() -> dict:
    images = VALUES[:, None, None, None].expand(4, 1, 8, 8).clone()
    cls = [{"image": images[:2], "label": LABELS[:2]}, {"image": images[2:], "label": LABELS[2:]}]
    seg = [{"image": images, "mask": (images > 0.5).float()}]  # two empty masks, two full ones
    return {"cls/phantom_cls": cls, "seg/phantom_seg": seg}


def _evaluate(student, teacher, key_model="teacher", handlers=None, epoch=1):
    evaluator = MultiTaskEvaluator("cpu", _loaders(), student, teacher,
                                   key_val_metric={"val_mean": MultiTaskScore(model=key_model)},
                                   additional_metrics={"scores": MultiTaskScore(detailed=True)},
                                   val_handlers=handlers)
    evaluator.run(epoch)
    return evaluator


def test_evaluator_scores_student_and_teacher_separately():
    evaluator = _evaluate(Probe(-1.0), Probe(1.0))
    scores = evaluator.state.metrics["scores"]
    assert set(scores) == {f"{m}/{k}" for m in ("student", "teacher") for k in (
        "cls/phantom_cls/auc", "seg/phantom_seg/dice_fx", "seg/phantom_seg/dice_global", "mean")}
    assert scores["teacher/cls/phantom_cls/auc"] == pytest.approx(0.75)
    assert scores["student/cls/phantom_cls/auc"] == pytest.approx(0.25)
    assert scores["teacher/seg/phantom_seg/dice_fx"] == 1.0 and scores["teacher/seg/phantom_seg/dice_global"] == 1.0
    assert scores["student/seg/phantom_seg/dice_fx"] == 0.0 and scores["student/seg/phantom_seg/dice_global"] == 0.0
    # the scalar (key) form: the mean of each source's main score (auc, dice_fx) of the chosen model
    assert scores["teacher/mean"] == pytest.approx(0.875) and scores["student/mean"] == pytest.approx(0.125)
    assert evaluator.state.metrics["val_mean"] == pytest.approx(0.875)
    assert _evaluate(Probe(-1.0), Probe(1.0), key_model="student").state.metrics["val_mean"] == pytest.approx(0.125)


def test_without_a_teacher_only_student_keys():
    evaluator = _evaluate(Probe(1.0), None, key_model="student")
    assert {k.split("/")[0] for k in evaluator.state.metrics["scores"]} == {"student"}
    assert evaluator.state.metrics["val_mean"] == pytest.approx(0.875)
    assert math.isnan(_evaluate(Probe(1.0), None, key_model="teacher").state.metrics["val_mean"])


def test_best_checkpoint_follows_the_key_models_score(tmp_path):
    """As in the bundles: the key metric is the teacher's mean and the saver keeps the teacher. A later
    validation where only the student improves must not replace model.pt."""
    student, teacher = Probe(-1.0), Probe(1.0)
    saver = CheckpointSaver(str(tmp_path), {"model": teacher}, save_key_metric=True, key_metric_filename="model.pt")
    evaluator = MultiTaskEvaluator("cpu", _loaders(), student, teacher,
                                   key_val_metric={"val_mean_teacher": MultiTaskScore(model="teacher")},
                                   additional_metrics={"scores": MultiTaskScore(detailed=True)}, val_handlers=[saver])
    evaluator.run(1)
    assert float(torch.load(tmp_path / "model.pt")["sign"]) == 1.0
    with torch.no_grad():  # the student gets perfect, the teacher gets worse
        student.sign.fill_(1.0)
        teacher.sign.fill_(-1.0)
    evaluator.run(2)
    assert evaluator.state.metrics["scores"]["student/mean"] == pytest.approx(0.875)
    assert evaluator.state.metrics["val_mean_teacher"] == pytest.approx(0.125)
    assert float(torch.load(tmp_path / "model.pt")["sign"]) == 1.0  # still the best teacher, from epoch 1
    assert evaluator.state.best_metric == pytest.approx(0.875) and evaluator.state.best_metric_epoch == 1
    with torch.no_grad():
        teacher.sign.fill_(2.0)  # as good as the first one: ignite replaces on a strictly better score only
    evaluator.run(3)
    assert float(torch.load(tmp_path / "model.pt")["sign"]) == 1.0


def _box(x1, y1, x2, y2) -> torch.Tensor:
    return torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32)


def test_score_detection_values_and_nan_main_scores_left_out():
    """One exact box and one at IoU 100/220 = 0.45: found at IoU 0.40 (map40_fx = 1), missed at 0.50 (ap50 =
    COCO's AP at recall 1/2). A cls source with one class only has no AUC and stays out of the mean."""
    score = MultiTaskScore(model="student", detailed=True)
    score.reset()
    targets = [{"boxes": _box(0, 0, 10, 10), "labels": torch.tensor([0])},
               {"boxes": _box(20, 20, 30, 30), "labels": torch.tensor([0])}]
    preds = [{"boxes": _box(0, 0, 10, 10), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])},
             {"boxes": _box(20, 20, 30, 42), "scores": torch.tensor([0.8]), "labels": torch.tensor([0])}]
    score.update(("det/phantom_det", targets, preds, None))
    score.update(("cls/one_class", [torch.tensor([1.0]), torch.tensor([1.0])],
                  [torch.tensor([0.3]), torch.tensor([0.6])], None))
    result = score.compute()
    assert result["student/det/phantom_det/ap50"] == pytest.approx(COCO_HALF)
    assert result["student/det/phantom_det/map40_fx"] == pytest.approx(1.0)
    assert math.isnan(result["student/cls/one_class/auc"])
    assert result["student/mean"] == pytest.approx(COCO_HALF)  # ap50 is det's main score; the NaN AUC is left out
    assert not any(k.startswith("teacher/") for k in result)
    score.detailed = False
    assert score.compute() == pytest.approx(COCO_HALF)
    score.reset()  # a new validation epoch starts empty
    assert math.isnan(score.compute())  # nothing collected


def test_a_multi_channel_head_is_also_scored_per_channel():
    from cxrfx.engines.evaluation import _seg_scores

    truth = torch.zeros(2, 3, 4, 4)
    truth[:, 0, :2] = 1  # channel 0: found exactly; channel 1: predicted where there is nothing; channel 2: half
    truth[:, 2, :, :2] = 1
    pred = truth.clone()
    pred[:, 1, 0, 0] = 1
    pred[:, 2, :, 1] = 0
    scores = _seg_scores(list(pred), list(truth))
    assert scores["dice_fx_0"] == 1.0 and scores["dice_fx_1"] == 0.0
    assert scores["dice_fx_2"] == pytest.approx(2 * 4 / (4 + 8))
    assert scores["dice_fx"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert "dice_fx_0" not in _seg_scores(list(pred[:, :1]), list(truth[:, :1]))  # one channel: dice_fx says it
