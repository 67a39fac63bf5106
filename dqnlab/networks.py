"""Q-networks (Keras 3) and their numpy twin for acting.

Layers are named explicitly (`hidden_0`, `hidden_1`, ..., `q_head`) because the TensorBoard tags are built
from `variable.path`; never from generated names.

Acting calls the network once per environment step. A `tf.function` call costs 0.4-0.55 ms against about
12 us for the same MLP in numpy, so the loop acts through `NumpyMLP`, a copy of the online weights that the
learner refreshes after every burst of updates. `tests/test_networks.py` checks it equals the Keras model.
"""

from __future__ import annotations

import numpy as np

from dqnlab._tf import keras
from dqnlab.config import NetworkConfig

_NUMPY_ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0.0),
    # Written as in TF: 1 / (1 + exp(-x)), clipped so exp cannot overflow in float32.
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-np.clip(x, -88.0, 88.0))),
    "tanh": np.tanh,
}


def build_q_network(
    cfg: NetworkConfig, obs_dim: int, num_actions: int, name: str = "q_network"
) -> keras.Model:
    """An MLP Q-network: obs [B, obs_dim] -> Q-values [B, num_actions].

    `init_scale` multiplies every initial kernel (a preset saturates sigmoids with a large one) and
    `bias_init` sets every hidden bias (a very negative one kills ReLUs); the head's bias starts at 0.
    """
    if cfg.kind != "mlp":  # config validation lists the kinds; this guards a new kind left unwired
        raise ValueError(f"network kind {cfg.kind!r} is not built by build_q_network")
    layers: list[keras.layers.Layer] = [keras.Input(shape=(obs_dim,), name="obs")]
    for i, width in enumerate(cfg.hidden):
        layers.append(
            keras.layers.Dense(
                width,
                activation=cfg.activation,
                kernel_initializer=_scaled(cfg.kernel_init, cfg.init_scale),
                bias_initializer=keras.initializers.Constant(cfg.bias_init),
                name=f"hidden_{i}",
            )
        )
    layers.append(
        keras.layers.Dense(
            num_actions, kernel_initializer=_scaled(cfg.kernel_init, cfg.init_scale), name="q_head"
        )
    )
    return keras.Sequential(layers, name=name)


def _scaled(initializer: str, scale: float) -> keras.initializers.Initializer:
    base = keras.initializers.get(initializer)
    if scale == 1.0:
        return base

    class Scaled(keras.initializers.Initializer):
        def __call__(self, shape, dtype=None):
            return base(shape, dtype=dtype) * scale

    return Scaled()


def variable_tag(variable: keras.Variable) -> str:
    """The tag name of a model variable: its Keras path below the model, e.g. 'hidden_0/kernel'."""
    return "/".join(variable.path.split("/")[-2:])  # Sequential paths start with the model's name


class NumpyMLP:
    """The Q-network's forward pass in numpy, for acting without a TensorFlow call per step."""

    def __init__(self, activation: str):
        self._act = _NUMPY_ACTIVATIONS[activation]
        self._layers: list[tuple[np.ndarray, np.ndarray]] = []

    def set_weights(self, weights: list[np.ndarray]) -> None:
        """Weights as Keras orders them: kernel, bias, kernel, bias, ..., head kernel, head bias."""
        self._layers = [(weights[i], weights[i + 1]) for i in range(0, len(weights), 2)]

    def initial_state(self) -> None:
        """No state: the same acting interface as the recurrent policy."""
        return None

    def step(self, obs: np.ndarray, state: None) -> tuple[np.ndarray, None]:
        return self(obs), None

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """obs [obs_dim] or [B, obs_dim] -> Q-values [num_actions] or [B, num_actions] (float32)."""
        h = np.asarray(obs, dtype=np.float32)
        for kernel, bias in self._layers[:-1]:
            h = self._act(h @ kernel + bias)
        kernel, bias = self._layers[-1]
        return h @ kernel + bias
