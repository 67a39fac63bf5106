"""How a run draws from its replay: a burst's K batches, one batch, and the probe's states.

One sampler per replay kind; `dqnlab.kinds` pairs each network kind with its replay and sampler. The loop
asks the sampler, never the replay or the learner, so a learner only ever receives data. Each sampler draws
exactly what the learners drew before they were split from sampling (the same calls on the replay's
generator, in the same order), so no run changed. This module does not import TensorFlow.
"""

from __future__ import annotations

import numpy as np

from dqnlab.frame_replay import FrameBatch, FrameReplay
from dqnlab.replay import Batch, ReplayBuffer
from dqnlab.sequence_replay import SequenceBatch, SequenceReplay, pack_sequences, stack_sequences


class TransitionSampler:
    """Uniform transitions (`ReplayBuffer`): a burst is one vectorised draw of [K, B]."""

    def __init__(self, replay: ReplayBuffer):
        self.replay = replay

    def burst(self, num_updates: int, batch_size: int) -> Batch:
        return self.replay.sample_many(num_updates, batch_size)

    def batch(self, batch_size: int) -> Batch:
        return self.replay.sample(batch_size)

    def probe_states(self, sample: Batch) -> np.ndarray:
        """What the probe measures the network on, from a sample drawn once: its states."""
        return sample.obs


class SequenceSampler:
    """Windows of `burn_in + sequence_length` steps (`SequenceReplay`), K draws of B stacked [K, B, T]."""

    def __init__(self, replay: SequenceReplay, sequence_length: int, burn_in: int, initial_state: str):
        self.replay = replay
        self._args = (sequence_length, burn_in, initial_state)

    def burst(self, num_updates: int, batch_size: int) -> SequenceBatch:
        return stack_sequences([self.batch(batch_size) for _ in range(num_updates)])

    def batch(self, batch_size: int) -> SequenceBatch:
        return self.replay.sample(batch_size, *self._args)

    def probe_states(self, sample: SequenceBatch) -> tuple[np.ndarray, np.ndarray]:
        """The probe windows, packed as the learner's compiled probe takes them (plain arrays, for the
        checkpoint)."""
        return pack_sequences(sample)


class FrameSampler:
    """Frame stacks (`FrameReplay`): each transition's stack + 1 frames gathered once, into one array
    reused from burst to burst (safe: each compiled call is done with its input when it returns)."""

    def __init__(self, replay: FrameReplay):
        self.replay = replay
        self._frames_out: np.ndarray | None = None

    def burst(self, num_updates: int, batch_size: int) -> FrameBatch:
        stack, *frame = self.replay.obs_shape
        shape = (num_updates, batch_size, stack + 1, *frame)
        if self._frames_out is None or self._frames_out.shape != shape:
            self._frames_out = np.empty(shape, np.uint8)
        return self.replay.sample_frames_many(num_updates, batch_size, out=self._frames_out)

    def batch(self, batch_size: int) -> FrameBatch:
        return self.replay.sample_frames(batch_size)

    def probe_states(self, sample: FrameBatch) -> np.ndarray:
        """The probe states: the obs of a FrameBatch drawn once, uint8 [N, stack, H, W]."""
        return np.ascontiguousarray(sample.frames[:, :-1])
