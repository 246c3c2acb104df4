"""The pieces of exact resumption: sampler plan and start, loader position, RNG states, atomic saves."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from cxrfx.data.multitask import build_sources
from cxrfx.data.phantom import phantom_sources
from cxrfx.data.sampling import ResumableSampler
from cxrfx.engines import InfiniteLoader
from cxrfx.engines.checkpointing import AtomicDiskSaver, CheckpointSaver, RNGStates, latest_checkpoint, resume
from cxrfx.errors import CheckpointError


def test_sampler_plan_depends_only_on_seed_and_epoch():
    a, b = ResumableSampler(10, seed=3), ResumableSampler(10, seed=3)
    first = list(a)
    assert first == list(b) and sorted(i for i, _ in first) == list(range(10))
    a.set_epoch(1)
    assert [i for i, _ in a] != [i for i, _ in first]
    assert list(ResumableSampler(10, seed=4)) != first
    assert [i for i, _ in ResumableSampler(5, shuffle=False)] == [0, 1, 2, 3, 4]


def test_sampler_start_skips_once():
    s = ResumableSampler(10, seed=0)
    whole = list(s)
    s.set_start(4)
    assert list(s) == whole[4:]
    assert list(s) == whole and len(s) == 10  # next pass whole again; the nominal length never changes
    with pytest.raises(ValueError):
        s.set_start(11)


def test_sampler_shards_like_distributed_sampler():
    shards = [list(ResumableSampler(7, seed=1, num_replicas=3, rank=r)) for r in range(3)]
    assert {len(s) for s in shards} == {3}  # padded to 9 = 3 x 3
    assert {i for s in shards for i, _ in s} == set(range(7))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return phantom_sources(str(tmp_path_factory.mktemp("ph")), count=8, size=64)


@pytest.mark.parametrize("workers", [0, 2])
def test_restored_loader_continues_with_the_same_batches(sources, workers):
    spec = {"phantom_seg": {**sources["phantom_seg"], "tasks": ["seg"]}}

    def loader():
        return InfiniteLoader(build_sources(spec, size=64, batch_size=2, num_workers=workers, seed=5)["seg/phantom_seg"])

    original = loader()
    for _ in range(len(original) + 1):  # into the second pass
        next(original)
    state = original.state_dict()
    assert state == {"epochs": 1, "batches": 1}
    expected = [next(original) for _ in range(len(original) + 1)]  # the rest of the pass and one more

    torch.manual_seed(123)  # the global RNG must not matter
    restored = loader()
    restored.load_state_dict(state)
    got = [next(restored) for _ in range(len(expected))]
    for a, b in zip(expected, got):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])  # augmentation too


def test_rng_states_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    saved = RNGStates().state_dict()
    torch.save(saved, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    RNGStates().load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_atomic_saver_never_leaves_a_partial_file(tmp_path):
    saver = AtomicDiskSaver(tmp_path)
    saver({"w": torch.ones(3)}, "a.pt")

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        saver({"w": torch.zeros(3), "x": Boom()}, "a.pt")
    assert sorted(os.listdir(tmp_path)) == ["a.pt"]  # the old file intact, no temporary left
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["w"], torch.ones(3))
    (tmp_path / ".b.pt.123.part").write_bytes(b"half a checkpoint")  # what a killed run leaves
    AtomicDiskSaver(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["a.pt"]


def test_saver_removes_old_files_only_after_the_new_one_landed_and_adopts_earlier_ones(tmp_path):
    for it in (2, 4):  # left by an earlier run of the job
        torch.save({"trainer": {"iteration": it}}, tmp_path / f"checkpoint_iteration={it}.pt")
    counter = {"n": 4}

    class Counter:
        def state_dict(self):
            return {"iteration": counter["n"]}

        def load_state_dict(self, state):
            counter["n"] = state["iteration"]

    engine = Engine(lambda e, b: None)
    saver = CheckpointSaver(str(tmp_path), {"trainer": Counter(), "rng": RNGStates()}, save_interval=1, n_saved=2, epoch_level=False,
                            save_final=False)
    saver.attach(engine)
    engine.run([0] * 3, max_epochs=1)  # iterations 1..3 (interval priorities are iteration numbers)
    names = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert names == ["checkpoint_iteration=3.pt", "checkpoint_iteration=4.pt"]  # kept the 2 highest
    # a single object is named after its key; those are adopted as well
    single = CheckpointSaver(str(tmp_path), {"trainer": Counter()}, save_interval=1, n_saved=2, epoch_level=False,
                            save_final=False)
    assert single._interval_checkpoint._saved == []
    torch.save({}, tmp_path / "trainer_iteration=7.pt")
    single = CheckpointSaver(str(tmp_path), {"trainer": Counter()}, save_interval=1, n_saved=2, epoch_level=False,
                            save_final=False)
    assert [item.filename for item in single._interval_checkpoint._saved] == ["trainer_iteration=7.pt"]


def test_resume_auto_picks_the_newest_complete_checkpoint(tmp_path):
    class Obj:
        value = None

        def state_dict(self):
            return {"v": torch.tensor(0)}

        def load_state_dict(self, state):
            Obj.value = int(state["v"])

    assert resume("auto", {"trainer": Obj()}, search_dir=tmp_path) is False  # nothing yet: a fresh start
    torch.save({"trainer": {"v": torch.tensor(1)}}, tmp_path / "checkpoint_iteration=1.pt")
    torch.save({"trainer": {"v": torch.tensor(2)}}, tmp_path / "checkpoint_iteration=2.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "model.pt")  # best model: weights only, passed over
    (tmp_path / "broken.pt").write_bytes(b"\x80\x02truncated")
    for i, name in enumerate(["checkpoint_iteration=1.pt", "checkpoint_iteration=2.pt", "model.pt", "broken.pt"]):
        os.utime(tmp_path / name, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_iteration=2.pt")
    assert resume("auto", {"trainer": Obj()}, search_dir=tmp_path) and Obj.value == 2
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        resume(str(tmp_path), {"trainer": Obj(), "teacher": Obj()})


def test_trainer_counters_are_part_of_its_checkpoint(sources):
    from cxrfx.engines import LockReleaseHandler, MultiTaskTrainer, build_optimizer
    from cxrfx.networks import FoundationX

    net = FoundationX("tiny", backbone_kwargs={"embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 3, 6),
                                               "window_size": 4}, cls_heads={"phantom_cls": 5})
    loaders = build_sources({"phantom_cls": {**sources["phantom_cls"], "tasks": ["cls"]}}, size=64, batch_size=2)
    trainer = MultiTaskTrainer("cpu", 1, net, build_optimizer(net), LockReleaseHandler(
        [{"dataset": "phantom_cls", "task": "cls", "iterations": 1}], loaders, net))
    trainer.state.skipped_samples, trainer.state.skipped_steps = 3, 1
    state = trainer.state_dict()
    assert state["skipped_samples"] == 3 and state["skipped_steps"] == 1
    other = MultiTaskTrainer("cpu", 1, net, build_optimizer(net), LockReleaseHandler(
        [{"dataset": "phantom_cls", "task": "cls", "iterations": 1}], loaders, net))
    other.load_state_dict(state)
    assert (other.skipped_samples, other.skipped_steps) == (3, 1)
