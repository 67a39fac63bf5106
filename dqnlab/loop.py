"""The acting/learning loop: a generator of events that knows nothing about logging.

One environment, epsilon-greedy through the numpy twin of the online network, a uniform replay, and a
burst of `gradient_steps` updates every `train_every` environment steps once `learning_starts` have passed.
Transitions store `terminated` (not `truncated`) as the terminal flag: a time limit is not a terminal
state, so its next state is still bootstrapped. The caller (dqnlab.trainer) turns events into summaries,
progress and run.json.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from dqnlab.config import TrainConfig
from dqnlab.learner import Learner
from dqnlab.replay import ReplayBuffer


@dataclass(frozen=True)
class EpisodeEnd:
    step: int  # env step at which the episode ended
    episode_return: float
    length: int
    epsilon: float


@dataclass(frozen=True)
class Updated:
    """A burst of updates ran; `metrics` holds tensors only when the burst was a measured one."""

    step: int
    updates: int  # updates done so far, this burst included
    metrics: dict  # tag -> tf.Tensor; empty unless diagnostics were measured
    finite: bool


@dataclass(frozen=True)
class Probed:
    """Activation probes (and histograms) of the online network, taken after a burst."""

    step: int
    metrics: dict  # tag -> tf.Tensor (scalars, and arrays for histograms)


@dataclass(frozen=True)
class Evaluated:
    step: int
    returns: tuple[float, ...]  # one per greedy episode

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))


Event = EpisodeEnd | Updated | Probed | Evaluated


def epsilon_at(step: int, cfg: TrainConfig) -> float:
    """Linear decay from epsilon_start to epsilon_end over epsilon_decay_steps env steps."""
    frac = min(step / cfg.epsilon_decay_steps, 1.0)
    return cfg.epsilon_start + frac * (cfg.epsilon_end - cfg.epsilon_start)


def greedy_episodes(env: gym.Env, policy, episodes: int, seed: int) -> tuple[float, ...]:
    """Returns of `episodes` greedy episodes (seeded from `seed`, one seed per episode). A recurrent
    policy starts each episode from its initial state; the training episode's state is not touched."""
    returns = []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        state = policy.initial_state()
        total, done = 0.0, False
        while not done:
            q, state = policy.step(obs, state)
            obs, reward, terminated, truncated, _ = env.step(int(np.argmax(q)))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return tuple(returns)


def run_loop(
    env: gym.Env,
    eval_env: gym.Env,
    learner: Learner,
    replay: ReplayBuffer,
    cfg: TrainConfig,
    *,
    steps: int,
    seed: int,
    diagnostics_every: int | None,
    probe_every: int | None = None,
    probe_size: int = 256,
) -> Iterator[Event]:
    """Train for `steps` env steps, yielding events.

    A burst is measured when it crosses a multiple of `diagnostics_every` updates, probed when it crosses a
    multiple of `probe_every`; None turns either off. Probe states are drawn once, at the first probe."""
    rng = np.random.default_rng(seed)
    num_actions = int(env.action_space.n)
    policy = learner.policy()  # numpy copy of the online network; recurrent ones carry a state
    updates = 0
    probe_inputs = None
    updates_at_target_sync = 0  # a hard sync with no update since the last one would copy the same weights
    obs, _ = env.reset(seed=seed)
    state = policy.initial_state()
    episode_return, episode_length = 0.0, 0
    for step in range(1, steps + 1):
        epsilon = epsilon_at(step, cfg)
        # The network steps even when the action is random: a recurrent state must see every observation.
        q, next_state = policy.step(obs, state)
        action = int(rng.integers(num_actions)) if rng.random() < epsilon else int(np.argmax(q))
        next_obs, reward, terminated, truncated, _ = env.step(action)
        replay.add(obs, action, reward, next_obs, terminated, truncated, state)
        episode_return += float(reward)
        episode_length += 1
        if terminated or truncated:
            yield EpisodeEnd(step, episode_return, episode_length, epsilon)
            obs, _ = env.reset()
            state = policy.initial_state()
            episode_return, episode_length = 0.0, 0
        else:
            obs, state = next_obs, next_state

        if step >= cfg.learning_starts and step % cfg.train_every == 0:
            k = cfg.gradient_steps
            measure = _crosses(updates, k, diagnostics_every)
            probe = _crosses(updates, k, probe_every)
            out = learner.update(learner.sample_burst(replay, k, cfg.batch_size), measure)
            updates += k
            policy.set_weights([w.numpy() for w in out.weights])
            finite = bool(out.finite)
            yield Updated(step, updates, out.metrics, finite)
            if not finite:
                return
            if probe:
                if probe_inputs is None:
                    probe_inputs = learner.probe_inputs(learner.sample_one(replay, probe_size))
                yield Probed(step, learner.probe(probe_inputs, learner.sample_one(replay, cfg.batch_size)))
        if step % cfg.target_update_every == 0 and (updates > updates_at_target_sync or cfg.target_tau < 1.0):
            learner.update_target()
            updates_at_target_sync = updates
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == steps:
            yield Evaluated(
                step, greedy_episodes(eval_env, policy, cfg.eval_episodes, seed=seed + 10_000 + step)
            )


def _crosses(updates: int, k: int, every: int | None) -> bool:
    """Whether going from `updates` to `updates + k` passes a multiple of `every`."""
    return every is not None and (updates + k) // every > updates // every
