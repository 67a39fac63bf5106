"""The batched learner against the unbatched one: run i of a batch starts where the unbatched run of its seed
starts, and one burst of it, from the same weights on the same batches, gives the same weights and the same
metrics tag by tag, whatever the other runs' losses, bounds, learning rates and clips; a diverging run is
masked out without touching the others."""

from __future__ import annotations

import numpy as np
import pytest

from dqnlab._tf import tf
from dqnlab.batched_learner import (
    BatchedLearner,
    check_batchable,
    make_batched_learner,
    run_slice,
    stack_runs,
)
from dqnlab.config import load_preset
from dqnlab.kinds import make_learner
from dqnlab.replay import Batch

OBS_DIM, ACTIONS, BATCH = 4, 3, 16

# Runs that differ in every value a batch may vary; clip 0.05 is far below these gradients' norms, so the
# clip is active where it is on, and rewards of scale 3 put TD errors beyond the bounds.
ARMS = [
    {"loss.kind": "huber", "loss.bound": 1.0, "train.grad_clip_norm": 10.0},
    {"loss.kind": "clipped_delta_squared", "loss.bound": 0.5, "optimizer.learning_rate": 1e-2},
    {"loss.kind": "squared", "train.grad_clip_norm": 0.05, "optimizer.epsilon": 1e-4},
    {"loss.kind": "clipped_gradient_squared", "loss.bound": 2.0, "train.grad_clip_norm": 0.0,
     "train.gamma": 0.9},
]  # fmt: skip


def config(k: int, arm: dict | None = None, **extra):
    overrides = {"network.hidden": [16, 12], "train.batch_size": BATCH, "train.gradient_steps": k}
    return load_preset("huber_relu", {**overrides, **(arm or {}), **extra})


def bursts(num_runs: int, k: int, seed: int = 0) -> list[Batch]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_runs):
        shape = (k, BATCH)
        out.append(
            Batch(
                obs=rng.normal(size=(*shape, OBS_DIM)).astype(np.float32),
                actions=rng.integers(ACTIONS, size=shape).astype(np.int32),
                rewards=(3.0 * rng.normal(size=shape)).astype(np.float32),
                next_obs=rng.normal(size=(*shape, OBS_DIM)).astype(np.float32),
                discounts=(rng.random(size=shape) > 0.2).astype(np.float32),
            )
        )
    return out


def unbatched_at(cfg, weights: list[np.ndarray]):
    """The unbatched learner of `cfg`, its online and target weights set to `weights`, Adam fresh."""
    learner = make_learner(cfg, (OBS_DIM,), ACTIONS, seed=99)
    for var, w in zip(learner.variables, weights, strict=True):
        var.assign(w)
    learner.target.set_weights(weights)
    return learner


def assert_same_run(got: np.ndarray, want: np.ndarray) -> None:
    """One run's weights computed in batches of different sizes: equal up to float32 rounding. On some CPUs
    they are the same bits; on an AVX2-only EPYC oneDNN's batched matmul rounds by the number of runs, 1-2
    ulps after four updates (1.5e-8 on weights ~0.1). A run that was not masked, or not frozen, is off by
    a whole update (~1e-3)."""
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def assert_weights_close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_each_run_starts_where_the_unbatched_run_of_its_seed_starts():
    cfgs = [config(1, arm) for arm in ARMS[:3]]
    seeds = [3, 11, 3]
    batched = make_batched_learner(cfgs, seeds, (OBS_DIM,), ACTIONS)
    for i, (cfg, seed) in enumerate(zip(cfgs, seeds, strict=True)):
        want = make_learner(cfg, (OBS_DIM,), ACTIONS, seed).online_weights()
        for got, w in zip(batched.run_weights(i), want, strict=True):
            np.testing.assert_array_equal(got, w)
        for got, w in zip(run_slice(batched.target, i), want, strict=True):
            np.testing.assert_array_equal(got, w)
    assert not np.array_equal(batched.run_weights(0)[0], batched.run_weights(1)[0])  # seeds differ


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("double", [False, True])
def test_a_burst_of_each_run_equals_the_unbatched_learners_burst(k, double):
    cfgs = [config(k, arm, **{"train.double_dqn": double}) for arm in ARMS]
    batched = make_batched_learner(cfgs, range(len(cfgs)), (OBS_DIM,), ACTIONS)
    start = batched.online_weights()
    data = bursts(len(cfgs), k)
    singles = [unbatched_at(cfg, run_slice(start, i)) for i, cfg in enumerate(cfgs)]
    for burst_index in range(2):  # the second starts from Adam's state after the first
        data = bursts(len(cfgs), k, seed=burst_index)
        out = batched.update(data, with_diagnostics=False)
        assert out.alive.tolist() == [True] * len(cfgs)
        for i, single in enumerate(singles):
            single.update(data[i], with_diagnostics=False)
            assert_weights_close(run_slice(out.weights, i), single.online_weights())
    # the update moved the weights (so the comparison is not of untouched arrays)
    assert not np.allclose(batched.online_weights()[0], start[0])


def test_clipping_was_active_and_runs_differ_in_learning_rate():
    """The equivalence above covers an active clip: run 2's raw norm is above its bound of 0.05."""
    cfgs = [config(1, arm) for arm in ARMS]
    batched = make_batched_learner(cfgs, range(len(cfgs)), (OBS_DIM,), ACTIONS)
    out = batched.update(bursts(len(cfgs), 1), with_diagnostics=True)
    assert out.metrics[2]["grad/clipped"] == 1.0
    assert out.metrics[2]["grad_norm/global"] == pytest.approx(0.05, rel=1e-6)
    assert "grad/clipped" not in out.metrics[3]  # run 3 does not clip: no clip tags, as unbatched
    np.testing.assert_allclose(batched.learning_rates.numpy(), [2.3e-3, 1e-2, 2.3e-3, 2.3e-3], rtol=1e-7)


def compare_metrics(got, want) -> None:
    assert set(got) == set(want)
    for tag in want:
        np.testing.assert_allclose(got[tag], want[tag], rtol=2e-5, atol=1e-6, err_msg=tag)


@pytest.mark.parametrize("k", [1, 3])
def test_each_runs_metrics_equal_the_unbatched_learners_tag_by_tag(k):
    cfgs = [config(k, arm) for arm in ARMS]
    batched = make_batched_learner(cfgs, range(len(cfgs)), (OBS_DIM,), ACTIONS)
    singles = [unbatched_at(cfg, batched.run_weights(i)) for i, cfg in enumerate(cfgs)]
    for burst_index in range(3):  # the panel's position moves from burst to burst
        data = bursts(len(cfgs), k, seed=10 + burst_index)
        out = batched.update(data, with_diagnostics=True)
        for i, single in enumerate(singles):
            want = single.update(data[i], with_diagnostics=True).metrics
            compare_metrics(out.metrics[i], want)
    # values that could hide a mix-up are not trivial here
    blocked = [m["td/grad_blocked_frac"] for m in out.metrics]
    assert blocked[1] > 0 and blocked[0] == 0  # the clipped-delta run blocks, the Huber run never does
    assert len({round(m["loss/td"], 6) for m in out.metrics}) == len(cfgs)


class CountingKernel(BatchedLearner):
    """Counts the updates that took the fused Adam kernel (in the graph, so it counts what ran)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.kernel_updates = tf.Variable(0)

    def _fused_adam(self, *args):
        self.kernel_updates.assign_add(1)
        return super()._fused_adam(*args)


@pytest.mark.parametrize("k", [1, 3])
def test_a_batch_of_seeds_takes_the_fused_kernel_and_the_written_out_adam_equals_it_bit_for_bit(k):
    """Runs that share learning rate and epsilon update through ResourceApplyAdam; add a run with another
    learning rate and the same runs take the written-out Adam instead, with the same results bit for bit
    (so a run's trajectory does not depend on which path its batch takes)."""
    cfgs = [config(k, ARMS[0])] * 3
    odd = config(k, {**ARMS[0], "optimizer.learning_rate": 1e-2})
    start = make_batched_learner([*cfgs, odd], [0, 1, 2, 3], (OBS_DIM,), ACTIONS).online_weights()
    seeds = CountingKernel(cfgs, [w[:3] for w in start], OBS_DIM)
    mixed = CountingKernel([*cfgs, odd], start, OBS_DIM)
    singles = [unbatched_at(cfg, run_slice(start, i)) for i, cfg in enumerate(cfgs)]
    for burst_index in range(2):
        data = bursts(4, k, seed=burst_index)
        out = seeds.update(data[:3], with_diagnostics=burst_index == 1)
        out_mixed = mixed.update(data, with_diagnostics=burst_index == 1)
        for got, want in zip(out.weights, out_mixed.weights, strict=True):
            np.testing.assert_array_equal(got.numpy(), want.numpy()[:3])
        for i, single in enumerate(singles):
            single.update(data[i], with_diagnostics=False)
            assert_weights_close(run_slice(out.weights, i), single.online_weights())
    assert int(seeds.kernel_updates.numpy()) == 2 * k
    assert int(mixed.kernel_updates.numpy()) == 0
    for a, b in zip(seeds._m + seeds._v, mixed._m + mixed._v, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy()[:3])
    # with one learning rate set for all four, the mixed batch takes the kernel too
    mixed.set_learning_rates([2.3e-3] * 4)
    mixed.update(bursts(4, k, seed=7), with_diagnostics=False)
    assert int(mixed.kernel_updates.numpy()) == k


@pytest.mark.parametrize("arms", ["differ", "same"])
def test_a_diverging_run_is_masked_and_the_others_equal_a_batch_without_it(arms):
    """`same`: runs that share learning rate and epsilon take the fused kernel until run 1 diverges, then
    the written-out Adam that masks it, while the batch without it keeps the kernel: still equal."""
    k = 4
    cfgs = [config(4, arm) for arm in ARMS[:3]] if arms == "differ" else [config(4, ARMS[0])] * 3
    data = bursts(3, k)
    poisoned = data[1]._replace(rewards=data[1].rewards.copy())
    poisoned.rewards[2, 0] = np.nan  # run 1's third update goes non-finite
    data[1] = poisoned
    batched = make_batched_learner(cfgs, [0, 1, 2], (OBS_DIM,), ACTIONS)
    start = batched.online_weights()
    out = batched.update(data, with_diagnostics=True)
    assert out.alive.tolist() == [True, False, True]
    # where it began, as the unbatched learner of run 1 says it on the same burst: the third update. Huber's
    # gradient at a NaN TD error is NaN in every variable; the clipped-delta loss's is 0 there (clipping
    # blocks it), so only its loss is not finite and no variable is named.
    single = unbatched_at(cfgs[1], run_slice(start, 1))
    assert not bool(single.update(data[1], with_diagnostics=False).finite)
    assert batched.nonfinite_origin(1) == single.nonfinite_origin()
    named = batched.variable_tags if arms == "same" else []
    want = {"variable": named[0] if named else None, "update_in_burst": 2, "variables": named}
    assert batched.nonfinite_origin(1) == want
    assert batched.nonfinite_origin(0) is None and batched.nonfinite_origin(2) is None
    # `same` takes the kernel burst first, is undone when run 1 goes non-finite, and runs through the cond
    assert sorted(batched._compiled) == ([(True, False), (True, True)] if arms == "same" else [(True, False)])
    # the survivors: what a batch of runs 0 and 2 alone computes (bit for bit where the CPU's batched matmul
    # rounds alike for 3 runs and 2; within a few float32 ulps where it does not: `assert_same_run`)
    pair = BatchedLearner([cfgs[0], cfgs[2]], [w[[0, 2]] for w in start], OBS_DIM)
    pair_out = pair.update([data[0], data[2]], with_diagnostics=True)
    for got, want in zip(out.weights, pair_out.weights, strict=True):
        assert_same_run(got.numpy()[[0, 2]], want.numpy())
    for got, want in zip([out.metrics[0], out.metrics[2]], pair_out.metrics, strict=True):
        compare_metrics(got, want)  # reductions may round differently with another number of runs
    # the masked run froze before its non-finite update: where two updates alone take it
    two = BatchedLearner([cfgs[1]], [w[[1]] for w in start], OBS_DIM)
    two.update([Batch(*(x[:2] for x in data[1]))], with_diagnostics=False)
    for got, want in zip(run_slice(out.weights, 1), two.run_weights(0), strict=True):
        assert_same_run(got, want)
    # and it stays masked: the next burst, finite for everyone, leaves it where it is
    again = batched.update(bursts(3, k, seed=5), with_diagnostics=False)
    assert again.alive.tolist() == [True, False, True]
    assert_weights_close(run_slice(again.weights, 1), two.run_weights(0))


def test_a_one_update_burst_names_the_origin_too():
    """One update a burst (CleanRL's cadence): the straight-line burst keeps the update's own raw half
    squares; the origin is the unbatched learner's."""
    cfgs = [config(1, ARMS[0]), config(1, ARMS[1])]
    data = bursts(2, 1)
    poisoned = data[0]._replace(rewards=data[0].rewards.copy())
    poisoned.rewards[0, 3] = np.inf
    data[0] = poisoned
    batched = make_batched_learner(cfgs, [0, 1], (OBS_DIM,), ACTIONS)
    single = unbatched_at(cfgs[0], run_slice(batched.online_weights(), 0))
    assert batched.update(data, with_diagnostics=False).alive.tolist() == [False, True]
    assert not bool(single.update(data[0], with_diagnostics=False).finite)
    assert batched.nonfinite_origin(0) == single.nonfinite_origin() is not None
    assert batched.nonfinite_origin(0)["update_in_burst"] == 0 and batched.nonfinite_origin(1) is None


def test_the_target_is_each_runs_online_copy_after_a_sync():
    cfgs = [config(1, arm) for arm in ARMS[:2]] + [config(1, ARMS[2], **{"train.target_tau": 0.5})]
    batched = make_batched_learner(cfgs, [0, 1, 2], (OBS_DIM,), ACTIONS)
    before = [t.numpy() for t in batched.target]
    batched.update(bursts(3, 1), with_diagnostics=False)
    assert all(np.array_equal(t.numpy(), b) for t, b in zip(batched.target, before, strict=True))
    batched.update_target()
    online = batched.online_weights()
    for t, o, b in zip(batched.target, online, before, strict=True):
        np.testing.assert_array_equal(t.numpy()[:2], o[:2])
        np.testing.assert_allclose(t.numpy()[2], 0.5 * o[2] + 0.5 * b[2], rtol=1e-6)


def test_configs_that_need_other_shapes_are_refused():
    with pytest.raises(ValueError, match="network.hidden"):
        check_batchable([config(1), load_preset("huber_relu", {"network.hidden": [8]})])
    with pytest.raises(ValueError, match="train.gradient_steps"):
        check_batchable([config(1), config(2)])
    with pytest.raises(ValueError, match="dueling"):
        check_batchable([config(1, {"network.dueling": True})])
    with pytest.raises(ValueError, match="optimizer"):
        check_batchable([config(1, {"optimizer.kind": "sgd"})])


def test_stack_runs_and_run_slice_are_inverse():
    runs = [[np.full((2, 3), i, np.float32), np.full(3, -i, np.float32)] for i in range(4)]
    stacked = stack_runs(runs)
    assert [w.shape for w in stacked] == [(4, 2, 3), (4, 3)]
    for i in range(4):
        assert all(np.array_equal(a, b) for a, b in zip(run_slice(stacked, i), runs[i], strict=True))
    assert run_slice([tf.constant(stacked[1])], 2)[0].tolist() == [-2.0] * 3
