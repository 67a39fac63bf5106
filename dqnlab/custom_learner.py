"""The learner of a network given by import path (`network.kind = "mypkg.nets:build"`, dqnlab.components).

Same compiled burst, losses, optimizer and per-variable panel as `dqnlab.learner.Learner`: the panel needs
nothing but the model's trainable variables, named by their layers. What a model of unknown structure
changes:

- Acting cannot use the MLP's numpy twin (it knows only a chain of Dense layers), so the policy is one
  concrete TF function of the online network on one observation, reading the live variables (as the CNN's).
- The activation probe measures every Dense layer whose activation the probes know (relu, sigmoid, tanh),
  its own or that of an activation layer right after it (`Dense(64)` then `ReLU()`: `user_layers`), from
  the layer's own input in the model's graph; a subclassed model has no such graph, and is probed for
  weights and gradients only (docs/components.md). `grad/depth_ratio` runs from the first such layer to the
  last.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dqnlab import probes
from dqnlab._tf import keras, tf
from dqnlab.config import Config
from dqnlab.learner import CompiledPolicy, Learner
from dqnlab.user_layers import PROBED_ACTIVATIONS, activation_after


def probed_layers(model: keras.Model) -> list[tuple[keras.layers.Dense, str, Callable]]:
    """The model's Dense layers whose activation the probes know (their own, or an activation layer's right
    after them: `user_layers.activation_after`), in the model's layer order, each with that activation's
    name and function; none for a subclassed model (no graph to read a layer's input from)."""
    if not getattr(model, "inputs", None):  # a subclassed model: no graph to read a layer's input from
        return []
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            name, fn = activation_after(model, layer)
            if name in PROBED_ACTIVATIONS:
                found.append((layer, name, fn))
    return found


class CustomLearner(Learner):
    """`Learner` of a user's Keras Q-network: transitions as for the MLP, a compiled greedy policy."""

    def __init__(self, cfg: Config, online: keras.Model, target: keras.Model, optimizer, obs_shape):
        super().__init__(cfg, online, target, optimizer, obs_shape)
        self._probed = probed_layers(online)
        self._hidden_layers = [layer for layer, *_ in self._probed]  # the ends of grad/depth_ratio
        self._inputs_of = None
        if self._probed:  # each probed layer's input, from the observations, in one call
            inputs = [layer.input for layer in self._hidden_layers]
            self._inputs_of = keras.Model(online.inputs, inputs, name="probed_inputs")
        self._policy: CompiledPolicy | None = None

    _returns_weights = False  # the policy reads the variables

    def policy(self) -> CompiledPolicy:
        if self._policy is None:
            network = self.online
            self._policy = CompiledPolicy(lambda obs: network(obs), self._obs_shape, np.float32)
        return self._policy

    def _probe_impl(self, states: tf.Tensor, *packed: tf.Tensor) -> dict[str, tf.Tensor]:
        d = self._diag
        m: dict[str, tf.Tensor] = {}
        if self._inputs_of is not None:
            inputs = self._inputs_of(states)
            inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
            for (layer, activation, fn), h in zip(self._probed, inputs, strict=True):
                x = tf.matmul(h, layer.kernel)  # [N, U] pre-activations
                x = x if layer.bias is None else x + layer.bias
                z = fn(x)
                m.update(probes.layer_stats(layer.name, x, z, activation, d))
                if d.histograms:
                    m[f"hist/activation/{layer.name}"] = z
            m["features/srank"] = tf.cast(probes.srank(z, d.srank_delta), tf.float32)
        m.update(self._probe_weights_and_gradient(self._unpack(*packed)))
        return m
