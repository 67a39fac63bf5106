"""Sequence replay for recurrent (DRQN / R2D2-style) DQN: windows of consecutive steps, one episode each.

Storage is one preallocated numpy ring of *rows* in time order. Each env step is one "step row" (obs, action,
reward, terminated, episode-start flag, optionally the recurrent state fed into the network at that step).
The next observation is implicit: step i's next_obs is row i+1's obs. At the end of an episode (terminated or
truncated) the true final observation stays in an extra "observation row" right after the last step row, so
every episode of n steps uses n + 1 rows. `add` writes next_obs eagerly into the following row, so the step
most recently added already has its next_obs even though the episode is still running.

Why windows never cross episodes: a recurrent state carried from one episode into the next would be fed
observations the agent never saw in sequence, and a TD target across the boundary would bootstrap from
another episode's value. A window that reaches an episode end is padded with zeros and masked out instead.
Observation rows (is_step = 0) are the separators: `mask` is the running product of is_step along the window,
so it drops to 0 at the first separator and stays 0.

Initial state (R2D2, Kapturowski et al. 2019, "Recurrent experience replay in distributed RL"): "zero" starts
every window from a zero state (DRQN, Hausknecht & Stone 2015, random-start updates), which the network never
saw mid-episode when acting; "stored" starts from the state the actor had at that step, which is stale
because the weights have since changed. Burn-in unrolls the network over the first `burn_in` steps only to
warm the state up: those steps get mask 1 but train_mask 0, so they feed the recurrence but not the loss.

Ring wrap: writes overwrite the oldest rows first, so the oldest episode loses its *first* steps. Its
surviving steps still start windows (each start is drawn only among step rows still present, and a window
only reads forward, through rows newer than its start). The newest row is always an observation row, so a
window never reads past the last added step into stale rows from the previous lap.

Memory: `bytes_per_step()` bytes per row = 4*obs_dim (obs) + 4 (action) + 4 (reward) + 1 (terminated)
+ 1 (first) + 1 (is_step) + 4*state_dim (state); plus one row per episode for its final observation. For
CartPole with masked velocities (obs_dim 2): 19 bytes per row with no state, 531 with an LSTM state of
2 x 64 floats (state_dim 128). An episode of n steps costs (n + 1) rows.
This module does not import TensorFlow.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from dqnlab.replay import SeededSampling, check_count


class SequenceBatch(NamedTuple):
    """Sampled windows, [B, T, ...] with T = burn_in + length; padding (mask 0) is zeros (discount 1).
    The fields of `dqnlab.replay.Batch`, each with a time axis, then the window's masks and state."""

    obs: np.ndarray  # [B, T, obs_dim] float32       o_tm1
    actions: np.ndarray  # [B, T] int32                a_tm1
    rewards: np.ndarray  # [B, T] float32              r_t
    next_obs: np.ndarray  # [B, T, obs_dim] float32    o_t
    discounts: np.ndarray  # [B, T] float32            0 if o_t is terminal, else 1
    mask: np.ndarray  # [B, T] float32                 1 for real steps, 0 for padding after the episode end
    train_mask: np.ndarray  # [B, T] float32           mask with the first burn_in steps zeroed
    initial_state: np.ndarray  # [B, state_dim] float32 state fed in at the window's first step (or zeros)


def stack_sequences(batches: list[SequenceBatch]) -> SequenceBatch:
    """K SequenceBatches of [B, T, ...] as one of [K, B, T, ...]: a burst's."""
    return SequenceBatch(*(np.stack(field) for field in zip(*batches, strict=True)))


def pack_sequences(batch: SequenceBatch) -> tuple[np.ndarray, np.ndarray]:
    """SequenceBatch fields [.., B, T, ...] as one float32 [.., B, T, 2D + 5] array (one argument to bind
    per compiled call instead of seven), and the initial state."""
    obs, actions, rewards, next_obs, discounts, mask, train_mask, initial_state = batch
    per_step = np.concatenate(
        [obs, actions[..., None], rewards[..., None], next_obs, discounts[..., None], mask[..., None],
         train_mask[..., None]],
        axis=-1,
        dtype=np.float32,
    )  # fmt: skip
    return per_step, np.asarray(initial_state, np.float32)


class SequenceReplay(SeededSampling):
    """Ring buffer of steps in time order; samples [B, T] windows that stay inside one episode.

    Args:
      capacity: rows kept (an episode of n steps takes n + 1 rows); once full, the oldest are overwritten.
      obs_dim: length of one (flat) observation.
      state_dim: floats of recurrent state stored per step (e.g. 128 for an LSTM's (h, c) of 64 each);
        0 stores none.
      seed: seeds the sampler; the same seed and the same adds give identical samples.

    The arrays `obs`, `action`, `reward`, `terminated`, `first`, `is_step`, `state` are public for
    inspection; write to them only through `add`.
    """

    def __init__(self, capacity: int, obs_dim: int, state_dim: int = 0, seed: int = 0):
        capacity = check_count("sequence replay capacity", capacity, minimum=2)  # a step plus its next obs
        self._capacity = capacity
        self._obs_dim = check_count("obs_dim", obs_dim)
        self._state_dim = check_count("state_dim", state_dim, minimum=0)
        self.obs = np.zeros((capacity, self._obs_dim), np.float32)  # [C, obs_dim]
        self.action = np.zeros(capacity, np.int32)  # [C]
        self.reward = np.zeros(capacity, np.float32)  # [C]
        self.terminated = np.zeros(capacity, np.bool_)  # [C]
        self.first = np.zeros(capacity, np.bool_)  # [C] first step of an episode
        self.is_step = np.zeros(capacity, np.bool_)  # [C] 0 for observation-only rows (and unwritten ones)
        self.state = np.zeros((capacity, self._state_dim), np.float32)  # [C, state_dim]
        self._slot = 0  # row the next add's step goes to (already holds its obs if mid-episode)
        self._filled = 0  # rows ever written, <= capacity; rows >= this are unwritten zeros
        self._num_steps = 0  # step rows currently present
        self._episode_start = True  # the next add starts an episode
        self._rng = np.random.default_rng(seed)

    @property
    def capacity(self) -> int:
        """Rows kept (steps plus one observation row per episode)."""
        return self._capacity

    @property
    def state_dim(self) -> int:
        """Floats of recurrent state stored per step; 0 when none is stored."""
        return self._state_dim

    def bytes_per_step(self) -> int:
        """Bytes per row: 4*obs_dim + 4 + 4 + 1 + 1 + 1 + 4*state_dim. An n-step episode takes n + 1 rows."""
        return sum(a.itemsize * int(np.prod(a.shape[1:])) for a in self._arrays())

    @property
    def nbytes(self) -> int:
        """Total bytes of the preallocated arrays (capacity * bytes_per_step(), fixed at construction)."""
        return sum(a.nbytes for a in self._arrays())

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return (self.obs, self.action, self.reward, self.terminated, self.first, self.is_step, self.state)

    def __len__(self) -> int:
        """Steps (transitions) present; observation rows are not counted."""
        return self._num_steps

    def can_sample(self, length: int) -> bool:
        """True once at least `length` steps are stored (one would do: windows are padded; this avoids
        training on mostly padding early on)."""
        return self._num_steps >= check_count("length", length)

    def _check_vector(self, name: str, value, dim: int) -> np.ndarray:
        value = np.asarray(value, np.float32)
        if value.shape != (dim,):
            raise ValueError(f"{name} must have shape ({dim},), got {value.shape}")
        return value

    def _write(self, row: int, obs: np.ndarray, is_step: bool) -> None:
        self._num_steps += int(is_step) - int(self.is_step[row])
        self.obs[row] = obs
        self.is_step[row] = is_step
        self._filled = max(self._filled, row + 1)

    def end_episode(self) -> None:
        """The episode in progress ends without a last step (a resume that restarts the env): as after a
        truncation, its last observation row stays and the next episode starts after it."""
        if not self._episode_start:
            self._episode_start = True
            self._slot = (self._slot + 1) % self._capacity

    def add(
        self, obs, action: int, reward: float, next_obs, terminated: bool, truncated: bool, state=None
    ) -> None:
        """Store one env step (call once per step, in order). terminated or truncated ends the episode.

        `state` is the recurrent state fed into the network at this step, any shape with state_dim floats
        (flattened in C order, so an LSTM's (h, c) is stored as [h, c]); required iff state_dim > 0.
        """
        obs = self._check_vector("obs", obs, self._obs_dim)
        next_obs = self._check_vector("next_obs", next_obs, self._obs_dim)
        if self._state_dim == 0 and state is not None:
            raise ValueError("got a state but this buffer has state_dim=0; construct it with state_dim > 0")
        if self._state_dim > 0:
            if state is None:
                raise ValueError(f"state is required: this buffer stores state_dim={self._state_dim} floats")
            state = np.asarray(state, np.float32).reshape(-1)
            if state.size != self._state_dim:
                raise ValueError(f"state must have {self._state_dim} floats, got {state.size}")
        i = self._slot
        nxt = (i + 1) % self._capacity
        self._write(i, obs, is_step=True)
        self.action[i] = action
        self.reward[i] = reward
        self.terminated[i] = bool(terminated)
        self.first[i] = self._episode_start
        if self._state_dim > 0:
            self.state[i] = state
        # Write next_obs now, as an observation row: the step just added is complete, and a window reading
        # forward from any present step stops here (is_step 0) before reaching rows of the previous lap.
        self._write(nxt, next_obs, is_step=False)
        self.first[nxt] = False
        self._episode_start = bool(terminated) or bool(truncated)
        # Mid-episode the next step overwrites row nxt with the same obs; at an episode end row nxt keeps
        # the final observation and the next episode starts after it.
        self._slot = (nxt + 1) % self._capacity if self._episode_start else nxt

    def sample(
        self, batch_size: int, length: int, burn_in: int = 0, initial_state: str = "stored"
    ) -> SequenceBatch:
        """`batch_size` windows of T = burn_in + length steps, each starting at a uniformly drawn stored step.

        initial_state: "stored" (the state stored at each window's first step) or "zero". With state_dim=0
        both give [B, 0]: the network builds its own zero state.
        """
        b = check_count("batch_size", batch_size)
        length = check_count("length", length)
        burn_in = check_count("burn_in", burn_in, minimum=0)
        if initial_state not in ("stored", "zero"):
            raise ValueError(f"initial_state must be 'stored' or 'zero', got {initial_state!r}")
        if self._num_steps == 0:
            raise ValueError("cannot sample from an empty sequence replay: add() at least one step first")
        t = burn_in + length
        start = self._draw_starts(b)  # [B]
        idx = (start[:, None] + np.arange(t + 1)) % self._capacity  # [B, T + 1]; column T is for next_obs
        step_idx = idx[:, :t]  # [B, T]
        # Running product: the first observation row (episode end, or the newest row) ends the window.
        mask = np.cumprod(np.take(self.is_step, step_idx), axis=1).astype(np.float32)  # [B, T]
        valid = mask > 0  # [B, T]
        train_mask = mask.copy()
        train_mask[:, :burn_in] = 0.0  # burn-in steps only warm the recurrent state up
        if initial_state == "stored":
            init = np.take(self.state, start, axis=0)  # [B, state_dim]
        else:
            init = np.zeros((b, self._state_dim), np.float32)
        return SequenceBatch(
            obs=np.where(valid[..., None], np.take(self.obs, step_idx, axis=0), np.float32(0)),
            actions=np.where(valid, np.take(self.action, step_idx), np.int32(0)),
            rewards=np.where(valid, np.take(self.reward, step_idx), np.float32(0)),
            # The row after a valid step is in the same episode (a step or its final observation row).
            next_obs=np.where(valid[..., None], np.take(self.obs, idx[:, 1:], axis=0), np.float32(0)),
            discounts=np.float32(1) - (valid & np.take(self.terminated, step_idx)).astype(np.float32),
            mask=mask,
            train_mask=train_mask,
            initial_state=init,
        )

    def _draw_starts(self, n: int) -> np.ndarray:
        # Rejection sampling, uniform over the step rows present: every observation row but one follows a
        # step row, so steps >= (filled - 1) / 2 and this takes few rounds; O(n), not a scan of the ring.
        starts = np.empty(0, np.int64)
        while starts.size < n:
            cand = self._rng.integers(0, self._filled, size=n)  # [n]
            starts = np.concatenate([starts, cand[self.is_step[cand]]])
        return starts[:n]
