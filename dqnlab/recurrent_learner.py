"""The DQN learner for recurrent Q-networks: replayed sequences, burn-in, and the BPTT diagnostics.

Same compiled burst, optimizer and per-variable panel as `dqnlab.learner.Learner`; what differs is the TD
loss of a sequence and what is measured through time:

- Each replayed window s_0 .. s_T-1 (T = burn_in + sequence_length, from `dqnlab.sequence_replay`) is
  extended by its next observations, so one unroll of the online network over s_0, s_1 .. s_T gives both
  Q(s_t) and Q(s_t+1); the target network unrolls over the same steps. The loss is the mean per-sample
  TD loss over the trained steps (`train_mask`: real steps after the burn-in).
- `bptt/grad_norm/t-<k>`: ||dL/dh|| at k steps before the end of each window's trained part (windows cut by
  an episode end are right-aligned on their last real step), averaged over the windows reaching that far.
  dL/dh_t is the total derivative, through the head at t and through every later step: growth with k at
  a rate near the spectral radius of W_hh is the exploding-gradient signature (Pascanu et al. 2013).
- `rnn/spectral_radius` and `rnn/max_singular_value` of W_hh (for the LSTM and GRU, the recurrent block of
  the candidate state, which is what repeats along time), on every measured update.
- `bptt/jacobian_norm` (at probes): the largest singular value of dh_end / d(state at the window's
  start), averaged over full probe windows: how much a perturbation of the state is amplified across
  `sequence_length` steps.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from dqnlab import probes
from dqnlab._tf import keras, tf
from dqnlab.config import Config
from dqnlab.learner import Learner, TDTerms
from dqnlab.losses import td_target
from dqnlab.recurrent_net import NumpyRecurrentPolicy, Trace
from dqnlab.sequence_replay import pack_sequences


class Sequences(NamedTuple):
    """A replayed sequence batch as tensors inside the graph ([B, T, ...]; see SequenceBatch)."""

    obs: tf.Tensor
    actions: tf.Tensor
    rewards: tf.Tensor
    next_obs: tf.Tensor
    discounts: tf.Tensor
    mask: tf.Tensor
    train_mask: tf.Tensor
    initial_state: tf.Tensor


def unpack_sequences(per_step: tf.Tensor, initial_state: tf.Tensor, obs_dim: int) -> Sequences:
    """The inverse of `dqnlab.sequence_replay.pack_sequences`, inside the graph."""
    d = obs_dim
    return Sequences(
        obs=per_step[..., :d],
        actions=tf.cast(per_step[..., d], tf.int32),
        rewards=per_step[..., d + 1],
        next_obs=per_step[..., d + 2 : 2 * d + 2],
        discounts=per_step[..., 2 * d + 2],
        mask=per_step[..., 2 * d + 3],
        train_mask=per_step[..., 2 * d + 4],
        initial_state=initial_state,
    )


class RecurrentLearner(Learner):
    """`Learner` for `network.kind = "rnn"`: `update` takes stacked SequenceBatches [K, B, T, ...]."""

    _panel_shares_trace = False  # the panel's BPTT norms need dL/dh in the update's own tape

    def __init__(self, cfg: Config, online: keras.Model, target: keras.Model, optimizer, obs_shape):
        super().__init__(cfg, online, target, optimizer, obs_shape)
        self.rec = cfg.recurrent
        self._burn_in = self.rec.burn_in
        self._length = self.rec.sequence_length

    def _pack(self, batch) -> tuple[np.ndarray, ...]:
        return pack_sequences(batch)

    def _unpack(self, *packed: tf.Tensor) -> Sequences:
        return unpack_sequences(packed[0], packed[1], self._obs_dim)

    # -- sizes and acting -------------------------------------------------------------------------

    def _samples_per_update(self, batch: Sequences) -> int:
        """The most trained steps one update's windows hold: B * T."""
        return int(np.prod(batch.rewards.shape[1:]))

    # -- acting -----------------------------------------------------------------------------------

    def policy(self) -> NumpyRecurrentPolicy:
        policy = NumpyRecurrentPolicy(self.cfg.network, self.rec)
        policy.set_weights(self.online_weights())
        return policy

    # -- the loss ---------------------------------------------------------------------------------

    def _start_state(self, b: Sequences) -> tf.Tensor:
        if b.initial_state.shape[-1] == 0:  # nothing stored: every window starts from zeros
            return self.online.zero_state(tf.shape(b.obs)[0])
        return b.initial_state

    def _td_gradients(self, b: Sequences, with_qa_grad: bool, with_extra: bool = False) -> TDTerms:
        obs = tf.concat([b.obs[:, :1], b.next_obs], axis=1)  # [B, T + 1, D]: s_0, then s_t+1 = next_obs_t
        state = self._start_state(b)
        q_target, _, _ = self.target.unroll(obs, state)
        q_target = q_target[:, 1:]  # [B, T, A] Q_target(s_t+1)
        discount_t = b.discounts * self._gamma  # [B, T]
        weights = b.train_mask  # [B, T]
        with tf.GradientTape() as tape:
            q_all, hs, _ = self.online.unroll(obs, state, stop_gradient_after=self._burn_in)
            q_tm1 = q_all[:, :-1]  # [B, T, A]
            selector = q_all[:, 1:] if self._double else None  # Double DQN: the online unroll picks a_t
            target = td_target(b.rewards, discount_t, q_target, selector)  # [B, T]
            qa = tf.gather(q_tm1, b.actions, batch_dims=2)  # [B, T]
            delta = target - qa
            per_sample = self._loss_fn(delta, self._bound) * weights
            loss = tf.reduce_sum(per_sample) / tf.maximum(tf.reduce_sum(weights), 1.0)
        hs = hs[: obs.shape[1] - 1]  # h_0 .. h_T-1; the last one only scores s_T
        # dL/dQ(s,a) for every update of a measured burst; dL/dh through time for its panel update only.
        sources = self.variables + ([qa] if with_qa_grad else []) + (list(hs) if with_extra else [])
        grads = tape.gradient(loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        n = len(self.variables)
        trained = weights > 0
        extra: dict[str, tf.Tensor] = {}
        dloss_dqa = tf.boolean_mask(grads[n], trained) if with_qa_grad else None
        if with_extra:
            dl_dh = grads[n + int(with_qa_grad) :]
            extra = {**self._bptt_norms(dl_dh, b.mask), **self._recurrent_matrix_stats()}
        return TDTerms(
            loss,
            grads[:n],
            dloss_dqa,
            tf.boolean_mask(q_tm1, trained),
            tf.boolean_mask(target, trained),
            tf.boolean_mask(delta, trained),
            extra,
            capacity=int(np.prod(delta.shape)),  # B * T: a burst's records pad the trained steps to it
        )

    def _bptt_norms(self, dl_dh: list[tf.Tensor], mask: tf.Tensor) -> dict[str, tf.Tensor]:
        """`bptt/grad_norm/t-<k>`: mean over windows of ||dL/dh|| k steps before their last trained step."""
        norms = tf.stack([tf.norm(g, axis=-1) for g in dl_dh], axis=1)  # [B, T]
        last = tf.cast(tf.reduce_sum(mask, axis=1), tf.int32) - 1  # [B] last real step of each window
        out = {}
        for k in range(self._length):
            idx = last - k
            reach = tf.cast(idx >= self._burn_in, tf.float32)  # the window has a trained step k back
            values = tf.gather(norms, tf.maximum(idx, 0), batch_dims=1)
            out[f"bptt/grad_norm/t-{k}"] = tf.math.divide_no_nan(
                tf.reduce_sum(values * reach), tf.reduce_sum(reach)
            )
        return out

    def _recurrent_block(self) -> tf.Tensor:
        """W_hh of the simple cell, or the candidate-state block of the LSTM (i f C o) or GRU (z r h)."""
        w = self.online.cell.recurrent_kernel
        u = self.rec.units
        return w if self.rec.cell == "simple" else w[:, 2 * u : 3 * u]

    def _recurrent_matrix_stats(self) -> dict[str, tf.Tensor]:
        w = self._recurrent_block()
        return {
            "rnn/spectral_radius": tf.reduce_max(tf.abs(tf.linalg.eigvals(w))),
            "rnn/max_singular_value": tf.linalg.svd(w, compute_uv=False)[0],
        }

    # -- the probe --------------------------------------------------------------------------------

    def _probe_states(self, states) -> tuple[np.ndarray, ...]:
        """The probe windows, packed (`pack_sequences`) by the sampler that drew them."""
        return tuple(np.asarray(a, np.float32) for a in states)

    def _probe_impl(self, per_step, initial_state, batch_steps, batch_state) -> dict[str, tf.Tensor]:
        d = self._diag
        seq = unpack_sequences(per_step, initial_state, self._obs_dim)
        valid = seq.mask > 0  # [N, T]
        state = self._start_state(seq)
        layers = self.online.pre + self.online.post
        with tf.GradientTape(persistent=True) as tape:
            trace = Trace(tape, watch_at=self._burn_in)  # the trained window starts at the burn-in's end
            self.online.unroll(seq.obs, state, trace=trace)
        outputs, pre_acts, cell_pre = trace.outputs, trace.pre_activations, trace.cell_pre
        h, start = outputs[self.online.cell.name][-1], trace.start
        m: dict[str, tf.Tensor] = {}
        jac = tape.batch_jacobian(h, start)  # [N, U, S]: d h_end / d state at the trained window's start
        full = tf.reduce_all(valid, axis=1)  # only windows with every step real
        top = tf.linalg.svd(jac, compute_uv=False)[:, 0]
        m["bptt/jacobian_norm"] = tf.math.divide_no_nan(
            tf.reduce_sum(tf.where(full, top, 0.0)), tf.reduce_sum(tf.cast(full, tf.float32))
        )
        del tape
        activation = self.cfg.network.activation

        def flat(seq_list):  # T x [N, U] -> [real steps, U]
            return tf.boolean_mask(tf.stack(seq_list, axis=1), valid)

        for layer in layers:
            z, x = flat(outputs[layer.name]), flat(pre_acts[layer.name])
            m.update(probes.layer_stats(layer.name, x, z, activation, d))
        h_all = flat(outputs[self.online.cell.name])
        core = self.rec.activation if self.rec.cell == "simple" else "tanh"
        m[f"act_dead_frac/{self.online.cell.name}"] = probes.dead_frac(h_all)
        m[f"act_dormant_frac/{self.online.cell.name}"] = probes.dormant_frac(h_all, d.dormant_tau)
        m[f"act_saturated_frac/{self.online.cell.name}"] = probes.saturated_frac(
            h_all, core, d.saturation_margin
        )
        if cell_pre:
            x = flat(cell_pre)
            m["act_zero_deriv_frac/rnn"] = probes.zero_derivative_frac(x, h_all, core)
            m["act_deriv_mean/rnn"] = tf.reduce_mean(probes.local_derivative(x, h_all, core))
        last = flat(outputs[layers[-1].name]) if self.online.post else h_all
        m["features/srank"] = tf.cast(probes.srank(last, d.srank_delta), tf.float32)
        if d.histograms:
            for name, values in outputs.items():
                m[f"hist/activation/{name}"] = flat(values)
        m.update(self._probe_weights_and_gradient(self._unpack(batch_steps, batch_state)))
        return m
