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

from collections.abc import Iterator, Sequence
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


REPLAY_FIELDS = ("obs", "actions", "rewards", "next_obs", "discounts")


class StackedReplays:
    """N `ReplayBuffer`s filled in lockstep (the runs of a batch, `dqnlab.batched_loop`), their arrays one
    [N, C, ...] array per field. Each replay keeps its own generator and reads its own slice (a view): it
    samples, probes and checkpoints as before. What is shared is the writing and the gathering: one env
    step's N transitions go in with one array write per field, and a burst's N draws (each run's indices
    from its own generator, as `ReplayBuffer.sample_many` draws them) come out with one gather per field.
    Per run, that was five writes a step and five gathers a burst, most of a small batch's replay time."""

    @classmethod
    def of(cls, replays: Sequence[ReplayBuffer]) -> StackedReplays | None:
        """Shared storage for `replays` (what they hold copied in), or None when they cannot share it: not
        all plain `ReplayBuffer`s of one capacity, observation shape and dtype, at one ring position."""
        if not replays or any(type(r) is not ReplayBuffer for r in replays):
            return None
        first = replays[0]
        layout = lambda r: (r._capacity, r.obs.shape, r.obs.dtype, r._next, r._size)  # noqa: E731
        if any(layout(r) != layout(first) for r in replays):
            return None
        return cls(replays)

    def __init__(self, replays: Sequence[ReplayBuffer]):
        self.replays = list(replays)
        first = self.replays[0]
        self._capacity, self._next, self._size = first._capacity, first._next, first._size
        for name in REPLAY_FIELDS:
            stacked = np.stack([getattr(r, name) for r in self.replays])  # [N, C, ...]
            setattr(self, name, stacked)
            for i, replay in enumerate(self.replays):
                setattr(replay, name, stacked[i])  # the same attribute, now a view: checkpoints unchanged

    def add(self, obs, actions, rewards, next_obs, terminated) -> None:
        """One transition per replay ([N, ...] each), as each replay's `add` stores it. Every replay
        advances: a run that no longer trains (masked out of its batch) gets a row it never reads."""
        i = self._next
        self.obs[:, i] = obs
        self.actions[:, i] = actions
        self.rewards[:, i] = rewards
        self.next_obs[:, i] = next_obs
        self.discounts[:, i] = np.logical_not(terminated)  # 0 when s_t is terminal, else 1
        self._next = (i + 1) % self._capacity
        self._size = min(self._size + 1, self._capacity)
        for replay in self.replays:
            replay._next, replay._size = self._next, self._size

    def sample_many(self, num_batches: int, batch_size: int, live: Sequence[int]) -> Batch:
        """Every replay's `sample_many(num_batches, batch_size)`, stacked [N, K, B, ...]: the `live` runs
        draw from their own generators, exactly as alone; any other run draws nothing and gets the first
        live run's batches (a masked run's slot in a batched update still needs data)."""
        shape = (check_count("num_batches", num_batches), check_count("batch_size", batch_size))
        drawn = {i: self.replays[i]._indices(shape) + i * self._capacity for i in live}
        filler = drawn[live[0]]
        flat = np.stack([drawn.get(i, filler) for i in range(len(self.replays))])  # [N, K, B]
        return Batch(*(np.take(self._flat(name), flat, axis=0) for name in REPLAY_FIELDS))

    def _flat(self, name: str) -> np.ndarray:
        array = getattr(self, name)
        return array.reshape(-1, *array.shape[2:])  # [N * C, ...]: a view


# What an env gave a replay, by the replays' field names (not what the network computed: the RNN's stored
# states would be non-finite after a divergence it caused).
ENV_DATA_FIELDS = ("obs", "next_obs", "rewards", "reward")


def nonfinite_env_data(replay) -> dict[str, int]:
    """field -> count of non-finite entries the env put in `replay` (only fields that have some): a NaN or
    inf observation or reward reaches the loss, and the divergence it causes is the env's, not the
    network's. Looked at only when a run diverges; integer frames (Atari) cannot hold one."""
    found = {}
    for name in ENV_DATA_FIELDS:
        data = getattr(replay, name, None)
        if isinstance(data, np.ndarray) and np.issubdtype(data.dtype, np.floating):
            count = int(data.size - np.count_nonzero(np.isfinite(data)))
            if count:
                found[name] = count
    return found
