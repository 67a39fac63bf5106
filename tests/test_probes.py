"""Activation probes against hand-computed values, and the float32 saturation facts pinned with TF itself."""

from __future__ import annotations

import numpy as np
import pytest

from dqnlab._tf import tf
from dqnlab.probes import (
    dead_frac,
    dormant_frac,
    local_derivative,
    saturated_frac,
    srank,
    zero_derivative_frac,
)


def below(x: float) -> np.float32:
    return np.nextafter(np.float32(x), np.float32(-np.inf))


def test_float32_sigmoid_is_exactly_one_from_24_ln_2():
    # sigmoid(x) rounds to 1.0 in float32 once exp(-x) <= 2^-25 relative, i.e. from x = 24 ln 2 = 16.6355323
    # (the float32 16.635532); the float32 just below it is the last x with sigmoid(x) < 1.
    threshold = np.float32(24 * np.log(2))
    x = tf.constant([16.0, below(threshold), threshold, 17.0, 30.0], tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        z = tf.sigmoid(x)
    grad = tape.gradient(z, x).numpy()
    assert z.numpy()[0] < 1.0 and z.numpy()[1] < 1.0
    assert np.all(z.numpy()[2:] == 1.0)
    assert np.all(grad[2:] == 0.0)
    assert 1e-7 < grad[0] < 1.3e-7  # tiny but not zero at x = 16: "near zero" needs a tolerance
    assert round(float(threshold), 4) == 16.6355


def test_float32_sigmoid_is_exactly_zero_below_minus_87_34():
    # Subnormals are flushed: the last nonzero output is the smallest normal float32, at x = -87.33654.
    z = tf.sigmoid(tf.constant([-87.0, -87.33654, -87.33655, -88.0, -100.0], tf.float32)).numpy()
    assert z[0] > 0.0 and z[1] == pytest.approx(np.finfo(np.float32).tiny, rel=1e-3)
    assert np.all(z[2:] == 0.0)


def test_float32_tanh_is_exactly_one_from_7_9074():
    # The float32 threshold is 7.9073896 (the float32 just below it, 7.907389, still gives tanh < 1).
    x = tf.constant([below(7.9073896), 7.9073896, 7.9074, 8.0, -7.9074, -9.0], tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        z = tf.tanh(x)
    grad = tape.gradient(z, x).numpy()
    assert abs(z.numpy()[0]) < 1.0 and grad[0] > 0.0
    assert np.all(np.abs(z.numpy()[1:]) == 1.0)
    assert np.all(grad[1:] == 0.0)


# Probe batch of N = 4 states through a layer of U = 4 ReLU units (outputs z, chosen by hand):
#   unit 0: fires on every state; unit 1: never fires (dead); unit 2: fires once, weakly; unit 3: once.
RELU_Z = np.array(
    [
        [1.0, 0.0, 0.0, 0.0],
        [2.0, 0.0, 0.0, 0.0],
        [1.0, 0.0, 0.04, 4.0],
        [0.0, 0.0, 0.0, 0.0],
    ],
    np.float32,
)
# E|z_i| = [1.0, 0.0, 0.01, 1.0]; mean over units = 2.01 / 4 = 0.5025
# scores = [1.99, 0.0, 0.0199, 1.99]


@pytest.mark.parametrize(
    "tau, expected",
    [(0.0, 1 / 4), (0.025, 2 / 4), (0.1, 2 / 4), (2.0, 4 / 4)],
    ids=["tau=0-is-dead", "tau=0.025", "tau=0.1", "tau=2-everything"],
)
def test_dormant_fraction_by_hand(tau, expected):
    assert float(dormant_frac(tf.constant(RELU_Z), tau)) == pytest.approx(expected)


def test_dead_fraction_counts_the_unit_killed_on_purpose():
    assert float(dead_frac(tf.constant(RELU_Z))) == pytest.approx(1 / 4)


def test_an_all_zero_layer_is_all_dormant_and_all_dead():
    z = tf.zeros([5, 3])
    assert float(dormant_frac(z, 0.025)) == 1.0 and float(dead_frac(z)) == 1.0


def test_saturation_and_zero_derivatives_of_a_sigmoid_layer():
    # Pre-activations: 2 of 6 entries are saturated within 0.03 (|x| >= 3.48); one of them is exactly 1.0.
    x = tf.constant([[0.0, 20.0, -4.0], [1.0, -1.0, 2.0]], tf.float32)
    z = tf.sigmoid(x)
    assert float(saturated_frac(z, "sigmoid")) == pytest.approx(2 / 6)
    assert float(zero_derivative_frac(x, z, "sigmoid")) == pytest.approx(1 / 6)  # only sigmoid(20) == 1.0
    deriv = local_derivative(x, z, "sigmoid").numpy()
    assert deriv.max() <= 0.25 and deriv[0, 0] == pytest.approx(0.25)


def test_relu_derivative_and_saturation():
    x = tf.constant([[-1.0, 0.0, 2.0]])
    z = tf.nn.relu(x)
    assert local_derivative(x, z, "relu").numpy().tolist() == [[0.0, 0.0, 1.0]]
    assert float(zero_derivative_frac(x, z, "relu")) == pytest.approx(2 / 3)
    assert float(saturated_frac(z, "relu")) == 0.0


def test_tanh_saturation():
    x = tf.constant([[0.0, 3.0, -3.0, 10.0]])
    assert float(saturated_frac(tf.tanh(x), "tanh")) == pytest.approx(3 / 4)  # tanh(3) = 0.99505 > 0.97


def test_srank_by_hand():
    # Singular values 4, 3, 2, 0.04 (a diagonal matrix): total 9.04; 0.99 * 9.04 = 8.9496.
    # Cumulative: 4, 7, 9 >= 8.9496 at k = 3.
    features = tf.constant(np.diag([4.0, 3.0, 2.0, 0.04]).astype(np.float32))
    assert int(srank(features, delta=0.01)) == 3
    assert int(srank(features, delta=0.0)) == 4
    assert int(srank(tf.constant(np.ones((6, 4), np.float32)))) == 1  # rank one
