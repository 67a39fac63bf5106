"""The value check of greedy evaluations (eval/q_estimate, eval/discounted_return, eval/q_overestimation)
against episodes computed by hand."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from metrics_doc import undocumented

from dqnlab.config import load_preset
from dqnlab.events import read_series
from dqnlab.loop import TAIL_WEIGHT, Evaluated, compared_steps, greedy_episodes, value_gamma_of
from dqnlab.summaries import Summaries


class TapeEnv(gym.Env):
    """Plays episode k of `tapes` at the k-th reset: each tape is (observations, rewards, how it ends).
    The observation a policy sees is its Q-values (see QFromObs), so each step's Q is set by hand."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, tapes):
        self.tapes, self.episode = tapes, -1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return self._obs(), {}

    def step(self, action):
        observations, rewards, end = self.tapes[self.episode]
        reward = rewards[self.t]
        self.t += 1
        last = self.t == len(rewards)
        return self._obs(), reward, last and end == "terminated", last and end == "truncated", {}

    def _obs(self):
        return np.asarray(self.tapes[self.episode][0][self.t], np.float32)


class QFromObs:
    """A stateless policy whose Q-values are the observation itself."""

    def initial_state(self):
        return None

    def step(self, obs, state):
        return np.asarray(obs, np.float32), None


# gamma 0.5: a truncated episode's step t is compared when 0.5^(T - t) <= 0.05, i.e. T - t >= 5
# (0.5^4 = 0.0625 > 0.05 >= 0.5^5 = 0.03125).
GAMMA = 0.5
TAPES = [
    # Terminated after 3 steps. Q-values per observation; the greedy action is the larger one.
    ([[3, 1], [0, 4], [5, 2], [9, 9]], [1.0, 2.0, 4.0], "terminated"),
    # Truncated after 6 steps (a time limit); the last observation s_6 has max Q = 10, the bootstrap.
    ([[3, 0], [1, 2], [7, 0], [7, 0], [7, 0], [7, 0], [0, 10]], [1.0] * 6, "truncated"),
]


def test_a_hand_computed_terminated_and_truncated_episode():
    got = greedy_episodes(TapeEnv(TAPES), QFromObs(), episodes=2, seed=0, gamma=GAMMA)
    assert got.returns == (7.0, 6.0)  # 1 + 2 + 4, and six rewards of 1
    # Terminated: Q of the actions taken 3, 4, 5; returns backwards from 0 after the terminal:
    #   G_2 = 4, G_1 = 2 + 0.5 * 4 = 4, G_0 = 1 + 0.5 * 4 = 3.
    # Truncated, from the bootstrap 0.5^(6 - t) * 10: G_5 = 1 + 0.5 * 10 = 6, G_4 = 1 + 3 = 4,
    #   G_3 = 1 + 2 = 3, G_2 = 1 + 1.5 = 2.5, G_1 = 1 + 1.25 = 2.25, G_0 = 1 + 1.125 = 2.125;
    #   only t = 0, 1 are compared (6 - t >= 5), with Q of the actions taken 3 (action 0) and 2 (action 1).
    assert got.q_taken.tolist() == [3, 4, 5, 3, 2]
    assert got.discounted.tolist() == [3, 4, 4, 2.125, 2.25]
    event = got.evaluated(step=100)
    assert event.compared_states == 5
    assert event.q_estimate == pytest.approx(3.4)  # (3 + 4 + 5 + 3 + 2) / 5 = 17 / 5
    assert event.discounted_return == pytest.approx(3.075)  # (3 + 4 + 4 + 2.125 + 2.25) / 5 = 15.375 / 5
    assert event.q_overestimation == pytest.approx(0.325)  # 3.4 - 3.075
    assert event.mean_return == 6.5


def test_a_perfect_cartpole_policy_is_not_called_overestimating():
    # CartPole's reward 1 per step, 500-step limit, gamma 0.99: a perfect policy's Q is 1 / (1 - 0.99) = 100
    # everywhere. Cutting G_t at the limit would give G_t = 100 (1 - 0.99^(500 - t)): near 0 at the end.
    # Completed with 0.99^(500 - t) * 100 it is 100 exactly; the steps with 500 - t >= 299 are compared
    # (0.99^298 = 0.05004 > 0.05 >= 0.99^299 = 0.04954): t = 0 .. 201, 202 steps.
    perfect = ([[100, 99]] * 501, [1.0] * 500, "truncated")
    event = greedy_episodes(TapeEnv([perfect] * 2), QFromObs(), 2, seed=0, gamma=0.99).evaluated(5)
    assert event.compared_states == 2 * 202
    assert event.q_estimate == pytest.approx(100.0)
    assert event.discounted_return == pytest.approx(100.0, abs=1e-9)
    assert abs(event.q_overestimation) < 1e-9


def test_compared_steps_keep_the_tail_weight_under_the_bound():
    assert compared_steps(500, 0.99, truncated=False) == 500
    assert compared_steps(500, 0.99, truncated=True) == 202
    assert compared_steps(298, 0.99, truncated=True) == 0  # every step's tail weighs more than 5%
    assert compared_steps(6, 0.5, truncated=True) == 2
    assert compared_steps(4, 0.0, truncated=True) == 4  # no discounting beyond one step: nothing to bootstrap
    assert compared_steps(9, 1.0, truncated=True) == 0  # undiscounted: the tail always weighs 1
    assert TAIL_WEIGHT == 0.05


def test_no_compared_state_means_no_value_check():
    short = ([[1, 0]] * 4, [1.0] * 3, "truncated")  # 0.5^3 = 0.125 > 0.05 for every step
    event = greedy_episodes(TapeEnv([short]), QFromObs(), 1, seed=0, gamma=GAMMA).evaluated(7)
    assert event.returns == (3.0,) and event.compared_states == 0
    assert event.q_estimate is None and event.q_overestimation is None
    # Without gamma (Atari) nothing is compared either.
    event = greedy_episodes(TapeEnv(TAPES), QFromObs(), 2, seed=0).evaluated(7)
    assert event.returns == (7.0, 6.0) and event.q_estimate is None


class CountingRecurrentPolicy:
    """A recurrent policy: Q = [h, -1] where h counts the steps since the episode began."""

    def initial_state(self):
        return np.zeros(1, np.float32)

    def step(self, obs, state):
        return np.array([state[0], -1.0], np.float32), state + 1


def test_a_recurrent_policy_acts_and_bootstraps_from_the_state_it_carried():
    tape = ([[0, 0]] * 7, [1.0] * 6, "truncated")
    got = greedy_episodes(TapeEnv([tape, tape]), CountingRecurrentPolicy(), 2, seed=0, gamma=GAMMA)
    # Each episode starts from the initial state: Q taken 0, 1 at the compared steps t = 0, 1 of both.
    # The bootstrap is max Q at s_6 with the state carried through 6 steps: h = 6. Backwards:
    #   G_5 = 1 + 0.5 * 6 = 4, G_4 = 3, G_3 = 2.5, G_2 = 2.25, G_1 = 2.125, G_0 = 1 + 1.0625 = 2.0625.
    assert got.q_taken.tolist() == [0, 1, 0, 1]
    assert got.discounted.tolist() == [2.0625, 2.125, 2.0625, 2.125]


def test_atari_skips_the_value_check():
    cfg = load_preset("huber_relu").train
    env = TapeEnv(TAPES)
    assert value_gamma_of(env, cfg) == cfg.gamma  # no spec: not Atari
    env.spec = gym.envs.registration.EnvSpec("ALE/Pong-v5")
    assert value_gamma_of(env, cfg) is None
    env.spec = gym.envs.registration.EnvSpec("CartPole-v1")
    assert value_gamma_of(env, cfg) == cfg.gamma


def test_the_value_check_is_written_and_documented(tmp_path):
    run_dir = tmp_path / "exp" / "huber_relu" / "CartPole-v1" / "seed_0"
    run_dir.mkdir(parents=True)
    with Summaries(run_dir) as summaries:
        summaries.evaluation(Evaluated(10, (7.0, 6.0), 3.4, 3.075, 5))
        summaries.evaluation(Evaluated(20, (3.0,)))  # nothing compared: eval/return only
    series = read_series(run_dir)
    assert series["eval/return"][0].tolist() == [10, 20]
    for tag, value in [
        ("eval/q_estimate", 3.4),
        ("eval/discounted_return", 3.075),
        ("eval/q_overestimation", 0.325),
    ]:
        steps, values = series[tag]
        assert steps.tolist() == [10] and values[0] == pytest.approx(value)
    assert undocumented(series) == [], "not defined in docs/metrics.md"
