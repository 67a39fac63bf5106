"""dqnlab.losses: values, gradients and equivalences, eagerly and under tf.function.

Expected numbers are worked by hand in the comments. The shared batch is
delta = [-3.0, -1.0, -0.5, 0.0, 0.25, 2.0]: two entries beyond bound 1, one exactly on it, three inside.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from dqnlab import losses
from dqnlab._tf import tf

DELTA = [-3.0, -1.0, -0.5, 0.0, 0.25, 2.0]
B = len(DELTA)  # 6

COMPILED = pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf_function"])
DTYPES = pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=["f32", "f64"])

# (loss name, bound, per-sample value, d(value)/d(delta)), all on DELTA.
CASES = [
    pytest.param(
        "squared",
        1.0,
        # 0.5 * d^2: 0.5*9, 0.5*1, 0.5*0.25, 0, 0.5*0.0625, 0.5*4
        [4.5, 0.5, 0.125, 0.0, 0.03125, 2.0],
        # d, unbounded
        [-3.0, -1.0, -0.5, 0.0, 0.25, 2.0],
        id="squared",
    ),
    pytest.param(
        "clipped_delta_squared",
        1.0,
        # clip(d, -1, 1) = [-1, -1, -0.5, 0, 0.25, 1]; squared, no 0.5: [1, 1, 0.25, 0, 0.0625, 1]
        [1.0, 1.0, 0.25, 0.0, 0.0625, 1.0],
        # 2 * d inside (d = -1 on the bound counts as inside: -2), 0 beyond (-3 and 2)
        [0.0, -2.0, -1.0, 0.0, 0.5, 0.0],
        id="clipped_delta_squared",
    ),
    pytest.param(
        "clipped_gradient_squared",
        1.0,
        # forward is squared's: 0.5 * d^2
        [4.5, 0.5, 0.125, 0.0, 0.03125, 2.0],
        # clip(d, -1, 1)
        [-1.0, -1.0, -0.5, 0.0, 0.25, 1.0],
        id="clipped_gradient_squared",
    ),
    pytest.param(
        "huber",
        1.0,
        # |d| <= 1: 0.5 d^2 -> 0.5, 0.125, 0, 0.03125; beyond: 1 * (|d| - 0.5) -> 3 - 0.5 = 2.5, 2 - 0.5 = 1.5
        [2.5, 0.5, 0.125, 0.0, 0.03125, 1.5],
        # clip(d, -1, 1)
        [-1.0, -1.0, -0.5, 0.0, 0.25, 1.0],
        id="huber_kappa1",
    ),
    pytest.param(
        "huber",
        2.5,
        # |d| <= 2.5: 0.5 d^2 -> 0.5, 0.125, 0, 0.03125, 0.5*4 = 2; beyond: 2.5 * (3 - 1.25) = 4.375
        [4.375, 0.5, 0.125, 0.0, 0.03125, 2.0],
        # clip(d, -2.5, 2.5)
        [-2.5, -1.0, -0.5, 0.0, 0.25, 2.0],
        id="huber_kappa2.5",
    ),
]


def _sum(x: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(x)


def _mean(x: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(x)


REDUCTIONS = pytest.mark.parametrize("reduce", [_sum, _mean], ids=["sum", "mean"])


def value_and_grad(
    loss_fn: Callable, delta, bound: float, compiled: bool, reduce: Callable = _sum, dtype=tf.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample loss and d reduce(loss) / d delta, run eagerly or as a fresh tf.function."""

    def step(d: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(d)
            per_sample = loss_fn(d, bound)
            total = reduce(per_sample)
        return per_sample, tape.gradient(total, d)

    run = tf.function(step) if compiled else step
    per_sample, grad = run(tf.constant(delta, dtype=dtype))
    assert per_sample.dtype == dtype and grad.dtype == dtype
    return per_sample.numpy(), grad.numpy()


@COMPILED
@DTYPES
@pytest.mark.parametrize("name, bound, want_value, want_grad", CASES)
def test_value_and_gradient_of_sum(name, bound, want_value, want_grad, dtype, compiled):
    value, grad = value_and_grad(losses.get_loss(name), DELTA, bound, compiled, _sum, dtype)
    assert value.shape == (B,)  # per sample: the caller reduces
    # Every number in the table is a short binary fraction, so these are exact in float32 too.
    np.testing.assert_array_equal(value, want_value)
    np.testing.assert_array_equal(grad, want_grad)


@COMPILED
@pytest.mark.parametrize("name, bound, want_value, want_grad", CASES)
def test_gradient_of_batch_mean(name, bound, want_value, want_grad, compiled):
    del want_value
    _, grad = value_and_grad(losses.get_loss(name), DELTA, bound, compiled, _mean)
    # A mean over B = 6 weights each sample's gradient by 1/6, e.g. huber at d = -3: -1/6.
    np.testing.assert_allclose(grad, np.array(want_grad) / B, rtol=1e-6, atol=0)


@COMPILED
@pytest.mark.parametrize("bound", [1.0, 2.5], ids=["bound1", "bound2.5"])
def test_clipped_delta_gradient_is_exactly_zero_beyond_bound(bound, compiled):
    delta = [-1e6, -7.0, -bound - 0.01, -0.5, 0.25, bound + 0.01, 3.0, 1e6]
    _, grad = value_and_grad(losses.clipped_delta_squared, delta, bound, compiled, _mean)
    beyond = np.abs(delta) > bound
    assert beyond.sum() >= 5
    assert (grad[beyond] == 0.0).all()  # exactly zero, not small: the bug
    # Inside, the mean still carries 2 * d / B: -0.5 -> -1/8, 0.25 -> 1/16.
    np.testing.assert_array_equal(grad[~beyond], [-1.0 / 8, 1.0 / 16])


@COMPILED
@REDUCTIONS
@pytest.mark.parametrize("bound", [1.0, 2.5], ids=["bound1", "bound2.5"])
def test_clipped_gradient_equals_huber_gradient_on_batch_of_32(bound, reduce, compiled):
    # B = 32 as in dqn_zoo; scale 3 puts about a third (bound 1) or a tenth (bound 2.5) beyond the bound.
    delta = np.random.default_rng(0).normal(0.0, 3.0, size=32).astype(np.float32)
    assert (np.abs(delta) > bound).any() and (np.abs(delta) <= bound).any()
    v_clip, g_clip = value_and_grad(losses.clipped_gradient_squared, delta, bound, compiled, reduce)
    v_huber, g_huber = value_and_grad(losses.huber, delta, bound, compiled, reduce)
    v_sq, _ = value_and_grad(losses.squared, delta, bound, compiled, reduce)
    np.testing.assert_array_equal(g_clip, g_huber)  # bit for bit, whatever the reduction
    np.testing.assert_array_equal(v_clip, v_sq)  # forward unchanged: squared's value
    assert (v_huber < v_clip)[np.abs(delta) > bound].all()  # while Huber's value is smaller out there


def _clip_cotangent(x: tf.Tensor, lo: float, hi: float) -> tf.Tensor:
    """rlax's `clip_gradient`: identity forward, clips the cotangent that flows *into* x."""

    @tf.custom_gradient
    def _identity(x: tf.Tensor):
        return tf.identity(x), lambda upstream: tf.clip_by_value(upstream, lo, hi)

    return _identity(x)


@COMPILED
def test_clipping_the_cotangent_after_a_mean_needs_bound_over_batch(compiled):
    # Why clipped_gradient_squared clips per sample: rlax-style, 0.5 * clip_gradient(d)^2 under a mean over
    # B = 32 sees cotangents d_i / 32, so bound 1 clips nothing for |d| < 32 and the gradient is squared's;
    # only bound 1/32 (dqn_zoo's grad_error_bound) gives Huber(kappa=1)'s.
    delta = np.random.default_rng(1).normal(0.0, 3.0, size=32).astype(np.float32)
    assert (np.abs(delta) > 1.0).any() and (np.abs(delta) < 32.0).all()

    def cotangent_clip(bound: float) -> Callable:
        return lambda d, _: 0.5 * tf.square(_clip_cotangent(d, -bound, bound))

    _, g_huber = value_and_grad(losses.huber, delta, 1.0, compiled, _mean)
    _, g_squared = value_and_grad(losses.squared, delta, 1.0, compiled, _mean)
    _, g_naive = value_and_grad(cotangent_clip(1.0), delta, 1.0, compiled, _mean)
    _, g_zoo = value_and_grad(cotangent_clip(1.0 / 32), delta, 1.0, compiled, _mean)
    _, g_ours = value_and_grad(losses.clipped_gradient_squared, delta, 1.0, compiled, _mean)
    np.testing.assert_allclose(g_naive, g_squared, rtol=1e-6)
    assert not np.allclose(g_naive, g_huber)
    np.testing.assert_allclose(g_zoo, g_huber, rtol=1e-6)
    np.testing.assert_array_equal(g_ours, g_huber)


@COMPILED
@DTYPES
@pytest.mark.parametrize("kappa", [1.0, 2.5], ids=["kappa1", "kappa2.5"])
def test_huber_gradient_is_exactly_plus_minus_kappa_beyond(kappa, dtype, compiled):
    delta = [-1e30, -1e6, -kappa - 0.5, kappa + 0.5, 10.0, 1e30]
    _, grad = value_and_grad(losses.huber, delta, kappa, compiled, _sum, dtype)
    # -1e30 is past float32's square (inf) but Huber is linear there: no inf, no NaN.
    assert (grad == np.sign(delta) * kappa).all()


def test_registry_lists_the_four_losses():
    assert list(losses.LOSSES) == ["squared", "clipped_delta_squared", "clipped_gradient_squared", "huber"]
    for name, fn in losses.LOSSES.items():
        assert losses.get_loss(name) is fn


def test_get_loss_unknown_name_lists_valid_losses():
    with pytest.raises(ValueError, match="clipped_delta") as err:
        losses.get_loss("mse")
    message = str(err.value)
    assert "\n" not in message and "'mse'" in message
    for name in losses.LOSSES:
        assert name in message
