"""What dqnlab reads of a Keras Q-network it did not build (a `network.kind` of your own, `dqnlab.Panel`'s
model): which activation each Dense layer's output goes through.

A Dense layer's activation is its own (`Dense(64, activation="relu")`) or, when the layer is linear, the
activation layer that alone reads its output (`Dense(64)` then `Activation("relu")` or `ReLU()`, as much
Keras code writes it). Probing the linear output instead would count no unit dead, ever: relu's zeros are
only in the layer after it.
"""

from __future__ import annotations

from collections.abc import Callable

from dqnlab._tf import keras

PROBED_ACTIVATIONS = ("relu", "sigmoid", "tanh")  # probes.local_derivative and saturation bounds know these

# Layers that apply an activation and nothing else, besides `Activation` (a plain ReLU() is "relu").
_ACTIVATION_LAYERS = (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU, keras.layers.PReLU)


def activation_name(layer: keras.layers.Layer) -> str:
    """The name of a layer's own `activation` ("linear" when it has none; a function of yours by its name)."""
    fn = getattr(layer, "activation", None)
    return "linear" if fn is None else getattr(fn, "__name__", type(fn).__name__)


def activation_after(model: keras.Model, dense: keras.layers.Layer) -> tuple[str, Callable]:
    """(name, function) of the activation `dense`'s output goes through: its own unless it is linear, else
    that of an activation layer that is the only reader of its output ("linear", identity otherwise). A
    subclassed model has no graph to say who reads it: there the layer after it in `model.layers` counts,
    the plain-stack order the panel's forward pass assumes for such a model too."""
    own = activation_name(dense)
    if own != "linear":
        return own, dense.activation
    layers = _all_layers(model)
    try:
        output = dense.output
    except (AttributeError, ValueError):  # no graph (a subclassed model): the next layer, as in a plain stack
        readers = layers[layers.index(dense) + 1 :][:1]
    else:
        readers = [layer for layer in layers if layer is not dense and _reads(layer, output)]
    if len(readers) == 1:
        (layer,) = readers
        if isinstance(layer, keras.layers.Activation):
            return activation_name(layer), layer.activation
        if type(layer) is keras.layers.ReLU:  # capped, leaky or shifted: not the probes' relu
            return ("relu" if _plain_relu(layer) else "relu_variant"), layer
        if isinstance(layer, _ACTIVATION_LAYERS):  # LeakyReLU, ELU, PReLU: dead and dormant units only
            return type(layer).__name__.lower(), layer
    return "linear", lambda x: x


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's layers, those of nested models included."""
    found = []
    for layer in model.layers:
        found += _all_layers(layer) if isinstance(layer, keras.Model) else [layer]
    return found


def _reads(layer: keras.layers.Layer, output) -> bool:
    try:
        return layer.input is output
    except (AttributeError, ValueError):  # a layer never called, or called on several inputs
        return False


def _plain_relu(layer: keras.layers.Layer) -> bool:
    config = layer.get_config()  # max(x, 0) only: no cap, no leak, no shifted threshold
    return config.get("max_value") is None and not (config.get("negative_slope") or config.get("threshold"))
