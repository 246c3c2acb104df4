"""The training method: schedule, Lock-Release freezing, EMA teacher, losses, optimiser groups, resume."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Events

from cxrfx.data.multitask import build_sources
from cxrfx.data.phantom import generate_phantom
from cxrfx.engines import (
    LockReleaseEvents, LockReleaseHandler, MaskedBCEWithLogitsLoss, MultiTaskTrainer, TeacherHandler, build_optimizer,
    check_param_groups, ema_update, expand_tasks, paper_cycle, parse_schedule, set_phase,
)
from cxrfx.engines.schedule import Step, resolve_lengths
from cxrfx.errors import ConfigError
from cxrfx.networks import FoundationX

NET = dict(backbone="tiny", backbone_kwargs={"embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 3, 6),
                                             "window_size": 4, "drop_path_rate": 0.0},
           seg_channels=16, psp_channels=32, det_channels=32)


def _net():
    torch.manual_seed(0)
    return FoundationX(**NET, cls_heads={"phantom_cls": 5, "phantom_det": 5}, det_heads={"phantom_det": 2},
                       seg_heads={"phantom_seg": 8})


@pytest.fixture(scope="module")
def loaders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ph")
    generate_phantom(str(root), count=8, size=64, seed=0, verbose=False)
    sources = {"phantom_cls": {"datalist": str(root / "phantom_cls" / "datalist.json"), "tasks": ["cls"]},
               "phantom_det": {"datalist": str(root / "phantom_det" / "datalist.json"), "tasks": ["cls", "det"]},
               "phantom_seg": {"datalist": str(root / "phantom_seg" / "datalist.json"), "tasks": ["seg"]}}
    return build_sources(sources, size=64, batch_size=2)


def test_paper_cycle_and_schedule_rules():
    steps = parse_schedule(paper_cycle())
    assert len(steps) == 29  # 20 task-epochs: 11 cls, 6 det and 3 seg; det / seg expand to lock + release
    assert [s.key for s in steps[:3]] == ["cls/chexpert", "cls/nih14", "cls/vindr_cxr"]
    assert [(s.key, s.phase, s.epoch_fraction) for s in steps[6:8]] == [("det/tbx11k", "lock", 0.5),
                                                                        ("det/tbx11k", "release", 1.0)]
    assert sum(s.phase == "lock" for s in steps) == 9
    assert resolve_lengths([Step("a", "seg", "lock", epoch_fraction=0.5), Step("a", "cls", iterations=3)],
                           {"seg/a": 7}) == [4, 3]
    with pytest.raises(ConfigError, match="exactly one of iterations"):
        Step("a", "cls")
    with pytest.raises(ConfigError, match="phase must be"):
        Step("a", "cls", "freeze", iterations=1)
    with pytest.raises(ConfigError, match="no data source named 'det/a'"):
        resolve_lengths([Step("a", "det", epoch_fraction=1.0)], {})


def test_lock_trains_only_the_new_head():
    net = _net()
    trainable, total = set_phase(net, Step("phantom_seg", "seg", "lock", iterations=1))
    names = {n for n, p in net.named_parameters() if p.requires_grad}
    assert names == {"seg_heads.phantom_seg.conv.weight", "seg_heads.phantom_seg.conv.bias"}
    assert trainable == 16 * 8 * 9 + 8 and total == sum(p.numel() for p in net.parameters())
    set_phase(net, Step("phantom_seg", "seg", "release", iterations=1))
    assert all(p.requires_grad for p in net.parameters())


def _trainer(net, loaders, schedule, teacher=None, max_epochs=1, handlers=()):
    lock_release = LockReleaseHandler(schedule, loaders, net)
    optimizer = build_optimizer(net, backbone_lr=1e-3, head_lr=1e-2, weight_decay=0.05)
    return MultiTaskTrainer("cpu", max_epochs, net, optimizer, lock_release,
                            teacher=teacher.teacher if teacher else None, train_handlers=[*handlers] +
                            ([teacher] if teacher else []))


def test_frozen_parameters_do_not_move_in_a_lock_step(loaders):
    """Release first (AdamW builds momentum everywhere), then lock: shared parts must stay bit-identical."""
    net = _net()
    schedule = [{"dataset": "phantom_seg", "task": "seg", "phase": "release", "iterations": 2},
                {"dataset": "phantom_seg", "task": "seg", "phase": "lock", "iterations": 3}]
    trainer = _trainer(net, loaders, schedule)
    snapshots = {}

    @trainer.on(LockReleaseEvents.STEP_STARTED)
    def snap(engine):
        snapshots[engine.state.cxrfx_step.phase] = copy.deepcopy(net.state_dict())

    trainer.run()
    before, after = snapshots["lock"], net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"seg_heads.phantom_seg.conv.weight", "seg_heads.phantom_seg.conv.bias"}
    assert not torch.equal(snapshots["release"]["backbone.layers.0.blocks.0.attn.qkv.weight"],
                           before["backbone.layers.0.blocks.0.attn.qkv.weight"])  # release did train the trunk


def test_full_cycle_all_tasks_with_teacher(loaders):
    net = _net()
    schedule = expand_tasks([("phantom_cls", "cls"), ("phantom_det", "cls"), ("phantom_det", "det"),
                             ("phantom_seg", "seg")])
    teacher = TeacherHandler(net, momentum=0.8)
    trainer = _trainer(net, loaders, schedule, teacher=teacher, max_epochs=2)
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(
        (e.state.output["step"], e.state.output["phase"], float(e.state.output["loss"]),
         float(e.state.output["consistency"]))))
    trainer.run()
    cycle = trainer.lock_release.cycle_length
    assert len(seen) == 2 * cycle
    assert [s[:2] for s in seen[:cycle]] == [(s.key, s.phase) for s, n in zip(trainer.lock_release.steps,
                                                                               trainer.lock_release.lengths)
                                             for _ in range(n)]
    assert all(torch.isfinite(torch.tensor(s[2])) for s in seen)
    assert any(s[3] > 0 for s in seen)  # the teacher differs from the student after the first update
    assert teacher.updates == 2 * len(schedule)


def test_ema_update_matches_hand_computation():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    teacher = copy.deepcopy(student)
    for p in student.parameters():
        p.data.add_(1.0)
    student[1].running_mean.fill_(4.0)
    expected = {k: 0.8 * teacher.state_dict()[k].float() + 0.2 * student.state_dict()[k].float()
                for k in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean")}
    t_update, t_copy = copy.deepcopy(teacher), copy.deepcopy(teacher)
    ema_update(t_update, student, 0.8, buffers="update")
    ema_update(t_copy, student, 0.8, buffers="copy")
    for k, v in expected.items():
        torch.testing.assert_close(t_update.state_dict()[k], v)
    torch.testing.assert_close(t_copy.state_dict()["1.running_mean"], torch.full((2,), 4.0))
    torch.testing.assert_close(t_copy.state_dict()["0.weight"], expected["0.weight"])


def test_teacher_cosine_momentum_schedule():
    handler = TeacherHandler(torch.nn.Linear(2, 2), momentum=0.9, final_momentum=1.0, update_on="iteration")
    handler.total_updates = 11
    values = []
    for _ in range(11):
        values.append(handler.current_momentum())
        handler.updates += 1
    assert values[0] == pytest.approx(0.9) and values[-1] == pytest.approx(1.0) and values[5] == pytest.approx(0.95)
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert not any(p.requires_grad for p in handler.teacher.parameters()) and not handler.teacher.training


def test_masked_bce_ignores_unknown_labels():
    logits = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], requires_grad=True)
    targets = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 1.0]])
    loss = MaskedBCEWithLogitsLoss()(logits, targets)
    valid = targets >= 0
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[valid], targets[valid])
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[1, 0] == 0 and logits.grad[0, 0] != 0
    none = MaskedBCEWithLogitsLoss()(logits, torch.full_like(targets, -1.0))
    assert float(none) == 0.0 and none.requires_grad


def test_every_parameter_is_in_exactly_one_group():
    net = _net()
    optimizer = build_optimizer(net)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"backbone", "backbone_no_decay", "heads", "heads_no_decay"}
    assert groups["backbone"]["lr"] == 1e-5 and groups["heads"]["lr"] == 1e-4
    assert groups["heads_no_decay"]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(net.parameters()))
    broken = torch.optim.AdamW([p for n, p in net.named_parameters() if not n.startswith("det_")])
    with pytest.raises(ConfigError, match="parameters missing"):
        check_param_groups(broken, net)


def test_resume_continues_at_the_right_step(loaders):
    net = _net()
    schedule = [{"dataset": "phantom_cls", "task": "cls", "iterations": 2},
                {"dataset": "phantom_seg", "task": "seg", "phase": "lock", "iterations": 2},
                {"dataset": "phantom_seg", "task": "seg", "iterations": 2}]
    trainer = _trainer(net, loaders, schedule, max_epochs=2)
    state = trainer.lock_release.state_dict()
    trainer.load_state_dict({"iteration": 9, "epoch_length": 6, "max_epochs": 2})  # mid-cycle: 3rd step, 1 done
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append((e.state.iteration,
                                                                                 e.state.output["step"],
                                                                                 e.state.output["phase"])))
    trainer.run()
    # iteration 9 = 3 iterations into cycle 2: cls (2) done, 1 of the lock step done
    assert seen == [(10, "seg/phantom_seg", "lock"), (11, "seg/phantom_seg", "release"),
                    (12, "seg/phantom_seg", "release")]
    trainer.lock_release.load_state_dict(state)
    other = LockReleaseHandler(schedule[:2], loaders, net)
    with pytest.raises(ConfigError, match="different Lock-Release schedule"):
        other.load_state_dict(state)


def test_bf16_autocast_step_runs(loaders):
    net = _net()
    schedule = [{"dataset": "phantom_seg", "task": "seg", "iterations": 2}]
    lock_release = LockReleaseHandler(schedule, loaders, net)
    trainer = MultiTaskTrainer("cpu", 1, net, build_optimizer(net), lock_release, amp=True)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    trainer.run()
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("task,dataset", [("seg", "phantom_seg"), ("det", "phantom_det")])
def test_teacher_runs_only_when_its_term_has_a_gradient_and_without_heads(loaders, task, dataset):
    """Lock steps: the shared part is frozen, the consistency term has no gradient: no teacher forward.
    Release steps: one teacher pass through backbone and shared part, never through a head."""
    net = _net()
    teacher = TeacherHandler(net, momentum=0.5)
    calls = {"backbone": 0, "heads": 0}
    teacher.teacher.backbone.register_forward_hook(lambda *a: calls.__setitem__("backbone", calls["backbone"] + 1))
    for head in teacher.teacher.heads(task).values():
        head.register_forward_hook(lambda *a: calls.__setitem__("heads", calls["heads"] + 1))
    schedule = [{"dataset": dataset, "task": task, "phase": "lock", "iterations": 2},
                {"dataset": dataset, "task": task, "phase": "release", "iterations": 3}]
    consistency = []
    trainer = _trainer(net, loaders, schedule, teacher=teacher)
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda e: consistency.append(float(e.state.output["consistency"])))
    trainer.run()
    assert calls == {"backbone": 3, "heads": 0}
    assert consistency[:2] == [0.0, 0.0] and all(c > 0 for c in consistency[2:])


def test_task_lr_scale_scales_only_that_tasks_updates(loaders):
    net = _net()
    schedule = [{"dataset": "phantom_cls", "task": "cls", "phase": "release", "iterations": 2},
                {"dataset": "phantom_det", "task": "det", "phase": "release", "iterations": 2},
                {"dataset": "phantom_seg", "task": "seg", "phase": "release", "iterations": 2}]
    lock_release = LockReleaseHandler(schedule, loaders, net)
    optimizer = build_optimizer(net, backbone_lr=1e-3, head_lr=1e-2, weight_decay=0.05)
    trainer = MultiTaskTrainer("cpu", 1, net, optimizer, lock_release, task_lr_scale={"det": 0.25})
    seen, step = [], optimizer.step

    def recording_step(*args, **kwargs):
        seen.append((trainer.state.cxrfx_step.task, [g["lr"] for g in optimizer.param_groups]))
        return step(*args, **kwargs)

    optimizer.step = recording_step
    trainer.run()
    base = {"backbone": 1e-3, "backbone_no_decay": 1e-3, "heads": 1e-2, "heads_no_decay": 1e-2}
    expected = [base[g["name"]] for g in optimizer.param_groups]
    assert [task for task, _ in seen] == ["cls", "cls", "det", "det", "seg", "seg"]
    for task, rates in seen:
        assert rates == pytest.approx([r * (0.25 if task == "det" else 1.0) for r in expected])
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(expected)  # restored after each update


def test_scaled_step_moves_parameters_by_the_scaled_rate_and_restores_it():
    from cxrfx.engines.workflow import _scaled_step

    p = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([p], lr=0.5)
    p.grad = torch.tensor([1.0, 2.0, -4.0])
    _scaled_step(optimizer, 0.1)
    assert torch.allclose(p.detach(), torch.tensor([0.95, 0.9, 1.2])) and optimizer.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize("spec, message", [({"ssl": 0.5}, "cannot scale \\['ssl'\\]"),
                                           ({"detection": 0.5}, "cannot scale \\['detection'\\]"),
                                           ({"det": 0}, "task_lr_scale\\['det'\\] must be a positive number, got 0"),
                                           ({"det": "0.1"}, "must be a positive number, got '0.1'")])
def test_task_lr_scale_refuses_unknown_tasks_and_bad_factors(loaders, spec, message):
    net = _net()
    lock_release = LockReleaseHandler([{"dataset": "phantom_cls", "task": "cls", "iterations": 1}], loaders, net)
    with pytest.raises(ConfigError, match=message):
        MultiTaskTrainer("cpu", 1, net, build_optimizer(net), lock_release, task_lr_scale=spec)
