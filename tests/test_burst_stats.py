"""A measured burst against the same burst replayed update by update; where its panel update is; where a
divergence began; exact count-based fractions.

The replay runs the burst's updates one call at a time on a learner made with the same seed (same weights,
same optimizer state) and computes each update's values here, with numpy, from the weights before it.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from helpers import ACTIONS, OBS, REWARDS, rnn_cfg, tiny_learner, windows
from helpers import batch as tiny_batch

from dqnlab.config import load_preset
from dqnlab.frame_replay import FrameBatch
from dqnlab.kinds import make_learner
from dqnlab.learner import BURST_COUNTS, Batch, Learner, panel_position
from dqnlab.losses import get_loss
from dqnlab.sequence_replay import stack_sequences

K, B, OBS_DIM = 8, 32, 3
STATS = ("loss/td", "td/grad_blocked_frac", "td/beyond_bound_frac", "td/abs_max", "q/max", "grad_norm/global")


def small_learner(loss: str, clip: float) -> Learner:
    overrides = {
        "loss.kind": loss,
        "network.hidden": [16, 16],
        "train.batch_size": B,
        "train.grad_clip_norm": clip,
        "train.gamma": 0.9,
        # He-uniform kernels: the gradient norms of these bursts straddle the clip of 0.5 (PyTorch's
        # narrower init, huber_relu's own, keeps them under it)
        "network.kernel_init": "he_uniform",
        "network.bias_init_kind": "constant",
    }
    return make_learner(load_preset("huber_relu", overrides), (OBS_DIM,), 2, seed=0)


def random_burst(seed: int, k: int = K) -> Batch:
    """Rewards of scale 3, so that some TD errors fall beyond the bound of 1 and some within."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(k, B, OBS_DIM)).astype(np.float32)
    return Batch(
        obs,
        rng.integers(0, 2, (k, B)).astype(np.int32),
        rng.normal(scale=3.0, size=(k, B)).astype(np.float32),
        rng.normal(size=(k, B, OBS_DIM)).astype(np.float32),
        (rng.random((k, B)) > 0.2).astype(np.float32),
    )


def update_values(learner: Learner, b: Batch) -> dict[str, float]:
    """One update's burst statistics from the learner's weights now, computed here: the TD errors and the
    per-sample dL/dQ(s,a) through a tape of our own, the rest in numpy."""
    cfg = learner.cfg
    v_next = learner.target(b.next_obs).numpy().max(axis=1)
    target = b.rewards + (b.discounts * np.float32(cfg.train.gamma)) * v_next  # float32, as the learner's
    with tf.GradientTape() as tape:
        q = learner.online(b.obs)
        q_a = tf.gather(q, b.actions, batch_dims=1)
        loss = tf.reduce_mean(get_loss(cfg.loss.kind)(tf.constant(target) - q_a, cfg.loss.bound))
    *grads, dloss_dqa = tape.gradient(loss, [*learner.online.trainable_variables, q_a])
    delta, dloss_dqa = target - q_a.numpy(), dloss_dqa.numpy()
    squares = [float(np.sum(np.square(g.numpy(), dtype=np.float64))) for g in grads]
    preclip = np.sqrt(sum(squares))
    clip = cfg.train.grad_clip_norm
    blocked, nonzero = np.sum((delta != 0) & (dloss_dqa == 0)), np.sum(delta != 0)
    return {
        "loss/td": float(loss),
        "td/grad_blocked_frac": blocked / nonzero,
        "td/beyond_bound_frac": np.mean(np.abs(delta) > cfg.loss.bound),
        "td/abs_max": np.abs(delta).max(),
        "q/max": q.numpy().max(),
        "grad_norm/global": min(preclip, clip) if clip > 0 else preclip,
        "grad_norm/preclip_global": preclip,
        "td/grad_blocked_count": blocked,
        "td/nonzero_delta_count": nonzero,
        "grad_norm/hidden_0/kernel": np.sqrt(squares[0]) * (min(1.0, clip / preclip) if clip > 0 else 1.0),
    }


def replay(learner: Learner, burst: Batch) -> list[dict[str, float]]:
    """The burst's updates one call at a time, each one's values taken just before it runs."""
    values = []
    for i in range(burst.actions.shape[0]):
        values.append(update_values(learner, Batch(*(x[i] for x in burst))))
        learner.update(Batch(*(x[i : i + 1] for x in burst)), with_diagnostics=False)
    return values


@pytest.mark.parametrize(
    ("loss", "clip"), [("clipped_delta_squared", 0.0), ("huber", 0.5)], ids=["clipped_delta", "huber_clip"]
)
def test_burst_statistics_and_panel_are_the_replayed_updates(loss, clip):
    measured, replayed = small_learner(loss, clip), small_learner(loss, clip)
    stats = STATS + (("grad_norm/preclip_global",) if clip else ())
    for burst_index in range(3):  # panel positions 0, 4 and 1 of 8
        burst = random_burst(seed=burst_index)
        m = measured.update(burst, with_diagnostics=True).metrics
        values = replay(replayed, burst)
        for tag in stats:
            per_update = np.array([v[tag] for v in values])
            np.testing.assert_allclose(m[f"{tag}/burst_mean"], per_update.mean(), rtol=2e-5, err_msg=tag)
            np.testing.assert_allclose(m[f"{tag}/burst_max"], per_update.max(), rtol=2e-5, err_msg=tag)
        for tag in BURST_COUNTS:  # pooled counts, exactly
            assert m[f"{tag}/burst_sum"] == sum(v[tag] for v in values), tag
        # The panel is the update at panel_position, and no other update of the burst could pass for it.
        position = panel_position(burst_index, K)
        assert position == (0, 4, 1)[burst_index]
        panel_tags = (*stats, "grad_norm/hidden_0/kernel")
        like_the_panel = [
            i for i, v in enumerate(values) if all(np.isclose(m[t], v[t], rtol=2e-5) for t in panel_tags)
        ]
        assert like_the_panel == [position]
    if loss == "clipped_delta_squared":
        assert 0 < m["td/grad_blocked_count/burst_sum"] < m["td/nonzero_delta_count/burst_sum"]
    else:
        assert m["grad_norm/global/burst_max"] == pytest.approx(clip)  # some updates clipped ...
        assert (
            m["grad_norm/global/burst_mean"] < clip < m["grad_norm/preclip_global/burst_max"]
        )  # ... not all


def test_a_measured_burst_trains_exactly_as_a_plain_one():
    measured, plain = small_learner("huber", 10.0), small_learner("huber", 10.0)
    for seed in range(2):
        measured.update(random_burst(seed), with_diagnostics=True)
        plain.update(random_burst(seed), with_diagnostics=False)
    for a, b in zip(measured.online_weights(), plain.online_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_one_update_burst_is_its_panel():
    learner = small_learner("clipped_delta_squared", 0.0)
    m = learner.update(random_burst(0, k=1), with_diagnostics=True).metrics
    (values,) = replay(small_learner("clipped_delta_squared", 0.0), random_burst(0, k=1))
    assert not [
        tag for tag in m if tag.endswith(("/burst_mean", "/burst_max"))
    ]  # the panel's own tags say it
    for tag in BURST_COUNTS:
        assert m[f"{tag}/burst_sum"] == values[tag]
    assert m["td/grad_blocked_frac"] == values["td/grad_blocked_frac"]  # exact: float64 on both sides


def test_panel_positions_come_evenly_and_follow_the_update_count():
    positions = [panel_position(b, 128) for b in range(128 * 20)]
    counts = np.bincount(positions, minlength=128)
    assert counts.min() >= 18 and counts.max() <= 22  # every position, 20 +- 2 times in 20 rounds
    assert positions[:4] == [0, 79, 30, 109] and set(panel_position(b, 1) for b in range(50)) == {0}
    # In the graph, from the optimizer's update count (which a checkpoint stores), the same arithmetic.
    learner = small_learner("huber", 10.0)
    for updates in (0, 127, 128, 5 * 128 + 3, 10**9 * 128):
        learner.optimizer.iterations.assign(updates)
        assert int(learner._panel_position(128)) == panel_position(updates // 128, 128)


# ---- where a divergence began ----------------------------------------------------------------------------

HUGE = 1e25


def crafted_tiny(layer: str) -> Learner:
    """The tiny identity network of test_learner, clipping at 10, with one weight made tiny so that an input
    of HUGE overflows the raw gradient of `layer`'s kernel alone (its sum of squares; every other variable's
    stays finite). hidden_0: W_h[0, 0] = 1e-20, so h_0 = 1e5 and dL/dW_h[0, 0] = HUGE * 2.5e4. q_head:
    W_q[0, 0] = 1e-24, so h_0 = HUGE, Q_0 = 10, and dL/dW_q[0, 0] = HUGE * 1.5."""
    learner = tiny_learner("squared", **{"train.grad_clip_norm": 10.0})
    w_h, w_q, zero = np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32), np.zeros(2, np.float32)
    (w_h if layer == "hidden_0" else w_q)[0, 0] = 1e-20 if layer == "hidden_0" else 1e-24
    learner.online.set_weights([w_h, zero, w_q, zero])
    learner.target.set_weights([w_h, zero, w_q, zero])
    return learner


def bursts_ending_huge(learner: Learner, k: int) -> Batch:
    """k updates: the first k - 1 with no TD error (rewards = Q(s, a), terminal), so no weight moves; the
    last with observation 0 = [HUGE, 0]."""
    quiet_rewards = tf.gather(learner.online(OBS), ACTIONS, batch_dims=1).numpy()
    b = tiny_batch(k)
    obs, rewards = b.obs.copy(), np.repeat(quiet_rewards[None], k, axis=0)
    obs[-1, 0], rewards[-1] = [HUGE, 0], REWARDS
    return b._replace(obs=obs, next_obs=obs, rewards=rewards)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("measured", [False, True], ids=["plain", "measured"])
@pytest.mark.parametrize("layer", ["hidden_0", "q_head"])
def test_nonfinite_origin_names_the_overflowing_variable_and_update(layer, measured, k):
    learner = crafted_tiny(layer)
    assert learner.update(tiny_batch(1)._replace(rewards=np.zeros((1, 4), np.float32)), measured).finite
    assert learner.nonfinite_origin() is None
    learner = crafted_tiny(layer)
    out = learner.update(bursts_ending_huge(learner, k), with_diagnostics=measured)
    assert not bool(out.finite)
    origin = learner.nonfinite_origin()
    assert origin == {
        "variable": f"{layer}/kernel",
        "update_in_burst": k - 1,
        "variables": [f"{layer}/kernel"],
    }
    # With clipping on, the applied gradient was NaN in every variable: the weights say nothing of where.
    assert learner.nonfinite_variables() == learner.variable_tags


def test_nonfinite_origin_of_a_recurrent_learner():
    """hidden_0 (before the cell) has W[0, :] = 1e-25 and bias 1, so an observation of HUGE on coordinate 0
    reaches the cell as ~2 but multiplies dL/dz in hidden_0/kernel's gradient; the other coordinates are
    0 in update 0, which moves no row-0 weight (Adam's step of a zero gradient is zero)."""
    cfg = rnn_cfg(
        **{
            "recurrent.sequence_length": 4,
            "recurrent.burn_in": 0,
            "recurrent.initial_state": "zero",
            "train.grad_clip_norm": 1.0,
        }
    )
    learner = make_learner(cfg, (2,), 2, seed=0)
    kernel = learner.online.pre[0].kernel.numpy()
    kernel[0] = 1e-25
    learner.online.pre[0].kernel.assign(kernel)
    learner.online.pre[0].bias.assign(np.ones(6, np.float32))
    learner.target.set_weights(learner.online.get_weights())
    first, second = windows(4, 4, seed=0), windows(4, 4, seed=1)
    first.obs[..., 0], second.obs[..., 0] = 0.0, 0.0
    second.obs[0, 2, 0] = HUGE  # a trained step of window 0
    first, second = (w._replace(next_obs=np.roll(w.obs, -1, axis=1)) for w in (first, second))
    out = learner.update(stack_sequences([first, second]), with_diagnostics=True)
    assert not bool(out.finite)
    assert learner.nonfinite_origin() == {
        "variable": "hidden_0/kernel",
        "update_in_burst": 1,
        "variables": ["hidden_0/kernel"],
    }


@pytest.mark.parametrize("measured", [False, True], ids=["plain", "measured"])
def test_nonfinite_origin_of_a_cnn_learner(measured):
    """hidden_0's bias of 1e21 makes its outputs ~1e21: Q and the Huber loss stay finite, and so does every
    gradient below the head (Huber's dL/dQ is at most 1/B), but q_head/kernel's is ~1e21 an entry."""
    cfg = load_preset("pong_huber", {"network.hidden": [16], "train.batch_size": 4})
    learner = make_learner(cfg, (4, 36, 36), 3, seed=0)
    learner.online.get_layer("hidden_0").bias.assign(np.full(16, 1e21, np.float32))
    rng = np.random.default_rng(0)
    burst = FrameBatch(
        rng.integers(0, 256, (2, 4, 5, 36, 36), dtype=np.uint8),
        rng.integers(0, 3, (2, 4)).astype(np.int32),
        np.ones((2, 4), np.float32),
        np.ones((2, 4), np.float32),
    )
    assert not bool(learner.update(burst, with_diagnostics=measured).finite)
    assert learner.nonfinite_origin() == {
        "variable": "q_head/kernel",
        "update_in_burst": 0,
        "variables": ["q_head/kernel"],
    }


# ---- exact fractions -------------------------------------------------------------------------------------


def test_count_based_fractions_are_exact_for_sizes_that_are_no_power_of_two():
    """hidden [3], 3 samples: unit 2 of hidden_0 never fires (bias -10), so hidden_0/bias gets 1 exact zero of
    3 entries and each kernel 2 of 6; one TD error of 3 is beyond the bound. A float32 division is off in the
    8th digit: 1/3 is 0.3333333432674408 in float32."""
    cfg = load_preset(
        "huber_relu",
        {"network.hidden": [3], "optimizer.kind": "sgd", "train.batch_size": 3, "train.grad_clip_norm": 0.0},
    )
    learner = make_learner(cfg, (2,), 2, seed=0)
    hidden = np.array([[1, 0, 1], [0, 1, 1]], np.float32)  # units 0, 1 copy the inputs; unit 2 is dead
    head = np.array([[1, 0], [0, 1], [0, 0]], np.float32)  # Q(s, .) = s
    weights = [hidden, np.array([0, 0, -10], np.float32), head, np.zeros(2, np.float32)]
    learner.online.set_weights(weights)
    learner.target.set_weights(weights)
    obs = np.array([[[1, 2], [0.5, 0.5], [1, 1]]], np.float32)
    # Terminal transitions, actions 0, 1, 0: delta = r - Q(s, a) = 3 - 1, 0.8 - 0.5, 1.5 - 1.
    rewards, actions = np.array([[3.0, 0.8, 1.5]], np.float32), np.array([[0, 1, 0]], np.int32)
    b = Batch(obs, actions, rewards, obs, np.zeros((1, 3), np.float32))
    m = learner.update(b, with_diagnostics=True).metrics
    assert m["grad_zero_frac/hidden_0/bias"] == 1 / 3 != float(np.float32(1) / np.float32(3))
    assert m["grad_zero_frac/hidden_0/kernel"] == m["grad_zero_frac/q_head/kernel"] == 2 / 6
    assert m["td/beyond_bound_frac"] == 1 / 3 and m["td/grad_blocked_frac"] == 0.0
    # The probe's near-zero share too: unit 2 is still dead, so 1 of hidden_0/bias's 3 entries is below 1e-8.
    probed = learner.probe(obs[0], Batch(*(x[0] for x in b)))
    assert probed["grad_near_zero_frac/hidden_0/bias"] == 1 / 3
