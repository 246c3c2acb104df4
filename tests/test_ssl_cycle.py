"""The ``ssl`` step in the Lock-Release cycle: it trains inside a tiny cycle with the teacher, lock freezes the
network, a warm-up fills whole epochs, and a run killed mid-SSL resumes bit-identical."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events

from cxrfx.data.multitask import build_sources
from cxrfx.data.phantom import phantom_sources
from cxrfx.engines import LockReleaseHandler, TeacherHandler, build_optimizer
from cxrfx.engines.checkpointing import CheckpointSaver, resume
from cxrfx.engines.schedule import with_ssl
from cxrfx.errors import ConfigError
from cxrfx.networks import FoundationX
from cxrfx.ssl.adam_v2 import AdamV2
from cxrfx.ssl.data import ssl_loaders
from cxrfx.ssl.dira import DiRA
from cxrfx.ssl.step import SSLMultiTaskTrainer, SSLStep, ssl_training_state

NET = dict(backbone="tiny", backbone_kwargs={"embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 3, 6),
                                             "window_size": 4, "drop_path_rate": 0.0},
           seg_channels=16, psp_channels=32, det_channels=32)
SCHEDULE = [{"dataset": "images", "task": "ssl", "phase": "lock", "iterations": 1},
            {"dataset": "images", "task": "ssl", "iterations": 3},
            {"dataset": "phantom_cls", "task": "cls", "iterations": 2}]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return phantom_sources(str(tmp_path_factory.mktemp("ph")), count=8, size=64)


def _loaders(sources, recipe="dira"):
    sup = build_sources({"phantom_cls": {**sources["phantom_cls"], "tasks": ["cls"]}}, size=64, batch_size=2)
    # the phantom's segmentation images, read as unlabelled (their masks are ignored)
    options = {"num_blocks": 100} if recipe == "dira" else {"recipe": recipe}
    return {**sup, **ssl_loaders({"images": sources["phantom_seg"]}, size=64, batch_size=2, seed=0,
                                 transform_options=options)}


def _build(sources, schedule=SCHEDULE, max_epochs=2, recipe="dira", **handler):
    torch.manual_seed(0)
    net = FoundationX(**NET, cls_heads={"phantom_cls": 5})
    lock_release = LockReleaseHandler(schedule, _loaders(sources, recipe), net, **handler)
    teacher = TeacherHandler(net, momentum=0.8)
    if recipe == "dira":
        recipe = DiRA(net, adversarial=True, queue_size=6, decoder_options={"channels": 16, "psp_channels": 32})
    else:
        recipe = AdamV2(net, queue_size=10)
    ssl = SSLStep(recipe, lr=1e-3)
    optimizer = build_optimizer(net, backbone_lr=1e-3, head_lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    trainer = SSLMultiTaskTrainer("cpu", max_epochs, net, optimizer, lock_release, teacher=teacher, ssl=ssl)
    objects = ssl_training_state(ssl, network=net, optimizer=optimizer, lr_scheduler=scheduler,
                                 lock_release=lock_release, trainer=trainer, teacher_handler=teacher)
    return trainer, objects


def test_ssl_steps_train_inside_a_cycle_with_the_teacher(sources):
    trainer, objects = _build(sources, max_epochs=1)
    net, ssl, teacher = objects["student"], objects["ssl"], objects["teacher_handler"]
    seen, snapshots = [], {}

    def record(engine):
        out = engine.state.output
        seen.append((out["step"], out["phase"], {k for k in ("dis", "res", "adv", "disc") if k in out}))
        if engine.state.iteration == 1:  # after the lock step
            snapshots["lock"] = ({k: v.clone() for k, v in net.state_dict().items()},
                                 ssl.recipe.projector[0].weight.clone())

    before = {k: v.clone() for k, v in net.state_dict().items()}
    projector_before = ssl.recipe.projector[0].weight.clone()
    trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
    trainer.run()
    assert [s[:2] for s in seen] == [("ssl/images", "lock")] + [("ssl/images", "release")] * 3 + [
        ("cls/phantom_cls", "release")] * 2
    assert all(s[2] == {"dis", "res", "adv", "disc"} for s in seen[:4]) and seen[4][2] == set()
    lock_state, lock_projector = snapshots["lock"]
    moved = [k for k in before if k in lock_state and before[k].is_floating_point()
             and not torch.equal(before[k], lock_state[k])]
    assert not [k for k in moved if "running" not in k and "num_batches" not in k], moved  # lock: network frozen
    assert not torch.equal(lock_projector, projector_before)  # ... while the recipe's own parts learn
    after = net.state_dict()
    assert not torch.equal(after["backbone.patch_embed.proj.weight"], before["backbone.patch_embed.proj.weight"])
    assert teacher.updates == 3  # one per step, SSL steps included
    assert int(ssl.recipe.key_encoder.queue_ptr) == (4 * 2) % 6  # 4 SSL iterations of 2 keys, wrapped
    key_weight = ssl.recipe.key_encoder.backbone.patch_embed.proj.weight
    assert not torch.equal(key_weight, before["backbone.patch_embed.proj.weight"])


def _tensors(state, prefix=""):
    """(path, tensor) leaves of a nested state."""
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    own = [(prefix, state)] if isinstance(state, torch.Tensor) else []
    return own + [leaf for key, value in items for leaf in _tensors(value, f"{prefix}/{key}")]


def _final_state(objects) -> dict:
    return {k: getattr(v, "state_dict", lambda: None)() for k, v in objects.items() if k != "rng"}


# inside the first SSL release step; the second cycle's; Adam-v2 inside the first
@pytest.mark.parametrize("stop_at,recipe", [(3, "dira"), (8, "dira"), (3, "adam_v2")])
def test_resume_mid_ssl_is_bit_identical(sources, tmp_path, stop_at, recipe):
    reference, ref_objects = _build(sources, recipe=recipe)
    reference.run()
    expected = _final_state(ref_objects)

    first, objects = _build(sources, recipe=recipe)
    CheckpointSaver(str(tmp_path), objects, save_interval=1, n_saved=2, epoch_level=False,
                    save_final=False).attach(first)
    first.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
    first.run()
    assert first.state.iteration == stop_at and first.state.cxrfx_step.task == "ssl"

    torch.manual_seed(123)  # the global generators are restored from the checkpoint
    resumed, objects = _build(sources, recipe=recipe)
    assert resume("auto", objects, search_dir=str(tmp_path))
    resumed.run()
    got = _final_state(objects)
    assert got["trainer"] == expected["trainer"] and got["lock_release"] == expected["lock_release"]
    pairs = list(zip(_tensors(expected), _tensors(got)))
    assert len(pairs) == len(_tensors(expected)) == len(_tensors(got)) > 100
    differing = [a for (a, x), (b, y) in pairs if a != b or not torch.equal(x, y)]
    assert not differing, differing[:8]


def test_warmup_fills_whole_epochs(sources):
    loaders = _loaders(sources)
    net = FoundationX(**NET, cls_heads={"phantom_cls": 5})
    cycle = [{"dataset": "phantom_cls", "task": "cls", "iterations": 2},
             {"dataset": "phantom_cls", "task": "cls", "phase": "lock", "iterations": 1}]
    handler = LockReleaseHandler(cycle, loaders, net, warmup={"dataset": "images", "task": "ssl"}, warmup_epochs=2)
    assert handler.cycle_length == 3 and handler.data is handler.loaders["ssl/images"]
    # two warm-up epochs (index 2 = the warm-up step, 3 iterations each), then the cycle
    expected = [(2, 0), (2, 2), (2, 0), (2, 2), (0, 0), (1, 0), (0, 0)]
    assert [handler.position(i) for i in (0, 2, 3, 5, 6, 8, 9)] == expected
    assert handler.all_steps[2].key == "ssl/images" and handler.all_steps[2].iterations == 3
    plain = LockReleaseHandler(cycle, loaders, net)
    with pytest.raises(ConfigError, match="different Lock-Release schedule"):
        plain.load_state_dict(handler.state_dict())
    assert "warmup" not in plain.state_dict()  # checkpoints of runs without a warm-up keep their old form
    with pytest.raises(ConfigError, match="whole epochs"):
        LockReleaseHandler(cycle, loaders, net, warmup={"dataset": "images", "task": "ssl", "iterations": 2},
                           warmup_epochs=1)
    trainer = SSLMultiTaskTrainer("cpu", 3, net, build_optimizer(net), handler,
                                  ssl=SSLStep(DiRA(net, discriminative=False,
                                                   decoder_options={"channels": 16, "psp_channels": 32})))
    steps = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: steps.append(e.state.output["step"]))
    trainer.run()
    assert steps == ["ssl/images"] * 6 + ["cls/phantom_cls"] * 3


def test_with_ssl_and_refusals(sources):
    cycle = [{"dataset": "a", "task": "cls", "iterations": 1}, {"dataset": "b", "task": "seg", "iterations": 1},
             {"dataset": "c", "task": "det", "iterations": 1}]
    assert [s["task"] for s in with_ssl(cycle, "u", iterations=2)] == ["ssl", "cls", "seg", "det"]
    assert [s["task"] for s in with_ssl(cycle, "u", every=2)] == ["ssl", "cls", "seg", "ssl", "det"]
    assert with_ssl(cycle, "u")[0] == {"dataset": "u", "task": "ssl", "phase": "release", "epoch_fraction": 1.0}
    net = FoundationX(**NET, cls_heads={"phantom_cls": 5})
    handler = LockReleaseHandler(SCHEDULE, _loaders(sources), net)
    with pytest.raises(ConfigError, match="no SSL step"):
        SSLMultiTaskTrainer("cpu", 1, net, build_optimizer(net), handler)


def test_bf16_ssl_step_runs(sources):
    torch.manual_seed(0)
    net = FoundationX(**NET, cls_heads={"phantom_cls": 5})
    handler = LockReleaseHandler([{"dataset": "images", "task": "ssl", "iterations": 2}], _loaders(sources), net)
    ssl = SSLStep(DiRA(net, adversarial=True, queue_size=8, decoder_options={"channels": 16, "psp_channels": 32}))
    trainer = SSLMultiTaskTrainer("cpu", 1, net, build_optimizer(net), handler, ssl=ssl, amp=True)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    trainer.run()
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
