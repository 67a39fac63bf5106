"""Where a user's Keras Q-network applies its activations (dqnlab.user_layers), and that the panel and a
`network.kind` of your own probe them there: a ReLU written as its own layer, after a normalization, after a
residual sum, or as an op in a subclassed model's `call`; the values checked against a forward pass written
out by hand."""

from __future__ import annotations

import numpy as np
import pytest

import dqnlab
from dqnlab._tf import keras, tf
from dqnlab.config import load_preset
from dqnlab.kinds import make_learner
from dqnlab.learner import Batch
from dqnlab.user_layers import probe_plan, probed_activations

SPEC = tf.TensorSpec([None, 4], tf.float32)
STATES = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)


def _chain(*layers, inputs: int = 4) -> keras.Model:
    x = inp = keras.Input((inputs,))
    for layer in layers:
        x = layer(x)
    return keras.Model(inp, x)


def _points(model) -> list[tuple[str, str, str]]:
    return [(p.name, p.activation, p.read) for p in probe_plan(model, SPEC).points]


@pytest.mark.parametrize(
    "between, expected",
    [
        ([], []),  # a linear Dense into the head: no units that can die
        ([keras.layers.Activation("relu")], [("d", "relu", "layer")]),
        ([keras.layers.Activation("sigmoid")], [("d", "sigmoid", "layer")]),
        ([keras.layers.Activation("linear")], []),
        ([keras.layers.ReLU()], [("d", "relu", "layer")]),
        ([keras.layers.ReLU(max_value=6.0)], [("d", "relu_variant", "layer")]),  # capped: 0 above 6 too
        ([keras.layers.LeakyReLU()], [("d", "leakyrelu", "layer")]),
        ([keras.layers.ELU()], [("d", "elu", "layer")]),
        ([keras.layers.LayerNormalization()], []),  # not an activation
        ([keras.layers.LayerNormalization(), keras.layers.ReLU()], [("d", "relu", "layer")]),
        (
            [keras.layers.BatchNormalization(), keras.layers.Dropout(0.5), keras.layers.Activation("tanh")],
            [("d", "tanh", "layer")],
        ),
    ],
)
def test_the_activation_a_linear_dense_feeds_is_named_after_the_dense(between, expected):
    model = _chain(keras.layers.Dense(8, name="d"), *between, keras.layers.Dense(2, name="q"))
    assert _points(model) == expected


def test_a_dense_with_its_own_activation_and_one_after_it():
    model = _chain(keras.layers.Dense(8, activation="tanh", name="d"), keras.layers.ReLU(name="r"),
                   keras.layers.Dense(2))  # fmt: skip
    assert _points(model) == [("d", "tanh", "own"), ("r", "relu", "layer")]


def test_a_residual_sum_and_a_dueling_head():
    inp = keras.Input((4,))
    h = keras.layers.Dense(8, activation="relu", name="h")(inp)
    branch = keras.layers.Dense(8, name="branch")(h)  # linear, read by the sum: not probed
    s = keras.layers.Activation("relu", name="after_sum")(keras.layers.Add()([h, branch]))
    value = keras.layers.Dense(1, name="value")(s)  # the dueling streams: linear, not probed
    advantage = keras.layers.Dense(2, name="advantage")(s)
    q = keras.layers.Lambda(lambda va: va[0] + va[1] - tf.reduce_mean(va[1], 1, keepdims=True))(
        [value, advantage]
    )
    model = keras.Model(inp, q)
    plan = probe_plan(model, SPEC)
    assert [(p.name, p.read) for p in plan.points] == [("h", "own"), ("after_sum", "layer")]
    assert plan.head is model.get_layer("advantage")  # the last kernel layer called: srank reads its input
    _, features = probed_activations(model, plan, tf.constant(STATES))
    s_by_hand = keras.Model(inp, s)(STATES)
    np.testing.assert_allclose(features, s_by_hand, rtol=1e-6)


class OpsInCall(keras.Model):
    """Activations as ops of `call`, over linear Dense layers: the style of much subclassed code."""

    def __init__(self):
        super().__init__()
        self.fc1 = keras.layers.Dense(8)
        self.norm = keras.layers.LayerNormalization()
        self.fc2 = keras.layers.Dense(8)
        self.value = keras.layers.Dense(1)
        self.advantage = keras.layers.Dense(2)

    def call(self, x):
        h = tf.nn.relu(self.norm(self.fc1(x)))
        h = tf.nn.leaky_relu(self.fc2(h), alpha=0.3)
        a = self.advantage(h)
        return self.value(h) + a - tf.reduce_mean(a, 1, keepdims=True)


def test_a_subclassed_model_is_read_as_it_runs():
    model = OpsInCall()
    model(STATES[:1])
    plan = probe_plan(model, SPEC)
    assert [(p.name, p.activation, p.read) for p in plan.points] == [
        (model.fc1.name, "relu", "op"),
        (model.fc2.name, "leaky_relu", "op"),
    ]
    (_, x1, z1), (_, x2, z2) = probed_activations(model, plan, tf.constant(STATES))[0]
    x1_by_hand = model.norm(model.fc1(STATES))
    np.testing.assert_allclose(x1, x1_by_hand, rtol=1e-6)
    np.testing.assert_allclose(z1, np.maximum(x1_by_hand, 0.0), rtol=1e-6)
    x2_by_hand = model.fc2(np.maximum(x1_by_hand, 0.0))
    np.testing.assert_allclose(z2, np.where(x2_by_hand > 0, x2_by_hand, 0.3 * x2_by_hand), rtol=1e-5)


def test_nested_models_and_a_layer_called_twice():
    trunk = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="t"), keras.layers.ReLU()])
    shared = keras.layers.Dense(8, activation="sigmoid", name="shared")
    inp = keras.Input((4,))
    h = shared(trunk(inp))
    model = keras.Model(inp, keras.layers.Dense(2)(shared(h)))
    assert _points(model) == [
        ("t", "relu", "layer"),
        ("shared", "sigmoid", "own"),
        ("shared_2", "sigmoid", "own"),
    ]


def test_the_model_is_left_as_it_was():
    model = OpsInCall()
    before = model(STATES)
    layers = model._flatten_layers()
    own = lambda: [(vars(layer).get("call"), vars(layer).get("activation")) for layer in layers]  # noqa: E731
    attributes = own()
    plan = probe_plan(model, SPEC)
    probed_activations(model, plan, tf.constant(STATES))
    assert own() == attributes and all(call is None for call, _ in attributes)  # no patch left behind
    np.testing.assert_array_equal(model(STATES), before)


def _dead_first_layer(*after: keras.layers.Layer) -> keras.Model:
    """Dense(8) with a zero kernel and bias -1, then `after`, then a head: every unit's pre-activation is -1
    on every state (0 after a normalization), so a ReLU after it outputs 0 everywhere: all 8 units dead,
    derivative 0 everywhere."""
    dense = keras.layers.Dense(
        8, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(-1.0), name="first"
    )
    return _chain(dense, *after, keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2))


def _panel_probe(tmp_path, model, name: str) -> dqnlab.RunResult:
    panel = dqnlab.Panel(model, env="CartPole-v1", logdir=tmp_path, experiment=name, every=1, probe_every=1,
                         probe_size=32, warn=lambda _: None)  # fmt: skip
    with tf.GradientTape() as tape:
        q = model(STATES)
        qa, target = q[:, 0], tf.ones(32)
        loss = tf.reduce_mean(tf.square(target - qa))
    panel.gradients(tape, loss, model.trainable_variables, qa=qa, target=target, q=q, obs=STATES, step=1)
    panel.close()
    return dqnlab.read_run(panel.run_dir)


@pytest.mark.parametrize(
    "after",
    [
        [keras.layers.Activation("relu")],
        [keras.layers.ReLU()],
        [keras.layers.LayerNormalization(), keras.layers.ReLU()],  # read 0.0: the linear output was probed
    ],
)
def test_the_panel_counts_the_dead_units_of_a_relu_after_a_linear_dense(tmp_path, after):
    run = _panel_probe(tmp_path, _dead_first_layer(*after), "dead")
    assert run.scalars("act_dead_frac/first") == [(1, 1.0)]
    assert run.scalars("act_zero_deriv_frac/first") == [(1, 1.0)]
    assert run.info["config"]["network"]["activation"] == "relu"


def test_the_panel_probes_a_subclassed_model_as_it_runs(tmp_path):
    """Each logged fraction equals the one computed from a forward pass written out by hand; this model
    (not a plain stack of its layers) crashed the panel's probe before."""
    model = OpsInCall()
    model(STATES[:1])
    run = _panel_probe(tmp_path, model, "ops")
    x1 = model.norm(model.fc1(STATES)).numpy()
    z2 = tf.nn.leaky_relu(model.fc2(np.maximum(x1, 0.0)), alpha=0.3).numpy()
    assert run.scalars(f"act_dead_frac/{model.fc1.name}") == [(1, float(np.mean(np.all(x1 <= 0, axis=0))))]
    assert run.scalars(f"act_zero_deriv_frac/{model.fc1.name}") == [
        (1, pytest.approx(float(np.mean(x1 <= 0))))
    ]
    assert run.scalars(f"act_dead_frac/{model.fc2.name}") == [(1, float(np.mean(np.all(z2 == 0, axis=0))))]
    assert run.info["panel"]["missing"] == []


def test_a_model_the_probe_states_cannot_feed_is_said_not_probed(tmp_path):
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Dense(8, activation="relu")(a + b)))
    panel = dqnlab.Panel(model, env="CartPole-v1", logdir=tmp_path, experiment="two", every=1, probe_every=1,
                         probe_size=32, warn=lambda _: None)  # fmt: skip
    with tf.GradientTape() as tape:
        q = model([STATES, STATES])
        loss = tf.reduce_mean(tf.square(q))
    panel.gradients(tape, loss, model.trainable_variables, obs=STATES, step=1)  # the user's loop goes on
    panel.close()
    run = dqnlab.read_run(panel.run_dir)
    (missing,) = [m for m in run.info["panel"]["missing"] if m["what"] == "probes"]
    assert "did not run on the probe states" in missing["why"] and "dead_relu" in missing["rules"]
    assert not [t for t in run.tags() if t.startswith("act_")]


def dead_ln_network(cfg, obs_shape, num_actions, name):
    """A `network.kind` builder (this module by import path): `_dead_first_layer` behind a LayerNorm."""
    return _dead_first_layer(keras.layers.LayerNormalization(), keras.layers.ReLU())


def test_a_network_of_your_own_is_probed_where_its_activations_are():
    cfg = load_preset(
        "huber_relu", {"network.kind": "test_user_layers:dead_ln_network", "train.batch_size": 32}
    )
    learner = make_learner(cfg, (4,), 2, seed=0)
    assert [(p.name, p.activation, p.read) for p in learner._plan.points][0] == ("first", "relu", "layer")
    assert learner._hidden_layers[0].name == "first"  # grad/depth_ratio's first end
    zeros = np.zeros(32, np.float32)
    m = learner.probe(STATES, Batch(STATES, np.zeros(32, np.int32), zeros, STATES, zeros))
    assert float(m["act_dead_frac/first"]) == 1.0 and float(m["act_zero_deriv_frac/first"]) == 1.0


def test_eager_and_traced_probes_read_the_same_values():
    """The plan is made in a trace (an op's consumers are graph-only); replayed eagerly (the panel's probe
    inside a graph-mode loop, DQNLAB_EAGER) it reads what the traced replay reads."""
    model = OpsInCall()
    model(STATES[:1])
    plan = probe_plan(model, SPEC)
    eager, _ = probed_activations(model, plan, tf.constant(STATES))
    outputs = tf.function(lambda s: [z for _, _, z in probed_activations(model, plan, s)[0]])
    traced = outputs(tf.constant(STATES))
    for (_, _, z), t in zip(eager, traced, strict=True):
        np.testing.assert_allclose(z, t, rtol=1e-6)


class FixedBatch(keras.Model):
    """A model that only runs on batches of 32 (a reshape to the training batch size)."""

    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.head = keras.layers.Dense(2)

    def call(self, x):
        return self.head(tf.reshape(self.hidden(x), [32, 8]))


def test_a_probe_that_fails_leaves_the_users_loop_running(tmp_path):
    """The probe's 64 states do not fit the model's fixed batch: the probe is dropped, said once in run.json,
    and every call of the loop still returns its gradient."""
    model = FixedBatch()
    model(STATES)
    panel = dqnlab.Panel(model, env="CartPole-v1", logdir=tmp_path, experiment="fixed", every=1,
                         probe_every=2, probe_size=64, warn=lambda _: None)  # fmt: skip
    for step in range(1, 5):
        with tf.GradientTape() as tape:
            q = model(STATES)
            qa = q[:, 0]
            loss = tf.reduce_mean(tf.square(qa - 1.0))
        obs = np.concatenate([STATES, STATES])  # 64 probe states
        grads = panel.gradients(tape, loss, model.trainable_variables, qa=qa, target=tf.ones(32), q=q,
                                obs=obs[:32] if step % 2 else obs[32:], step=step)  # fmt: skip
        assert all(g is not None for g in grads)
    panel.close()
    run = dqnlab.read_run(panel.run_dir)
    (missing,) = [m for m in run.info["panel"]["missing"] if m["what"] == "probes"]
    assert missing["why"].startswith("the activation probe failed (ValueError: Cannot reshape a tensor")
    assert run.status == "done" and len(run.scalars("loss/td")) == 4
