"""ReplayBuffer: ring semantics, discounts, seeded sampling, [K, B, ...] bursts, errors.

Transition i is stored as obs = [i, i], action = i % 3, reward = i, next_obs = [i + 1, i + 1] and
terminated = (i % 4 == 3), so any sampled row can be checked for consistency from its reward alone.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from dqnlab.replay import Batch, ReplayBuffer, StackedReplays

OBS_SHAPE = (2,)


def add_range(buf: ReplayBuffer, start: int, stop: int) -> None:
    for i in range(start, stop):
        buf.add(np.full(OBS_SHAPE, i), i % 3, float(i), np.full(OBS_SHAPE, i + 1), terminated=(i % 4 == 3))


def filled(n: int, capacity: int = 10, seed: int = 0) -> ReplayBuffer:
    buf = ReplayBuffer(capacity, OBS_SHAPE, seed=seed)
    add_range(buf, 0, n)
    return buf


def assert_consistent(batch: Batch) -> None:
    """Every sampled row is one whole stored transition (no mixing across slots)."""
    i = batch.rewards  # [.., B] the transition's index
    np.testing.assert_array_equal(batch.obs, np.repeat(i[..., None], 2, axis=-1))
    np.testing.assert_array_equal(batch.next_obs, np.repeat(i[..., None] + 1, 2, axis=-1))
    np.testing.assert_array_equal(batch.actions, i.astype(np.int64) % 3)
    np.testing.assert_array_equal(batch.discounts, np.where(i.astype(np.int64) % 4 == 3, 0.0, 1.0))


def test_preallocated_arrays_shapes_dtypes_and_nbytes():
    buf = ReplayBuffer(5, (4,))
    assert buf.capacity == 5 and len(buf) == 0 and buf.obs_shape == (4,)
    assert buf.obs.shape == buf.next_obs.shape == (5, 4) and buf.obs.dtype == np.float32
    assert buf.actions.shape == (5,) and buf.actions.dtype == np.int32
    assert buf.rewards.dtype == buf.discounts.dtype == np.float32
    # Per transition: obs 4*4 + next_obs 4*4 + action 4 + reward 4 + discount 4 = 44 bytes.
    assert buf.nbytes == 5 * 44
    assert ReplayBuffer(3, (2, 2), obs_dtype=np.uint8).nbytes == 3 * (4 + 4 + 12)


def test_len_caps_at_capacity():
    buf = ReplayBuffer(4, OBS_SHAPE)
    lengths = []
    for i in range(7):
        add_range(buf, i, i + 1)
        lengths.append(len(buf))
    assert lengths == [1, 2, 3, 4, 4, 4, 4]


def test_wraparound_overwrites_the_oldest():
    buf = filled(6, capacity=4)  # 0..5 into 4 slots: 4 and 5 overwrite 0 and 1
    assert buf.rewards.tolist() == [4, 5, 2, 3]
    assert buf.obs[:, 0].tolist() == [4, 5, 2, 3]
    assert buf.next_obs[:, 0].tolist() == [5, 6, 3, 4]
    assert buf.actions.tolist() == [1, 2, 2, 0]
    # Only transitions 2..5 can ever be sampled now.
    assert set(buf.sample(500).rewards.tolist()) == {2.0, 3.0, 4.0, 5.0}


def test_discount_is_zero_only_when_terminated():
    buf = ReplayBuffer(3, OBS_SHAPE)
    buf.add(np.zeros(2), 0, 1.0, np.ones(2), terminated=False)
    buf.add(np.zeros(2), 0, 1.0, np.ones(2), terminated=True)
    buf.add(np.zeros(2), 0, 1.0, np.ones(2), terminated=np.bool_(False))  # gymnasium may return np.bool_
    assert buf.discounts.tolist() == [1.0, 0.0, 1.0]


def test_sample_shapes_and_consistency():
    batch = filled(8).sample(32)
    assert isinstance(batch, Batch)
    assert Batch._fields == ("obs", "actions", "rewards", "next_obs", "discounts")
    assert batch.obs.shape == batch.next_obs.shape == (32, 2)
    assert batch.actions.shape == batch.rewards.shape == batch.discounts.shape == (32,)
    assert batch.actions.dtype == np.int32 and batch.obs.dtype == np.float32
    assert_consistent(batch)


def test_sample_many_shapes_and_consistency():
    batch = filled(10, capacity=7).sample_many(5, 16)  # wrapped: holds 3..9
    assert batch.obs.shape == batch.next_obs.shape == (5, 16, 2)
    assert batch.actions.shape == batch.rewards.shape == batch.discounts.shape == (5, 16)
    assert_consistent(batch)
    assert set(batch.rewards.ravel().tolist()) <= set(range(3, 10))
    # The K batches are independent draws, not K copies of one batch.
    assert not all(np.array_equal(batch.rewards[0], batch.rewards[k]) for k in range(1, 5))


def test_sampling_covers_every_stored_item():
    rewards = filled(5).sample_many(20, 50).rewards
    assert set(rewards.ravel().tolist()) == {0.0, 1.0, 2.0, 3.0, 4.0}


def test_same_seed_same_samples_and_different_seeds_differ():
    a, b, c = filled(10, seed=3), filled(10, seed=3), filled(10, seed=4)
    for x, y in zip(a.sample_many(4, 32), b.sample_many(4, 32), strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.sample(64).rewards, b.sample(64).rewards)
    assert not np.array_equal(filled(10, seed=3).sample(64).rewards, c.sample(64).rewards)


def test_sampled_arrays_are_copies():
    buf = filled(3)
    batch = buf.sample(4)
    batch.obs[:] = -1
    assert buf.obs[:3, 0].tolist() == [0, 1, 2]


def test_empty_buffer_sampling_raises():
    buf = ReplayBuffer(4, OBS_SHAPE)
    with pytest.raises(ValueError, match="empty replay buffer"):
        buf.sample(1)
    with pytest.raises(ValueError, match="empty replay buffer"):
        buf.sample_many(2, 1)


@pytest.mark.parametrize("capacity", [0, -3, 2.5, True, "10"], ids=repr)
def test_bad_capacity_raises(capacity):
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(capacity, OBS_SHAPE)


@pytest.mark.parametrize(("k", "b"), [(0, 4), (2, 0), (-1, 4)])
def test_bad_sample_sizes_raise(k, b):
    buf = filled(3)
    with pytest.raises(ValueError, match=">= 1"):
        buf.sample_many(k, b)
    if b < 1:
        with pytest.raises(ValueError, match="batch_size"):
            buf.sample(b)


def _transitions(rng: np.random.Generator, n: int, steps: int):
    """`steps` rounds of one transition per run: (obs, actions, rewards, next_obs, terminated), [N, ...]."""
    for _ in range(steps):
        yield (
            rng.normal(size=(n, 3)).astype(np.float32),
            rng.integers(0, 4, size=n),
            rng.normal(size=n),  # float64, as envs return rewards: stored rounded to float32
            rng.normal(size=(n, 3)).astype(np.float32),
            rng.random(n) < 0.2,
        )


def test_stacked_replays_store_and_sample_as_each_replay_alone():
    # The same transitions into N replays one by one, and into N replays whose storage is stacked (after
    # some one-by-one adds: a restored batch stacks what its replays hold): same arrays, same counters,
    # the same draws bit for bit, and each replay's own sample afterwards the same.
    n, capacity, rng = 3, 7, np.random.default_rng(0)
    alone = [ReplayBuffer(capacity, (3,), seed=s) for s in range(n)]
    shared = [ReplayBuffer(capacity, (3,), seed=s) for s in range(n)]
    for round_ in _transitions(rng, n, 12):
        obs, actions, rewards, next_obs, terminated = round_
        for i in range(n):
            alone[i].add(obs[i], int(actions[i]), float(rewards[i]), next_obs[i], bool(terminated[i]))
        if len(shared[0]) < 4:
            for i in range(n):
                shared[i].add(obs[i], int(actions[i]), float(rewards[i]), next_obs[i], bool(terminated[i]))
            stacked = StackedReplays.of(shared)  # built at the last one-by-one add
        else:
            stacked.add(*round_)
    for a, b in zip(alone, shared, strict=True):
        assert (len(a), a._next) == (len(b), b._next)
        for name in ("obs", "actions", "rewards", "next_obs", "discounts"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    together = stacked.sample_many(2, 5, [0, 1, 2])
    for i in range(n):
        expected = alone[i].sample_many(2, 5)
        for field, got in zip(expected, together, strict=True):
            np.testing.assert_array_equal(got[i], field)
    np.testing.assert_array_equal(shared[1].sample(4).obs, alone[1].sample(4).obs)


def test_stacked_replays_give_a_masked_run_the_first_live_runs_draw():
    replays = [ReplayBuffer(5, (3,), seed=s) for s in range(3)]
    stacked = StackedReplays.of(replays)
    for round_ in _transitions(np.random.default_rng(1), 3, 6):
        stacked.add(*round_)
    untouched = replays[0]._rng.bit_generator.state
    batch = stacked.sample_many(1, 4, [1, 2])
    assert replays[0]._rng.bit_generator.state == untouched  # the masked run drew nothing
    np.testing.assert_array_equal(batch.obs[0], batch.obs[1])
    assert not np.array_equal(batch.obs[1], batch.obs[2])


def test_stacked_replays_need_one_layout():
    assert StackedReplays.of([ReplayBuffer(5, (3,)), ReplayBuffer(6, (3,))]) is None
    assert StackedReplays.of([ReplayBuffer(5, (3,)), ReplayBuffer(5, (2,))]) is None
    ahead = ReplayBuffer(5, (3,))
    ahead.add(np.zeros(3), 0, 0.0, np.zeros(3), False)
    assert StackedReplays.of([ReplayBuffer(5, (3,)), ahead]) is None
    kept = vars(ReplayBuffer(5, (3,))).keys()
    replays = [ReplayBuffer(5, (3,)), ReplayBuffer(5, (3,))]
    assert StackedReplays.of(replays) is not None
    assert vars(replays[0]).keys() == kept  # what a checkpoint stores of a replay: the same attributes


def test_module_does_not_import_tensorflow():
    import subprocess

    code = "import sys, dqnlab.replay; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
