"""The Q-network's layer names, its init knobs, and the numpy acting path against the Keras model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from dqnlab.config import load_preset
from dqnlab.networks import NumpyMLP, build_q_network, variable_tag


def net_cfg(preset="huber_relu", **overrides):
    # huber_relu draws its biases as PyTorch does; these tests choose them unless they say otherwise
    overrides = {"bias_init_kind": "constant", **overrides}
    return load_preset(preset, {f"network.{k}": v for k, v in overrides.items()}).network


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("init_scale", [1.0, 8.0])
def test_numpy_forward_equals_keras(activation, init_scale):
    keras.utils.set_random_seed(1)
    cfg = net_cfg(activation=activation, hidden=[32, 16], init_scale=init_scale, bias_init=0.1)
    model = build_q_network(cfg, obs_dim=4, num_actions=3)
    twin = NumpyMLP(activation)
    twin.set_weights([v.numpy() for v in model.trainable_variables])
    obs = np.random.default_rng(0).normal(scale=3.0, size=(64, 4)).astype(np.float32)
    expected = model(obs).numpy()
    np.testing.assert_allclose(twin(obs), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(twin(obs[0]), expected[0], rtol=1e-5, atol=1e-5)  # a single observation
    assert np.array_equal(twin(obs).argmax(axis=1), expected.argmax(axis=1))


def test_layers_are_named_explicitly():
    model = build_q_network(net_cfg(hidden=[8, 8, 8]), obs_dim=4, num_actions=2)
    assert [variable_tag(v) for v in model.trainable_variables] == [
        f"{layer}/{p}" for layer in ("hidden_0", "hidden_1", "hidden_2", "q_head") for p in ("kernel", "bias")
    ]


def test_init_scale_multiplies_kernels_and_bias_init_sets_hidden_biases():
    keras.utils.set_random_seed(5)
    base = build_q_network(net_cfg(), obs_dim=4, num_actions=2).get_weights()
    keras.utils.set_random_seed(5)
    scaled = build_q_network(net_cfg(init_scale=10.0, bias_init=-3.0), obs_dim=4, num_actions=2).get_weights()
    np.testing.assert_allclose(scaled[0], 10.0 * base[0], rtol=1e-6)
    np.testing.assert_allclose(scaled[2], 10.0 * base[2], rtol=1e-6)
    assert np.all(scaled[1] == -3.0) and np.all(scaled[3] == -3.0)
    assert np.all(scaled[-1] == 0.0)  # the head's bias is not a hidden bias


def uniform_fits(values: np.ndarray, bound: float) -> None:
    """Within [-bound, bound], filling it: the extremes near the edges and the variance bound^2 / 3."""
    assert np.all(np.abs(values) <= bound)
    assert np.abs(values).max() > 0.9 * bound
    assert values.var() == pytest.approx(bound**2 / 3, rel=0.15)


@pytest.mark.parametrize("dueling", [False, True])
def test_torch_default_init_draws_every_kernel_and_bias_from_u_of_inverse_sqrt_fan_in(dueling):
    """PyTorch's nn.Linear default: W and b ~ U(-1/sqrt(fan_in), +1/sqrt(fan_in)), the head's bias too."""
    keras.utils.set_random_seed(3)
    torch_init = {"kernel_init": "torch_default", "bias_init_kind": "torch_default"}
    cfg = net_cfg(**torch_init, hidden=[120, 84], dueling=dueling)
    model = build_q_network(cfg, obs_dim=64, num_actions=2)
    for layer in (layer for layer in model.layers if hasattr(layer, "kernel")):
        kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
        bound = 1.0 / np.sqrt(kernel.shape[0])
        uniform_fits(kernel.ravel(), bound)
        assert np.all(np.abs(bias) <= bound) and np.unique(bias).size == bias.size  # drawn, not constant
    biases = np.concatenate([layer.bias.numpy() for layer in model.layers if hasattr(layer, "bias")])
    assert biases.size > 200 and np.abs(biases).max() > 0.5 / np.sqrt(120)


def test_bias_init_kind_constant_is_the_default_and_leaves_weights_as_before():
    unset = load_preset("sigmoid_glorot").network  # a preset that does not name bias_init_kind
    assert unset.bias_init_kind == "constant"
    keras.utils.set_random_seed(5)
    base = build_q_network(unset, obs_dim=4, num_actions=2).get_weights()
    keras.utils.set_random_seed(5)
    explicit = build_q_network(net_cfg("sigmoid_glorot"), obs_dim=4, num_actions=2).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(base, explicit, strict=True))


def test_torch_default_bias_is_refused_for_rnn():
    from dqnlab.config import ConfigError

    with pytest.raises(ConfigError, match="bias_init_kind"):
        load_preset("gru", {"network.bias_init_kind": "torch_default"})


@pytest.mark.parametrize("preset", ["huber_relu", "acrobot_huber"])
def test_a_bias_that_torch_default_would_ignore_is_refused(preset):
    """A sweep over bias_init on a preset that draws its biases must not return identical cells."""
    from dqnlab.config import ConfigError

    with pytest.raises(ConfigError, match="bias_init_kind=constant"):
        load_preset(preset, {"network.bias_init": -3})
    chosen = load_preset(preset, {"network.bias_init": -3, "network.bias_init_kind": "constant"})
    assert chosen.network.bias_init == -3


def test_torch_default_init_of_the_nature_cnn_uses_each_conv_s_fan_in():
    """nn.Conv2d's default: fan_in = in_channels * kernel height * kernel width (4 * 8 * 8 for conv_0)."""
    from dqnlab.cnn_net import build_cnn_q_network

    keras.utils.set_random_seed(4)
    overrides = {"network.kernel_init": "torch_default", "network.bias_init_kind": "torch_default"}
    cfg = load_preset("pong_huber", overrides).network
    model = build_cnn_q_network(cfg, (4, 84, 84), num_actions=6)
    weighted = [layer for layer in model.layers if hasattr(layer, "kernel")]
    fans = {layer.name: int(np.prod(layer.kernel.shape[:-1])) for layer in weighted}
    assert fans["conv_0"] == 4 * 8 * 8 and fans["conv_1"] == 32 * 4 * 4 and fans["q_head"] == 512
    for layer in weighted:
        bound = 1.0 / np.sqrt(fans[layer.name])
        uniform_fits(layer.kernel.numpy().ravel(), bound)
        assert np.all(np.abs(layer.bias.numpy()) <= bound) and np.abs(layer.bias.numpy()).max() > 0.5 * bound
