"""The acting loop on a scripted environment: what is stored, when it learns, what it yields."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from dqnlab.config import load_preset
from dqnlab.kinds import make_learner
from dqnlab.loop import EpisodeEnd, Evaluated, Schedule, Updated, epsilon_at, run_loop
from dqnlab.replay import ReplayBuffer
from dqnlab.sampling import TransitionSampler


class ScriptedEnv(gym.Env):
    """Observation [t, 0]; episodes alternate: one terminates after 3 steps, the next is truncated after 4."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self):
        self.tape: list[str] = []
        self.episodes = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.tape.append("reset")
        return np.array([0, 0], np.float32), {}

    def step(self, action):
        self.t += 1
        terminate = self.episodes % 2 == 0 and self.t == 3
        truncate = self.episodes % 2 == 1 and self.t == 4
        self.tape.append("terminated" if terminate else "truncated" if truncate else "step")
        if terminate or truncate:
            self.episodes += 1
        return np.array([self.t, 0], np.float32), 1.0, terminate, truncate, {}


def make(steps, **overrides):
    base = {
        "network.hidden": [4],
        "train.learning_starts": 4,
        "train.train_every": 2,
        "train.gradient_steps": 3,
        "train.batch_size": 2,
        "train.eval_every": 0,
        "train.eval_episodes": 1,
        "train.target_update_every": 2,
    }
    cfg = load_preset("huber_relu", {**base, **overrides})
    env = ScriptedEnv()
    learner = make_learner(cfg, (2,), 2, seed=0)
    replay = ReplayBuffer(100, (2,), seed=0)
    events = list(
        run_loop(
            env,
            ScriptedEnv(),
            learner,
            TransitionSampler(replay),
            cfg.train,
            Schedule(measure_every=6),
            steps=steps,
            seed=0,
        )  # fmt: skip
    )
    return env, replay, events


def test_tape_and_terminal_flags():
    env, replay, events = make(steps=8)
    assert env.tape == [
        "reset",
        "step",
        "step",
        "terminated",
        "reset",
        "step",
        "step",
        "step",
        "truncated",
        "reset",
        "step",
    ]
    # Terminated -> discount 0; truncated (a time limit) is bootstrapped -> discount 1.
    assert replay.discounts[:8].tolist() == [1, 1, 0, 1, 1, 1, 1, 1]
    # The next observation of a truncated step is the real last observation, never the reset one.
    assert replay.next_obs[6].tolist() == [4, 0] and replay.obs[7].tolist() == [0, 0]
    ends = [e for e in events if isinstance(e, EpisodeEnd)]
    assert [(e.step, e.length, e.episode_return) for e in ends] == [(3, 3, 3.0), (7, 4, 4.0)]


def test_updates_start_after_learning_starts_and_measure_on_schedule():
    _, _, events = make(steps=12)
    updates = [e for e in events if isinstance(e, Updated)]
    assert [e.step for e in updates] == [4, 6, 8, 10, 12]
    assert [e.updates for e in updates] == [3, 6, 9, 12, 15]
    # diagnostics_every=6 updates: measured bursts are those that cross a multiple of 6.
    assert [bool(e.metrics) for e in updates] == [False, True, False, True, False]
    assert all(e.finite for e in updates)
    assert isinstance(events[-1], Evaluated) and events[-1].step == 12


def test_epsilon_schedule():
    cfg = load_preset(
        "huber_relu", {"train.epsilon_start": 1.0, "train.epsilon_end": 0.1, "train.epsilon_decay_steps": 100}
    ).train
    assert epsilon_at(0, cfg) == 1.0
    assert abs(epsilon_at(50, cfg) - 0.55) < 1e-12
    assert abs(epsilon_at(100, cfg) - 0.1) < 1e-12 and abs(epsilon_at(10_000, cfg) - 0.1) < 1e-12


def test_evaluations_carry_the_value_check():
    _, _, events = make(steps=12)
    final = events[-1]
    # The eval env's first episode terminates after 3 rewards of 1: every step is compared, with
    # huber_relu's gamma 0.99: G_2 = 1, G_1 = 1.99, G_0 = 2.9701; mean 5.9601 / 3.
    assert isinstance(final, Evaluated) and final.returns == (3.0,) and final.compared_states == 3
    assert final.discounted_return == pytest.approx(5.9601 / 3)
    assert final.q_overestimation == pytest.approx(final.q_estimate - 5.9601 / 3)
