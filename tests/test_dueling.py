"""network.dueling: the value and advantage streams against a hand-computed forward pass and gradient (eager
and compiled), the numpy acting twin, the CNN's raw-op forward, the probes' per-stream layers and tags."""

import numpy as np
import pytest

from dqnlab.config import ConfigError, apply_overrides, load_preset
from dqnlab.networks import (
    NumpyMLP,
    build_q_network,
    depth_path_layers,
    hidden_activations,
    penultimate_features,
    variable_tag,
)

tf = pytest.importorskip("tensorflow")

TAGS = [
    "value_hidden/kernel",
    "value_hidden/bias",
    "advantage_hidden/kernel",
    "advantage_hidden/bias",
    "value/kernel",
    "value/bias",
    "advantage/kernel",
    "advantage/bias",
]


def tiny():
    """obs 2 -> streams of 2 ReLU units -> value [1], advantage [3], with weights chosen by hand."""
    cfg = apply_overrides(load_preset("huber_relu"), {"network.dueling": True, "network.hidden": [2]})
    net = build_q_network(cfg.network, obs_dim=2, num_actions=3)
    weights = {
        "value_hidden/kernel": [[1.0, 0.0], [0.0, 2.0]],
        "value_hidden/bias": [0.0, -1.0],
        "advantage_hidden/kernel": [[1.0, -1.0], [1.0, 1.0]],
        "advantage_hidden/bias": [0.5, 0.0],
        "value/kernel": [[2.0], [1.0]],
        "value/bias": [0.25],
        "advantage/kernel": [[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]],
        "advantage/bias": [0.0, 0.0, 3.0],
    }
    for v in net.trainable_variables:
        v.assign(np.array(weights[variable_tag(v)], np.float32))
    return cfg, net


# By hand, for obs s = (1, 1):
#   value_hidden: relu((1, 2) + (0, -1)) = (1, 1);  value = 2 * 1 + 1 * 1 + 0.25 = 3.25
#   advantage_hidden: relu((2, 0) + (0.5, 0)) = (2.5, 0)
#   advantage = (2.5, 0, -2.5) + (0, 0, 3) = (2.5, 0, 0.5)
#   mean(advantage) = 1;  Q = 3.25 + (2.5, 0, 0.5) - 1 = (4.75, 2.25, 2.75)
OBS = np.array([[1.0, 1.0]], np.float32)
Q_BY_HAND = np.array([[4.75, 2.25, 2.75]], np.float32)


def test_variables_are_named_per_stream_in_the_order_the_numpy_twin_reads():
    _, net = tiny()
    assert [variable_tag(v) for v in net.trainable_variables] == TAGS


@pytest.mark.parametrize("compiled", [False, True])
def test_forward_equals_the_hand_computed_q(compiled):
    _, net = tiny()
    fn = tf.function(lambda x: net(x)) if compiled else net
    np.testing.assert_array_equal(fn(tf.constant(OBS)).numpy(), Q_BY_HAND)


def test_numpy_twin_equals_the_keras_model():
    cfg, net = tiny()
    policy = NumpyMLP("relu", dueling=True)
    policy.set_weights([v.numpy() for v in net.trainable_variables])
    np.testing.assert_array_equal(policy(OBS), Q_BY_HAND)
    np.testing.assert_array_equal(policy(OBS[0]), Q_BY_HAND[0])
    # A bigger random one, with a shared trunk: equal to float32 rounding.
    cfg = apply_overrides(load_preset("huber_relu"), {"network.dueling": True, "network.hidden": [16, 8]})
    net = build_q_network(cfg.network, obs_dim=4, num_actions=5)
    policy = NumpyMLP("relu", dueling=True)
    policy.set_weights([v.numpy() for v in net.trainable_variables])
    obs = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    np.testing.assert_allclose(policy(obs), net(obs).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("compiled", [False, True])
def test_gradient_equals_the_hand_computed_one(compiled):
    """L = sum_a c_a Q(s, a) with c = (1, 0, 0) (Q(s, a_0), what a TD loss's dL/dQ(s,a) picks):
    dL/dvalue = sum c = 1 and dL/dadvantage_b = c_b - mean c = (2/3, -1/3, -1/3). So value/bias gets 1,
    value/kernel value_hidden's outputs (1, 1), advantage/bias (2/3, -1/3, -1/3), advantage/kernel the outer
    product of advantage_hidden's outputs (2.5, 0) with it, and the value stream's hidden units get
    value/kernel = (2, 1) times relu' (1, 1)."""
    _, net = tiny()
    c = tf.constant([[1.0, 0.0, 0.0]])

    def grads():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(net(tf.constant(OBS)) * c)
        return dict(zip(TAGS, tape.gradient(loss, net.trainable_variables), strict=True))

    g = tf.function(grads)() if compiled else grads()
    third = np.float32(1.0 / 3.0)
    expected = {
        "value/bias": [1.0],
        "value/kernel": [[1.0], [1.0]],
        "advantage/bias": [2 * third, -third, -third],
        "advantage/kernel": [[2.5 * 2 * third, -2.5 * third, -2.5 * third], [0.0, 0.0, 0.0]],
        "value_hidden/bias": [2.0, 1.0],
        "value_hidden/kernel": [[2.0, 1.0], [2.0, 1.0]],
        # advantage_hidden: dL/dz = advantage/kernel @ (2/3, -1/3, -1/3) = (2/3 + 1/3, -2/3 - 1/3) = (1, -1),
        # times relu' = (1, 0) (its second unit's pre-activation is 0)
        "advantage_hidden/bias": [1.0, 0.0],
        "advantage_hidden/kernel": [[1.0, 0.0], [1.0, 0.0]],
    }
    for tag, want in expected.items():
        np.testing.assert_allclose(
            g[tag].numpy(), np.array(want, np.float32), rtol=1e-6, atol=1e-7, err_msg=tag
        )


def test_probe_layers_and_features_include_both_streams():
    _, net = tiny()
    traces = hidden_activations(net, tf.constant(OBS))
    assert [name for name, _, _ in traces] == ["value_hidden", "advantage_hidden"]
    np.testing.assert_array_equal(traces[0][2].numpy(), [[1.0, 1.0]])
    np.testing.assert_array_equal(traces[1][2].numpy(), [[2.5, 0.0]])
    np.testing.assert_array_equal(penultimate_features(traces).numpy(), [[1.0, 1.0, 2.5, 0.0]])
    assert [layer.name for layer in depth_path_layers(net)] == ["advantage_hidden"]  # no depth: no ratio
    cfg = apply_overrides(load_preset("huber_relu"), {"network.dueling": True})
    deep = build_q_network(cfg.network, obs_dim=4, num_actions=2)
    assert [layer.name for layer in depth_path_layers(deep)] == ["hidden_0", "advantage_hidden"]


def test_plain_network_is_unchanged():
    """dueling = false builds the Sequential MLP it always did: hidden_0, hidden_1, q_head."""
    cfg = load_preset("huber_relu")
    assert cfg.network.dueling is False
    net = build_q_network(cfg.network, obs_dim=4, num_actions=2)
    assert [layer.name for layer in net.layers] == ["hidden_0", "hidden_1", "q_head"]
    assert [layer.name for layer in depth_path_layers(net)] == ["hidden_0", "hidden_1"]


@pytest.mark.parametrize("compiled", [False, True])
def test_dueling_cnn_forward_equals_the_keras_model_and_traces_each_stream(compiled):
    from dqnlab.cnn_net import build_cnn_q_network, depth_path_layers, forward

    cfg = apply_overrides(load_preset("breakout_huber"), {"network.dueling": True, "atari.screen_size": 36})
    net = build_cnn_q_network(cfg.network, (4, 36, 36), num_actions=4)
    frames = np.random.default_rng(1).integers(0, 256, size=(3, 4, 36, 36), dtype=np.uint8)
    fn = (
        tf.function(lambda x: forward(net, x, trace=True))
        if compiled
        else (lambda x: forward(net, x, trace=True))
    )
    q, traces = fn(tf.constant(frames))
    np.testing.assert_allclose(q.numpy(), net(frames).numpy(), rtol=1e-5, atol=1e-6)
    assert [t.name for t in traces] == ["conv_0", "conv_1", "conv_2", "value_hidden", "advantage_hidden"]
    assert [variable_tag(v) for v in net.trainable_variables][-8:] == TAGS
    assert [layer.name for layer in depth_path_layers(net)] == [
        "conv_0",
        "conv_1",
        "conv_2",
        "advantage_hidden",
    ]
    # Q is value + centred advantage: the mean over actions of Q is the value stream's output.
    value = tf.matmul(traces[-2].z, net.get_layer("value").kernel) + net.get_layer("value").bias
    np.testing.assert_allclose(q.numpy().mean(axis=1), value.numpy()[:, 0], rtol=1e-5, atol=1e-6)


def test_dueling_is_refused_for_the_rnn():
    with pytest.raises(ConfigError, match="network.dueling: only for network.kind 'mlp' or 'cnn', not 'rnn'"):
        apply_overrides(load_preset("lstm"), {"network.dueling": True})


def test_a_dueling_cartpole_run_logs_every_stream_tag_and_only_documented_tags(tmp_path):
    from metrics_doc import undocumented

    import dqnlab

    cfg = load_preset(
        "huber_relu",
        {
            "network.dueling": True,
            "train.learning_starts": 200,
            "train.eval_every": 0,
            "train.eval_episodes": 1,
            "diagnostics.every": 2,
            "diagnostics.probe_every": 4,
        },
    )
    res = dqnlab.train(cfg, steps=1_200, logdir=tmp_path, name="dueling")
    assert res.status == "done", res.error
    tags = set(res.tags())
    for tag in TAGS + ["hidden_0/kernel"]:
        for family in ("grad_norm", "grad_zero_frac", "weight_norm", "update_ratio", "grad_near_zero_frac"):
            assert f"{family}/{tag}" in tags, f"{family}/{tag}"
    for layer in ("hidden_0", "value_hidden", "advantage_hidden"):
        for family in ("act_dead_frac", "act_dormant_frac", "act_zero_deriv_frac"):
            assert f"{family}/{layer}" in tags
    assert "grad/depth_ratio" in tags and "features/srank" in tags
    assert not any("q_head" in t for t in tags)
    assert undocumented(tags) == []
