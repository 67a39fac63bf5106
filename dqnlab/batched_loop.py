"""A minimal training loop for N runs of one MLP architecture in one process (`BatchedLearner`).

Each run has what an unbatched run has: its own environment (reset with its seed), its own replay and
sampler (seeded with its seed), its own exploration generator (`np.random.default_rng(seed)`, drawn in the
order `loop.run_loop` draws it: one uniform per step, one integer when it explores). What is shared is the
cadence (learning_starts, train_every, gradient_steps, target_update_every, diagnostics.every: fields
`batched_learner.SHARED_FIELDS` requires equal), one batched numpy forward per step for every run's greedy
action, and one compiled call per burst for every run's updates.

Runs never read each other: a run's weights and trajectory are the same, bit for bit, in any batch it is
part of (its env, replay and generator are its own, and every batched operation acts on each run's slice
alone; tests/test_batched_loop.py checks a run alone and in batches of two and three). Its diagnostics may
differ in the last float32 bit: TensorFlow picks a reduction's summation order by the tensor's shape, so a
loss's mean or a norm over one run's slice can round differently with another number of runs beside it.
(With an active gradient clip the norm scales the step, so that rounding could reach the weights too.)
Against the unbatched loop of the same seed,
acting is identical until the first update; the updates then round differently in float32 (a batched matmul
and each bias's gradient summed as a matmul, against Keras's Dense and its bias gradient; Adam is the same
fused kernel or its bit-identical written-out twin: equal to ~1e-6 per update, tests/test_batched_learner.py),
so trajectories drift apart like two machines' would.

Not here yet: evaluation episodes, probes, run directories and event files, checkpoints and resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dqnlab.batched_learner import BatchedLearner, make_batched_learner
from dqnlab.config import Config
from dqnlab.envs import make_env
from dqnlab.kinds import make_replay, make_sampler
from dqnlab.learner import MetricValues
from dqnlab.loop import epsilon_at
from dqnlab.networks import NUMPY_ACTIVATIONS
from dqnlab.optimizers import learning_rate_at


class BatchedPolicy:
    """Every run's Q-values in one numpy pass: stacked weights [N, in, out], obs [N, D] -> Q [N, A]."""

    def __init__(self, activation: str):
        self._act = NUMPY_ACTIVATIONS[activation]
        self._layers: list[tuple[np.ndarray, np.ndarray]] = []

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        self._layers = [(weights[i], weights[i + 1][:, None, :]) for i in range(0, len(weights), 2)]

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        h = np.asarray(obs, np.float32)[:, None, :]  # [N, 1, D]: one row per run
        for kernel, bias in self._layers[:-1]:
            h = self._act(h @ kernel + bias)
        kernel, bias = self._layers[-1]
        return (h @ kernel + bias)[:, 0, :]


@dataclass
class BatchedResult:
    """What a batched run gives back, per run."""

    episode_returns: list[list[float]]  # [run][episode]
    episode_steps: list[list[int]]  # [run][episode]: the env step it ended at
    metric_rows: list[tuple[int, list[MetricValues]]] = field(default_factory=list)  # (env step, per run)
    alive: np.ndarray | None = None  # [N] bool: the run neither diverged nor had its env raise
    errors: dict[int, str] = field(default_factory=dict)  # run -> why it was masked out (an env error)
    updates: int = 0


class RunsState:
    """The per-run acting state: envs, replays, samplers, generators, current observations and returns."""

    def __init__(self, cfgs: Sequence[Config], seeds: Sequence[int], env_id: str):
        self.envs = [make_env(env_id, seed=seed) for seed in seeds]  # as the trainer makes them
        shape = self.envs[0].observation_space.shape
        self.replays = [make_replay(cfg, shape, seed) for cfg, seed in zip(cfgs, seeds, strict=True)]
        self.samplers = [make_sampler(cfg, r) for cfg, r in zip(cfgs, self.replays, strict=True)]
        self.rngs = [np.random.default_rng(seed) for seed in seeds]
        self.obs = np.stack([env.reset(seed=seed)[0] for env, seed in zip(self.envs, seeds, strict=True)])
        self.returns = [0.0] * len(cfgs)
        self.num_actions = int(self.envs[0].action_space.n)


def run_batched(
    cfgs: Sequence[Config],
    seeds: Sequence[int],
    env_id: str,
    steps: int,
    learner: BatchedLearner | None = None,
) -> BatchedResult:
    """Train N runs (`cfgs[i]` with `seeds[i]`) for `steps` env steps each; a measured burst's metrics are
    kept per run whenever the burst crosses a multiple of `diagnostics.every` updates (diagnostics on)."""
    runs = RunsState(cfgs, seeds, env_id)
    n, train = len(cfgs), cfgs[0].train
    learner = learner or make_batched_learner(cfgs, seeds, runs.obs.shape[1:], runs.num_actions)
    policy = BatchedPolicy(cfgs[0].network.activation)
    policy.set_weights(learner.online_weights())
    result = BatchedResult([[] for _ in range(n)], [[] for _ in range(n)])
    alive = np.ones(n, bool)
    scheduled = any(cfg.optimizer.schedule != "constant" for cfg in cfgs)
    shared_schedule = len({epsilon_schedule(cfg.train) for cfg in cfgs}) == 1
    every = cfgs[0].diagnostics.every if cfgs[0].diagnostics.enabled else None
    synced_at = 0
    for step in range(1, steps + 1):
        if not alive.any():  # every run diverged or lost its env: nothing left to train
            break
        if shared_schedule:  # one epsilon for every run
            epsilons = [epsilon_at(step, train)] * n
        else:
            epsilons = [epsilon_at(step, cfg.train) for cfg in cfgs]
        actions = choose_actions(runs, policy, epsilons, alive)
        for i in range(n) if alive.all() else np.flatnonzero(alive).tolist():
            if not step_run(runs, i, int(actions[i]), step, result):
                alive[i] = False
                learner.mask([i])
        if step >= train.learning_starts and step % train.train_every == 0:
            k = train.gradient_steps
            if scheduled:
                learner.set_learning_rates([learning_rate_at(step, cfg.optimizer) for cfg in cfgs])
            measure = every is not None and (result.updates + k) // every > result.updates // every
            data = [
                sampler.burst(k, train.batch_size) if alive[i] else None
                for i, sampler in enumerate(runs.samplers)
            ]
            # A masked run's slot still takes a burst (its weights stay frozen): a live run's, as its own
            # replay may be empty (its env raised on its first step).
            data = [d if d is not None else next(x for x in data if x is not None) for d in data]
            out = learner.update(data, measure)
            result.updates += k
            alive &= out.alive
            policy.set_weights([w.numpy() for w in out.weights])
            if measure:
                result.metric_rows.append((step, out.metrics))
        if step % train.target_update_every == 0 and result.updates > synced_at:
            learner.update_target()
            synced_at = result.updates
    result.alive = alive
    return result


def epsilon_schedule(train) -> tuple:
    """The fields `loop.epsilon_at` reads: runs with equal ones have one epsilon at every step."""
    return (train.epsilon_start, train.epsilon_end, train.epsilon_decay_start, train.epsilon_decay_steps)


def choose_actions(runs: RunsState, policy: BatchedPolicy, epsilons: Sequence[float], alive: np.ndarray):
    """Epsilon-greedy per run with its own generator, drawn as `loop.run_loop` draws it; one batched
    forward for all runs when any of them acts greedily, one argmax over the greedy runs' rows."""
    n = len(epsilons)
    rngs, num_actions = runs.rngs, runs.num_actions
    actions = np.zeros(n, np.int64)
    greedy = []
    for i in range(n) if alive.all() else np.flatnonzero(alive).tolist():
        rng = rngs[i]
        if rng.random() < epsilons[i]:
            actions[i] = rng.integers(num_actions)
        else:
            greedy.append(i)
    if len(greedy) == n:
        return policy(runs.obs).argmax(axis=1)
    if greedy:
        actions[greedy] = policy(runs.obs)[greedy].argmax(axis=1)
    return actions


def step_run(runs: RunsState, i: int, action: int, step: int, result: BatchedResult) -> bool:
    """Run i's env step, its transition stored, its episode closed when it ends. False when the env raised
    (recorded in `result.errors`): the caller masks the run out, and the others go on."""
    try:
        next_obs, reward, terminated, truncated, _ = runs.envs[i].step(action)
    except Exception as exc:  # any env failure ends this run only
        result.errors[i] = f"step {step}: {type(exc).__name__}: {exc}"
        return False
    runs.replays[i].add(runs.obs[i], action, reward, next_obs, terminated, truncated)
    runs.returns[i] += float(reward)
    if terminated or truncated:
        result.episode_returns[i].append(runs.returns[i])
        result.episode_steps[i].append(step)
        runs.returns[i] = 0.0
        next_obs, _ = runs.envs[i].reset()
    runs.obs[i] = next_obs
    return True
