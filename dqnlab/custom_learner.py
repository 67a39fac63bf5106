"""The learner of a network given by import path (`network.kind = "mypkg.nets:build"`, dqnlab.components).

Same compiled burst, losses, optimizer and per-variable panel as `dqnlab.learner.Learner`: the panel needs
nothing but the model's trainable variables, named by their layers. What a model of unknown structure
changes:

- Acting cannot use the MLP's numpy twin (it knows only a chain of Dense layers), so the policy is one
  concrete TF function of the online network on one observation, reading the live variables (as the CNN's).
- The activation probe measures every activation the model applies to a layer's units, wherever it is (a
  Dense layer's own, an activation layer after a linear Dense or a normalization, an op of your `call`):
  `user_layers.probe_plan` finds them by watching the model run once, subclassed and nested models included
  (docs/components.md). `grad/depth_ratio` runs from the first probed layer's kernel to the last.
"""

from __future__ import annotations

import warnings

import numpy as np

from dqnlab._tf import keras, tf
from dqnlab.config import Config
from dqnlab.learner import CompiledPolicy, Learner
from dqnlab.user_layers import ProbePlan, activation_stats, error_line, probe_plan, probed_activations


class CustomLearner(Learner):
    """`Learner` of a user's Keras Q-network: transitions as for the MLP, a compiled greedy policy."""

    def __init__(self, cfg: Config, online: keras.Model, target: keras.Model, optimizer, obs_shape):
        super().__init__(cfg, online, target, optimizer, obs_shape)
        self._plan = _plan_or_none(online, obs_shape)
        kernels = [p.kernel_layer for p in self._plan.points if p.kernel_layer is not None]
        self._hidden_layers = list(dict.fromkeys(kernels))  # the ends of grad/depth_ratio
        self._policy: CompiledPolicy | None = None

    _returns_weights = False  # the policy reads the variables

    def policy(self) -> CompiledPolicy:
        if self._policy is None:
            network = self.online
            self._policy = CompiledPolicy(lambda obs: network(obs), self._obs_shape, np.float32)
        return self._policy

    def _probe_impl(self, states: tf.Tensor, *packed: tf.Tensor) -> dict[str, tf.Tensor]:
        points, features = probed_activations(self.online, self._plan, states)
        m = activation_stats(points, features, self._diag, self._diag.histograms)
        m.update(self._probe_weights_and_gradient(self._unpack(*packed)))
        return m


def _plan_or_none(model: keras.Model, obs_shape) -> ProbePlan:
    """The model's probe plan on float32 observations; an empty one, with a warning, when it cannot be read
    (the weights and gradients are still measured)."""
    try:
        return probe_plan(model, tf.TensorSpec([None, *obs_shape], tf.float32))
    except Exception as err:  # a model of yours may fail in ways dqnlab cannot list: measure the rest
        warnings.warn(
            f"dqnlab: no activation probes for this network ({error_line(err)})",
            RuntimeWarning,
            stacklevel=2,
        )
        return ProbePlan((), None)
