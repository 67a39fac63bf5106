"""The DQN learner: online and target Q-networks, the optimizer, and one compiled update burst.

`Learner.update(batch, with_diagnostics)` runs K = batch.actions.shape[0] gradient updates inside ONE
`tf.function` call (a `tf.range` loop), because per-call dispatch (0.15-0.2 ms for an empty call) and not
arithmetic is what a small DQN spends its time on. When diagnostics are asked for, the *last* update of the
burst is the measured one: it returns the full dict of tensors (names are the TensorBoard tags, see
docs/metrics.md); the others return nothing but a finiteness flag. Nothing in the graph writes summaries.

Set DQNLAB_EAGER=1 to run the step eagerly (debuggable with print and pdb).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from dqnlab._tf import keras, tf
from dqnlab.config import Config, OptimizerConfig
from dqnlab.losses import get_loss
from dqnlab.networks import build_q_network, variable_tag

_OPTIMIZERS = {
    "adam": lambda c: keras.optimizers.Adam(learning_rate=c.learning_rate, epsilon=c.epsilon),
    "rmsprop": lambda c: keras.optimizers.RMSprop(learning_rate=c.learning_rate, epsilon=c.epsilon),
    "sgd": lambda c: keras.optimizers.SGD(learning_rate=c.learning_rate),
}


def make_optimizer(cfg: OptimizerConfig) -> keras.optimizers.Optimizer:
    try:
        return _OPTIMIZERS[cfg.kind](cfg)
    except KeyError:
        raise ValueError(f"unknown optimizer {cfg.kind!r}; valid: {', '.join(_OPTIMIZERS)}") from None


class Batch(NamedTuple):
    """Transitions (s_tm1, a_tm1, r_t, s_t, discount_t); leading dims [B] or [K, B] for a burst."""

    obs: tf.Tensor  # [.., B, obs_dim]  s_tm1
    actions: tf.Tensor  # [.., B] int32   a_tm1
    rewards: tf.Tensor  # [.., B]         r_t
    next_obs: tf.Tensor  # [.., B, obs_dim] s_t
    discounts: tf.Tensor  # [.., B]  0 where s_t is terminal, else 1 (gamma applied here)


def _frac(mask: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(tf.cast(mask, tf.float32))


class Learner:
    """Owns the networks and optimizer; `update` is the only thing the loop calls per burst."""

    def __init__(self, cfg: Config, obs_dim: int, num_actions: int, seed: int):
        # Same seed -> same initial weights, so the arms of an A/B start from identical networks.
        keras.utils.set_random_seed(seed)
        self.cfg = cfg
        self.online = build_q_network(cfg.network, obs_dim, num_actions, name="q_network")
        self.target = build_q_network(cfg.network, obs_dim, num_actions, name="target_network")
        self.target.set_weights(self.online.get_weights())
        self.optimizer = make_optimizer(cfg.optimizer)
        self.optimizer.build(self.online.trainable_variables)
        self.variables = list(self.online.trainable_variables)
        self.variable_tags = [variable_tag(v) for v in self.variables]
        self._loss_fn = get_loss(cfg.loss.kind)
        self._bound = float(cfg.loss.bound)
        self._gamma = float(cfg.train.gamma)
        self._clip_norm = float(cfg.train.grad_clip_norm)
        self._double = bool(cfg.train.double_dqn)
        self._near_zero_tol = float(cfg.diagnostics.near_zero_tol)
        self._tau = float(cfg.train.target_tau)
        # reduce_retracing: shapes are fixed per run; the Python bool picks one of two traces.
        self._burst = tf.function(self._burst_impl, reduce_retracing=True)
        self._sync_target = tf.function(self._sync_target_impl)

    # -- public -------------------------------------------------------------------------------------

    def update(self, batch: Batch, with_diagnostics: bool) -> dict[str, tf.Tensor]:
        """K updates in one compiled call. Returns {'finite': bool tensor} plus, with diagnostics, the
        measured update's metrics (tensors; pull them to the host only when they are written)."""
        return self._burst(Batch(*batch), bool(with_diagnostics))

    def update_target(self) -> None:
        self._sync_target()

    def online_weights(self) -> list[np.ndarray]:
        """Host copy of the online weights (kernel, bias, ...), for the numpy acting path."""
        return [v.numpy() for v in self.variables]

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        return self.online(np.asarray(obs, np.float32)).numpy()

    # -- compiled -----------------------------------------------------------------------------------

    def _burst_impl(self, batch: Batch, with_diagnostics: bool) -> dict[str, tf.Tensor]:
        num_updates = tf.shape(batch.actions)[0]
        num_plain = num_updates - 1 if with_diagnostics else num_updates
        finite = tf.constant(True)
        for i in tf.range(num_plain):
            loss = self._update(tf.nest.map_structure(lambda x, i=i: x[i], batch), False)["loss/td"]
            finite = tf.logical_and(finite, tf.math.is_finite(loss))
        if not with_diagnostics:
            return {"finite": finite}
        metrics = self._update(tf.nest.map_structure(lambda x: x[-1], batch), True)
        metrics["finite"] = tf.logical_and(finite, tf.math.is_finite(metrics["loss/td"]))
        return metrics

    def _update(self, b: Batch, with_diagnostics: bool) -> dict[str, tf.Tensor]:
        obs_tm1 = tf.cast(b.obs, tf.float32)  # [B, D]
        obs_t = tf.cast(b.next_obs, tf.float32)  # [B, D]
        a_tm1 = tf.cast(b.actions, tf.int32)  # [B]
        r_t = tf.cast(b.rewards, tf.float32)  # [B]
        discount_t = tf.cast(b.discounts, tf.float32) * self._gamma  # [B]

        q_t = self.target(obs_t)  # [B, A]
        if self._double:
            a_t = tf.argmax(self.online(obs_t), axis=1, output_type=tf.int32)  # [B]
            v_t = tf.gather(q_t, a_t, batch_dims=1)  # [B]
        else:
            v_t = tf.reduce_max(q_t, axis=1)  # [B]
        target_tm1 = tf.stop_gradient(r_t + discount_t * v_t)  # [B]

        with tf.GradientTape() as tape:
            q_tm1 = self.online(obs_tm1, training=True)  # [B, A]
            qa_tm1 = tf.gather(q_tm1, a_tm1, batch_dims=1)  # [B]
            delta = target_tm1 - qa_tm1  # [B]
            loss = tf.reduce_mean(self._loss_fn(delta, self._bound))
        # With diagnostics, also dL/dQ(s,a) per sample: exactly 0 where the loss blocks the TD signal.
        sources = self.variables + ([qa_tm1] if with_diagnostics else [])
        grads = tape.gradient(loss, sources)
        grads, dloss_dqa = grads[: len(self.variables)], grads[len(self.variables) :]
        preclip_norm = tf.linalg.global_norm(grads)
        if self._clip_norm > 0:
            grads, _ = tf.clip_by_global_norm(grads, self._clip_norm, use_norm=preclip_norm)
        self.optimizer.apply(grads, self.variables)

        if not with_diagnostics:
            return {"loss/td": loss}
        abs_delta = tf.abs(delta)
        nonzero_delta = tf.not_equal(delta, 0.0)
        blocked = tf.logical_and(tf.equal(dloss_dqa[0], 0.0), nonzero_delta)
        m: dict[str, tf.Tensor] = {
            "loss/td": loss,
            "q/mean": tf.reduce_mean(q_tm1),
            "q/max": tf.reduce_max(q_tm1),
            "q/target_mean": tf.reduce_mean(target_tm1),
            "td/abs_mean": tf.reduce_mean(abs_delta),
            "td/abs_max": tf.reduce_max(abs_delta),
            "td/beyond_bound_frac": _frac(abs_delta > self._bound),
            "td/grad_blocked_frac": tf.math.divide_no_nan(
                tf.reduce_sum(tf.cast(blocked, tf.float32)), tf.reduce_sum(tf.cast(nonzero_delta, tf.float32))
            ),
            "grad_norm/global": tf.linalg.global_norm(grads),
        }
        nonfinite = tf.constant(0.0)
        for tag, g in zip(self.variable_tags, grads, strict=True):
            m[f"grad_norm/{tag}"] = tf.norm(g)
            m[f"grad_zero_frac/{tag}"] = _frac(tf.equal(g, 0.0))
            m[f"grad_near_zero_frac/{tag}"] = _frac(tf.abs(g) < self._near_zero_tol)
            nonfinite += tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(g)), tf.float32))
        m["grad/nonfinite"] = nonfinite
        if self._clip_norm > 0:
            m["grad_norm/preclip_global"] = preclip_norm
            m["grad/clipped"] = tf.cast(preclip_norm > self._clip_norm, tf.float32)
        return m

    def _sync_target_impl(self) -> None:
        for t, o in zip(self.target.weights, self.online.weights, strict=True):
            t.assign(o if self._tau >= 1.0 else self._tau * o + (1.0 - self._tau) * t)
