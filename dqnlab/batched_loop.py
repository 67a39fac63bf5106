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

`batched_events` yields each run's events as `loop.run_loop` yields them (with greedy evaluations and probes
when given each run's shadow learner); `dqnlab.batched_trainer` writes them to each run's own directory.
Checkpoints and resume live beside the loop, not in its body: every `checkpoint_every` steps it yields a
`BatchCheckpointDue` (the batch between two steps), from which `member_loop_state` and
`member_state_arrays` give a member's unbatched `LoopState` and `Learner.state_arrays()`; `resume_batch`
rebuilds a batch from its members' checkpoints into a `BatchStart` the loop continues from.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from dqnlab.batched_learner import BatchedLearner, make_batched_learner, run_slice, stack_runs
from dqnlab.config import Config
from dqnlab.envs import make_env
from dqnlab.kinds import make_learner, make_replay, make_sampler
from dqnlab.learner import MetricValues
from dqnlab.loop import (
    LR_TAG,
    EpisodeEnd,
    Evaluated,
    Event,
    LoopState,
    Probed,
    Schedule,
    Updated,
    crosses,
    epsilon_at,
    greedy_episodes,
    value_gamma_of,
)
from dqnlab.networks import NUMPY_ACTIVATIONS
from dqnlab.optimizers import learning_rate_at
from dqnlab.replay import StackedReplays, nonfinite_env_data


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


@dataclass(frozen=True)
class EnvFailed:
    """A run's env raised at `step`: the run is masked out (the unbatched run would have failed there)."""

    step: int
    error: str  # "RuntimeError: the simulator crashed", as the trainer's run.json says it
    traceback: str

    @classmethod
    def of(cls, step: int, exc: Exception) -> EnvFailed:
        """The failure `exc`, being handled now (its traceback is the current one)."""
        return cls(step, f"{type(exc).__name__}: {exc}", traceback.format_exc())


class RunEvent(NamedTuple):
    """One run's event: `loop`'s EpisodeEnd, Updated, Probed or Evaluated, or EnvFailed. After an Updated
    that is not finite, or an EnvFailed, the run has no more events."""

    run: int
    event: Event | EnvFailed


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
        self.lengths = [0] * len(cfgs)
        self.num_actions = int(self.envs[0].action_space.n)
        self.stacked: StackedReplays | None = None  # `stack_replays`: the replays' shared storage

    def stack_replays(self) -> None:
        """Let the replays share their storage (`StackedReplays`) when they can, from what they hold now
        (a fresh or restored batch): a step's transitions then go in at once. Where they cannot (another
        replay kind, capacities that differ), each run keeps storing its own."""
        self.stacked = StackedReplays.of(self.replays)
        if self.stacked is not None:  # one step's outcome, per run: filled by `step_runs`
            self.next_obs = np.array(self.obs)
            self.rewards = np.zeros(len(self.replays), np.float32)
            self.terminated = np.zeros(len(self.replays), bool)

    def close(self) -> None:
        for env in self.envs:
            env.close()


class Members:
    """What the unbatched loop does beside acting and learning, per run: greedy evaluations (`loop`'s own
    `greedy_episodes`, on each run's eval env with its numpy policy) and probes. A probe is the unbatched
    learner's own (`Learner.probe`), on a shadow learner per run (the one its initial weights came from)
    into which the run's online and target weights are copied first: the same tags, the same code."""

    def __init__(
        self, cfgs: Sequence[Config], seeds: Sequence[int], env_id: str, shadows: Sequence, steps: int
    ):
        self.cfgs, self.seeds, self.shadows, self.steps = list(cfgs), list(seeds), list(shadows), steps
        self.eval_envs = [make_env(env_id, atari=cfg.atari, evaluation=True) for cfg in cfgs]
        self.policies = [shadow.policy() for shadow in shadows]
        self.schedules = [Schedule.of(cfg.diagnostics, cfg.train, steps, 0) for cfg in cfgs]
        self.probe_rngs = [np.random.default_rng((seed, 1)) for seed in seeds]  # as `LoopState.start`
        self.probe_inputs: list = [None] * len(cfgs)
        self.last_probe = [0] * len(cfgs)
        # The runs' distinct evaluation periods (usually one): `any_evaluation` checks them once per step,
        # before any per-run check. Arithmetic, not a set of the steps: that set grows with the run.
        self._everies = tuple(sorted({cfg.train.eval_every for cfg in cfgs if cfg.train.eval_every}))

    def probe_due(self, i: int, step: int, updates_before: int) -> bool:
        """`loop._burst`'s rule for run i's burst at `step`."""
        sch, train = self.schedules[i], self.cfgs[i].train
        return sch.probe_every is not None and (
            crosses(updates_before, train.gradient_steps, sch.probe_every)
            or (sch.probe_floor is not None and step - self.last_probe[i] >= sch.probe_floor)
            or step + train.train_every > self.steps
        )

    def probe(self, i: int, step: int, learner: BatchedLearner, sampler) -> Probed:
        shadow, cfg = self.shadows[i], self.cfgs[i]
        for variables, stacked in (
            (shadow.variables, learner.online),
            (shadow.target.weights, learner.target),
        ):
            for v, w in zip(variables, run_slice(stacked, i), strict=True):
                v.assign(w)
        with sampler.replay.drawing_from(self.probe_rngs[i]):
            if self.probe_inputs[i] is None:
                self.probe_inputs[i] = sampler.probe_states(sampler.batch(self.schedules[i].probe_size))
            batch = sampler.batch(cfg.train.batch_size)
        self.last_probe[i] = step
        return Probed(step, shadow.probe(self.probe_inputs[i], batch))

    def any_evaluation(self, step: int) -> bool:
        """Whether some run evaluates at `step` (`evaluation_due`'s rule, for every run at once)."""
        return step == self.steps or any(step % every == 0 for every in self._everies)

    def evaluation_due(self, i: int, step: int) -> bool:
        every = self.cfgs[i].train.eval_every
        return bool(every and step % every == 0) or step == self.steps

    def evaluate(self, i: int, step: int, learner: BatchedLearner) -> Evaluated:
        policy, env, train = self.policies[i], self.eval_envs[i], self.cfgs[i].train
        policy.set_weights(learner.run_weights(i))
        gamma = value_gamma_of(env, train)
        episodes = greedy_episodes(env, policy, train.eval_episodes, self.seeds[i] + 10_000 + step, gamma)
        return episodes.evaluated(step)

    def close(self) -> None:
        for env in self.eval_envs:
            env.close()


def make_members(cfgs: Sequence[Config], seeds: Sequence[int], obs_shape, num_actions: int):
    """The batch's learner and each run's shadow learner (`Members`): `make_batched_learner`'s
    construction, keeping the per-run learners it stacks."""
    shadows = [make_learner(cfg, obs_shape, num_actions, seed) for cfg, seed in zip(cfgs, seeds, strict=True)]
    weights = stack_runs([shadow.online_weights() for shadow in shadows])
    return BatchedLearner(cfgs, weights, int(np.prod(obs_shape))), shadows


# -- checkpoints and resume (outside the loop's body: a checkpoint is an event, a resume a start) ---------

CHECKPOINT = -1  # RunEvent.run of a BatchCheckpointDue: the batch's, not one run's


@dataclass
class BatchCounters:
    """The loop's counters, shared by every run of the batch, between two env steps."""

    step: int = 0  # last env step fully done
    updates: int = 0  # each live run's updates so far (the batch's: masked runs' slots count too)
    synced_at: int = 0  # updates at the last target sync
    refill_until: int = 0  # resumed without replay: act (and refill) until this step before learning


@dataclass(frozen=True)
class BatchCheckpointDue:
    """The batch between two env steps: what each live member's checkpoint is taken from (`final`: the end
    of the batch, after its last step)."""

    counters: BatchCounters
    alive: np.ndarray  # [N] bool
    runs: RunsState
    members: Members
    learner: BatchedLearner
    final: bool = False

    @property
    def step(self) -> int:
        return self.counters.step


@dataclass
class BatchStart:
    """Where a resumed batch continues (`resume_batch`): its restored acting state, counters and live runs."""

    runs: RunsState
    members: Members
    counters: BatchCounters
    alive: np.ndarray  # [N] bool: runs to continue; the others stay masked


def member_loop_state(due: BatchCheckpointDue, i: int) -> LoopState:
    """Run i's state as the unbatched loop's `LoopState` (what an unbatched checkpoint keeps of it)."""
    runs, members, c = due.runs, due.members, due.counters
    return LoopState(
        step=c.step,
        obs=np.array(runs.obs[i]),
        state=None,  # an MLP's policy has no recurrent state
        episode_return=runs.returns[i],
        episode_length=runs.lengths[i],
        updates=c.updates,
        synced_at=c.synced_at,
        probe_inputs=members.probe_inputs[i],
        rng=runs.rngs[i],
        refill_until=c.refill_until,
        probe_rng=members.probe_rngs[i],
        last_probe=members.last_probe[i],
    )


def member_state_arrays(due: BatchCheckpointDue, i: int) -> dict[str, np.ndarray]:
    """Run i's `Learner.state_arrays()`, as its unbatched learner would hold them after the same updates:
    its slice of the stacked online and target weights and Adam's m and v, put into its shadow learner
    (built by `make_learner` as the unbatched run's), with Adam's iterations (the batch's updates) and beta
    powers (the batch's pair: beta^t after the same t float32 products), the shadow's initial weights."""
    shadow, state = due.members.shadows[i], due.learner.run_state(i)
    for variables, values in (
        (shadow.online.weights, state["online"]),
        (shadow.target.weights, state["target"]),
    ):
        for var, value in zip(variables, values, strict=True):
            var.assign(value)
    iterations, b1_power, b2_power, *slots = shadow.optimizer.variables
    iterations.assign(due.counters.updates)
    b1, b2 = due.learner.beta_powers()
    b1_power.assign(b1)
    b2_power.assign(b2)
    for var, value in zip(
        slots, [x for pair in zip(state["m"], state["v"], strict=True) for x in pair], strict=True
    ):
        var.assign(value)
    return shadow.state_arrays()


def resume_batch(
    cfgs: Sequence[Config],
    seeds: Sequence[int],
    env_id: str,
    steps: int,
    learner: BatchedLearner,
    shadows: Sequence,
    ckpts: dict,
) -> tuple[BatchStart, dict]:
    """The batch rebuilt from its members' checkpoints (`ckpts`: run index -> `checkpoint.Checkpoint`, one
    step for all; the runs not in it stay masked): each run's env, replay, generators and probe state put
    back (`snapshot.restore`, through its shadow learner), its slice of the stacked learner loaded, the
    shared counters and Adam's beta powers set. Returns the start and each run's `snapshot.Restored`.
    CheckpointError when a checkpoint does not fit, or the members' shared counters disagree."""
    from dqnlab.checkpoint import CheckpointError
    from dqnlab.snapshot import restore

    runs = RunsState(cfgs, seeds, env_id)
    members = Members(cfgs, seeds, env_id, shadows, steps)
    alive = np.zeros(len(cfgs), bool)
    restored, shared, powers = {}, {}, {}
    for i, ckpt in sorted(ckpts.items()):
        shadow = shadows[i]
        got = restore(ckpt, shadow, runs.envs[i], runs.replays[i], seeds[i], cfgs[i].train.learning_starts)
        st = got.loop_state
        iterations, b1, b2, *slots = [v.numpy() for v in shadow.optimizer.variables]
        counters = BatchCounters(st.step, st.updates, st.synced_at, st.refill_until)
        shared[i] = (counters, int(iterations))
        powers[i] = (np.float32(b1), np.float32(b2))
        runs.obs[i], runs.returns[i], runs.lengths[i], runs.rngs[i] = (
            st.obs,
            st.episode_return,
            st.episode_length,
            st.rng,
        )
        members.probe_inputs[i], members.probe_rngs[i], members.last_probe[i] = (
            st.probe_inputs,
            st.probe_rng,
            st.last_probe,
        )
        learner.load_run(i, {
            "online": [v.numpy() for v in shadow.online.weights],
            "target": [v.numpy() for v in shadow.target.weights],
            "m": slots[0::2],
            "v": slots[1::2],
        })  # fmt: skip
        restored[i] = got
        alive[i] = True
    first = min(ckpts)
    for i in ckpts:
        if shared[i] != shared[first] or powers[i] != powers[first]:
            raise CheckpointError(
                f"{ckpts[i].path}: its batch counters (step, updates, target sync, Adam's step) are not "
                f"those of {ckpts[first].path}: not checkpoints of one batch"
            )
    counters, iterations = shared[first]
    if iterations != counters.updates:
        raise CheckpointError(
            f"{ckpts[first].path}: Adam's step {iterations} is not the run's {counters.updates} updates"
        )
    learner.load_counters(counters.updates, powers[first], alive)
    return BatchStart(runs, members, counters, alive), restored


def run_batched(
    cfgs: Sequence[Config],
    seeds: Sequence[int],
    env_id: str,
    steps: int,
    learner: BatchedLearner | None = None,
) -> BatchedResult:
    """Train N runs (`cfgs[i]` with `seeds[i]`) for `steps` env steps each, without evaluations or probes;
    a measured burst's metrics are kept per run whenever the burst crosses a multiple of
    `diagnostics.every` updates (diagnostics on)."""
    n = len(cfgs)
    result = BatchedResult([[] for _ in range(n)], [[] for _ in range(n)])
    alive = np.ones(n, bool)
    rows: dict[int, list] = {}
    for run, event in batched_events(cfgs, seeds, env_id, steps, learner=learner):
        if isinstance(event, EpisodeEnd):
            result.episode_returns[run].append(event.episode_return)
            result.episode_steps[run].append(event.step)
        elif isinstance(event, Updated):
            result.updates = event.updates
            if event.metrics:
                rows.setdefault(event.step, [{} for _ in range(n)])[run] = event.metrics
            alive[run] &= event.finite
        elif isinstance(event, EnvFailed):
            alive[run] = False
            result.errors[run] = f"step {event.step}: {event.error}"
    result.metric_rows = sorted(rows.items())
    result.alive = alive
    return result


def batched_events(
    cfgs: Sequence[Config],
    seeds: Sequence[int],
    env_id: str,
    steps: int,
    *,
    learner: BatchedLearner | None = None,
    shadows: Sequence | None = None,
    checkpoint_every: int = 0,
    start: BatchStart | None = None,
) -> Iterator[RunEvent]:
    """Train N runs for `steps` env steps each, yielding each run's events in `loop.run_loop`'s order
    within a step. With `shadows` (each run's unbatched learner, as `make_members` gives them with the
    batch's `learner`), each run also gets the greedy evaluations and probes `run_loop` gives it.

    With `checkpoint_every` (env steps; 0: never), a `RunEvent(CHECKPOINT, BatchCheckpointDue)` every that
    many steps and at the end carries the whole batch between two steps (`member_loop_state`,
    `member_state_arrays`). `start` (from `resume_batch`, with the `learner` and `shadows` it was restored
    into) continues a batch from such a point."""
    if start is None:
        runs = RunsState(cfgs, seeds, env_id)
        if learner is None:
            learner = make_batched_learner(cfgs, seeds, runs.obs.shape[1:], runs.num_actions)
        members = Members(cfgs, seeds, env_id, shadows, steps) if shadows is not None else None
    else:
        runs, members = start.runs, start.members
    try:
        yield from _steps(runs, learner, members, cfgs, steps, checkpoint_every, start)
    finally:
        runs.close()
        if members is not None:
            members.close()


def _steps(
    runs: RunsState,
    learner: BatchedLearner,
    members: Members | None,
    cfgs,
    steps: int,
    checkpoint_every: int = 0,
    start: BatchStart | None = None,
):
    n, train = len(cfgs), cfgs[0].train
    measuring = Schedule.of(cfgs[0].diagnostics, train, steps, 0)  # the batch's (`batch_plan` shares it)
    policy = BatchedPolicy(cfgs[0].network.activation)
    policy.set_weights(learner.online_weights())
    alive = np.ones(n, bool) if start is None else start.alive.copy()
    everyone = list(range(n))
    live = everyone if alive.all() else np.flatnonzero(alive).tolist()  # `alive`'s runs, kept in step
    counted = start.counters if start is not None else BatchCounters()
    updates, synced_at, refill_until = counted.updates, counted.synced_at, counted.refill_until
    polyak = any(cfg.train.target_tau < 1.0 for cfg in cfgs)
    shared_schedule = len({epsilon_schedule(cfg.train) for cfg in cfgs}) == 1
    runs.stack_replays()
    for step in range(counted.step + 1, steps + 1):
        if not live:  # every run diverged or lost its env: nothing left to train
            return
        if shared_schedule:  # one epsilon for every run
            epsilons = [epsilon_at(step, train)] * n
        else:
            epsilons = [epsilon_at(step, cfg.train) for cfg in cfgs]
        chosen = choose_actions(runs, policy, epsilons, live)
        for i, outcome in step_runs(runs, live, chosen, step, epsilons):
            if isinstance(outcome, EnvFailed):
                alive[i] = False
                learner.mask([i])
                live = [j for j in live if j != i]
            yield RunEvent(i, outcome)
        if not live:  # the last live runs lost their envs in this step
            return
        if step >= train.learning_starts and step > refill_until and step % train.train_every == 0:
            weights = yield from _burst(runs, learner, members, cfgs, measuring, step, updates, alive)
            updates += train.gradient_steps
            policy.set_weights([w.numpy() for w in weights])  # the burst's own read: no variable read
            live = everyone if alive.all() else np.flatnonzero(alive).tolist()  # a burst may mask runs
        if step % train.target_update_every == 0 and (updates > synced_at or polyak):
            learner.update_target()
            synced_at = updates
        if members is not None and members.any_evaluation(step):
            for i in np.flatnonzero(alive):
                if members.evaluation_due(i, step):
                    yield RunEvent(int(i), members.evaluate(i, step, learner))
        if checkpoint_every and step % checkpoint_every == 0 and step < steps:
            counters = BatchCounters(step, updates, synced_at, refill_until)
            yield RunEvent(CHECKPOINT, BatchCheckpointDue(counters, alive.copy(), runs, members, learner))
    if checkpoint_every and alive.any():  # the end state: what the final weights are compared against
        counters = BatchCounters(steps, updates, synced_at, refill_until)
        yield RunEvent(CHECKPOINT, BatchCheckpointDue(counters, alive.copy(), runs, members, learner, True))


def _burst(
    runs,
    learner: BatchedLearner,
    members,
    cfgs,
    measuring: Schedule,
    step: int,
    updates: int,
    alive: np.ndarray,
):
    """Every live run's burst at `step` in one call; each run's Updated (and Probed when due). A run whose
    burst went non-finite gets its last event (not finite) and `alive` turns false for it. Returns the
    online weights after the burst (the call's own read of them, as tensors)."""
    train = cfgs[0].train
    k = train.gradient_steps
    scheduled = [cfg.optimizer.schedule != "constant" for cfg in cfgs]
    rates = [learning_rate_at(step, cfg.optimizer) for cfg in cfgs]
    if any(scheduled):
        learner.set_learning_rates(rates)
    measure = measuring.measures(step, updates, train)
    # A masked run's slot still takes a burst (its weights stay frozen): a live run's, as its own replay
    # may be empty (its env raised on its first step).
    if runs.stacked is not None:
        out = learner.update_stacked(
            runs.stacked.sample_many(k, train.batch_size, np.flatnonzero(alive).tolist()), measure
        )
    else:
        data = [
            sampler.burst(k, train.batch_size) if alive[i] else None
            for i, sampler in enumerate(runs.samplers)
        ]
        data = [d if d is not None else next(x for x in data if x is not None) for d in data]
        out = learner.update(data, measure)
    for i in np.flatnonzero(alive):
        finite = bool(out.alive[i])
        metrics = out.metrics[i] if measure else {}
        if metrics and scheduled[i]:
            metrics = {**metrics, LR_TAG: rates[i]}
        env_data = {} if finite else nonfinite_env_data(runs.samplers[i].replay)
        yield RunEvent(int(i), Updated(step, updates + k, metrics, finite, env_data))
        if not finite:
            alive[i] = False
        elif members is not None and members.probe_due(i, step, updates):
            yield RunEvent(int(i), members.probe(i, step, learner, runs.samplers[i]))
    return out.weights


def epsilon_schedule(train) -> tuple:
    """The fields `loop.epsilon_at` reads: runs with equal ones have one epsilon at every step."""
    return (train.epsilon_start, train.epsilon_end, train.epsilon_decay_start, train.epsilon_decay_steps)


def choose_actions(runs: RunsState, policy: BatchedPolicy, epsilons: Sequence[float], live: Sequence[int]):
    """Epsilon-greedy per live run with its own generator, drawn as `loop.run_loop` draws it (one uniform,
    then one integer when it explores: each generator's own order, whichever run draws first); one batched
    forward for all runs when any of them acts greedily, one argmax over the greedy runs' rows."""
    n = len(epsilons)
    rngs = runs.rngs
    explore = [i for i in live if rngs[i].random() < epsilons[i]]
    if not explore and len(live) == n:
        return policy(runs.obs).argmax(axis=1)
    actions = np.zeros(n, np.int64)
    chosen = set(explore)
    greedy = [i for i in live if i not in chosen]
    if greedy:
        actions[greedy] = policy(runs.obs)[greedy].argmax(axis=1)
    num_actions = runs.num_actions
    for i in explore:
        actions[i] = rngs[i].integers(num_actions)
    return actions


def step_runs(
    runs: RunsState, live: Sequence[int], actions: np.ndarray, step: int, epsilons: Sequence[float]
) -> list[tuple[int, EpisodeEnd | EnvFailed]]:
    """Every live run's env step (`step_run`'s), their transitions stored; the runs' EpisodeEnd and EnvFailed
    outcomes, in run order. With stacked replays, the transitions go in together after the steps."""
    as_ints = actions.tolist()  # Python ints, as run_loop's
    if runs.stacked is None:
        stepped = ((i, step_run(runs, i, as_ints[i], step, epsilons[i])) for i in live)
        return [(i, outcome) for i, outcome in stepped if outcome is not None]
    envs, obs, next_obs, rewards, terminated = (
        runs.envs,
        runs.obs,
        runs.next_obs,
        runs.rewards,
        runs.terminated,
    )
    if len(live) < len(envs):  # a masked run's rows stay what they were
        next_obs[:] = obs
    outcomes, resets = [], []
    for i in live:
        try:
            next_obs[i], reward, terminated[i], truncated, _ = envs[i].step(as_ints[i])
        except Exception as exc:  # any env failure ends this run only; its row below is never read
            outcomes.append((i, EnvFailed.of(step, exc)))
            next_obs[i] = obs[i]
            continue
        rewards[i] = reward
        runs.returns[i] += float(reward)
        runs.lengths[i] += 1
        if terminated[i] or truncated:
            outcomes.append((i, EpisodeEnd(step, runs.returns[i], runs.lengths[i], epsilons[i])))
            runs.returns[i], runs.lengths[i] = 0.0, 0
            resets.append(i)
    runs.stacked.add(obs, actions, rewards, next_obs, terminated)
    obs[:] = next_obs
    for i in resets:
        obs[i] = envs[i].reset()[0]
    return outcomes


def step_run(
    runs: RunsState, i: int, action: int, step: int, epsilon: float
) -> EpisodeEnd | EnvFailed | None:
    """Run i's env step, its transition stored, its episode closed when it ends (its EpisodeEnd returned).
    EnvFailed when the env raised: the caller masks the run out, and the others go on."""
    try:
        next_obs, reward, terminated, truncated, _ = runs.envs[i].step(action)
    except Exception as exc:  # any env failure ends this run only
        return EnvFailed.of(step, exc)
    runs.replays[i].add(runs.obs[i], action, reward, next_obs, terminated, truncated)
    runs.returns[i] += float(reward)
    runs.lengths[i] += 1
    ended = None
    if terminated or truncated:
        ended = EpisodeEnd(step, runs.returns[i], runs.lengths[i], epsilon)
        runs.returns[i], runs.lengths[i] = 0.0, 0
        next_obs, _ = runs.envs[i].reset()
    runs.obs[i] = next_obs
    return ended
