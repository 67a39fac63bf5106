"""SequenceReplay: row layout, episode boundaries, burn-in, initial state, ring wrap, seeding, errors.

Step g (counted over the whole run) of episode e is stored as obs = [g, e], action = g % 3, reward = g,
state = [g, -g]; its next_obs is [g + 1, e] mid-episode and [1000 + e, e] at the episode end, so a true
final observation is never confused with the next episode's first one. Any sampled step can be checked
from its reward alone.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from dqnlab.sequence_replay import SequenceBatch, SequenceReplay


def final_obs(e: int) -> list[float]:
    return [1000.0 + e, float(e)]


def add_episode(buf: SequenceReplay, e: int, g0: int, n: int, end: str = "terminated") -> int:
    """Add n steps g0..g0+n-1 of episode e, ending it by `end` ("terminated", "truncated" or "open")."""
    for g in range(g0, g0 + n):
        last = g == g0 + n - 1
        nxt = final_obs(e) if last and end != "open" else [g + 1.0, e]
        state = [g, -g] if buf.state_dim else None
        buf.add(
            [g, e], g % 3, float(g), nxt, last and end == "terminated", last and end == "truncated", state
        )
    return g0 + n


def window_from(batch: SequenceBatch, g: int) -> SequenceBatch:
    """The first sampled window that starts at step g."""
    hits = np.flatnonzero((batch.obs[:, 0, 0] == g) & (batch.mask[:, 0] == 1))
    assert hits.size, f"no window starts at step {g}"
    return SequenceBatch(*(x[hits[0]] for x in batch))


def assert_consistent(batch: SequenceBatch) -> None:
    """Valid steps are consecutive steps of one episode with the true next_obs; padding is all zeros."""
    valid = batch.mask > 0  # [B, T]
    # The mask is 1 then 0: once a window ends it stays ended.
    np.testing.assert_array_equal(batch.mask, np.cumprod(batch.mask, axis=1))
    g, e = batch.obs[..., 0], batch.obs[..., 1]  # [B, T]
    np.testing.assert_array_equal(np.where(valid, batch.rewards, 0), np.where(valid, g, 0))
    np.testing.assert_array_equal(batch.actions, np.where(valid, g.astype(np.int64) % 3, 0))
    same_episode = np.where(valid, e, e[:, :1]) == e[:, :1]
    assert same_episode.all(), "a window mixes two episodes"
    step = np.diff(g, axis=1)[valid[:, 1:]]
    assert (step == 1).all(), "valid steps are not consecutive"
    # Mid-window next_obs is the following step's obs; at a window's last valid step it is either the next
    # step ([g + 1, e]) or the true final observation ([1000 + e, e]).
    ok_next = ((batch.next_obs[..., 0] == g + 1) | (batch.next_obs[..., 0] == 1000 + e)) & (
        batch.next_obs[..., 1] == e
    )
    assert ok_next[valid].all()
    for x in (batch.obs, batch.next_obs):
        assert (x[~valid] == 0).all(), "padding is not zero"
    assert (batch.discounts[~valid] == 1).all() and (batch.rewards[~valid] == 0).all()


def test_bytes_per_step_by_hand():
    # obs 4*2 + action 4 + reward 4 + terminated 1 + first 1 + is_step 1 = 19 bytes per row.
    assert SequenceReplay(10, 2).bytes_per_step() == 19
    # LSTM (h, c) of 64 floats each: + 4 * 128 = 512 -> 531 bytes per row.
    assert SequenceReplay(10, 2, state_dim=128).bytes_per_step() == 531
    buf = SequenceReplay(7, 4, state_dim=3)  # 16 + 11 + 12 = 39
    assert buf.bytes_per_step() == 39 and buf.nbytes == 7 * 39


def test_row_layout_final_obs_row_after_each_episode():
    buf = SequenceReplay(12, 2)
    g = add_episode(buf, 0, 0, 3)  # rows 0..2 steps, row 3 = final obs of episode 0
    add_episode(buf, 1, g, 2, end="truncated")  # rows 4, 5 steps, row 6 = final obs of episode 1
    assert buf.is_step[:8].tolist() == [1, 1, 1, 0, 1, 1, 0, 0]
    assert buf.first[:8].tolist() == [1, 0, 0, 0, 1, 0, 0, 0]
    assert buf.obs[:7, 0].tolist() == [0, 1, 2, 1000, 3, 4, 1001]
    assert buf.terminated[:7].tolist() == [0, 0, 1, 0, 0, 0, 0]  # truncation is not termination
    assert len(buf) == 5


def test_window_near_episode_end_is_padded_and_masked():
    buf = SequenceReplay(20, 2)
    g = add_episode(buf, 0, 0, 5)  # steps 0..4
    add_episode(buf, 1, g, 4)  # steps 5..8
    batch = buf.sample(400, length=4)
    assert_consistent(batch)
    assert set(batch.obs[:, 0, 0].tolist()) == set(range(9))  # every step starts windows, 3 and 4 included
    w = window_from(batch, 3)  # 2 steps before the end of episode 0
    assert w.mask.tolist() == [1, 1, 0, 0]
    assert w.obs[:, 0].tolist() == [3, 4, 0, 0]  # never continues into episode 1 (step 5)
    assert w.next_obs.tolist() == [[4, 0], final_obs(0), [0, 0], [0, 0]]  # the true terminal obs
    assert w.rewards.tolist() == [3, 4, 0, 0] and w.actions.tolist() == [0, 1, 0, 0]
    assert w.discounts.tolist() == [1, 0, 1, 1]
    w = window_from(batch, 5)  # episode 1 from its start: 4 valid steps, no padding
    assert w.mask.tolist() == [1, 1, 1, 1] and w.obs[:, 0].tolist() == [5, 6, 7, 8]


def test_truncated_episode_ends_the_window_without_termination():
    buf = SequenceReplay(20, 2)
    g = add_episode(buf, 0, 0, 3, end="truncated")
    add_episode(buf, 1, g, 3)
    w = window_from(buf.sample(300, length=3), 1)
    assert w.mask.tolist() == [1, 1, 0]
    assert w.next_obs[1].tolist() == final_obs(0)
    assert w.discounts.tolist() == [1, 1, 1]  # bootstrap from the final obs: a time limit is not terminal


def test_burn_in_zeroes_train_mask_not_mask():
    buf = SequenceReplay(20, 2)
    add_episode(buf, 0, 0, 6)
    batch = buf.sample(300, length=2, burn_in=3)
    assert batch.obs.shape == (300, 5, 2)
    assert (batch.train_mask[:, :3] == 0).all()
    np.testing.assert_array_equal(batch.train_mask[:, 3:], batch.mask[:, 3:])
    w = window_from(batch, 0)
    assert w.mask.tolist() == [1, 1, 1, 1, 1] and w.train_mask.tolist() == [0, 0, 0, 1, 1]
    w = window_from(batch, 3)  # ends inside the burn-in: nothing left to train on
    assert w.mask.tolist() == [1, 1, 1, 0, 0] and w.train_mask.tolist() == [0, 0, 0, 0, 0]


def test_stored_and_zero_initial_state():
    buf = SequenceReplay(20, 2, state_dim=2)
    add_episode(buf, 0, 0, 6)
    stored = buf.sample(50, length=3)
    g = stored.obs[:, 0, 0]
    np.testing.assert_array_equal(stored.initial_state, np.stack([g, -g], axis=1))  # state fed in at step g
    zero = buf.sample(50, length=3, initial_state="zero")
    assert zero.initial_state.shape == (50, 2) and not zero.initial_state.any()


def test_state_any_shape_is_flattened_and_no_state_gives_empty():
    buf = SequenceReplay(5, 2, state_dim=4)
    h, c = np.array([[1.0, 2.0]]), np.array([[3.0, 4.0]])  # an LSTM's (h, c), each [1, 2]
    buf.add([0, 0], 0, 0.0, [1, 0], False, False, state=(h, c))
    assert buf.state[0].tolist() == [1, 2, 3, 4]
    plain = SequenceReplay(5, 2)
    add_episode(plain, 0, 0, 2)
    assert plain.sample(3, length=2).initial_state.shape == (3, 0)


def test_ring_wrap_partially_overwritten_episode_keeps_its_surviving_steps():
    buf = SequenceReplay(8, 2)
    g = add_episode(buf, 0, 0, 3)  # rows 0,1,2 = steps 0..2, row 3 = final obs 0
    g = add_episode(buf, 1, g, 4)  # rows 4..7 = steps 3..6, final obs 1 wraps onto row 0 (step 0 gone)
    assert buf.obs[:, 0].tolist() == [1001, 1, 2, 1000, 3, 4, 5, 6]
    assert len(buf) == 6
    batch = buf.sample(300, length=3)
    assert_consistent(batch)
    # Steps 1 and 2 of episode 0 survive and still start windows (documented choice); step 0 never appears.
    assert set(batch.obs[:, 0, 0][batch.mask[:, 0] > 0].tolist()) == {1, 2, 3, 4, 5, 6}
    assert 0 not in batch.rewards[batch.mask > 0]
    w = window_from(batch, 1)
    assert w.mask.tolist() == [1, 1, 0] and w.next_obs[1].tolist() == final_obs(0)
    w = window_from(batch, 5)  # reads across the ring's end into row 0: episode 1's final obs
    assert w.mask.tolist() == [1, 1, 0] and w.next_obs[1].tolist() == final_obs(1)

    g = add_episode(buf, 2, g, 2)  # rows 1, 2 = steps 7, 8, row 3 = final obs 2: episode 0 fully gone
    g = add_episode(buf, 3, g, 1, end="open")  # row 4 = step 9, its next obs onto row 5 (step 4 gone)
    assert buf.obs[:, 0].tolist() == [1001, 7, 8, 1002, 9, 10, 5, 6]
    assert buf.is_step.tolist() == [0, 1, 1, 0, 1, 0, 1, 1]
    assert len(buf) == 5
    batch = buf.sample(300, length=3)
    assert_consistent(batch)
    assert set(batch.obs[:, 0, 0][batch.mask[:, 0] > 0].tolist()) == {5, 6, 7, 8, 9}
    assert not np.isin(batch.rewards[batch.mask > 0], [0, 1, 2, 3, 4]).any()  # no overwritten step
    w = window_from(batch, 9)
    assert w.mask.tolist() == [1, 0, 0] and w.next_obs[0].tolist() == [10, 3]


def test_random_ring_never_returns_stale_or_overwritten_steps():
    # Reference model: the rows in write order; the ring holds the last `capacity` of them, counting the
    # eager next-obs row of an episode still being written.
    rng = np.random.default_rng(7)
    capacity = 23
    buf = SequenceReplay(capacity, 2, state_dim=2, seed=1)
    rows: list[int | None] = []  # g for a step row, None for a final-obs row
    e, starts_seen = 0, set()
    for g in range(300):
        ended = bool(rng.random() < 0.2)
        terminated = ended and bool(rng.random() < 0.5)
        nxt = final_obs(e) if ended else [g + 1.0, e]
        buf.add([g, e], g % 3, float(g), nxt, terminated, ended and not terminated, state=[g, -g])
        rows.append(g)
        if ended:
            rows.append(None)
            e += 1
        present = {r for r in rows[-capacity if ended else -(capacity - 1) :] if r is not None}
        assert len(buf) == len(present)
        batch = buf.sample(64, length=5, burn_in=2)
        assert_consistent(batch)
        assert set(batch.rewards[batch.mask > 0].astype(int).tolist()) <= present
        np.testing.assert_array_equal(batch.initial_state[:, 0], batch.obs[:, 0, 0])
        starts_seen |= set(batch.obs[:, 0, 0].astype(int).tolist())
    assert starts_seen >= set(range(10, 290))  # every step was a start while it was present


def test_in_progress_episode_is_sampled_only_up_to_its_last_added_step():
    buf = SequenceReplay(20, 2)
    g = add_episode(buf, 0, 0, 2)  # steps 0, 1
    add_episode(buf, 1, g, 3, end="open")  # steps 2, 3, 4 added, episode 1 still running
    batch = buf.sample(300, length=4)
    assert_consistent(batch)
    w = window_from(batch, 3)
    assert w.mask.tolist() == [1, 1, 0, 0]
    assert w.next_obs[1].tolist() == [5, 1]  # the last added step's own next_obs, not stale data
    buf.add([5, 1], 2, 5.0, [6, 1], False, False)  # the episode goes on: the window now extends
    w = window_from(buf.sample(300, length=4), 3)
    assert w.mask.tolist() == [1, 1, 1, 0] and w.obs[:, 0].tolist() == [3, 4, 5, 0]


def test_same_seed_same_samples_different_seed_differs():
    def make(seed):
        buf = SequenceReplay(30, 2, state_dim=2, seed=seed)
        g = add_episode(buf, 0, 0, 7)
        add_episode(buf, 1, g, 9, end="open")
        return buf

    a, b, c = make(3), make(3), make(4)
    for _ in range(3):
        for x, y in zip(a.sample(16, 4, burn_in=2), b.sample(16, 4, burn_in=2), strict=True):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(make(3).sample(16, 4).obs, c.sample(16, 4).obs)


def test_shapes_dtypes_and_copies():
    buf = SequenceReplay(40, 2, state_dim=3)
    buf.add([0, 0], 1, 1.0, [1, 0], False, False, state=np.zeros(3))
    batch = buf.sample(8, length=4, burn_in=2)
    assert isinstance(batch, SequenceBatch)
    assert SequenceBatch._fields == (
        "obs", "actions", "rewards", "next_obs", "discounts", "mask", "train_mask", "initial_state"
    )  # fmt: skip
    assert batch.obs.shape == batch.next_obs.shape == (8, 6, 2)
    for x in (batch.actions, batch.rewards, batch.discounts, batch.mask, batch.train_mask):
        assert x.shape == (8, 6)
    assert batch.initial_state.shape == (8, 3)
    assert batch.actions.dtype == np.int32
    for x in (batch.obs, batch.next_obs, batch.rewards, batch.discounts, batch.mask, batch.train_mask):
        assert x.dtype == np.float32
    batch.obs[:] = -1
    assert buf.obs[0].tolist() == [0, 0]


def test_len_and_can_sample():
    buf = SequenceReplay(10, 2)
    assert len(buf) == 0 and not buf.can_sample(1)
    add_episode(buf, 0, 0, 3)
    assert len(buf) == 3 and buf.can_sample(3) and not buf.can_sample(4)


@pytest.mark.parametrize("length", [0, -1, 1.5], ids=repr)
def test_bad_length_raises(length):
    buf = SequenceReplay(10, 2)
    add_episode(buf, 0, 0, 3)
    with pytest.raises(ValueError, match="length must be an integer >= 1"):
        buf.sample(4, length)


def test_sampling_errors_are_clear():
    buf = SequenceReplay(10, 2)
    with pytest.raises(ValueError, match="empty sequence replay"):
        buf.sample(4, 2)
    add_episode(buf, 0, 0, 3)
    with pytest.raises(ValueError, match="batch_size"):
        buf.sample(0, 2)
    with pytest.raises(ValueError, match="burn_in must be an integer >= 0"):
        buf.sample(4, 2, burn_in=-1)
    with pytest.raises(ValueError, match="initial_state must be 'stored' or 'zero'"):
        buf.sample(4, 2, initial_state="learned")


def test_add_errors_are_clear():
    buf = SequenceReplay(10, 2)
    with pytest.raises(ValueError, match=r"obs must have shape \(2,\), got \(3,\)"):
        buf.add([0, 0, 0], 0, 0.0, [1, 1], False, False)
    with pytest.raises(ValueError, match=r"next_obs must have shape \(2,\), got \(1, 2\)"):
        buf.add([0, 0], 0, 0.0, [[1, 1]], False, False)
    with pytest.raises(ValueError, match="state_dim=0"):
        buf.add([0, 0], 0, 0.0, [1, 1], False, False, state=[0.0])
    with_state = SequenceReplay(10, 2, state_dim=2)
    with pytest.raises(ValueError, match="state is required"):
        with_state.add([0, 0], 0, 0.0, [1, 1], False, False)
    with pytest.raises(ValueError, match="state must have 2 floats, got 3"):
        with_state.add([0, 0], 0, 0.0, [1, 1], False, False, state=[0, 0, 0])
    assert len(buf) == 0 and len(with_state) == 0  # a rejected add stores nothing


@pytest.mark.parametrize(("capacity", "obs_dim", "state_dim"), [(1, 2, 0), (10, 0, 0), (10, 2, -1)])
def test_bad_construction_raises(capacity, obs_dim, state_dim):
    with pytest.raises(ValueError, match="must be an integer"):
        SequenceReplay(capacity, obs_dim, state_dim)


def test_module_does_not_import_tensorflow():
    import subprocess

    code = "import sys, dqnlab.sequence_replay; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
