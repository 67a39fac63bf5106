"""The DQN learner for Atari frames: the Nature CNN, frame replay, a compiled greedy policy, conv probes.

Same compiled burst, TD losses, optimizer and per-variable panel as `dqnlab.learner.Learner` (which reduces
every variable whatever its rank, so conv kernels [kh, kw, in, out] get every `<family>/<var>` tag). What
differs:

- Replay is `FrameReplay`; a burst samples each transition's stack + 1 frames once ([K, B, 5, 84, 84]
  uint8) and obs / next_obs are sliced from them inside the compiled graph: 5 frames per transition cross
  to TensorFlow instead of 8, and they stay uint8 until the network scales them.
- Acting cannot use a numpy twin (a conv stack in numpy is far slower than TF's kernels), so the policy is
  one concrete TF function of the online network on one [1, stack, H, W] uint8 observation. It reads the
  online variables directly, so a burst need not hand the weights back (`update` returns none).
- The probe measures conv layers per channel (`probes.conv_layer_stats`) and the dense layers as in the
  MLP; `features/srank` is taken on the last dense layer's output.
"""

from __future__ import annotations

import numpy as np

from dqnlab import probes
from dqnlab._tf import keras, tf
from dqnlab.cnn_net import depth_path_layers, forward
from dqnlab.config import Config
from dqnlab.frame_replay import FrameBatch
from dqnlab.learner import CompiledPolicy, Learner
from dqnlab.networks import penultimate_features
from dqnlab.replay import Batch


def pack_frames(batch: FrameBatch) -> tuple[np.ndarray, np.ndarray]:
    """A FrameBatch as the compiled call's two arguments: the uint8 frames [.., B, stack + 1, H, W] as they
    are, and actions, rewards, discounts side by side as float32 [.., B, 3] (actions are exact in float32)."""
    scalars = np.stack([batch.actions, batch.rewards, batch.discounts], axis=-1).astype(np.float32)
    return batch.frames, scalars


def unpack_frames(frames: tf.Tensor, scalars: tf.Tensor) -> Batch:
    """The inverse of `pack_frames` inside the graph, split into the transitions' obs and next_obs."""
    return Batch(
        obs=frames[..., :-1, :, :],  # frames 0 .. stack - 1
        actions=tf.cast(scalars[..., 0], tf.int32),
        rewards=scalars[..., 1],
        next_obs=frames[..., 1:, :, :],  # frames 1 .. stack
        discounts=scalars[..., 2],
    )


class CNNLearner(Learner):
    """`Learner` for `network.kind = "cnn"`: `update` takes FrameBatches [K, B, stack + 1, H, W]."""

    def __init__(self, cfg: Config, online: keras.Model, target: keras.Model, optimizer, obs_shape):
        super().__init__(cfg, online, target, optimizer, obs_shape)  # obs_shape: (stack, H, W)
        # Every layer with an activation, input side first: probed, and the ends of grad/depth_ratio.
        self._hidden_layers = depth_path_layers(self.online)
        self._policy: CompiledPolicy | None = None

    def _q_values(self, network: keras.Model, obs: tf.Tensor) -> tf.Tensor:
        return forward(network, obs)

    def _pack(self, batch) -> tuple[np.ndarray, ...]:
        return pack_frames(batch)

    def _unpack(self, *packed: tf.Tensor) -> Batch:
        return unpack_frames(*packed)

    # -- acting and the probe --------------------------------------------------------------------

    _returns_weights = False  # the policy reads the variables

    def policy(self) -> CompiledPolicy:
        """Acting through one compiled call of the online network on one uint8 [stack, H, W] observation."""
        if self._policy is None:
            network = self.online
            self._policy = CompiledPolicy(lambda obs: forward(network, obs), self._obs_shape, np.uint8)
        return self._policy

    def _probe_states(self, states) -> tuple[np.ndarray, ...]:
        """The probe states stay uint8 frames [N, stack, H, W] until the network scales them."""
        return (np.asarray(states, np.uint8),)

    def _probe_impl(self, states: tf.Tensor, *packed: tf.Tensor) -> dict[str, tf.Tensor]:
        """Per-channel statistics of the conv layers, per-unit ones of the dense layers, srank of the last
        dense layer, and (with histograms) weights, activations and TD-loss gradients on the batch."""
        d, activation = self._diag, self.cfg.network.activation
        _, traces = forward(self.online, states, trace=True)
        m: dict[str, tf.Tensor] = {}
        for t in traces:
            stats = probes.conv_layer_stats if t.name.startswith("conv_") else probes.layer_stats
            m.update(stats(t.name, t.x, t.z, activation, d))
            if d.histograms:
                m[f"hist/activation/{t.name}"] = t.z
        m["features/srank"] = tf.cast(probes.srank(penultimate_features(traces), d.srank_delta), tf.float32)
        m.update(self._probe_weights_and_gradient(self._unpack(*packed)))
        return m
