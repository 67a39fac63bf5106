"""FrameReplay: exact reconstruction against ReplayBuffer, dropping transitions whose frames were overwritten,
seeding, the 5-frame sampler, errors, memory.

Streams are built as gymnasium's FrameStackObservation gives them (next_obs = obs shifted by one new frame),
with random uint8 frames, so a sample rebuilt from the wrong frames cannot match by chance. Transition t of
a stream has reward t: any sampled row is checked against the stream from its reward alone.
"""

from __future__ import annotations

import json
import math
import sys
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import pytest

from dqnlab import plainstate
from dqnlab.frame_replay import FrameBatch, FrameReplay
from dqnlab.replay import Batch, ReplayBuffer

SHAPE = (4, 6, 5)  # (stack, H, W)


class Step(NamedTuple):
    obs: np.ndarray
    action: int
    reward: float
    next_obs: np.ndarray
    terminated: bool
    truncated: bool


def stream(n: int, seed: int = 0, shape: tuple[int, ...] = SHAPE, max_len: int = 6) -> list[Step]:
    """n transitions in episodes of 1..max_len steps, each ending terminated or truncated at random.

    An episode's first obs repeats its first frame (padding "reset") or is `stack` distinct frames."""
    rng = np.random.default_rng(seed)

    def frames(k: int) -> np.ndarray:
        return rng.integers(0, 256, (k, *shape[1:]), dtype=np.uint8)

    steps: list[Step] = []
    while len(steps) < n:
        length = int(rng.integers(1, max_len + 1))
        obs = np.repeat(frames(1), shape[0], axis=0) if rng.random() < 0.5 else frames(shape[0])
        for j in range(length):
            next_obs = np.concatenate([obs[1:], frames(1)])
            end = j == length - 1
            terminated = end and bool(rng.random() < 0.5)
            truncated = end and not terminated
            steps.append(Step(obs, int(rng.integers(4)), float(len(steps)), next_obs, terminated, truncated))
            obs = next_obs
    return steps[:n]


def feed(buf, steps: list[Step]) -> None:
    for s in steps:
        buf.add(s.obs, s.action, s.reward, s.next_obs, s.terminated, s.truncated)


def assert_rows_match(batch: Batch, steps: list[Step]) -> None:
    """Every sampled row is exactly the stream transition its reward names."""
    tags = batch.rewards.astype(np.int64).ravel()
    rows = [steps[t] for t in tags]
    np.testing.assert_array_equal(batch.obs, np.stack([s.obs for s in rows]).reshape(batch.obs.shape))
    np.testing.assert_array_equal(
        batch.next_obs, np.stack([s.next_obs for s in rows]).reshape(batch.obs.shape)
    )
    np.testing.assert_array_equal(batch.actions.ravel(), [s.action for s in rows])
    np.testing.assert_array_equal(batch.discounts.ravel(), [0.0 if s.terminated else 1.0 for s in rows])


def valid_tags(steps: list[Step], capacity: int, frame_capacity: int, stack: int) -> set[int]:
    """The spec: one of the last `capacity` transitions, whose first frame is among the newest
    `frame_capacity` written (an episode's first transition writes stack + 1 frames, later ones 1)."""
    written, starts, new_episode = 0, [], True
    for s in steps:
        starts.append(written if new_episode else written - stack)
        written += stack + 1 if new_episode else 1
        new_episode = s.terminated or s.truncated
    return {t for t, f in enumerate(starts) if t >= len(steps) - capacity and f >= written - frame_capacity}


# -- equivalence with ReplayBuffer -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [SHAPE, (1, 6, 5), (2, 7), (3, 2, 2, 3)], ids=str)
def test_same_samples_as_replay_buffer_across_episodes_and_wraps(shape):
    capacity = 16
    steps = stream(5 * capacity, seed=1, shape=shape)  # five laps of the transition ring
    # A frame ring big enough that no stored transition ever loses a frame (length-1 episodes included).
    fr = FrameReplay(capacity, shape, seed=7, frame_capacity=capacity * (shape[0] + 1))
    rb = ReplayBuffer(capacity, shape, obs_dtype=np.uint8, seed=7)
    for t, s in enumerate(steps):
        for buf in (fr, rb):
            buf.add(s.obs, s.action, s.reward, s.next_obs, s.terminated, s.truncated)
        assert len(fr) == len(rb) == min(t + 1, capacity)
        got, want = fr.sample_many(2, 8), rb.sample_many(2, 8)
        for name, x, y in zip(Batch._fields, got, want, strict=True):
            assert x.dtype == y.dtype and x.shape == y.shape, name
            np.testing.assert_array_equal(x, y, err_msg=name)
        np.testing.assert_array_equal(fr.sample(5).obs, rb.sample(5).obs)
    assert fr.frames.shape == (capacity * (shape[0] + 1), *shape[1:])


def test_real_frame_stack_wrapper_round_trips():
    """gymnasium's FrameStackObservation with time limits and terminations, fed to both buffers."""

    class RandomFrames(gym.Env):
        observation_space = gym.spaces.Box(0, 255, SHAPE[1:], np.uint8)
        action_space = gym.spaces.Discrete(3)

        def _frame(self) -> np.ndarray:
            return self.np_random.integers(0, 256, SHAPE[1:], dtype=np.uint8)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return self._frame(), {}

        def step(self, action):
            return self._frame(), 1.0, bool(self.np_random.random() < 0.15), False, {}

    env = gym.wrappers.FrameStackObservation(gym.wrappers.TimeLimit(RandomFrames(), 7), SHAPE[0])
    fr, rb = FrameReplay(24, SHAPE, seed=3, frame_capacity=24 * 5), ReplayBuffer(24, SHAPE, np.uint8, seed=3)
    obs, _ = env.reset(seed=0)
    ends = {"terminated": 0, "truncated": 0}
    for _ in range(100):
        next_obs, reward, terminated, truncated, _ = env.step(0)
        for buf in (fr, rb):
            buf.add(obs, 0, reward, next_obs, terminated, truncated)
        ends["terminated"] += terminated
        ends["truncated"] += truncated
        obs = env.reset()[0] if terminated or truncated else next_obs
    assert ends["terminated"] > 0 and ends["truncated"] > 0
    for x, y in zip(fr.sample_many(4, 32), rb.sample_many(4, 32), strict=True):
        np.testing.assert_array_equal(x, y)


# -- transitions that lost their frames ----------------------------------------------------------------------


def test_overwritten_transition_is_dropped():
    buf = FrameReplay(10, SHAPE)  # default frame ring: 10 + 4 * ceil(10 / 80) = 14 frames
    assert buf.frame_capacity == 14
    long_episode = chained(6, seed=2)
    long_episode[-1] = long_episode[-1]._replace(truncated=True)
    feed(buf, long_episode)  # frames 0..9; transition 0 reads frames 0..4
    assert len(buf) == 6
    one_step = chained(1, seed=3)[0]._replace(reward=6.0, truncated=True)
    feed(buf, [one_step])  # frames 10..14: frame 14 overwrites frame 0
    assert len(buf) == 6
    tags = set(buf.sample_many(20, 32).rewards.ravel().tolist())
    assert tags == {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}
    assert_rows_match(buf.sample(64), [*long_episode, one_step])


def chained(n: int, seed: int) -> list[Step]:
    """n steps of one episode, rewards 0..n-1, not ended."""
    rng = np.random.default_rng(seed)
    obs, steps = rng.integers(0, 256, SHAPE, dtype=np.uint8), []
    for t in range(n):
        next_obs = np.concatenate([obs[1:], rng.integers(0, 256, (1, *SHAPE[1:]), dtype=np.uint8)])
        steps.append(Step(obs, t % 4, float(t), next_obs, False, False))
        obs = next_obs
    return steps


@pytest.mark.parametrize("max_len", [1, 3, 12], ids=lambda m: f"max_len{m}")
def test_only_valid_transitions_are_sampled_and_uniformly(max_len):
    capacity, stack = 40, SHAPE[0]
    buf = FrameReplay(capacity, SHAPE, seed=5)  # 44 frames: short episodes cannot all fit
    steps = stream(6 * capacity, seed=max_len, max_len=max_len)
    for t, s in enumerate(steps):
        feed(buf, [s])
        valid = valid_tags(steps[: t + 1], capacity, buf.frame_capacity, stack)
        assert len(buf) == len(valid)
        batch = buf.sample(16)
        assert set(batch.rewards.astype(int).tolist()) <= valid
        assert_rows_match(batch, steps)
    # Uniform over the valid transitions: each drawn about equally often (seeded, so not flaky).
    tags, counts = np.unique(buf.sample_many(100, 100).rewards, return_counts=True)
    assert set(tags.astype(int).tolist()) == valid
    expected = 10_000 / len(valid)
    assert counts.min() > 0.7 * expected and counts.max() < 1.3 * expected


# -- seeding, the frame sampler, copies ----------------------------------------------------------------------


def filled(seed: int, n: int = 50, capacity: int = 20) -> FrameReplay:
    buf = FrameReplay(capacity, SHAPE, seed=seed)
    feed(buf, stream(n, seed=11))
    return buf


def test_same_seed_same_samples_and_different_seeds_differ():
    a, b, c = filled(3), filled(3), filled(4)
    for x, y in zip(a.sample_many(4, 32), b.sample_many(4, 32), strict=True):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a.sample_frames(32), b.sample_frames(32), strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.sample(64).rewards, b.sample(64).rewards)
    assert not np.array_equal(filled(3).sample(64).rewards, c.sample(64).rewards)


def test_sample_frames_holds_the_same_transitions_as_sample():
    for one, many in [(lambda b: b.sample(16), lambda b: b.sample_frames(16)),
                      (lambda b: b.sample_many(3, 16), lambda b: b.sample_frames_many(3, 16))]:  # fmt: skip
        a, b = filled(9), filled(9)
        want, got = one(a), many(b)
        assert isinstance(got, FrameBatch) and got.frames.dtype == np.uint8
        assert got.frames.shape == (*want.rewards.shape, SHAPE[0] + 1, *SHAPE[1:])
        np.testing.assert_array_equal(got.frames[..., :-1, :, :], want.obs)
        np.testing.assert_array_equal(got.frames[..., 1:, :, :], want.next_obs)
        for x, y in zip(b.split(got), want, strict=True):  # split: the same Batch, as views
            np.testing.assert_array_equal(x, y)
        assert np.shares_memory(b.split(got).obs, got.frames)


def test_sample_frames_into_a_reused_out_array():
    a, b = filled(5), filled(5)
    out = np.empty((16, SHAPE[0] + 1, *SHAPE[1:]), np.uint8)
    for _ in range(3):
        got, want = a.sample_frames(16, out=out), b.sample_frames(16)
        assert got.frames is out
        for x, y in zip(got, want, strict=True):
            np.testing.assert_array_equal(x, y)
    out_many = np.empty((2, 4, SHAPE[0] + 1, *SHAPE[1:]), np.uint8)
    assert a.sample_frames_many(2, 4, out=out_many).frames is out_many
    for bad in (out[:8], out.astype(np.int16), np.empty((5, 16, *SHAPE[1:]), np.uint8).transpose(1, 0, 2, 3)):
        with pytest.raises(
            ValueError, match=r"out must be a C-contiguous uint8 array of shape \(16, 5, 6, 5\)"
        ):
            a.sample_frames(16, out=bad)


def test_sampled_arrays_are_fresh_copies():
    buf = filled(0)
    before = buf.frames.copy()
    batch = buf.sample(8)
    assert batch.obs.flags.c_contiguous and batch.next_obs.flags.c_contiguous
    assert not np.shares_memory(batch.obs, batch.next_obs)
    batch.obs[:] = 0
    batch.next_obs[:] = 0
    buf.sample_frames(8).frames[:] = 0
    np.testing.assert_array_equal(buf.frames, before)


def test_stored_state_round_trip_keeps_contents_rng_and_episode():
    """Checkpoints store the replay's attributes as data (JSON and arrays, through dqnlab.plainstate) and
    put them into a fresh buffer: the copy samples the same and continues the same episode."""
    steps = chained(8, seed=6)
    buf = FrameReplay(6, SHAPE, seed=2)
    feed(buf, steps[:7])
    arrays = {}
    tree = json.loads(json.dumps(plainstate.encode(dict(vars(buf)), arrays)))
    copy = FrameReplay(6, SHAPE, seed=99)
    plainstate.restore_attributes(copy, plainstate.decode(tree, arrays), "replay")
    assert len(copy) == len(buf) == 6
    for x, y in zip(copy.sample_many(2, 16), buf.sample_many(2, 16), strict=True):
        np.testing.assert_array_equal(x, y)
    feed(copy, steps[7:])  # continues the episode
    with pytest.raises(ValueError, match="does not continue"):
        feed(copy, stream(1, seed=8))
    assert_rows_match(copy.sample(32), steps)


# -- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("capacity", [0, -3, 2.5, True, "10"], ids=repr)
def test_bad_capacity_raises(capacity):
    with pytest.raises(ValueError, match="capacity"):
        FrameReplay(capacity, SHAPE)


@pytest.mark.parametrize("obs_shape", [(84,), (4, 0, 84), (0, 6, 5)], ids=str)
def test_bad_obs_shape_raises(obs_shape):
    with pytest.raises(ValueError, match=r"obs_shape must be \(stack, \*frame_shape\)"):
        FrameReplay(4, obs_shape)


def test_frame_capacity_must_hold_one_transition():
    with pytest.raises(ValueError, match="frame_capacity must be an integer >= 5"):
        FrameReplay(4, SHAPE, frame_capacity=4)
    assert len(FrameReplay(4, SHAPE, frame_capacity=5)) == 0


@pytest.mark.parametrize(("k", "b"), [(0, 4), (2, 0), (-1, 4)])
def test_bad_sample_sizes_raise(k, b):
    buf = filled(0)
    for method in (buf.sample_many, buf.sample_frames_many):
        with pytest.raises(ValueError, match=">= 1"):
            method(k, b)
    if b < 1:
        for method in (buf.sample, buf.sample_frames):
            with pytest.raises(ValueError, match="batch_size"):
                method(b)


def test_empty_buffer_sampling_raises():
    buf = FrameReplay(4, SHAPE)
    for draw in (lambda: buf.sample(1), lambda: buf.sample_many(2, 1), lambda: buf.sample_frames(1)):
        with pytest.raises(ValueError, match="empty replay buffer"):
            draw()


def test_bad_observations_raise_and_store_nothing():
    steps = stream(12, seed=4, max_len=4)
    buf, twin = FrameReplay(8, SHAPE, seed=1), FrameReplay(8, SHAPE, seed=1)
    feed(buf, steps[:5])
    feed(twin, steps[:5])
    s = steps[5]
    with pytest.raises(ValueError, match=r"uint8 of shape \(4, 6, 5\), got float32"):
        buf.add(s.obs.astype(np.float32), 0, 0.0, s.next_obs, False)
    with pytest.raises(ValueError, match="next_obs must be uint8 of shape"):
        buf.add(s.obs, 0, 0.0, s.next_obs[1:], False)
    with pytest.raises(ValueError, match="shifted by one frame"):
        buf.add(s.obs, 0, 0.0, s.next_obs[::-1], False)
    # An episode end reported as neither terminated nor truncated: the next episode's obs does not continue.
    fresh = stream(1, seed=5)[0]
    buf.add(s.obs, s.action, s.reward, s.next_obs, terminated=False, truncated=False)
    twin.add(s.obs, s.action, s.reward, s.next_obs, terminated=False, truncated=False)
    with pytest.raises(ValueError, match="does not continue the previous transition's next_obs"):
        buf.add(fresh.obs, 0, 0.0, fresh.next_obs, False)
    assert len(buf) == len(twin)
    for x, y in zip(buf.sample_many(3, 16), twin.sample_many(3, 16), strict=True):
        np.testing.assert_array_equal(x, y)


# -- memory ----------------------------------------------------------------------------------------------


def test_nbytes_by_hand():
    # Per transition: action 4 + reward 4 + discount 4 + start 8 = 20 bytes; per frame 6 * 5 = 30 bytes.
    assert FrameReplay(10, SHAPE, frame_capacity=20).nbytes == 20 * 30 + 10 * 20
    buf = FrameReplay(100, SHAPE)  # default frames: 100 + 4 * ceil(100 / 80) = 108
    assert buf.frame_capacity == 108 and buf.nbytes == 108 * 30 + 100 * 20
    assert FrameReplay.bytes_needed(100, SHAPE) == buf.nbytes
    assert FrameReplay.bytes_needed(10, SHAPE, frame_capacity=20) == 800
    with pytest.raises(ValueError, match="capacity"):
        FrameReplay.bytes_needed(0, SHAPE)
    # Atari, 1M transitions: 1,050,000 frames of 84 * 84 = 7,056 bytes + 20 MB, under the 7.5 GB bar.
    atari = FrameReplay.bytes_needed(1_000_000, (4, 84, 84))
    assert atari == 1_050_000 * 7_056 + 20_000_000 == 7_428_800_000 <= 7.5e9
    assert math.isclose(atari / 1_000_000, 7_428.8)


def test_module_does_not_import_tensorflow():
    import subprocess

    code = "import sys, dqnlab.frame_replay; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
