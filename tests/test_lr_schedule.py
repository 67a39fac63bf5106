"""The learning-rate schedule (the `[optimizer]` schedule keys) and TF1's RMSProp: hand-computed values at
the step boundaries, eager and compiled, the rate each burst of a run uses, the config's one-line errors."""

import numpy as np
import pytest

from dqnlab.config import ConfigError, apply_overrides, load_preset
from dqnlab.optimizers import (
    FusedAdam,
    FusedRMSPropTF1,
    LearningRateFeed,
    learning_rate_at,
    learning_rate_feed,
    make_optimizer,
)

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")


def optimizer_cfg(**overrides):
    return apply_overrides(
        load_preset("huber_relu"), {f"optimizer.{k}": v for k, v in overrides.items()}
    ).optimizer


STAIRCASE = {
    "kind": "rmsprop_tf1",
    "learning_rate": 0.0025,
    "epsilon": 0.01,
    "momentum": 0.95,
    "schedule": "staircase",
    "decay_steps": 50_000,
    "decay_rate": 0.96,
    "learning_rate_end": 0.00025,
}


def test_staircase_changes_exactly_at_multiples_of_decay_steps_and_stops_at_its_floor():
    cfg = optimizer_cfg(**STAIRCASE)
    assert learning_rate_at(0, cfg) == 0.0025
    assert learning_rate_at(49_999, cfg) == 0.0025
    assert learning_rate_at(50_000, cfg) == 0.0025 * 0.96
    assert learning_rate_at(99_999, cfg) == 0.0025 * 0.96
    assert learning_rate_at(100_000, cfg) == 0.0025 * 0.96**2
    # 0.0025 * 0.96^k >= 0.00025 while k <= log(0.1) / log(0.96) = 56.4: the floor holds from k = 57 on.
    assert learning_rate_at(56 * 50_000, cfg) == 0.0025 * 0.96**56 > 0.00025
    assert learning_rate_at(57 * 50_000 - 1, cfg) == 0.0025 * 0.96**56
    assert learning_rate_at(57 * 50_000, cfg) == 0.00025
    assert learning_rate_at(50_000_000, cfg) == 0.00025


def test_staircase_equals_tf1_exponential_decay_with_its_floor():
    """devsisters' tf.maximum(minimum, tf.train.exponential_decay(..., staircase=True)), in float32."""
    cfg = optimizer_cfg(**STAIRCASE)
    for step in (0, 49_999, 50_000, 149_999, 150_000, 2_849_999, 2_850_000, 10_000_000):
        decayed = tf.compat.v1.train.exponential_decay(0.0025, step, 50_000, 0.96, staircase=True)
        decayed = decayed() if callable(decayed) else decayed  # eager: a function of the step
        tf1 = float(tf.maximum(0.00025, decayed))
        # TF computes 0.96^k with a float32 pow: 1.3e-6 off (relative) by k = 56; ours is float64, then cast.
        assert np.float32(learning_rate_at(step, cfg)) == pytest.approx(tf1, rel=2e-6), step


def test_linear_decays_over_decay_steps_then_holds():
    cfg = optimizer_cfg(schedule="linear", learning_rate=1e-3, decay_steps=1_000, learning_rate_end=1e-4)
    assert learning_rate_at(0, cfg) == 1e-3
    assert learning_rate_at(500, cfg) == 1e-3 + 0.5 * (1e-4 - 1e-3)
    assert learning_rate_at(1_000, cfg) == pytest.approx(1e-4, abs=1e-19)
    assert learning_rate_at(5_000, cfg) == learning_rate_at(1_000, cfg)


def test_constant_has_no_feed_and_keeps_a_constant_in_the_graph():
    cfg = load_preset("huber_relu").optimizer
    assert cfg.schedule == "constant"
    assert learning_rate_feed(object(), cfg) is None
    assert not isinstance(make_optimizer(cfg)._lr, tf.Variable)  # the default update reads no variable


@pytest.mark.parametrize("compiled", [False, True])
def test_tf1_rmsprop_equals_tf_compat_v1_rmsprop_optimizer(compiled):
    """devsisters' optimizer, tf.train.RMSPropOptimizer(lr, momentum=0.95, epsilon=0.01) (decay 0.9, mean
    square from 1), step for step, with the rate changed between steps as a schedule does."""
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 2)).astype(np.float32)
    grads = [rng.normal(size=(3, 2)).astype(np.float32) * 3 for _ in range(5)]
    rates = [0.0025, 0.0025, 0.0024, 0.0024, 0.00025]

    ours, theirs = tf.Variable(w0), tf.Variable(w0)
    opt = FusedRMSPropTF1(0.0025, momentum=0.95, epsilon=0.01, scheduled=True)
    opt.build([ours])
    rate = tf.Variable(0.0025)
    ref = tf.compat.v1.train.RMSPropOptimizer(lambda: rate.read_value(), momentum=0.95, epsilon=0.01)

    def step(g):
        opt.apply([g], [ours])

    apply = tf.function(step) if compiled else step
    for g, lr in zip(grads, rates, strict=True):
        opt._lr.assign(lr)
        rate.assign(lr)
        apply(tf.constant(g))
        ref.apply_gradients([(tf.constant(g), theirs)])
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert int(opt.iterations.numpy()) == 5


def test_tf1_rmsprop_first_step_by_hand():
    """ms = 0.9 * 1 + 0.1 g^2, mom = lr g / sqrt(ms + eps), w -= mom: for g = 2, lr = 0.01, eps = 0.01:
    ms = 1.3, step = 0.02 / sqrt(1.31)."""
    w = tf.Variable([1.0])
    opt = FusedRMSPropTF1(0.01, momentum=0.95, epsilon=0.01)
    opt.build([w])
    opt.apply([tf.constant([2.0])], [w])
    assert w.numpy()[0] == pytest.approx(1.0 - 0.02 / np.sqrt(1.31), rel=1e-6)
    ms, mom = (v.numpy()[0] for v in opt.variables[1:])
    assert ms == pytest.approx(1.3, rel=1e-6)
    opt.apply([tf.constant([0.0])], [w])  # momentum alone moves it on: 0.95 of the last step
    assert w.numpy()[0] == pytest.approx(1.0 - 1.95 * 0.02 / np.sqrt(1.31), rel=1e-6)


@pytest.mark.parametrize("kind", ["adam", "rmsprop", "rmsprop_tf1", "sgd"])
@pytest.mark.parametrize("compiled", [False, True])
def test_a_fed_rate_is_the_one_the_next_compiled_update_uses(kind, compiled):
    """The feed assigns the optimizer's rate variable; an update traced before reads the new value (for SGD:
    w -= lr * g exactly, for the others: the same step as an optimizer built with that constant rate)."""
    cfg = optimizer_cfg(
        kind=kind,
        learning_rate=0.5,
        schedule="staircase",
        decay_steps=10,
        decay_rate=0.5,
        learning_rate_end=0.0,
    )
    constant = optimizer_cfg(kind=kind, learning_rate=0.125)
    w0 = np.array([[1.0, -2.0]], np.float32)
    g = tf.constant([[0.5, 0.25]])
    results = []
    for c in (cfg, constant):
        w = keras.Variable(w0)  # what the learner's variables are
        opt = make_optimizer(c)
        opt.build([w])

        step = _step(opt, w, g)
        fn = tf.function(step) if compiled else step
        feed = learning_rate_feed(opt, c)
        if feed is not None:
            assert feed(0) == 0.5
            if compiled:
                fn.get_concrete_function()  # traced while the rate is 0.5
            assert feed(25) == 0.125  # 0.5 * 0.5^2
        fn()
        results.append(w.numpy())
    np.testing.assert_array_equal(results[0], results[1])
    if kind == "sgd":
        np.testing.assert_array_equal(results[0], w0 - np.float32(0.125) * g.numpy())


def _step(opt, w, g):
    def step():
        opt.apply([g], [w])

    return step


def test_feed_assigns_only_when_the_rate_changes():
    class Spy(FusedAdam):
        assigned = 0

    cfg = optimizer_cfg(schedule="staircase", decay_steps=100, decay_rate=0.5, learning_rate_end=0.0)
    opt = Spy(cfg.learning_rate, scheduled=True)
    calls = []
    opt._lr = type("V", (), {"assign": lambda self, v: calls.append(v)})()
    feed = LearningRateFeed(opt, cfg)
    for step in range(0, 400, 4):
        feed(step)
    assert calls == [cfg.learning_rate * 0.5**k for k in range(4)]


def test_each_burst_of_a_run_uses_its_own_steps_rate_and_logs_it(tmp_path):
    """A CartPole run whose staircase halves every 100 env steps: the rate each burst is called with (read off
    the optimizer's variable inside `update`) is learning_rate_at(that burst's env step), and the measured
    bursts log exactly that as charts/learning_rate."""
    from dqnlab.envs import make_env
    from dqnlab.kinds import learner_and_replay, make_sampler
    from dqnlab.loop import LR_TAG, Schedule, Updated, run_loop

    cfg = apply_overrides(
        load_preset("huber_relu"),
        {
            "optimizer.schedule": "staircase",
            "optimizer.decay_steps": 100,
            "optimizer.decay_rate": 0.5,
            "optimizer.learning_rate_end": 1e-4,
            "train.learning_starts": 50,
            "train.train_every": 10,
            "train.gradient_steps": 2,
            "train.eval_every": 0,
            "train.eval_episodes": 1,
        },
    )
    env = make_env(cfg.env, seed=0)
    learner, replay = learner_and_replay(cfg, env, seed=0)
    seen = []
    update = learner.update

    def spy(batch, measured):
        seen.append(float(learner.optimizer._lr.numpy()))
        return update(batch, measured)

    learner.update = spy
    events = list(
        run_loop(
            env,
            make_env(cfg.env, seed=1),
            learner,
            make_sampler(cfg, replay),
            cfg.train,
            Schedule(measure_every=4),
            steps=600,
            seed=0,
        )  # fmt: skip
    )
    bursts = [e for e in events if isinstance(e, Updated)]
    steps = [e.step for e in bursts]
    assert steps == list(range(50, 601, 10))
    assert seen == [float(np.float32(learning_rate_at(s, cfg.optimizer))) for s in steps]
    assert seen[steps.index(90)] == np.float32(0.0023) and seen[steps.index(100)] == np.float32(0.00115)
    assert seen[-1] == np.float32(1e-4)  # 0.0023 / 2^5 < 1e-4: the floor
    logged = {e.step: e.metrics[LR_TAG] for e in bursts if e.metrics}
    assert logged and all(v == learning_rate_at(s, cfg.optimizer) for s, v in logged.items())


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"optimizer.momentum": 0.9}, "optimizer.momentum: adam takes no momentum"),
        ({"optimizer.kind": "sgd", "optimizer.momentum": 1.0}, "optimizer.momentum: must be < 1"),
        ({"optimizer.decay_steps": 10}, "the 'constant' schedule does not use it"),
        (
            {"optimizer.schedule": "linear", "optimizer.decay_rate": 0.5},
            "optimizer.decay_rate: set to 0.5, but the 'linear' schedule does not use it",
        ),
        (
            {"optimizer.schedule": "staircase", "optimizer.learning_rate_end": 1.0},
            "the staircase's floor 1.0 is above learning_rate",
        ),
        ({"optimizer.schedule": "cosine"}, "optimizer.schedule: 'cosine' is not one of constant"),
        ({"optimizer.decay_rate": 1.5}, "optimizer.decay_rate: must be <= 1"),
    ],
)
def test_bad_schedules_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match="^--set ") as err:
        apply_overrides(load_preset("huber_relu"), overrides)
    assert message in str(err.value) and "\n" not in str(err.value)
