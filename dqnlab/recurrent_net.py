"""Recurrent Q-networks (DRQN, Hausknecht & Stone 2015) and their numpy twin for acting.

    obs_t -> hidden_0 .. (dense, `recurrent.pre_hidden`) -> rnn (simple | lstm | gru cell) ->
    dense (`network.hidden`) -> q_head -> Q(h_t, .)

The sequence is unrolled by hand, one cell call per step, rather than by `keras.layers.RNN`, because the
diagnostics need every h_t as a tensor of the graph: `tape.gradient(loss, h_t)` is then the *total*
dL/dh_t (through the head at t and through h_t+1, h_t+2, ...), the quantity whose growth or decay with the
distance k = T-1-t Pascanu et al. (2013) analyse. Windows are short (8-32 steps), so the unrolled graph is.

W_hh starts as `recurrent_init_scale` times an orthogonal matrix: every eigenvalue of an orthogonal matrix
has modulus 1, so the simple cell's spectral radius starts at exactly that scale.
"""

from __future__ import annotations

import numpy as np

from dqnlab._tf import keras, tf
from dqnlab.config import NetworkConfig, RecurrentConfig
from dqnlab.networks import NUMPY_ACTIVATIONS, scaled_initializer


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return NUMPY_ACTIVATIONS["sigmoid"](x)


def state_size(rec) -> int:
    """Floats of recurrent state a cell carries: h, or h and c side by side for the LSTM."""
    return 2 * rec.units if rec.cell == "lstm" else rec.units


class Trace:
    """What an unroll records for the probe: per layer name, the pre-activations and outputs of every step
    (lists of [B, U]); the simple cell's pre-activations; the state entering step `watch_at`, watched on
    `tape` (`start`), to differentiate the window's end state with respect to it."""

    def __init__(self, tape: tf.GradientTape, watch_at: int):
        self.tape, self.watch_at = tape, watch_at
        self.pre_activations: dict[str, list[tf.Tensor]] = {}
        self.outputs: dict[str, list[tf.Tensor]] = {}
        self.cell_pre: list[tf.Tensor] = []
        self.start: tf.Tensor | None = None

    def watch(self, state: tf.Tensor) -> tf.Tensor:
        self.tape.watch(state)
        self.start = state
        return state


def _dense(layer: keras.layers.Dense, x: tf.Tensor, trace: Trace | None) -> tf.Tensor:
    """The layer on `x`: its Keras call, or with a trace its ops written out, recording both ends."""
    if trace is None:
        return layer(x)
    a = tf.matmul(x, layer.kernel) + layer.bias
    z = layer.activation(a)
    trace.pre_activations.setdefault(layer.name, []).append(a)
    trace.outputs.setdefault(layer.name, []).append(z)
    return z


class RecurrentQNetwork(keras.Model):
    """Q-values of a sequence of observations from an initial recurrent state."""

    def __init__(self, net: NetworkConfig, rec: RecurrentConfig, obs_dim: int, num_actions: int, name: str):
        super().__init__(name=name)
        self.cell_kind = rec.cell
        self.units = rec.units
        kernel_init = lambda: scaled_initializer(net.kernel_init, net.init_scale)  # noqa: E731 - a fresh one per layer
        dense = lambda width, i: keras.layers.Dense(  # noqa: E731
            width,
            activation=net.activation,
            kernel_initializer=kernel_init(),
            bias_initializer=keras.initializers.Constant(net.bias_init),
            name=f"hidden_{i}",
        )
        # Assigned in forward order: Keras lists the variables in that order (the numpy twin relies on it).
        self.pre = [dense(w, i) for i, w in enumerate(rec.pre_hidden)]
        recurrent_init = scaled_initializer("orthogonal", rec.recurrent_init_scale)
        if rec.cell == "simple":
            self.cell = keras.layers.SimpleRNNCell(
                rec.units, activation=rec.activation, recurrent_initializer=recurrent_init, name="rnn"
            )
        elif rec.cell == "lstm":
            self.cell = keras.layers.LSTMCell(rec.units, recurrent_initializer=recurrent_init, name="rnn")
        else:
            self.cell = keras.layers.GRUCell(rec.units, recurrent_initializer=recurrent_init, name="rnn")
        self.post = [dense(w, len(rec.pre_hidden) + i) for i, w in enumerate(net.hidden)]
        self.head = keras.layers.Dense(num_actions, kernel_initializer=kernel_init(), name="q_head")
        self.state_size = state_size(rec)
        self.unroll(tf.zeros([1, 1, obs_dim]), self.zero_state(1))  # create the variables

    def zero_state(self, batch: int) -> tf.Tensor:
        """The flat recurrent state [B, state_size]: h, or [h, c] side by side for the LSTM."""
        return tf.zeros([batch, self.state_size])

    def split_state(self, state: tf.Tensor) -> list[tf.Tensor]:
        """The flat state [B, S] as the cell takes it: [h], or [h, c] for the LSTM."""
        return [state[:, : self.units], state[:, self.units :]] if self.cell_kind == "lstm" else [state]

    def unroll(
        self, obs: tf.Tensor, state: tf.Tensor, stop_gradient_after: int = 0, trace: Trace | None = None
    ):
        """obs [B, T, D], state [B, S] -> (q [B, T, A], [h_0 .. h_T-1] each [B, U], final state [B, S]).

        The state entering step `stop_gradient_after` is cut from the graph (R2D2's burn-in). With `trace`
        (the probe's), every layer's pre-activations and outputs are recorded on the way (the dense layers
        then run as their ops written out, so that the pre-activations exist) and the state entering step
        `trace.watch_at` is watched on `trace.tape`."""
        states = self.split_state(state)
        hs, qs = [], []
        for t in range(obs.shape[1]):
            if t == stop_gradient_after and t > 0:
                states = [tf.stop_gradient(s) for s in states]
            if trace is not None and t == trace.watch_at:
                states = self.split_state(trace.watch(tf.concat(states, axis=-1)))
            x = obs[:, t]
            for layer in self.pre:
                x = _dense(layer, x, trace)
            if trace is not None and self.cell_kind == "simple":  # the simple cell's pre-activation
                cell = self.cell
                trace.cell_pre.append(
                    tf.matmul(x, cell.kernel) + tf.matmul(states[0], cell.recurrent_kernel) + cell.bias
                )
            h, states = self.cell(x, states)
            states = list(states) if isinstance(states, (list, tuple)) else [states]
            hs.append(h)
            if trace is not None:
                trace.outputs.setdefault(self.cell.name, []).append(h)
            y = h
            for layer in self.post:
                y = _dense(layer, y, trace)
            qs.append(self.head(y))
        return tf.stack(qs, axis=1), hs, tf.concat(states, axis=-1)

    def call(self, obs):  # Keras's entry point: Q-values of sequences from the zero state
        return self.unroll(obs, self.zero_state(tf.shape(obs)[0]))[0]


class NumpyRecurrentPolicy:
    """The recurrent Q-network's one-step forward pass in numpy, for acting (see networks.NumpyMLP)."""

    def __init__(self, net: NetworkConfig, rec: RecurrentConfig):
        self._act = NUMPY_ACTIVATIONS[net.activation]
        self._core = NUMPY_ACTIVATIONS[rec.activation]
        self._cell, self._units = rec.cell, rec.units
        self._n_pre, self._n_post = len(rec.pre_hidden), len(net.hidden)
        self.state_size = state_size(rec)

    def set_weights(self, weights: list[np.ndarray]) -> None:
        """Weights in the model's order: pre dense, cell (kernel, recurrent, bias), post dense, head."""
        w = list(weights)
        self._pre = [(w.pop(0), w.pop(0)) for _ in range(self._n_pre)]
        self._kernel, self._recurrent, self._bias = w.pop(0), w.pop(0), w.pop(0)
        self._post = [(w.pop(0), w.pop(0)) for _ in range(self._n_post)]
        self._head = (w.pop(0), w.pop(0))

    def initial_state(self) -> np.ndarray:
        return np.zeros(self.state_size, np.float32)

    def step(self, obs: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step: obs [D] (or [B, D]) and state [S] (or [B, S]) -> (Q-values, next state)."""
        x = np.asarray(obs, np.float32)
        for kernel, bias in self._pre:
            x = self._act(x @ kernel + bias)
        h, state = self._cell_step(x, np.asarray(state, np.float32))
        y = h
        for kernel, bias in self._post:
            y = self._act(y @ kernel + bias)
        return y @ self._head[0] + self._head[1], state

    def _cell_step(self, x: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = self._units
        if self._cell == "simple":
            h = self._core(x @ self._kernel + state @ self._recurrent + self._bias)
            return h, h
        if self._cell == "lstm":  # Keras gate order i, f, c, o
            h, c = state[..., :u], state[..., u:]
            z = x @ self._kernel + h @ self._recurrent + self._bias
            i, f, g, o = (z[..., k * u : (k + 1) * u] for k in range(4))
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
            return h, np.concatenate([h, c], axis=-1)
        # GRU, Keras's reset_after=True form: gate order z, r, h; bias [2, 3U] (input, recurrent)
        xs = x @ self._kernel + self._bias[0]
        hs = state @ self._recurrent + self._bias[1]
        z = _sigmoid(xs[..., :u] + hs[..., :u])
        r = _sigmoid(xs[..., u : 2 * u] + hs[..., u : 2 * u])
        candidate = np.tanh(xs[..., 2 * u :] + r * hs[..., 2 * u :])
        h = z * state + (1.0 - z) * candidate
        return h, h
