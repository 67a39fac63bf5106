"""Which activation a Dense layer of a user's Keras model feeds (dqnlab.user_layers), and that the panel and
a `network.kind` of your own probe it: a ReLU written as its own layer after a linear Dense is a ReLU."""

from __future__ import annotations

import numpy as np
import pytest

import dqnlab
from dqnlab._tf import keras, tf
from dqnlab.custom_learner import probed_layers
from dqnlab.user_layers import activation_after


def _chain(*layers, inputs: int = 4) -> keras.Model:
    x = inp = keras.Input((inputs,))
    for layer in layers:
        x = layer(x)
    return keras.Model(inp, x)


@pytest.mark.parametrize(
    "after, expected",
    [
        (None, "linear"),
        (keras.layers.Activation("relu"), "relu"),
        (keras.layers.Activation("sigmoid"), "sigmoid"),
        (keras.layers.ReLU(), "relu"),
        (keras.layers.ReLU(max_value=6.0), "relu_variant"),  # capped: its derivative is 0 above 6 too
        (keras.layers.LeakyReLU(), "leakyrelu"),
        (keras.layers.ELU(), "elu"),
        (keras.layers.LayerNormalization(), "linear"),  # not an activation: the Dense stays linear
    ],
)
def test_the_activation_a_linear_dense_feeds(after, expected):
    dense = keras.layers.Dense(8, name="d")
    model = _chain(dense, *([after] if after is not None else []), keras.layers.Dense(2))
    name, fn = activation_after(model, dense)
    assert name == expected
    x = tf.constant([[-2.0, -0.5, 0.0, 0.5, 7.0]])
    np.testing.assert_array_equal(fn(x), x if expected == "linear" else after(x))


def test_a_dense_with_its_own_activation_or_two_readers():
    own = keras.layers.Dense(8, activation="tanh")
    assert activation_after(_chain(own, keras.layers.ReLU(), keras.layers.Dense(2)), own)[0] == "tanh"
    shared = keras.layers.Dense(8)
    inp = keras.Input((4,))
    h = shared(inp)
    model = keras.Model(inp, keras.layers.Add()([keras.layers.ReLU()(h), keras.layers.Activation("tanh")(h)]))
    assert activation_after(model, shared)[0] == "linear"  # two readers: no one activation of its own


def test_a_sequential_model_and_a_nested_one():
    dense = keras.layers.Dense(8)
    sequential = keras.Sequential([keras.Input((4,)), dense, keras.layers.ReLU(), keras.layers.Dense(2)])
    assert activation_after(sequential, dense)[0] == "relu"
    inner_dense = keras.layers.Dense(8)
    inner = _chain(inner_dense, keras.layers.Activation("sigmoid"))
    outer = _chain(inner, keras.layers.Dense(2))
    assert activation_after(outer, inner_dense)[0] == "sigmoid"


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(8)
        self.act = keras.layers.Activation("sigmoid")
        self.head = keras.layers.Dense(2)

    def call(self, x):
        return self.head(self.act(self.hidden(x)))


def test_a_subclassed_model_is_read_as_the_plain_stack_its_layers_list():
    model = _Subclassed()
    model(np.zeros((1, 4), np.float32))
    assert activation_after(model, model.hidden)[0] == "sigmoid"
    assert activation_after(model, model.head)[0] == "linear"  # the last layer: nothing after it


def _dead_first_layer(after: keras.layers.Layer) -> keras.Model:
    """Dense(8) with a zero kernel and bias -1, then `after`, then a head: every unit's pre-activation is -1
    on every state, so a ReLU after it outputs 0 everywhere: all 8 units dead, derivative 0 everywhere."""
    dense = keras.layers.Dense(
        8, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(-1.0)
    )
    return _chain(dense, after, keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2))


@pytest.mark.parametrize("after", [keras.layers.Activation("relu"), keras.layers.ReLU()])
def test_the_panel_counts_the_dead_units_of_a_relu_written_as_its_own_layer(tmp_path, after):
    model = _dead_first_layer(after)
    dense = model.layers[1]
    obs = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    panel = dqnlab.Panel(model, env="CartPole-v1", logdir=tmp_path, experiment="dead", every=1, probe_every=1,
                         probe_size=32, warn=lambda _: None)  # fmt: skip
    with tf.GradientTape() as tape:
        q = model(obs)
        qa, target = q[:, 0], tf.ones(32)
        loss = tf.reduce_mean(tf.square(target - qa))
    panel.gradients(tape, loss, model.trainable_variables, qa=qa, target=target, q=q, obs=obs, step=1)
    panel.close()
    run = dqnlab.read_run(panel.run_dir)
    assert run.scalars(f"act_dead_frac/{dense.name}") == [(1, 1.0)]  # 0.0 when the linear output was probed
    assert run.scalars(f"act_zero_deriv_frac/{dense.name}") == [(1, 1.0)]
    assert run.info["config"]["network"]["activation"] == "relu"


def test_a_network_of_your_own_probes_a_relu_written_as_its_own_layer():
    model = _dead_first_layer(keras.layers.ReLU())
    (first, name, fn), (second, *_) = probed_layers(model)
    assert (first, name) == (model.layers[1], "relu") and second is model.layers[3]
    np.testing.assert_array_equal(fn(tf.constant([-1.0, 2.0])), [0.0, 2.0])
