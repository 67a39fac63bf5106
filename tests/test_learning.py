"""Learning to threshold (slow: about 11 minutes on 2 cores). Run with `pytest -m slow`.

The headline claims, checked on real runs through the public entry points:
- the healthy arm (huber_relu) reaches a greedy eval return >= 475 on CartPole-v1 within 50k env steps on
  every one of 3 seeds (#21's bar 2; SB3's tuned DQN reports 500 at 50k; docs/results.md has 10 and 20 seeds);
- the clipped-delta arm, identical but for the loss, does not learn on the same seeds, and its blocked
  fraction says why;
- on the velocity-masked CartPole, where one observation does not tell the pole's motion, the LSTM agent
  reaches a greedy eval return >= 100 within 50k env steps on at least 2 of 3 seeds, and the feed-forward
  huber_relu, which has no memory, does not reach it on any (measured 2026-12-06: LSTM best 257/188/443,
  first >= 100 at 15k on each seed; feed-forward best 53/44/48);
- the exploding vanilla RNN with global-norm clipping (rnn_exploding_clipped: W_hh at spectral radius 3)
  stays finite with every applied step at norm <= 1 while its pre-clip norm spikes past 10, and reaches the
  same return >= 100 within its 100k-step budget on at least 2 of 3 seeds (measured: best 36/310/230).
"""

from __future__ import annotations

import pytest

from dqnlab.rundir import read_run
from dqnlab.runner import plan_experiment, run_experiment

SEEDS = [0, 1, 2]
BUDGET = 50_000


@pytest.fixture(scope="module")
def headline(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("learning")
    arms = ["huber_relu", "clipped_delta_relu"]
    specs, _ = plan_experiment(arms, ["CartPole-v1"], SEEDS, BUDGET, logdir, "slow")
    outcomes = run_experiment(specs, workers=2, quiet=True)
    return {(o.spec.preset, o.spec.seed): read_run(o.run_dir) for o in outcomes}


def first_step_at(run, threshold: float) -> int | None:
    return next((step for step, ret in run.final["eval_history"] if ret >= threshold), None)


@pytest.mark.slow
def test_huber_reaches_475_within_50k_steps_on_every_seed(headline):
    reached = {seed: first_step_at(headline[("huber_relu", seed)], 475.0) for seed in SEEDS}
    for seed in SEEDS:
        run = headline[("huber_relu", seed)]
        print(f"huber_relu seed {seed}: first eval >= 475 at step {reached[seed]}, {run.wall_time_s:.0f} s")
    assert all(step is not None and step <= BUDGET for step in reached.values()), reached


@pytest.mark.slow
def test_clipped_delta_does_not_learn_and_blocks_its_gradient(headline):
    for seed in SEEDS:
        run = headline[("clipped_delta_relu", seed)]
        assert run.status == "done"
        assert run.final["best_eval_return"] < 100, run.final["eval_history"]
        blocked = [v for _, v in run.scalars("td/grad_blocked_frac")]
        assert sum(blocked) / len(blocked) > 0.5
        huber_blocked = [v for _, v in headline[("huber_relu", seed)].scalars("td/grad_blocked_frac")]
        assert max(huber_blocked) == 0.0


MASKED = "dqnlab/CartPole-masked-v1"
MEMORY_THRESHOLD = 100.0  # about twice what the feed-forward agent tops out at on the masked task


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("masked")
    specs, _ = plan_experiment(["lstm", "huber_relu"], [MASKED], SEEDS, BUDGET, logdir, "masked")
    outcomes = run_experiment(specs, workers=2, quiet=True)
    return {(o.spec.preset, o.spec.seed): read_run(o.run_dir) for o in outcomes}


@pytest.mark.slow
def test_lstm_learns_masked_cartpole_and_the_feed_forward_agent_does_not(masked):
    lstm = {seed: first_step_at(masked[("lstm", seed)], MEMORY_THRESHOLD) for seed in SEEDS}
    for seed in SEEDS:
        best = {arm: masked[(arm, seed)].final["best_eval_return"] for arm in ("lstm", "huber_relu")}
        print(f"masked CartPole seed {seed}: lstm first >= {MEMORY_THRESHOLD:g} at {lstm[seed]}, best {best}")
    assert sum(step is not None for step in lstm.values()) >= 2, lstm
    for seed in SEEDS:
        assert masked[("huber_relu", seed)].final["best_eval_return"] < MEMORY_THRESHOLD


@pytest.mark.slow
def test_doctor_finds_nothing_wrong_with_the_lstm_on_any_seed(masked):
    from dqnlab.doctor import examine

    for seed in SEEDS:
        report = examine(masked[("lstm", seed)].run_dir)
        assert report.healthy, [f.summary for run in report.runs for f in run.findings]


@pytest.fixture(scope="module")
def clipped_rnn(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("rnn")
    specs, configs = plan_experiment(["rnn_exploding_clipped"], [MASKED], SEEDS, None, logdir, "rnn")
    assert configs["rnn_exploding_clipped"].train.steps == 100_000  # the preset's own budget
    outcomes = run_experiment(specs, workers=2, quiet=True)
    return {o.spec.seed: read_run(o.run_dir) for o in outcomes}


@pytest.mark.slow
def test_clipped_exploding_rnn_stays_bounded_and_learns_on_2_of_3_seeds(clipped_rnn):
    for seed in SEEDS:
        run = clipped_rnn[seed]
        print(f"rnn_exploding_clipped seed {seed}: best {run.final['best_eval_return']}")
        assert run.status == "done"
        assert max(v for _, v in run.scalars("grad_norm/global")) <= 1.0 + 1e-5
        assert max(v for _, v in run.scalars("grad_norm/preclip_global")) > 10.0  # the explosion, cut
    best = [clipped_rnn[seed].final["best_eval_return"] for seed in SEEDS]
    assert sum(b >= MEMORY_THRESHOLD for b in best) >= 2, best
