"""The compiled update and its diagnostics, on a tiny network with constant weights and a hand-worked batch.

Network: obs_dim 2 -> hidden_0 (2 ReLU units, kernel I, bias 0) -> q_head (kernel I, bias 0), so for
non-negative observations Q(s, .) = s. Batch (every transition terminal, so target = r):

    obs        a   Q(s,a)   r     delta = r - Q(s,a)
    [1, 2]     0   1        4      3.0
    [.5, .5]   1   0.5      1      0.5
    [1, 1]     0   1       -1     -2.0
    [2, 0]     0   2        2      0.0

The batch and `tiny_learner` are in tests/helpers.py (tests/test_burst_stats.py uses them too).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from helpers import ACTIONS, OBS, REWARDS, B, batch, tiny_learner

from dqnlab.config import load_preset
from dqnlab.kinds import make_learner
from dqnlab.learner import Batch, Learner, global_norm_parts

# Per-sample dL/dQ(s,a) (before the 1/B of the mean): Huber -clip(delta) = [-1, -.5, 1, 0];
# clipped-delta -2*delta inside |delta| <= 1 and exactly 0 beyond = [0, -1, 0, 0]; squared -delta.
# q_head/kernel gradient [j, a] = sum_i dL/dQ_i * h_i[j] * [a_i = a] / B with h_i = obs_i:
#   Huber:          a=0: (-1*[1,2] + 1*[1,1] + 0*[2,0])/4 = [0, -.25]; a=1: -.5*[.5,.5]/4 = [-.0625, -.0625]
#   clipped-delta:  a=0: [0, 0];                                          a=1: -1*[.5,.5]/4 = [-.125, -.125]
#   squared:        a=0: (-3*[1,2] + 2*[1,1]) / 4 = [-.25, -1];          a=1: [-.0625, -.0625]
CASES = {
    # kind: (loss, blocked frac, q_head/kernel zero frac, q_head/kernel grad norm)
    "huber": ((2.5 + 0.125 + 1.5 + 0) / 4, 0.0, 1 / 4, np.sqrt(0.25**2 + 2 * 0.0625**2)),
    "clipped_delta_squared": ((1 + 0.25 + 1 + 0) / 4, 2 / 3, 2 / 4, np.sqrt(2 * 0.125**2)),
    "clipped_gradient_squared": ((4.5 + 0.125 + 2 + 0) / 4, 0.0, 1 / 4, np.sqrt(0.25**2 + 2 * 0.0625**2)),
    "squared": ((4.5 + 0.125 + 2 + 0) / 4, 0.0, 0.0, np.sqrt(0.25**2 + 1 + 2 * 0.0625**2)),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_diagnostics_match_hand_computation(kind):
    loss, blocked, zero_frac, head_norm = CASES[kind]
    out = tiny_learner(kind).update(batch(), with_diagnostics=True)
    assert bool(out.finite)
    m = out.metrics
    np.testing.assert_allclose(m["loss/td"], loss, rtol=1e-6)
    np.testing.assert_allclose(m["td/grad_blocked_frac"], blocked, rtol=1e-6)
    assert m["td/beyond_bound_frac"] == pytest.approx(2 / 4)  # |3| and |-2| exceed bound 1
    assert m["td/abs_max"] == pytest.approx(3.0) and m["td/abs_mean"] == pytest.approx(5.5 / 4)
    assert m["q/target_mean"] == pytest.approx(REWARDS.mean())
    assert m["q/max"] == pytest.approx(2.0) and m["q/mean"] == pytest.approx(OBS.mean())
    assert m["grad_zero_frac/q_head/kernel"] == pytest.approx(zero_frac)
    np.testing.assert_allclose(m["grad_norm/q_head/kernel"], head_norm, rtol=1e-6)
    assert m["grad/nonfinite"] == 0
    assert "grad_norm/preclip_global" not in m  # clipping is off


def test_metrics_are_a_mapping_of_floats_in_tag_order():
    learner = tiny_learner("huber")
    m = learner.update(batch(), with_diagnostics=True).metrics
    as_dict = dict(m)
    assert list(m) == list(as_dict) == [tag for tag, _ in m.items()] and len(m) == len(as_dict)
    assert all(type(v) is float and m[k] == v for k, v in as_dict.items())
    assert "loss/td" in m and "no/such_tag" not in m and m.get("no/such_tag") is None
    with pytest.raises(KeyError):
        m["no/such_tag"]


def test_blocked_fraction_is_exactly_the_beyond_bound_share_for_the_forward_clip():
    # With no delta == 0 and every |delta| != bound, the forward clip blocks exactly those beyond the bound.
    learner = tiny_learner("clipped_delta_squared")
    rng = np.random.default_rng(0)
    rewards = rng.uniform(-5, 5, size=B).astype(np.float32)
    b = batch()._replace(rewards=rewards[None])
    m = learner.update(b, with_diagnostics=True).metrics
    q_a = OBS[np.arange(B), ACTIONS]
    expected = np.mean(np.abs(rewards - q_a) > 1.0)
    assert float(m["td/grad_blocked_frac"]) == pytest.approx(expected)


def test_global_norm_uses_every_variable():
    m = tiny_learner("huber").update(batch(), with_diagnostics=True).metrics
    tags = ["hidden_0/kernel", "hidden_0/bias", "q_head/kernel", "q_head/bias"]
    norms = np.array([float(m[f"grad_norm/{t}"]) for t in tags])
    assert float(m["grad_norm/global"]) == pytest.approx(np.sqrt((norms**2).sum()), rel=1e-6)


def test_probe_near_zero_share_and_distance_from_init_by_hand():
    # The probe's gradient is the TD gradient of the batch it is given, at the weights of the moment: for the
    # identity network and Huber, q_head/kernel's is [[0, -.0625], [-.25, -.0625]] (see CASES).
    learner = tiny_learner("huber", **{"diagnostics.near_zero_tol": 0.1})
    initial = [w.numpy() for w in learner._initial]  # the random init, before tiny_learner set identities
    probed = learner.probe(OBS, Batch(*(x[0] for x in batch())))
    m = {k: float(v) for k, v in probed.items() if np.ndim(v) == 0}
    assert m["grad_near_zero_frac/q_head/kernel"] == 3 / 4  # |0|, |.0625|, |.0625| < 0.1; |.25| is not
    assert m["grad_near_zero_frac/q_head/bias"] == 1 / 2  # dL/db = [(-1 + 1 + 0) / 4, -.5 / 4] = [0, -.125]
    # log10|g| of the nonzero entries only: the exact zero is grad_zero_frac's.
    np.testing.assert_allclose(
        np.sort(probed["hist/log10_abs_grad/q_head/kernel"]), np.log10([0.0625, 0.0625, 0.25]), rtol=1e-6
    )
    identity = [np.eye(2), np.zeros(2), np.eye(2), np.zeros(2)]
    for i, tag in enumerate(["hidden_0/kernel", "hidden_0/bias", "q_head/kernel", "q_head/bias"]):
        expected = np.linalg.norm(identity[i] - initial[i])
        assert m[f"weight_dist_init/{tag}"] == pytest.approx(expected, rel=1e-6)
    # An exact zero is also near zero: with a tolerance of 0 nothing is below it.
    strict = tiny_learner("huber", **{"diagnostics.near_zero_tol": 0.0})
    m = strict.probe(OBS, Batch(*(x[0] for x in batch())))
    assert float(m["grad_near_zero_frac/q_head/kernel"]) == 0.0


def test_clipping_reports_preclip_norm_and_fires():
    learner = tiny_learner("squared", **{"train.grad_clip_norm": 0.01})
    m = learner.update(batch(), with_diagnostics=True).metrics
    assert float(m["grad/clipped"]) == 1.0
    assert float(m["grad_norm/preclip_global"]) > 0.01
    assert float(m["grad_norm/global"]) == pytest.approx(0.01, rel=1e-5)


def test_fused_burst_equals_one_update_per_call():
    fused, single = tiny_learner("huber"), tiny_learner("huber")
    fused.update(batch(k=5), with_diagnostics=True)
    for _ in range(5):
        single.update(batch(k=1), with_diagnostics=False)
    for a, b in zip(fused.online_weights(), single.online_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_without_diagnostics_only_finiteness_comes_back():
    learner = tiny_learner("huber")
    out = learner.update(batch(k=3), with_diagnostics=False)
    assert out.metrics == {} and bool(out.finite)
    for returned, variable in zip(out.weights, learner.online_weights(), strict=True):
        np.testing.assert_array_equal(returned.numpy(), variable)


def test_non_finite_loss_is_flagged():
    b = batch()._replace(rewards=np.full((1, B), np.nan, np.float32))
    assert not bool(tiny_learner("huber").update(b, with_diagnostics=False).finite)


def _overflowing_batch() -> Batch:
    """Sample 0 has Q(s, a=0) = 1e20: its squared-loss dL/dQ, delta / B = 2.5e19, is finite, and so is every
    bias gradient, but times the 1e20 that feeds it, it overflows in exactly one entry of each kernel."""
    obs = OBS.copy()
    obs[0] = [1e20, 0]
    b = batch()
    return b._replace(obs=obs[None], next_obs=obs[None])


def _raw_gradients(learner: Learner, b: Batch) -> list[np.ndarray]:
    """The squared TD loss's gradient, written out here (terminal transitions: target = r)."""
    obs, a, r = (np.asarray(x[0]) for x in (b.obs, b.actions, b.rewards))
    with tf.GradientTape() as tape:
        q_a = tf.gather(learner.online(obs), a, batch_dims=1)
        loss = tf.reduce_mean(0.5 * tf.square(r - q_a))
    return tape.gradient(loss, learner.online.trainable_variables)


def test_nonfinite_counts_without_clipping_are_the_raw_gradients():
    learner = tiny_learner("squared")
    raw = [g.numpy() for g in _raw_gradients(tiny_learner("squared"), _overflowing_batch())]
    m = learner.update(_overflowing_batch(), with_diagnostics=True).metrics
    tags = ["hidden_0/kernel", "hidden_0/bias", "q_head/kernel", "q_head/bias"]
    counted = [float(np.sum(~np.isfinite(g))) for g in raw]
    assert counted == [1.0, 0.0, 1.0, 0.0]  # the hand count in _overflowing_batch
    assert [m[f"grad_nonfinite/{t}"] for t in tags] == counted
    assert m["grad/nonfinite"] == 2.0


def test_nonfinite_counts_with_clipping_are_the_applied_gradients():
    # clip_by_global_norm turns the whole gradient NaN when the norm is not finite; the count follows it.
    learner = tiny_learner("squared", **{"train.grad_clip_norm": 10.0})
    raw = _raw_gradients(tiny_learner("squared"), _overflowing_batch())
    applied, _ = tf.clip_by_global_norm(raw, 10.0)
    m = learner.update(_overflowing_batch(), with_diagnostics=True).metrics
    tags = ["hidden_0/kernel", "hidden_0/bias", "q_head/kernel", "q_head/bias"]
    counted = [float(np.sum(~np.isfinite(g.numpy()))) for g in applied]
    assert counted == [4.0, 2.0, 4.0, 2.0]  # every entry
    assert [m[f"grad_nonfinite/{t}"] for t in tags] == counted
    assert m["grad/nonfinite"] == 12.0
    # A finite update counts none, with or without clipping.
    assert (
        tiny_learner("squared", **{"train.grad_clip_norm": 10.0})
        .update(batch(), True)
        .metrics["grad/nonfinite"]
        == 0.0
    )


def test_zero_counts_by_sign_agree_with_equality_on_tiny_and_subnormal_entries():
    # The zero fraction counts nonzero entries as sum(sign(g)^2). TensorFlow on CPU flushes subnormals to
    # zero, and compares them equal to 0: both counts must agree on every kind of entry but NaN.
    g = tf.constant([0.0, -0.0, 1e-40, -1e-39, 1e-30, -2.0, np.inf, -np.inf] * 5, tf.float32)
    by_sign = float(2.0 * tf.nn.l2_loss(tf.sign(g)))
    by_equality = float(tf.reduce_sum(tf.cast(tf.not_equal(g, 0.0), tf.float32)))
    assert by_sign == by_equality


def test_global_norm_is_tensorflows_bit_for_bit():
    # The divergence check and the clip read this norm: it must round exactly as tf.linalg.global_norm.
    rng = np.random.default_rng(0)
    for shapes in ([(4, 64), (64,), (64, 64), (64,), (64, 2), (2,)], [(3, 5, 7)], [(1,), (100_000,)]):
        grads = [
            tf.constant(rng.normal(scale=10.0 ** rng.uniform(-8, 3), size=s), tf.float32) for s in shapes
        ]
        norm, half_squares = global_norm_parts(grads)
        assert norm.numpy().tobytes() == tf.linalg.global_norm(grads).numpy().tobytes()
        np.testing.assert_array_equal(half_squares.numpy(), [tf.nn.l2_loss(g).numpy() for g in grads])


def test_target_sync_hard_and_soft():
    learner = tiny_learner("squared")
    learner.update(batch(), with_diagnostics=False)
    before = [w.copy() for w in learner.target.get_weights()]
    learner.update_target()
    for t, o in zip(learner.target.get_weights(), learner.online_weights(), strict=True):
        np.testing.assert_array_equal(t, o)
    soft = tiny_learner("squared", **{"train.target_tau": 0.25})
    soft.update(batch(), with_diagnostics=False)
    soft.update_target()
    for t, o, b0 in zip(soft.target.get_weights(), soft.online_weights(), before, strict=True):
        np.testing.assert_allclose(t, 0.25 * o + 0.75 * b0, rtol=1e-6, atol=1e-7)


def test_double_dqn_bootstraps_with_the_online_argmax():
    # Non-terminal batch; online and target differ: online picks the action, target evaluates it.
    learner = tiny_learner("squared", **{"train.double_dqn": True, "train.gamma": 0.5})
    eye, zero = np.eye(2, dtype=np.float32), np.zeros(2, np.float32)
    learner.target.set_weights([eye, zero, np.array([[0, 1], [1, 0]], np.float32), zero])  # swaps the Qs
    b = batch()._replace(discounts=np.ones((1, B), np.float32))
    m = learner.update(b, with_diagnostics=True).metrics
    a_star = OBS.argmax(axis=1)  # online Q(s', .) = s'
    v = OBS[np.arange(B), 1 - a_star]  # target's Q(s', a*) reads the other coordinate
    assert float(m["q/target_mean"]) == pytest.approx(np.mean(REWARDS + 0.5 * v))


def test_same_seed_gives_identical_initial_weights_across_arms():
    arms = [make_learner(load_preset(n), (4,), 2, seed=3) for n in ("huber_relu", "clipped_delta_relu")]
    for a, b in zip(arms[0].online_weights(), arms[1].online_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    other = make_learner(load_preset("huber_relu"), (4,), 2, seed=4)
    assert not np.array_equal(arms[0].online_weights()[0], other.online_weights()[0])


def test_compiled_step_is_traced_once_per_diagnostics_flag():
    learner = tiny_learner("huber")
    learner.update(batch(k=2), with_diagnostics=False)
    learner.update(batch(k=2), with_diagnostics=True)
    traced = dict(learner._compiled)
    for _ in range(3):
        learner.update(batch(k=2), with_diagnostics=False)
        learner.update(batch(k=2), with_diagnostics=True)
    assert learner._compiled == traced and set(traced) == {False, True}
    with pytest.raises(
        (TypeError, ValueError)
    ):  # shapes are fixed per run: a new one is an error, not a retrace
        learner.update(batch(k=3), with_diagnostics=False)


def test_variable_tags_are_paths_below_the_model():
    assert tiny_learner("huber").variable_tags == [
        "hidden_0/kernel",
        "hidden_0/bias",
        "q_head/kernel",
        "q_head/bias",
    ]


def test_eager_switch_gives_the_same_metrics():
    compiled = tiny_learner("clipped_delta_squared").update(batch(), with_diagnostics=True).metrics
    tf.config.run_functions_eagerly(True)
    try:
        eager = tiny_learner("clipped_delta_squared").update(batch(), with_diagnostics=True).metrics
    finally:
        tf.config.run_functions_eagerly(False)
    for k in compiled:
        np.testing.assert_allclose(np.asarray(eager[k]), np.asarray(compiled[k]), rtol=1e-6)


def test_update_health_metrics_match_the_sgd_step_by_hand():
    # SGD, lr 0.1, no clipping: W_after = W_before - 0.1 * g exactly, so ||dW|| = 0.1 ||g||.
    learner = tiny_learner("huber")
    # The random init, before tiny_learner set identities: hidden kernel 2x2, bias 2, head kernel 2x2, bias 2.
    initial = [w.numpy() for w in learner._initial]
    m = {k: float(v) for k, v in learner.update(batch(), with_diagnostics=True).metrics.items()}
    after = learner.online_weights()
    before = [np.eye(2), np.zeros(2), np.eye(2), np.zeros(2)]
    for i, tag in enumerate(["hidden_0/kernel", "hidden_0/bias", "q_head/kernel", "q_head/bias"]):
        step = np.linalg.norm(after[i] - before[i])
        assert step == pytest.approx(0.1 * m[f"grad_norm/{tag}"], rel=1e-5)
        assert m[f"weight_norm/{tag}"] == pytest.approx(np.linalg.norm(before[i]), rel=1e-6)
        expected_ratio = step / np.linalg.norm(before[i]) if np.linalg.norm(before[i]) else 0.0
        assert m[f"update_ratio/{tag}"] == pytest.approx(expected_ratio, rel=1e-5)
        assert m[f"grad_nonfinite/{tag}"] == 0.0
    # The distance from the initial weights is the probe's (weights only, on the probe schedule).
    probed = learner.probe(OBS, Batch(*(x[0] for x in batch())))
    for i, tag in enumerate(["hidden_0/kernel", "hidden_0/bias", "q_head/kernel", "q_head/bias"]):
        expected = np.linalg.norm(after[i] - initial[i])
        assert float(probed[f"weight_dist_init/{tag}"]) == pytest.approx(expected, rel=1e-5)
    # q_head/kernel by hand: ||g|| = sqrt(.25^2 + 2 * .0625^2); ratio = 0.1 ||g|| / ||I||, ||I|| = sqrt(2).
    assert m["update_ratio/q_head/kernel"] == pytest.approx(
        0.1 * np.sqrt(0.25**2 + 2 * 0.0625**2) / np.sqrt(2)
    )


def test_depth_ratio_is_first_over_last_hidden_kernel_gradient():
    learner = make_learner(
        load_preset("huber_relu", {"network.hidden": [8, 8, 8], "train.batch_size": B}), (2,), 2, seed=0
    )
    m = {k: float(v) for k, v in learner.update(batch(), with_diagnostics=True).metrics.items()}
    assert m["grad/depth_ratio"] == pytest.approx(
        m["grad_norm/hidden_0/kernel"] / m["grad_norm/hidden_2/kernel"]
    )


def test_probe_counts_a_unit_killed_on_purpose():
    learner = tiny_learner("huber", **{"diagnostics.dormant_tau": 0.1})
    # hidden_0: unit 0 = x0 + x1 fires on every (non-negative) probe state; unit 1 = -(x0 + x1) - 1 never.
    learner.online.set_weights(
        [
            np.array([[1, -1], [1, -1]], np.float32),
            np.array([0, -1], np.float32),
            np.eye(2, dtype=np.float32),
            np.zeros(2, np.float32),
        ]
    )
    m = {k: np.asarray(v) for k, v in learner.probe(OBS, Batch(*(x[0] for x in batch()))).items()}
    assert float(m["act_dead_frac/hidden_0"]) == 0.5
    assert float(m["act_dormant_frac/hidden_0"]) == 0.5
    assert float(m["act_zero_deriv_frac/hidden_0"]) == 0.5  # unit 1's pre-activation is < 0 on all 4 states
    assert float(m["act_deriv_mean/hidden_0"]) == 0.5
    assert float(m["act_saturated_frac/hidden_0"]) == 0.0  # ReLU never saturates
    assert float(m["features/srank"]) == 1.0  # one live unit: rank one
    np.testing.assert_allclose(m["hist/activation/hidden_0"][:, 0], OBS.sum(axis=1))
    assert m["hist/grad/q_head/kernel"].shape == (2, 2)


def test_probe_sees_a_saturated_sigmoid_layer():
    learner = tiny_learner("huber", **{"network.activation": "sigmoid"})
    # Kernel 40 * I: pre-activations 40 * obs; every probe entry is >= 20 or exactly 0 (sigmoid(0) = 0.5).
    learner.online.set_weights(
        [
            40 * np.eye(2, dtype=np.float32),
            np.zeros(2, np.float32),
            np.eye(2, dtype=np.float32),
            np.zeros(2, np.float32),
        ]
    )
    m = {
        k: float(v) for k, v in learner.probe(OBS, Batch(*(x[0] for x in batch()))).items() if np.ndim(v) == 0
    }
    # Entries of OBS: 7 positive, 1 zero ([2, 0]) -> 7 of 8 outputs are exactly 1.0 in float32 (x >= 16.64).
    assert m["act_saturated_frac/hidden_0"] == pytest.approx(7 / 8)
    assert m["act_zero_deriv_frac/hidden_0"] == pytest.approx(7 / 8)
    assert m["act_deriv_mean/hidden_0"] == pytest.approx(0.25 / 8)  # only sigmoid(0) has derivative 0.25
