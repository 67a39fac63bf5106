"""The Nature DQN Q-network (Mnih et al. 2015) on stacked Atari frames, and its forward pass by hand.

    frames uint8 [B, stack, H, W] (channels-first, as FrameStackObservation gives them)
      -> float / 255 -> transpose to [B, H, W, stack] (NHWC: TF's CPU conv kernels only run channels-last)
      -> conv_0 32 8x8 stride 4 -> conv_1 64 4x4 stride 2 -> conv_2 64 3x3 stride 1 (no padding)
      -> flatten -> hidden_0 512 (`network.hidden`) -> q_head

With `network.dueling` the last hidden layer and q_head become the two streams of `dqnlab.networks`
(`value_hidden` -> `value`, `advantage_hidden` -> `advantage`, combined by `dueling_q`); with
`network.hidden = [512]` that is devsisters/DQN-tensorflow's dueling network: both 512-unit streams read the
flattened conv output.

Layers are named for the tags (`conv_0/kernel`, ..., `hidden_0/kernel`, `q_head/bias`). `forward` applies
the same variables with the raw TF ops the Keras layers use, and can return every layer's pre-activations
and outputs: the compiled update and the probe need those, and skipping Keras's per-call machinery keeps
tracing fast. tests/test_atari.py checks it equals the Keras model, and a reference on NHWC input.
"""

from __future__ import annotations

from typing import NamedTuple

from dqnlab._tf import keras, tf
from dqnlab.config import NetworkConfig
from dqnlab.networks import DUELING_STREAMS, dueling_head, init_biases, is_dueling, scaled_initializer

# (filters, kernel size, stride) of conv_0, conv_1, conv_2: the Nature DQN.
NATURE_CONVS: tuple[tuple[int, int, int], ...] = ((32, 8, 4), (64, 4, 2), (64, 3, 1))


class LayerTrace(NamedTuple):
    """One hidden layer's pre-activations `x` and outputs `z` ([B, H, W, C] for convs, [B, U] for dense)."""

    name: str
    x: tf.Tensor
    z: tf.Tensor


def build_cnn_q_network(
    cfg: NetworkConfig, obs_shape: tuple[int, ...], num_actions: int, name: str = "q_network"
) -> keras.Model:
    """The Nature CNN: uint8 frames `obs_shape` = (stack, H, W) -> Q-values [B, num_actions].

    `activation`, `kernel_init`, `init_scale` and `bias_init` apply to every conv and hidden layer as they
    do in the MLP; the head's bias starts at 0 (`bias_init_kind = "torch_default"`: see `init_biases`).
    """
    if len(obs_shape) != 3:
        raise ValueError(f"the CNN needs (stack, height, width) observations, got shape {obs_shape}")

    def hidden_kwargs(i: str) -> dict:
        return {
            "activation": cfg.activation,
            "kernel_initializer": scaled_initializer(cfg.kernel_init, cfg.init_scale),
            "bias_initializer": keras.initializers.Constant(cfg.bias_init),
            "name": i,
        }

    layers: list = [
        keras.Input(shape=tuple(obs_shape), dtype="uint8", name="frames"),
        keras.layers.Rescaling(1.0 / 255.0, name="scale"),  # casts to float32 first
        keras.layers.Permute((2, 3, 1), name="to_nhwc"),  # [B, C, H, W] -> [B, H, W, C]
    ]
    for i, (filters, size, stride) in enumerate(NATURE_CONVS):
        layers.append(keras.layers.Conv2D(filters, size, strides=stride, **hidden_kwargs(f"conv_{i}")))
    layers.append(keras.layers.Flatten(name="flatten"))
    if cfg.dueling:
        trunk = layers[0]
        for layer in layers[1:]:
            trunk = layer(trunk)
        for i, width in enumerate(cfg.hidden[:-1]):
            trunk = keras.layers.Dense(width, **hidden_kwargs(f"hidden_{i}"))(trunk)
        return init_biases(keras.Model(layers[0], dueling_head(cfg, trunk, num_actions), name=name), cfg)
    for i, width in enumerate(cfg.hidden):
        layers.append(keras.layers.Dense(width, **hidden_kwargs(f"hidden_{i}")))
    layers.append(
        keras.layers.Dense(
            num_actions, kernel_initializer=scaled_initializer(cfg.kernel_init, cfg.init_scale), name="q_head"
        )
    )
    return init_biases(keras.Sequential(layers, name=name), cfg)


def forward(network: keras.Model, frames: tf.Tensor, trace: bool = False):
    """Q-values [B, A] of uint8 (or float 0..255) frames [B, stack, H, W], with the model's variables.

    With `trace`, also returns a LayerTrace for each hidden layer (convs, then dense, then a dueling network's
    value_hidden and advantage_hidden), input side first.
    """
    scale = network.get_layer("scale")
    h = tf.cast(frames, tf.float32) * tf.cast(scale.scale, tf.float32)  # what Rescaling computes
    h = tf.transpose(h, [0, 2, 3, 1])  # NHWC
    traces: list[LayerTrace] = []
    for layer in network.layers:
        if layer.name.startswith("conv_"):
            x = tf.nn.conv2d(h, layer.kernel, strides=layer.strides, padding="VALID") + layer.bias
        elif layer.name.startswith("hidden_"):
            if h.shape.rank > 2:
                h = tf.reshape(h, [tf.shape(h)[0], -1])
            x = tf.matmul(h, layer.kernel) + layer.bias
        elif layer.name == "q_head":
            q = tf.matmul(h, layer.kernel) + layer.bias
            return (q, traces) if trace else q
        else:
            continue  # scale, to_nhwc, flatten: done above
        h = layer.activation(x)
        traces.append(LayerTrace(layer.name, x, h))
    if not is_dueling(network):
        raise ValueError("the network has no q_head layer")  # pragma: no cover
    if h.shape.rank > 2:
        h = tf.reshape(h, [tf.shape(h)[0], -1])
    streams = []
    for name, head in zip(DUELING_STREAMS, ("value", "advantage"), strict=True):
        hidden, out = network.get_layer(name), network.get_layer(head)
        x = tf.matmul(h, hidden.kernel) + hidden.bias
        z = hidden.activation(x)
        traces.append(LayerTrace(name, x, z))
        streams.append(tf.matmul(z, out.kernel) + out.bias)
    value, advantage = streams  # [B, 1], [B, A]
    q = value + (advantage - tf.reduce_mean(advantage, axis=1, keepdims=True))
    return (q, traces) if trace else q


def depth_path_layers(network: keras.Model) -> list:
    """The layers with an activation from the frames to the head, input side first: convs, hidden_i, and a
    dueling network's advantage_hidden (the ends of `grad/depth_ratio`; probed, with value_hidden too)."""
    layers = [layer for layer in network.layers if layer.name.startswith(("conv_", "hidden_"))]
    return layers + ([network.get_layer("advantage_hidden")] if is_dueling(network) else [])
