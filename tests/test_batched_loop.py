"""The batched loop: reproducible for a fixed batch, a run's trajectory independent of the batch it is in,
acting as the unbatched loop acts, and a run whose env raises masked out without touching the others."""

from __future__ import annotations

import numpy as np

import dqnlab.batched_loop as batched_loop
from dqnlab.batched_loop import BatchedPolicy, run_batched
from dqnlab.config import load_preset
from dqnlab.envs import make_env
from dqnlab.kinds import learner_and_replay, make_sampler
from dqnlab.loop import EpisodeEnd, Schedule, run_loop
from dqnlab.networks import NumpyMLP

ENV = "CartPole-v1"


def config(**extra):
    overrides = {
        "network.hidden": [16, 12],
        "train.batch_size": 16,
        "train.learning_starts": 200,
        "train.train_every": 10,
        "train.gradient_steps": 2,
        "train.target_update_every": 50,
        "train.epsilon_decay_steps": 300,
        "train.eval_episodes": 1,
        "diagnostics.every": 10,
        "replay.capacity": 5_000,
    }
    return load_preset("huber_relu", {**overrides, **extra})


def arms():
    return [
        config(),
        config(**{"loss.kind": "clipped_delta_squared"}),
        config(**{"optimizer.learning_rate": 1e-2}),
    ]


def rows_of(result, run: int) -> list[tuple[int, dict]]:
    return [(step, dict(per_run[run].items())) for step, per_run in result.metric_rows]


def test_a_batch_is_reproducible_and_learns_something():
    first = run_batched(arms(), [0, 1, 2], ENV, 1_500)
    second = run_batched(arms(), [0, 1, 2], ENV, 1_500)
    assert first.episode_returns == second.episode_returns
    assert first.metric_rows and all(rows_of(first, i) == rows_of(second, i) for i in range(3))
    assert first.updates == (1_500 - 200) // 10 * 2 + 2  # bursts at steps 200, 210, ..., 1500
    assert first.alive.tolist() == [True, True, True]
    assert first.episode_returns[0] != first.episode_returns[1]  # seeds differ


def assert_rows_close(got: list, want: list) -> None:
    """Metric rows equal up to float32 rounding: a reduction over a run's slice (a loss's mean, a norm)
    may round differently with another number of runs beside it; weights and trajectories do not."""
    assert [step for step, _ in got] == [step for step, _ in want]
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert set(a) == set(b)
        for tag in a:
            np.testing.assert_allclose(a[tag], b[tag], rtol=1e-5, atol=1e-8, err_msg=tag)


def test_a_run_is_the_same_in_any_batch():
    three = run_batched(arms(), [0, 1, 2], ENV, 1_000)
    alone = run_batched([arms()[1]], [1], ENV, 1_000)
    two = run_batched(arms()[1:], [1, 2], ENV, 1_000)
    assert three.episode_returns[1] == alone.episode_returns[0]
    assert three.episode_returns[1:] == two.episode_returns
    assert_rows_close(rows_of(three, 1), rows_of(alone, 0))
    assert_rows_close(rows_of(three, 2), rows_of(two, 1))


def test_a_sparse_cadence_measures_the_floors_bursts_as_the_unbatched_loop_does():
    """`every` = 1,000 updates measures no burst of a 1,000-step run (162 updates); min_measured = 8 measures
    the first burst past each multiple of (1,000 - 200) / 8 = 100 env steps, in a batch as alone."""
    cfgs = [config(**{"diagnostics.every": 1_000, "diagnostics.min_measured": 8}) for _ in range(2)]
    result = run_batched(cfgs, [0, 1], ENV, 1_000)
    schedule = Schedule.of(cfgs[0].diagnostics, cfgs[0].train, 1_000, 0)
    bursts = range(200, 1_001, 10)  # 2 updates each
    expected = [step for i, step in enumerate(bursts) if schedule.measures(step, 2 * i, cfgs[0].train)]
    assert [step for step, _ in result.metric_rows] == expected == list(range(200, 1_001, 100))


def test_replays_that_cannot_share_storage_store_their_own_and_the_runs_are_the_same():
    # Two replay capacities cannot stack (`replay.StackedReplays`): that batch stores and draws per run,
    # and each run alone (a batch of one, stacked) is the same run; the 600-transition ring wraps.
    small = config(**{"replay.capacity": 600})
    mixed = run_batched([small, arms()[1]], [3, 1], ENV, 1_000)
    alone = [run_batched([small], [3], ENV, 1_000), run_batched([arms()[1]], [1], ENV, 1_000)]
    for i, one in enumerate(alone):
        assert mixed.episode_returns[i] == one.episode_returns[0]
        assert_rows_close(rows_of(mixed, i), rows_of(one, 0))


def test_acting_matches_the_unbatched_loop_before_learning():
    """No update within the run: every action comes from the same generator draws and the same initial
    network, so the episodes are the unbatched loop's exactly."""
    cfgs = [config(**{"train.learning_starts": 5_000}), config(**{"train.learning_starts": 5_000})]
    batched = run_batched(cfgs, [4, 9], ENV, 1_200)
    for i, seed in enumerate([4, 9]):
        env, eval_env = make_env(ENV, seed=seed), make_env(ENV, evaluation=True)
        learner, replay = learner_and_replay(cfgs[i], env, seed)
        events = run_loop(
            env,
            eval_env,
            learner,
            make_sampler(cfgs[i], replay),
            cfgs[i].train,
            Schedule(),
            steps=1_200,
            seed=seed,
        )
        returns = [e.episode_return for e in events if isinstance(e, EpisodeEnd)]
        assert batched.episode_returns[i] == returns
        assert len(returns) > 20


def test_the_batched_policy_is_each_runs_numpy_mlp():
    rng = np.random.default_rng(0)
    runs = [[rng.normal(size=s).astype(np.float32) for s in [(4, 8), (8,), (8, 2), (2,)]] for _ in range(3)]
    batched = BatchedPolicy("tanh")
    batched.set_weights([np.stack(ws) for ws in zip(*runs, strict=True)])
    obs = rng.normal(size=(3, 4)).astype(np.float32)
    q = batched(obs)
    for i, weights in enumerate(runs):
        single = NumpyMLP("tanh")
        single.set_weights(weights)
        np.testing.assert_allclose(q[i], single(obs[i]), rtol=1e-6)


class RaisingEnv:
    """An env that raises on its `fail_at`-th step."""

    def __init__(self, env, fail_at: int):
        self._env, self._fail_at, self._steps = env, fail_at, 0

    def __getattr__(self, name):
        return getattr(self._env, name)

    def step(self, action):
        self._steps += 1
        if self._steps == self._fail_at:
            raise RuntimeError("the simulator crashed")
        return self._env.step(action)


def test_a_run_whose_env_raises_is_masked_and_the_others_go_on(monkeypatch):
    made = []

    def make(env_id, seed=None):
        env = make_env(env_id, seed=seed)
        made.append(env)
        return RaisingEnv(env, 600) if len(made) == 2 else env

    monkeypatch.setattr(batched_loop, "make_env", make)
    result = run_batched(arms(), [0, 1, 2], ENV, 1_000)
    monkeypatch.undo()
    assert result.alive.tolist() == [True, False, True]
    assert result.errors == {1: "step 600: RuntimeError: the simulator crashed"}
    without = run_batched([arms()[0], arms()[2]], [0, 2], ENV, 1_000)
    assert [result.episode_returns[0], result.episode_returns[2]] == without.episode_returns
    assert_rows_close(rows_of(result, 0), rows_of(without, 0))
    assert_rows_close(rows_of(result, 2), rows_of(without, 1))


def test_every_env_raising_on_a_burst_step_ends_the_batch_with_each_error(monkeypatch):
    # Step 600 is a burst step (learning_starts 200, train_every 10): with every run masked in that step,
    # no burst is left to take.
    monkeypatch.setattr(
        batched_loop, "make_env", lambda env_id, seed=None: RaisingEnv(make_env(env_id, seed), 600)
    )
    result = run_batched(arms()[:2], [0, 1], ENV, 1_000)
    assert result.alive.tolist() == [False, False]
    assert result.errors == {i: "step 600: RuntimeError: the simulator crashed" for i in (0, 1)}
