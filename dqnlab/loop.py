"""The acting/learning loop: a generator of events that knows nothing about logging.

One environment, epsilon-greedy through the learner's policy (the numpy twin of the online network; a
compiled TF function for the CNN), a replay drawn by its sampler (`dqnlab.sampling`), and a burst of
`gradient_steps` updates every `train_every` environment steps once `learning_starts` have passed. What it
needs of the learner and the sampler is written down as `Protocol`s below: any network kind's parts fit.
Transitions store `terminated` (not `truncated`) as the terminal flag: a time limit is not a terminal
state, so its next state is still bootstrapped. The caller (dqnlab.trainer) turns events into summaries,
progress and run.json.

Greedy evaluations also check the values: the Q(s, a) the policy computed for each action it took, against
the discounted return that actually followed (`Evaluated.q_estimate`, `.discounted_return`; the exact
definition, truncation included, is in docs/metrics.md under `eval/q_estimate`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from dqnlab.config import DiagnosticsConfig, TrainConfig, is_atari_env
from dqnlab.optimizers import learning_rate_feed
from dqnlab.replay import nonfinite_env_data


class Policy(Protocol):
    """The acting side of a learner: Q-values of one observation, and a state for recurrent networks."""

    def initial_state(self) -> Any: ...
    def step(self, obs: np.ndarray, state: Any) -> tuple[np.ndarray, Any]: ...
    def set_weights(self, weights: list[np.ndarray]) -> None: ...


class Trainable(Protocol):
    """What the loop needs of a learner (`dqnlab.learner.Learner` and its subclasses)."""

    cfg: Any  # its Config: the loop reads the optimizer's learning-rate schedule from it
    optimizer: Any

    def policy(self) -> Policy: ...
    def update(self, batch: Any, with_diagnostics: bool) -> Any: ...  # -> learner.UpdateOutput
    def update_target(self) -> None: ...
    def probe(self, states: Any, batch: Any) -> dict: ...


class Replay(Protocol):
    def add(self, obs, action, reward, next_obs, terminated, truncated, state=None) -> None: ...
    def end_episode(self) -> None: ...
    def drawing_from(self, rng: np.random.Generator) -> AbstractContextManager[None]: ...


class Sampler(Protocol):
    """How bursts, batches and probe states are drawn from `replay` (`dqnlab.sampling`)."""

    replay: Replay

    def burst(self, num_updates: int, batch_size: int) -> Any: ...
    def batch(self, batch_size: int) -> Any: ...
    def probe_states(self, sample: Any) -> Any: ...


@dataclass(frozen=True)
class Schedule:
    """When the loop measures a burst, probes and checkpoints; None is off (the one spelling of it)."""

    measure_every: int | None = None  # a burst is measured when it crosses a multiple of this many updates
    measure_floor: int | None = None  # ... or of this many env steps (measuring on)
    probe_every: int | None = None  # ... probed when it crosses a multiple of this many updates
    probe_size: int = 256  # states the probe measures, drawn once
    probe_floor: int | None = None  # with probes on: at most this many env steps between two probes
    checkpoint_every: int | None = None  # env steps

    @classmethod
    def of(cls, diag: DiagnosticsConfig, train: TrainConfig, steps: int, checkpoint_every: int) -> Schedule:
        """A run's schedule from its config: `diagnostics.enabled = false` turns measuring and probing off,
        `probe_every = 0` probing only, `checkpoint_every = 0` checkpoints. The probe floor gives
        `diagnostics.min_probes` probes over the learning part of a run of `steps`, the measure floor about
        `diagnostics.min_measured` measured bursts (0: no floor)."""
        floor = measure_floor = None
        learning = steps - train.learning_starts
        if diag.min_probes > 0:
            floor = max(train.train_every, learning // diag.min_probes)
        if diag.enabled and diag.min_measured > 0:
            measure_floor = max(train.train_every, learning // diag.min_measured)
        return cls(
            measure_every=diag.every if diag.enabled else None,
            measure_floor=measure_floor,
            probe_every=diag.probe_every if diag.enabled and diag.probe_every > 0 else None,
            probe_size=diag.probe_size,
            probe_floor=floor,
            checkpoint_every=checkpoint_every or None,
        )

    def measures(self, step: int, updates: int, train: TrainConfig) -> bool:
        """Whether the burst at env step `step`, taking the update count from `updates` to `updates +
        gradient_steps`, is measured: it crosses a multiple of `measure_every` updates, or of `measure_floor`
        env steps since the burst `train_every` steps before it (no state: a resumed run measures the same
        bursts)."""
        return crosses(updates, train.gradient_steps, self.measure_every) or (
            self.measure_floor is not None
            and crosses(step - train.train_every, train.train_every, self.measure_floor)
        )


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
    metrics: Mapping  # tag -> float; empty unless diagnostics were measured
    finite: bool
    # When not finite: the env's non-finite entries in replay, by field (`replay.nonfinite_env_data`).
    nonfinite_env_data: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class Probed:
    """Activation probes (and histograms) of the online network, taken after a burst."""

    step: int
    metrics: dict  # tag -> tf.Tensor (scalars, and arrays for histograms)


@dataclass(frozen=True)
class Evaluated:
    step: int
    returns: tuple[float, ...]  # one per greedy episode
    # The value check, pooled over the compared (s, a) of every episode (docs/metrics.md, `eval/q_*`): the
    # mean Q(s, a) of the actions taken and the mean discounted return that followed them. None when no state
    # was compared (Atari, or only truncated episodes too short to compare any state).
    q_estimate: float | None = None
    discounted_return: float | None = None
    compared_states: int = 0

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))

    @property
    def q_overestimation(self) -> float | None:
        """q_estimate - discounted_return: positive when the network promises more than the policy gets."""
        if self.q_estimate is None or self.discounted_return is None:
            return None
        return self.q_estimate - self.discounted_return


@dataclass
class LoopState:
    """Everything the loop carries from one env step to the next (a checkpoint saves it)."""

    step: int  # last env step fully done
    obs: np.ndarray
    state: object  # the recurrent policy's state (None for an MLP)
    episode_return: float
    episode_length: int
    updates: int
    synced_at: int  # updates at the last target sync: a hard sync without updates since copies nothing
    probe_inputs: object
    rng: np.random.Generator  # exploration
    refill_until: int = 0  # resumed without its replay: act (and refill) until this step before learning
    # The probes' own draws from replay, so that probing (more or less often) never changes training.
    probe_rng: np.random.Generator | None = None
    last_probe: int = 0  # env step of the last probe

    @classmethod
    def start(cls, env: gym.Env, learner: Trainable, seed: int) -> LoopState:
        obs, _ = env.reset(seed=seed)
        initial = learner.policy().initial_state()
        probe_rng = np.random.default_rng((seed, 1))
        return cls(0, obs, initial, 0.0, 0, 0, 0, None, np.random.default_rng(seed), probe_rng=probe_rng)


@dataclass(frozen=True)
class CheckpointDue:
    step: int
    state: LoopState


Event = EpisodeEnd | Updated | Probed | Evaluated | CheckpointDue


def epsilon_at(step: int, cfg: TrainConfig) -> float:
    """Linear decay from epsilon_start to epsilon_end over epsilon_decay_steps env steps, starting after
    epsilon_decay_start (0 in every preset but the devsisters ones)."""
    frac = min(max(step - cfg.epsilon_decay_start, 0) / cfg.epsilon_decay_steps, 1.0)
    return cfg.epsilon_start + frac * (cfg.epsilon_end - cfg.epsilon_start)


# The learning rate of a measured burst, logged with its metrics when optimizer.schedule is not constant.
LR_TAG = "charts/learning_rate"

# A truncated episode's state is compared only when the bootstrapped tail of its return weighs at most
# this much: at least 95% of the return it is compared with is reward actually received.
TAIL_WEIGHT = 0.05


@dataclass(frozen=True)
class GreedyEpisodes:
    returns: tuple[float, ...]  # undiscounted, one per episode
    q_taken: np.ndarray  # Q(s_t, a_t) at every compared step, episodes concatenated
    discounted: np.ndarray  # the discounted return from those same steps

    def evaluated(self, step: int) -> Evaluated:
        if not self.q_taken.size:
            return Evaluated(step, self.returns)
        q, g = float(np.mean(self.q_taken)), float(np.mean(self.discounted))
        return Evaluated(step, self.returns, q, g, int(self.q_taken.size))


def discounted_returns(rewards: list[float], gamma: float, tail: float = 0.0) -> np.ndarray:
    """G_t = r_t + gamma * G_{t+1} for every step t, backwards from G_T = `tail` (0 after a terminal)."""
    out = np.empty(len(rewards))
    g = float(tail)
    for t in range(len(rewards) - 1, -1, -1):
        g = rewards[t] + gamma * g
        out[t] = g
    return out


def compared_steps(length: int, gamma: float, truncated: bool) -> int:
    """How many leading steps of an episode enter the value check: every step of one that terminated; of a
    truncated one, the steps t whose tail weight gamma^(T - t) is at most TAIL_WEIGHT (T = length)."""
    if not truncated:
        return length
    tail_weights = gamma ** np.arange(length, 0, -1, dtype=np.float64)
    return int(np.count_nonzero(tail_weights <= TAIL_WEIGHT))


def greedy_episodes(
    env: gym.Env, policy, episodes: int, seed: int, gamma: float | None = None
) -> GreedyEpisodes:
    """`episodes` greedy episodes (seeded from `seed`, one seed per episode). A recurrent policy starts each
    episode from its initial state; the training episode's state is not touched.

    With `gamma`, each step's Q(s_t, a_t) is kept beside the discounted return that followed it. A time limit
    is not a terminal (training bootstraps through it, so Q values the episode as going on): a truncated
    episode's returns are completed with gamma^(T - t) max_a Q(s_T, a), as a TD target would, and only its
    steps where that tail weighs at most TAIL_WEIGHT are compared. The extra cost is one policy step per
    truncated episode and a backward pass over the rewards."""
    returns, q_parts, g_parts = [], [], []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        state = policy.initial_state()
        q_taken, rewards, total = [], [], 0.0
        terminated = truncated = False
        while not (terminated or truncated):
            q, state = policy.step(obs, state)
            action = int(np.argmax(q))
            q_taken.append(float(q[action]))
            obs, reward, terminated, truncated, _ = env.step(action)
            rewards.append(float(reward))
            total += float(reward)  # summed in order, as before: eval/return stays bit for bit the same
        returns.append(total)
        if gamma is None:
            continue
        cut = truncated and not terminated
        tail = float(np.max(policy.step(obs, state)[0])) if cut else 0.0
        n = compared_steps(len(rewards), gamma, cut)
        q_parts.append(np.asarray(q_taken[:n]))
        g_parts.append(discounted_returns(rewards, gamma, tail)[:n])
    joined = [np.concatenate(p) if p else np.empty(0) for p in (q_parts, g_parts)]
    return GreedyEpisodes(tuple(returns), *joined)


def value_gamma_of(eval_env: gym.Env, cfg: TrainConfig) -> float | None:
    """The discount of the value check, or None to skip it. Atari skips it: Q is learned on sign-clipped
    rewards (and life-loss terminals, when on) while the eval env plays whole games for the real score, so
    its returns are not what Q estimates."""
    spec = eval_env.spec
    return None if spec is not None and is_atari_env(spec.id) else cfg.gamma


def run_loop(
    env: gym.Env,
    eval_env: gym.Env,
    learner: Trainable,
    sampler: Sampler,
    cfg: TrainConfig,
    schedule: Schedule,
    *,
    steps: int,
    seed: int,
    state_from: LoopState | None = None,
) -> Iterator[Event]:
    """Train for `steps` env steps, yielding events.

    A burst is measured when it crosses a multiple of `schedule.measure_every` updates or of `measure_floor`
    env steps (`Schedule.measures`), probed when it crosses a multiple of `probe_every`. With probes on, a
    burst is also probed when `probe_floor` env steps have passed since the last probe, and the run's last
    burst always is: so a short run still gets the probes the doctor needs. Probe states are drawn once, at
    the first probe; the probes draw from replay with their own generator, so they never change which
    batches training draws. Every `checkpoint_every` steps a `CheckpointDue` carries the loop's state,
    consistent between two steps; `state_from` (such a state, restored with the env, learner and replay it
    belongs to) continues a run."""
    st = state_from or LoopState.start(env, learner, seed)
    num_actions = int(env.action_space.n)
    policy = learner.policy()  # numpy copy of the online network; recurrent ones carry a state
    value_gamma = value_gamma_of(eval_env, cfg)
    rng = st.rng
    replay = sampler.replay
    # A scheduled learning rate is set before each burst to its env step's value (None: a constant rate).
    learning_rate = learning_rate_feed(learner.optimizer, learner.cfg.optimizer)
    for step in range(st.step + 1, steps + 1):
        epsilon = epsilon_at(step, cfg)
        explore = rng.random() < epsilon
        if explore and st.state is None:
            # A stateless policy need not run for a random action: a CNN call costs more than an env step.
            action, next_state = int(rng.integers(num_actions)), None
        else:
            # The network steps even when the action is random: a recurrent state must see every observation.
            q, next_state = policy.step(st.obs, st.state)
            action = int(rng.integers(num_actions)) if explore else int(np.argmax(q))
        next_obs, reward, terminated, truncated, _ = env.step(action)
        replay.add(st.obs, action, reward, next_obs, terminated, truncated, st.state)
        st.episode_return += float(reward)
        st.episode_length += 1
        if terminated or truncated:
            yield EpisodeEnd(step, st.episode_return, st.episode_length, epsilon)
            st.obs, _ = env.reset()
            st.state = policy.initial_state()
            st.episode_return, st.episode_length = 0.0, 0
        else:
            st.obs, st.state = next_obs, next_state

        if step >= cfg.learning_starts and step > st.refill_until and step % cfg.train_every == 0:
            lr = learning_rate(step) if learning_rate is not None else None
            finite = yield from _burst(st, step, steps, learner, sampler, policy, cfg, schedule, lr)
            if not finite:
                return
        if step % cfg.target_update_every == 0 and (st.updates > st.synced_at or cfg.target_tau < 1.0):
            learner.update_target()
            st.synced_at = st.updates
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == steps:
            greedy = greedy_episodes(eval_env, policy, cfg.eval_episodes, seed + 10_000 + step, value_gamma)
            yield greedy.evaluated(step)
        st.step = step  # every effect of this step is done: a checkpoint now resumes at the next one
        if schedule.checkpoint_every and step % schedule.checkpoint_every == 0 and step < steps:
            yield CheckpointDue(step, st)


def _burst(
    st: LoopState,
    step: int,
    steps: int,
    learner: Trainable,
    sampler: Sampler,
    policy: Policy,
    cfg: TrainConfig,
    schedule: Schedule,
    lr: float | None,
) -> Iterator[Event]:
    """The burst of `cfg.gradient_steps` updates at env step `step`, measured and probed when due (see
    `run_loop`); returns whether it stayed finite. `lr`: the scheduled learning rate, logged with a
    measured burst (None: a constant rate, not logged)."""
    k = cfg.gradient_steps
    measure = schedule.measures(step, st.updates, cfg)
    probe = schedule.probe_every is not None and (
        crosses(st.updates, k, schedule.probe_every)
        or (schedule.probe_floor is not None and step - st.last_probe >= schedule.probe_floor)
        or step + cfg.train_every > steps  # the run's last burst
    )
    out = learner.update(sampler.burst(k, cfg.batch_size), measure)
    st.updates += k
    policy.set_weights([w.numpy() for w in out.weights])
    finite = bool(out.finite)
    metrics = out.metrics if lr is None or not out.metrics else {**out.metrics, LR_TAG: lr}
    yield Updated(step, st.updates, metrics, finite, {} if finite else nonfinite_env_data(sampler.replay))
    if finite and probe:
        with sampler.replay.drawing_from(st.probe_rng):
            if st.probe_inputs is None:
                st.probe_inputs = sampler.probe_states(sampler.batch(schedule.probe_size))
            batch = sampler.batch(cfg.batch_size)
        st.last_probe = step
        yield Probed(step, learner.probe(st.probe_inputs, batch))
    return finite


def crosses(updates: int, k: int, every: int | None) -> bool:
    """Whether going from `updates` to `updates + k` passes a multiple of `every`."""
    return every is not None and (updates + k) // every > updates // every
