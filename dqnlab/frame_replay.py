"""Replay for stacked frames (Atari): every uint8 frame stored once, stacks rebuilt at sampling time.

An Atari observation is the stack of the last `stack` preprocessed frames, e.g. (4, 84, 84) uint8 from
gymnasium's `FrameStackObservation` over `AtariPreprocessing`. Consecutive observations share `stack - 1`
frames, so `ReplayBuffer`, which keeps obs and next_obs whole, stores each frame 2 * stack = 8 times:
56,448 bytes per transition, 56 GB for the usual 1M transitions. `FrameReplay` keeps one ring of frames:

- at the first `add` of an episode (after construction, or after a terminated or truncated transition) the
  `stack` frames of obs and the newest frame of next_obs are written;
- every later `add` of the episode writes only next_obs's newest frame;
- transition t keeps `starts[t]`, the (global, ever-increasing) index of its obs's first frame: its obs is
  frames starts[t] .. starts[t] + stack - 1 and its next_obs frames starts[t] + 1 .. starts[t] + stack.

An episode of n transitions takes n + stack frames. Per transition that is one frame (7,056 bytes at 84x84)
plus 20 bytes of action (int32), reward (float32), discount (float32) and start (int64), plus `stack`
frames per episode start. The default frame ring has room for `capacity` transitions of episodes averaging
>= 80 steps: capacity + stack * ceil(capacity / 80) frames, 7,428.8 bytes per transition for (4, 84, 84),
7.43 GB for 1M transitions (the frames alone are 7.06 GB). `FrameReplay.bytes_needed` says it up front.

Validity. A transition is sampleable while it is one of the last `capacity` added and none of its
stack + 1 frames has been overwritten. Frames are written in order, so both conditions hold for exactly the
newest `len(self)` transitions: when episodes are shorter on average than the ring allows, the oldest
transitions drop out before `capacity` is reached (len < capacity) instead of being read back with
another episode's frames. Sampling is uniform with replacement over the valid ones.

`add` checks the frame-stack contract: obs must continue the previous transition's next_obs within an
episode, and next_obs must be obs shifted by one frame. That is what makes the stored frames rebuild exactly
what was added; a loop that did not pass `truncated` (so a reset obs looks like a continuation) gets a
ValueError instead of silently corrupted samples.

Two samplers, both one vectorized gather (ndarray.take on the ring with a computed index array):
`sample` / `sample_many` return the same `Batch` as `ReplayBuffer`, obs and next_obs contiguous, 2 * stack
frames copied per transition. `sample_frames` / `sample_frames_many` copy each transition's stack + 1
distinct frames once, x = [.., B, stack + 1, H, W], and leave the split (obs = x[..., :-1, :, :],
next_obs = x[..., 1:, :, :]; `split` makes those views) to the learner: 5 frames instead of 8 for Atari,
optionally into a reused `out` array. Copying frames is what bounds sampling speed: a batch of 32 is 1.8 MB
via `sample`, 1.1 MB via `sample_frames`, read from random places in a ring far larger than any cache, so
the time goes to DRAM latency, not to Python. scripts/bench_replay.py measures both.
This module does not import TensorFlow.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from dqnlab.replay import Batch, SeededSampling, check_count

# The default frame ring fits `capacity` transitions whose episodes average at least this many steps.
MIN_MEAN_EPISODE = 80


class FrameBatch(NamedTuple):
    """Sampled transitions as their stack + 1 distinct frames; leading dims [B] or [K, B]."""

    frames: np.ndarray  # [.., B, stack + 1, *frame_shape] uint8: obs is frames 0..stack-1, next_obs 1..stack
    actions: np.ndarray  # [.., B] int32        a_tm1
    rewards: np.ndarray  # [.., B] float32      r_t
    discounts: np.ndarray  # [.., B] float32    0 if s_t is terminal, else 1


def _check_obs_shape(obs_shape) -> tuple[int, ...]:
    obs_shape = tuple(int(d) for d in obs_shape)
    if len(obs_shape) < 2 or any(d < 1 for d in obs_shape):
        raise ValueError(f"obs_shape must be (stack, *frame_shape) with positive dimensions, got {obs_shape}")
    return obs_shape


def _default_frame_capacity(capacity: int, stack: int) -> int:
    return capacity + stack * math.ceil(capacity / MIN_MEAN_EPISODE)


class FrameReplay(SeededSampling):
    """Ring of uint8 frames, each stored once, with seeded uniform sampling of stacked transitions.

    A drop-in for `ReplayBuffer` on stacked-frame observations: same `add`, `sample`, `sample_many`,
    `nbytes`, `len`, `capacity`, `obs_shape`; discount 0 only on `terminated`. For the same seed and adds,
    as long as no transition has lost its frames (len == min(adds, capacity)), the samples are identical to
    those of a `ReplayBuffer(capacity, obs_shape, np.uint8, seed)`.

    Args:
      capacity: transitions kept at most.
      obs_shape: (stack, *frame_shape), e.g. (4, 84, 84).
      seed: seeds the sampler.
      frame_capacity: frames in the ring (>= stack + 1). Default capacity + stack * ceil(capacity / 80):
        room for `capacity` transitions while their episodes average >= 80 steps.

    The arrays `frames` [frame_capacity, *frame_shape], `actions`, `rewards`, `discounts`, `starts`
    [capacity] are public for inspection (transition t is in slot t % capacity; frame f in row
    f % frame_capacity); write to them only through `add`.
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...] = (4, 84, 84),
        seed: int = 0,
        *,
        frame_capacity: int | None = None,
    ):
        capacity = check_count("replay capacity", capacity)
        obs_shape = _check_obs_shape(obs_shape)
        stack = obs_shape[0]
        if frame_capacity is None:
            frame_capacity = _default_frame_capacity(capacity, stack)
        frame_capacity = check_count("frame_capacity", frame_capacity, stack + 1)  # one transition
        self._capacity = capacity
        self._obs_shape = obs_shape
        self._stack = stack
        self._frame_capacity = frame_capacity
        self.frames = np.zeros((frame_capacity, *obs_shape[1:]), np.uint8)  # [F, *frame_shape]
        self.actions = np.zeros(capacity, np.int32)  # [C]
        self.rewards = np.zeros(capacity, np.float32)  # [C]
        self.discounts = np.zeros(capacity, np.float32)  # [C]
        self.starts = np.zeros(capacity, np.int64)  # [C] global index of the obs's first frame
        self._added = 0  # transitions ever added
        self._written = 0  # frames ever written
        self._oldest = 0  # global index of the oldest valid transition
        self._episode_start = True  # the next add begins an episode
        self._offsets = np.arange(stack + 1)  # [stack + 1] a transition's frames, from its start
        self._pair = np.stack([self._offsets[:-1], self._offsets[1:]])[:, None, :]  # [2, 1, stack] obs, next
        self._rng = np.random.default_rng(seed)

    @staticmethod
    def bytes_needed(
        capacity: int, obs_shape: tuple[int, ...] = (4, 84, 84), frame_capacity: int | None = None
    ) -> int:
        """`nbytes` of a FrameReplay built with these arguments, without allocating it."""
        capacity = check_count("replay capacity", capacity)
        obs_shape = _check_obs_shape(obs_shape)
        if frame_capacity is None:
            frame_capacity = _default_frame_capacity(capacity, obs_shape[0])
        # Per transition: action int32 + reward float32 + discount float32 + start int64 = 20 bytes.
        return frame_capacity * math.prod(obs_shape[1:]) + capacity * 20

    @property
    def capacity(self) -> int:
        """Maximum number of transitions kept."""
        return self._capacity

    @property
    def obs_shape(self) -> tuple[int, ...]:
        """Shape of one stacked observation, (stack, *frame_shape)."""
        return self._obs_shape

    @property
    def frame_capacity(self) -> int:
        """Frames in the ring."""
        return self._frame_capacity

    @property
    def nbytes(self) -> int:
        """Total bytes of the preallocated arrays (fixed at construction)."""
        return sum(a.nbytes for a in (self.frames, self.actions, self.rewards, self.discounts, self.starts))

    def __len__(self) -> int:
        return self._added - self._oldest

    def end_episode(self) -> None:
        """The episode in progress ends without a last step (a resume that restarts the env): the next add
        starts an episode, as after a truncation."""
        self._episode_start = True

    def add(
        self, obs, action: int, reward: float, next_obs, terminated: bool, truncated: bool = False, state=None
    ) -> None:
        """Store one transition; stacked obs and next_obs as the env gives them, uint8 (stack, *frame_shape).

        Pass gymnasium's `terminated` and `truncated`: either ends the episode, so the next add stores its
        obs's frames afresh; only `terminated` sets discount 0 (a time limit is bootstrapped). `state` is
        accepted for the loop's sake and ignored. Raises ValueError, storing nothing, when obs does not
        continue the previous next_obs within an episode or next_obs is not obs shifted by one frame.
        """
        obs, next_obs = self._checked(obs, "obs"), self._checked(next_obs, "next_obs")
        action, reward, discount = int(action), float(reward), 0.0 if terminated else 1.0
        s = self._stack
        if not np.array_equal(next_obs[:-1], obs[1:]):
            raise ValueError("next_obs must be obs shifted by one frame: next_obs[:-1] == obs[1:]")
        # Check before writing anything, so a rejected add leaves the buffer as it was.
        start = self._written if self._episode_start else self._written - s  # else obs is stored already
        if not self._episode_start and not np.array_equal(obs, self._stored(start, s)):
            raise ValueError(
                "obs does not continue the previous transition's next_obs: pass terminated/truncated "
                "at every episode end (a new episode starts after either), and stacks in order"
            )
        if self._episode_start:
            self._write(start, obs)
        self._write(start + s, next_obs[-1:])

        i = self._added % self._capacity
        self.actions[i] = action
        self.rewards[i] = reward
        self.discounts[i] = discount
        self.starts[i] = start
        self._added += 1
        self._episode_start = bool(terminated or truncated)
        # Drop transitions that fell out of the transition ring or lost a frame to the writes just made.
        first_frame = self._written - self._frame_capacity
        self._oldest = max(self._oldest, self._added - self._capacity)
        while self._oldest < self._added and self.starts[self._oldest % self._capacity] < first_frame:
            self._oldest += 1

    def sample(self, batch_size: int) -> Batch:
        """One batch of `batch_size` transitions; obs/next_obs [B, stack, *frame_shape] uint8."""
        return self._gather(self._slots((check_count("batch_size", batch_size),)))

    def sample_many(self, num_batches: int, batch_size: int) -> Batch:
        """`num_batches` batches stacked [K, B, ...], drawn with one vectorized index draw."""
        k = check_count("num_batches", num_batches)
        return self._gather(self._slots((k, check_count("batch_size", batch_size))))

    def sample_frames(self, batch_size: int, out: np.ndarray | None = None) -> FrameBatch:
        """Like `sample`, but each transition's stack + 1 frames gathered once: [B, stack + 1, ...].

        Draws the same transitions as `sample` would for the same RNG state. obs is frames[:, :-1] and
        next_obs frames[:, 1:] (`split` gives that `Batch` as views). For Atari that copies 5 frames per
        transition instead of 8; feed the 5-frame tensor and slice on the learner's side.
        `out`, a uint8 array [B, stack + 1, *frame_shape] reused from call to call, is gathered into and
        returned as `frames`: it saves allocating (and page-faulting) 1.1 MB per Atari batch of 32.
        """
        return self._gather_frames(self._slots((check_count("batch_size", batch_size),)), out)

    def sample_frames_many(
        self, num_batches: int, batch_size: int, out: np.ndarray | None = None
    ) -> FrameBatch:
        """`num_batches` frame batches stacked [K, B, stack + 1, ...]; `out` as in `sample_frames`."""
        k = check_count("num_batches", num_batches)
        return self._gather_frames(self._slots((k, check_count("batch_size", batch_size))), out)

    def split(self, batch: FrameBatch) -> Batch:
        """The `Batch` of a `FrameBatch`: obs and next_obs are views into `batch.frames` (no copy)."""
        axis = batch.frames.ndim - len(self._obs_shape)  # the stack + 1 axis
        lead = (slice(None),) * axis
        return Batch(
            obs=batch.frames[(*lead, slice(None, -1))],
            actions=batch.actions,
            rewards=batch.rewards,
            next_obs=batch.frames[(*lead, slice(1, None))],
            discounts=batch.discounts,
        )

    def _checked(self, x, name: str) -> np.ndarray:
        x = np.asarray(x)
        if x.shape != self._obs_shape or x.dtype != np.uint8:
            raise ValueError(f"{name} must be uint8 of shape {self._obs_shape}, got {x.dtype} {x.shape}")
        return x

    def _rows(self, first: int, n: int) -> np.ndarray | slice:
        """Ring rows of global frames first .. first + n - 1: a slice unless they wrap around the end."""
        r = first % self._frame_capacity
        if r + n <= self._frame_capacity:
            return slice(r, r + n)
        return (r + np.arange(n)) % self._frame_capacity

    def _stored(self, first: int, n: int) -> np.ndarray:
        return self.frames[self._rows(first, n)]

    def _write(self, first: int, frames: np.ndarray) -> None:
        self.frames[self._rows(first, len(frames))] = frames
        self._written = first + len(frames)

    def _slots(self, shape: tuple[int, ...]) -> np.ndarray:
        n = len(self)
        if n == 0:
            raise ValueError("cannot sample from an empty replay buffer: add() at least one transition first")
        k = self._rng.integers(0, n, size=shape)  # [*shape]
        if n == self._capacity:  # every slot is valid: use the draw as the slot, exactly as ReplayBuffer does
            return k
        # The valid transitions are the newest n, in slots oldest % C onwards (0.. when nothing dropped out).
        return (self._oldest + k) % self._capacity

    # The gathers use the ndarray.take method, not np.take: same C loop, a microsecond less per call each.
    # Rows are global frame indices: mode="wrap" maps them onto the ring and, unlike the default mode,
    # gathers into `out` without an intermediate buffer.

    def _gather(self, slots: np.ndarray) -> Batch:
        starts = self.starts.take(slots.ravel())  # [N]
        # obs and next_obs in one allocation, [2, N, stack, ...]: two separate ~1 MB arrays can make glibc
        # return their memory and page-fault it back in on every call, many times slower
        # (docs/performance.md).
        pair = self.frames.take(starts[:, None] + self._pair, axis=0, mode="wrap")
        pair = pair.reshape(2, *slots.shape, *self._obs_shape)
        return Batch(
            obs=pair[0],  # [*slots.shape, stack, *frame_shape], contiguous
            actions=self.actions.take(slots),
            rewards=self.rewards.take(slots),
            next_obs=pair[1],
            discounts=self.discounts.take(slots),
        )

    def _gather_frames(self, slots: np.ndarray, out: np.ndarray | None) -> FrameBatch:
        if out is not None:
            shape = (*slots.shape, self._stack + 1, *self._obs_shape[1:])
            if out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
                raise ValueError(
                    f"out must be a C-contiguous uint8 array of shape {shape}, got {out.dtype} {out.shape}"
                )
        rows = self.starts.take(slots)[..., None] + self._offsets  # [*slots.shape, stack + 1]
        return FrameBatch(
            frames=self.frames.take(rows, axis=0, out=out, mode="wrap"),
            actions=self.actions.take(slots),
            rewards=self.rewards.take(slots),
            discounts=self.discounts.take(slots),
        )
