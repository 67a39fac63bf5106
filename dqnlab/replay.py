"""Uniform experience replay: a preallocated numpy ring buffer.

Arrays are allocated once, at construction, so memory is known up front (`nbytes`) and adding a transition
is a handful of array writes. `sample_many(K, B)` draws K batches with one vectorized index draw: the
learner fuses K updates into one compiled call, and a Python loop over K here would cost more than that.

Each stored transition is (s_tm1, a_tm1, r_t, s_t, discount_t) with discount_t = 0 when s_t is terminal
and 1 otherwise. Truncation (a time limit) is not termination: a truncated transition keeps discount 1 so
the learner still bootstraps from s_t. The learner multiplies by gamma; the buffer stores no gamma.
This module does not import TensorFlow.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np


class Batch(NamedTuple):
    """Sampled transitions; leading dims [B] from `sample`, [K, B] from `sample_many`."""

    obs: np.ndarray  # [.., B, *obs_shape]  s_tm1
    actions: np.ndarray  # [.., B] int32        a_tm1
    rewards: np.ndarray  # [.., B] float32      r_t
    next_obs: np.ndarray  # [.., B, *obs_shape] s_t
    discounts: np.ndarray  # [.., B] float32    0 if s_t is terminal, else 1


def check_count(name: str, value, minimum: int = 1) -> int:
    """`value` as an int, if it is an integer (not a bool) >= `minimum`; ValueError naming it otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class SeededSampling:
    """A replay that samples with its own generator `_rng`, and can lend the draw to another one."""

    _rng: np.random.Generator

    @contextmanager
    def drawing_from(self, rng: np.random.Generator) -> Iterator[None]:
        """Sample with `rng` for the duration: the diagnostics' probes draw their batches so, so taking a
        probe (or one more) never changes which batches training draws next."""
        kept, self._rng = self._rng, rng
        try:
            yield
        finally:
            self._rng = kept


class ReplayBuffer(SeededSampling):
    """Ring buffer of (s, a, r, s', discount) with seeded uniform sampling with replacement.

    Args:
      capacity: transitions kept; once full, each `add` overwrites the oldest.
      obs_shape: shape of one observation, e.g. (4,) for CartPole.
      obs_dtype: dtype of the stored observations (and of the sampled ones).
      seed: seeds the sampler; the same seed and the same adds give identical samples.

    The arrays `obs`, `actions`, `rewards`, `next_obs`, `discounts` are public for inspection (slot i holds
    the i-th transition added, modulo `capacity`); write to them only through `add`.
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype=np.float32, seed: int = 0):
        capacity = check_count("replay capacity", capacity)
        obs_shape = tuple(int(d) for d in obs_shape)
        if any(d < 1 for d in obs_shape):
            raise ValueError(f"obs_shape must have positive dimensions, got {obs_shape}")
        self._capacity = capacity
        self._obs_shape = obs_shape
        self.obs = np.zeros((capacity, *obs_shape), obs_dtype)  # [C, *obs_shape]
        self.actions = np.zeros(capacity, np.int32)  # [C]
        self.rewards = np.zeros(capacity, np.float32)  # [C]
        self.next_obs = np.zeros((capacity, *obs_shape), obs_dtype)  # [C, *obs_shape]
        self.discounts = np.zeros(capacity, np.float32)  # [C]
        self._next = 0  # slot the next transition goes to
        self._size = 0  # transitions stored, <= capacity
        self._rng = np.random.default_rng(seed)

    @property
    def capacity(self) -> int:
        """Maximum number of transitions kept."""
        return self._capacity

    @property
    def obs_shape(self) -> tuple[int, ...]:
        """Shape of one stored observation."""
        return self._obs_shape

    @property
    def nbytes(self) -> int:
        """Total bytes of the preallocated arrays (fixed at construction)."""
        return sum(a.nbytes for a in (self.obs, self.actions, self.rewards, self.next_obs, self.discounts))

    def __len__(self) -> int:
        return self._size

    def end_episode(self) -> None:
        """The episode in progress ends without a last step (a resume that restarts the env): nothing to
        do here, transitions stand alone."""

    def add(
        self, obs, action: int, reward: float, next_obs, terminated: bool, truncated: bool = False, state=None
    ) -> None:
        """Store one transition, overwriting the oldest once full.

        Pass gymnasium's `terminated`, never `terminated or truncated`: a time limit is bootstrapped.
        `truncated` and `state` are accepted for the loop's sake and not needed here: transitions are
        independent (the sequence replay of recurrent agents uses both).
        """
        i = self._next
        self.obs[i] = obs
        self.actions[i] = action
        self.rewards[i] = reward
        self.next_obs[i] = next_obs
        self.discounts[i] = 0.0 if terminated else 1.0
        self._next = (i + 1) % self._capacity
        self._size = min(self._size + 1, self._capacity)

    def sample(self, batch_size: int) -> Batch:
        """One batch of `batch_size` transitions; arrays [B, ...]."""
        return self._gather(self._indices((check_count("batch_size", batch_size),)))

    def sample_many(self, num_batches: int, batch_size: int) -> Batch:
        """`num_batches` batches stacked [K, B, ...], drawn with one vectorized index draw."""
        k = check_count("num_batches", num_batches)
        b = check_count("batch_size", batch_size)
        return self._gather(self._indices((k, b)))

    def _indices(self, shape: tuple[int, ...]) -> np.ndarray:
        if self._size == 0:
            raise ValueError("cannot sample from an empty replay buffer: add() at least one transition first")
        # Stored slots are exactly 0..size-1 (the ring fills from slot 0), so this is uniform over them.
        return self._rng.integers(0, self._size, size=shape)  # [*shape]

    def _gather(self, idx: np.ndarray) -> Batch:
        # np.take along axis 0 is several times faster than fancy indexing `obs[idx]` for [C, *obs_shape].
        return Batch(
            obs=np.take(self.obs, idx, axis=0),  # [*idx.shape, *obs_shape]
            actions=np.take(self.actions, idx),  # [*idx.shape]
            rewards=np.take(self.rewards, idx),  # [*idx.shape]
            next_obs=np.take(self.next_obs, idx, axis=0),  # [*idx.shape, *obs_shape]
            discounts=np.take(self.discounts, idx),  # [*idx.shape]
        )
