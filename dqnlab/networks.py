"""Q-networks (Keras 3) and their numpy twin for acting.

Layers are named explicitly (`hidden_0`, `hidden_1`, ..., `q_head`) because the TensorBoard tags are built
from `variable.path`; never from generated names. A dueling network (`network.dueling`, Wang et al. 2016)
keeps `hidden_0` .. `hidden_<n-2>` as the shared trunk and replaces the last hidden layer and `q_head` by two
streams, `value_hidden` -> `value` [B, 1] and `advantage_hidden` -> `advantage` [B, A], combined by the
variable-free `dueling_q` layer: Q = value + (advantage - mean_a advantage), as devsisters/DQN-tensorflow
writes it (`dqn/agent.py`, "Average Dueling").

Acting calls the network once per environment step. A TensorFlow call costs tens of times what the same MLP
costs in numpy (docs/performance.md), so the loop acts through `NumpyMLP`, a copy of the online weights that
the learner refreshes after every burst of updates. `tests/test_networks.py` checks it equals the Keras model.
"""

from __future__ import annotations

import numpy as np

from dqnlab._tf import keras, tf
from dqnlab.config import NetworkConfig

NUMPY_ACTIVATIONS = {
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
    if cfg.dueling:
        inputs = keras.Input(shape=(obs_dim,), name="obs")
        trunk = inputs
        for i, width in enumerate(cfg.hidden[:-1]):
            trunk = keras.layers.Dense(width, **hidden_kwargs(cfg, f"hidden_{i}"))(trunk)
        return init_biases(keras.Model(inputs, dueling_head(cfg, trunk, num_actions), name=name), cfg)
    layers: list[keras.layers.Layer] = [keras.Input(shape=(obs_dim,), name="obs")]
    for i, width in enumerate(cfg.hidden):
        layers.append(
            keras.layers.Dense(
                width,
                activation=cfg.activation,
                kernel_initializer=scaled_initializer(cfg.kernel_init, cfg.init_scale),
                bias_initializer=keras.initializers.Constant(cfg.bias_init),
                name=f"hidden_{i}",
            )
        )
    layers.append(
        keras.layers.Dense(
            num_actions, kernel_initializer=scaled_initializer(cfg.kernel_init, cfg.init_scale), name="q_head"
        )
    )
    return init_biases(keras.Sequential(layers, name=name), cfg)


DUELING_STREAMS = ("value_hidden", "advantage_hidden")  # the streams' hidden layers, probed like hidden_i


class DuelingQ(keras.layers.Layer):
    """Q = value + (advantage - mean over actions of advantage): [B, 1], [B, A] -> [B, A]. No variables."""

    def call(self, inputs):
        value, advantage = inputs
        return value + (advantage - keras.ops.mean(advantage, axis=1, keepdims=True))

    def compute_output_shape(self, input_shapes):
        return input_shapes[1]


def hidden_kwargs(cfg: NetworkConfig, name: str) -> dict:
    """A hidden (dense or conv) layer's activation, initializers and name."""
    return {
        "activation": cfg.activation,
        "kernel_initializer": scaled_initializer(cfg.kernel_init, cfg.init_scale),
        "bias_initializer": keras.initializers.Constant(cfg.bias_init),
        "name": name,
    }


def dueling_head(cfg: NetworkConfig, trunk, num_actions: int):
    """The two streams on the trunk's output (widths: the last of `network.hidden`) and their combination.
    A functional model orders its layers by depth, so the variables come as the trunk's, then value_hidden,
    advantage_hidden, value, advantage (`NumpyMLP` relies on it; tests/test_dueling.py checks it)."""
    width = cfg.hidden[-1]
    head_init = scaled_initializer(cfg.kernel_init, cfg.init_scale)
    value_hidden = keras.layers.Dense(width, **hidden_kwargs(cfg, "value_hidden"))(trunk)
    value = keras.layers.Dense(1, kernel_initializer=head_init, name="value")(value_hidden)
    advantage_hidden = keras.layers.Dense(width, **hidden_kwargs(cfg, "advantage_hidden"))(trunk)
    advantage = keras.layers.Dense(num_actions, kernel_initializer=head_init, name="advantage")(
        advantage_hidden
    )
    return DuelingQ(name="dueling_q")([value, advantage])


def is_dueling(network: keras.Model) -> bool:
    return any(layer.name == "dueling_q" for layer in network.layers)


def depth_path_layers(network: keras.Model) -> list[keras.layers.Layer]:
    """The dense hidden layers from the input to the head, input side first: `hidden_i` in order, then for a
    dueling network `advantage_hidden` (the stream that ranks the actions). `grad/depth_ratio` divides the
    first one's kernel gradient norm by the last one's."""
    layers = [layer for layer in network.layers if layer.name.startswith("hidden_")]
    return layers + ([network.get_layer("advantage_hidden")] if is_dueling(network) else [])


def hidden_activations(network: keras.Model, obs: tf.Tensor) -> list[tuple[str, tf.Tensor, tf.Tensor]]:
    """Every hidden dense layer's (name, pre-activations x [N, U], outputs z [N, U]) on `obs` [N, D], input
    side first: `hidden_i` in order, then for a dueling network `value_hidden` and `advantage_hidden` (both
    read the trunk's output). Written with the layers' own ops (the activation probe's)."""
    traces, h = [], obs
    for layer in (layer for layer in network.layers if layer.name.startswith("hidden_")):
        x = tf.matmul(h, layer.kernel) + layer.bias  # [N, U] pre-activations
        z = layer.activation(x)  # [N, U]
        traces.append((layer.name, x, z))
        h = z
    if is_dueling(network):
        for name in DUELING_STREAMS:
            layer = network.get_layer(name)
            x = tf.matmul(h, layer.kernel) + layer.bias
            traces.append((name, x, layer.activation(x)))
    return traces


def penultimate_features(traces: list[tuple[str, tf.Tensor, tf.Tensor]]) -> tf.Tensor:
    """The features the head is linear in, for `features/srank`: the last hidden layer's outputs, or a
    dueling network's two streams side by side ([N, 2U]: Q is linear in value_hidden and advantage_hidden)."""
    if len(traces) >= 2 and (traces[-2][0], traces[-1][0]) == DUELING_STREAMS:
        return tf.concat([traces[-2][2], traces[-1][2]], axis=1)
    return traces[-1][2]


def init_biases(model: keras.Model, cfg: NetworkConfig) -> keras.Model:
    """With `bias_init_kind = "torch_default"`, redraw every dense and conv bias (the head's included) from
    U(-1/sqrt(fan_in), +1/sqrt(fan_in)), fan_in = the product of the kernel's shape but its last axis: what
    PyTorch's nn.Linear and nn.Conv2d `reset_parameters` draw. "constant" leaves the model as built (no draw,
    so the presets' initial weights are unchanged). Draws come from Keras's seeded global generator."""
    if cfg.bias_init_kind == "constant":
        return model
    for layer in model.layers:
        kernel, bias = getattr(layer, "kernel", None), getattr(layer, "bias", None)
        if kernel is None or bias is None:
            continue
        bound = 1.0 / float(np.sqrt(np.prod(kernel.shape[:-1])))
        bias.assign(keras.initializers.RandomUniform(-bound, bound)(bias.shape, dtype=bias.dtype))
    return model


def scaled_initializer(initializer: str, scale: float) -> keras.initializers.Initializer:
    """The Keras initializer named `initializer` (or dqnlab's `truncated_normal_0.02`, `torch_default`), times
    `scale`."""
    # TF1's tf.truncated_normal_initializer(0, 0.02) of devsisters/DQN-tensorflow (Keras cuts at 2 stddev too)
    if initializer == "truncated_normal_0.02":
        base = keras.initializers.TruncatedNormal(stddev=0.02)
    elif initializer == "torch_default":
        # PyTorch's nn.Linear/nn.Conv2d: kaiming_uniform_(a=sqrt(5)), i.e. U(+-sqrt(6 / ((1 + 5) fan_in))) =
        # U(+-1/sqrt(fan_in)); VarianceScaling's uniform limit is sqrt(3 scale / fan_in), so scale = 1/3.
        base = keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")
    else:
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

    def __init__(self, activation: str, dueling: bool = False):
        self._act = NUMPY_ACTIVATIONS[activation]
        self._dueling = dueling
        self._layers: list[tuple[np.ndarray, np.ndarray]] = []

    def set_weights(self, weights: list[np.ndarray]) -> None:
        """Weights as Keras orders them: kernel, bias, kernel, bias, ..., head kernel, head bias (dueling: the
        trunk's, then value_hidden, advantage_hidden, value, advantage)."""
        self._layers = [(weights[i], weights[i + 1]) for i in range(0, len(weights), 2)]

    def initial_state(self) -> None:
        """No state: the same acting interface as the recurrent policy."""
        return None

    def step(self, obs: np.ndarray, state: None) -> tuple[np.ndarray, None]:
        return self(obs), None

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """obs [obs_dim] or [B, obs_dim] -> Q-values [num_actions] or [B, num_actions] (float32)."""
        h = np.asarray(obs, dtype=np.float32)
        if self._dueling:
            *trunk, (vh_k, vh_b), (ah_k, ah_b), (v_k, v_b), (a_k, a_b) = self._layers
            for kernel, bias in trunk:
                h = self._act(h @ kernel + bias)
            value = self._act(h @ vh_k + vh_b) @ v_k + v_b  # [.., 1]
            advantage = self._act(h @ ah_k + ah_b) @ a_k + a_b  # [.., A]
            return value + (advantage - advantage.mean(axis=-1, keepdims=True))
        for kernel, bias in self._layers[:-1]:
            h = self._act(h @ kernel + bias)
        kernel, bias = self._layers[-1]
        return h @ kernel + bias
