"""N runs of one MLP architecture trained as one: their weights stacked along a leading run axis.

A small DQN's update call is mostly dispatch (docs/performance.md), so N seeds of one preset in N processes
pay N times for op launches that each move a few kilobytes. Here every variable carries a leading run axis
(kernels [N, in, out], biases [N, out], online and target, Adam's m and v), the forward pass is one batched
matmul per layer on [N, B, in], and one compiled call runs the burst's K updates for all N runs at once.

Runs may differ in values, not in shapes: the loss (kind among dqnlab's own, and bound), gamma, the
learning rate (a vector the loop sets per burst), Adam's epsilon, the global-norm clip (0: off), the target's
tau, and the initial weights (each run's are built exactly as `kinds.make_learner` builds them for its seed).
`check_batchable` names the first field that would need another shape.

Nothing is pooled across runs: each run's loss is its own mean over its batch, the tape differentiates the
sum of the runs' losses (run i's weights receive run i's gradient only: the runs share no operation that
mixes them), the gradient clip uses each run's own global norm, and every diagnostic reduces over all axes
but the run axis. A measured burst returns the same tags as `Learner.update` for every run, as one [N, M]
tensor pulled once and read per run by a `MetricReader` (tests/test_batched_learner.py compares them tag by
tag with the unbatched learner's).

A run whose loss or gradient norm goes non-finite is masked out: its weights and optimizer state freeze at
their values before that update (the unbatched learner keeps the non-finite update instead, and stops),
`alive` turns false for it, and the other runs continue as if it were not in the batch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from dqnlab._tf import tf
from dqnlab.batch_plan import SHARED_FIELDS  # the fields a batch's runs share (no TensorFlow there)
from dqnlab.compiled import Compiled
from dqnlab.config import Config
from dqnlab.learner import (
    BURST_COUNTS,
    BURST_STATS,
    MetricReader,
    MetricValues,
    burst_tags,
    divergence_origin,
    pack,
    panel_position,
    unpack,
)
from dqnlab.losses import LOSSES, td_target
from dqnlab.replay import Batch

ACTIVATIONS = {"relu": tf.nn.relu, "tanh": tf.math.tanh, "sigmoid": tf.math.sigmoid}
BETA_1, BETA_2 = 0.9, 0.999  # FusedAdam's (Keras's) defaults: no preset changes them
# 1 - beta as ResourceApplyAdam's kernel computes it, in float32 (`T(1) - beta1()`): 1 - 0.999 in float64
# rounds to another float32 (0.001) than 1 - float32(0.999) (0.00099998713). With these constants the
# written-out Adam equals the kernel bit for bit.
ONE_MINUS_BETA_1 = np.float32(1) - np.float32(BETA_1)
ONE_MINUS_BETA_2 = np.float32(1) - np.float32(BETA_2)

# A measured update's per-run scalars, in the pulled vector's order (`~` entries are raw: the host finishes
# them), then the per-variable families and the burst's sums and maxes.
PANEL_SCALARS = (
    "loss/td", "q/mean", "q/max", "q/target_mean", "td/abs_mean", "td/abs_max", "~half_blocked",
    "~half_nonzero_delta", "~beyond_bound", "~samples", "grad_norm/global", "grad_norm/preclip_global",
)  # fmt: skip
PANEL_FAMILIES = ("grad_norm", "~half_nonzero", "grad_nonfinite", "weight_norm", "update_ratio")
BURST_NAMES = (*BURST_STATS, *BURST_COUNTS)
PRECLIP = "grad_norm/preclip_global"


def check_batchable(cfgs: Sequence[Config]) -> None:
    """ValueError naming the first reason these configs cannot train as one batch."""
    if not cfgs:
        raise ValueError("a batch needs at least one run")
    first = cfgs[0]
    for section, names in SHARED_FIELDS.items():
        for name in names:
            for i, cfg in enumerate(cfgs[1:], 1):
                a, b = getattr(getattr(first, section), name), getattr(getattr(cfg, section), name)
                if a != b:
                    raise ValueError(f"run {i}: {section}.{name} is {b!r}, run 0's {a!r}: not batchable")
    for i, cfg in enumerate(cfgs):
        problem = None
        if cfg.network.kind != "mlp" or cfg.network.dueling:
            problem = "only plain (non-dueling) MLPs are batched"
        elif cfg.loss.kind not in LOSSES:
            problem = f"loss {cfg.loss.kind!r} is not one of dqnlab's own ({', '.join(LOSSES)})"
        elif cfg.optimizer.kind != "adam":
            problem = f"optimizer {cfg.optimizer.kind!r}: only adam is batched"
        elif cfg.network.activation not in ACTIVATIONS:
            problem = f"activation {cfg.network.activation!r} has no batched twin"
        if problem:
            raise ValueError(f"run {i}: {problem}")


def make_batched_learner(
    cfgs: Sequence[Config], seeds: Sequence[int], obs_shape: tuple[int, ...], num_actions: int
) -> BatchedLearner:
    """A batch whose run i starts exactly where the unbatched run of `cfgs[i]` and `seeds[i]` starts: its
    weights are those `kinds.make_learner` builds (the same construction, then stacked)."""
    from dqnlab.kinds import make_learner

    check_batchable(cfgs)
    weights = []
    for cfg, seed in zip(cfgs, seeds, strict=True):
        weights.append(make_learner(cfg, obs_shape, num_actions, seed).online_weights())
    return BatchedLearner(cfgs, stack_runs(weights), int(np.prod(obs_shape)))


def stack_runs(per_run: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """[run][variable] arrays -> [variable] arrays with a leading run axis."""
    return [np.stack(arrays) for arrays in zip(*per_run, strict=True)]


def run_slice(stacked: Sequence, i: int) -> list[np.ndarray]:
    """Run i's arrays of stacked ones (tensors or arrays)."""
    return [np.asarray(w)[i] for w in stacked]


def per_run(x: tf.Tensor, rank: int) -> tf.Tensor:
    """A [N] vector shaped [N, 1, ...] to broadcast against a tensor of `rank`."""
    return tf.reshape(x, [-1] + [1] * (rank - 1))


def half_squares(x: tf.Tensor) -> tf.Tensor:
    """Each run's half sum of squares [N] (`tf.nn.l2_loss` of its slice)."""
    return 0.5 * tf.reduce_sum(tf.square(x), axis=list(range(1, x.shape.rank)))


@tf.custom_gradient
def add_bias(x: tf.Tensor, bias: tf.Tensor):
    """x [N, B, O] plus each run's bias [N, 1, O] (`expand_biases`), in the trained forward pass. The bias's
    gradient, dy summed over B, is a batched matmul with ones, which sums each run's slice alone in the same
    order whatever N: the broadcast's own gradient, a reduce_sum over the middle axis of [N, B, O], picks its
    summation order by the whole shape, so a run's bias gradient (and with it its weights) could round
    differently with another number of runs beside it."""

    def grad(dy):
        ones = tf.ones([*dy.shape[:2], 1], dy.dtype)  # static shape: a constant of the graph
        return dy, tf.linalg.matmul(ones, dy, adjoint_a=True)

    return x + bias, grad


def expand_biases(weights: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """Kernels as they are, biases [N, O] as [N, 1, O]: once per network read, not once per layer call."""
    return [w if j % 2 == 0 else tf.expand_dims(w, 1) for j, w in enumerate(weights)]


def half_squares_of(xs: Sequence[tf.Tensor]) -> tf.Tensor:
    """Each run's half sum of squares of each tensor [N, len(xs)]: one halving for all of them."""
    return 0.5 * tf.stack([tf.reduce_sum(tf.square(x), axis=list(range(1, x.shape.rank))) for x in xs], 1)


def counts(x: tf.Tensor) -> tf.Tensor:
    """Each run's sum [N] of a float tensor [N, ...]."""
    return tf.reduce_sum(x, axis=list(range(1, x.shape.rank)))


class BatchedUpdate(NamedTuple):
    alive: np.ndarray  # [N] bool: the run has stayed finite so far (this burst included)
    metrics: list[MetricValues]  # per run, the measured burst's tags; empty without diagnostics
    weights: list[tf.Tensor]  # online weights after the burst, stacked [N, ...]


class Applied(NamedTuple):
    """One update of every run, applied to the variables (runs not kept left as they were)."""

    finite: tf.Tensor  # [N] bool: the run's loss and raw gradient norm are finite
    loss: tf.Tensor  # [N]
    q: tf.Tensor  # [N, B, A]
    target: tf.Tensor  # [N, B]
    delta: tf.Tensor  # [N, B]
    dloss_dqa: tf.Tensor  # [N, B]
    grads: list[tf.Tensor]  # as applied: clipped where clipping is on
    preclip_norm: tf.Tensor  # [N]
    before: list[tf.Tensor]  # the online weights the update started from (read before it wrote them)
    raw_half_squares: tf.Tensor  # [N, V] each run's raw (pre-clip) gradient's half sums of squares


class BatchedLearner:
    """Online and target weights of N runs stacked, Adam on them, and one compiled burst for all runs."""

    def __init__(self, cfgs: Sequence[Config], weights: Sequence[np.ndarray], obs_dim: int):
        """`weights`: the runs' online weights stacked ([N, ...] per variable, Keras's order: kernel, bias,
        ...); the target starts as a copy, Adam's state at zero."""
        check_batchable(cfgs)
        self.cfgs, self.num_runs = list(cfgs), len(cfgs)
        first = cfgs[0]
        self._obs_dim, self._double = obs_dim, bool(first.train.double_dqn)
        self._act = ACTIVATIONS[first.network.activation]
        names = [f"hidden_{i}" for i in range(len(first.network.hidden))] + ["q_head"]
        self.variable_tags = [f"{name}/{part}" for name in names for part in ("kernel", "bias")]
        self.online = [tf.Variable(w, dtype=tf.float32, name="online") for w in weights]
        self.target = [tf.Variable(w, dtype=tf.float32, name="target") for w in weights]
        self._m = [tf.Variable(tf.zeros_like(w), name="m") for w in self.online]
        self._v = [tf.Variable(tf.zeros_like(w), name="v") for w in self.online]
        self._b1_power = tf.Variable(1.0, name="beta_1_power")
        self._b2_power = tf.Variable(1.0, name="beta_2_power")
        self.alive = tf.Variable(tf.ones([self.num_runs], tf.bool), name="alive")
        self.iterations = 0  # updates so far (every run's: masked runs count too); sets the panel position
        value = lambda f: tf.constant([f(c) for c in cfgs], tf.float32)  # noqa: E731
        self.learning_rates = tf.Variable(value(lambda c: c.optimizer.learning_rate), name="learning_rate")
        self._gamma = value(lambda c: c.train.gamma)
        self._bound = value(lambda c: c.loss.bound)
        self._clip = value(lambda c: c.train.grad_clip_norm)
        self._epsilon = value(lambda c: c.optimizer.epsilon)
        # Static choices of the traced update: a value shared by every run needs no per-run selection.
        self._shared_epsilon = len({np.float32(c.optimizer.epsilon) for c in cfgs}) == 1
        self._any_clip = any(c.train.grad_clip_norm > 0 for c in cfgs)
        self._all_clip = all(c.train.grad_clip_norm > 0 for c in cfgs)
        self._tau = value(lambda c: c.train.target_tau)
        self._loss_kinds = sorted({c.loss.kind for c in cfgs})
        self._loss_index = tf.constant([self._loss_kinds.index(c.loss.kind) for c in cfgs], tf.int32)
        self._sizes = [float(np.prod(w.shape[1:])) for w in weights]
        self._compiled: dict[tuple[bool, bool], Compiled] = {}
        # Known on the host: whether every run is alive and all share one learning rate (`_kernel_burst`).
        self._all_alive = True
        self._alive_before = np.ones(self.num_runs, bool)  # on the host: which runs a burst starts alive
        self._origins: dict[int, dict] = {}  # run -> where it went non-finite (`nonfinite_origin`)
        self._shared_lr = len({np.float32(c.optimizer.learning_rate) for c in cfgs}) == 1
        self._readers: list[MetricReader] | None = None
        self._sync = tf.function(self._sync_impl, autograph=False)

    # -- public -------------------------------------------------------------------------------------

    def update(self, bursts: Sequence[Batch], with_diagnostics: bool) -> BatchedUpdate:
        """K updates of every run in one compiled call; `bursts[i]` is run i's [K, B, ...] batches.

        A burst of K > 1 updates whose runs are all alive and share learning rate and epsilon (a batch of
        seeds) takes `_kernel_burst`: the fused kernel at every update, without the per-update `tf.cond`
        that chooses it. Should a run go non-finite in it, the kernel has applied that update (the masked
        Adam would have kept the run's weights): the burst is undone from the state it started from (read
        at its start and returned) and run again through the cond. The other runs' results are the same
        either way (the written-out Adam equals the kernel bit for bit), so only the cost differs."""
        return self.update_packed(np.stack([pack(Batch(*b)) for b in bursts]), with_diagnostics)

    def update_stacked(self, bursts: Batch, with_diagnostics: bool) -> BatchedUpdate:
        """`update` of every run's burst given as one stacked Batch [N, K, B, ...]
        (`replay.StackedReplays.sample_many`)."""
        return self.update_packed(pack(bursts), with_diagnostics)

    def update_packed(self, packed: np.ndarray, with_diagnostics: bool) -> BatchedUpdate:
        """`update` of the bursts packed [N, K, B, F] (`learner.pack`)."""
        num_updates = packed.shape[1]
        args = [packed]
        if with_diagnostics:
            position = panel_position(self.iterations // num_updates, num_updates)
            args.append(np.asarray(position, np.int32))
        kernel = self._kernel_burst(num_updates)
        alive, values, weights, origin, *start = self._function(args, bool(with_diagnostics), kernel)(*args)
        alive = alive.numpy()
        if kernel and not alive.all():  # a run went non-finite under the kernel: undo, and take the cond
            self._restore(start)
            alive, values, weights, origin = self._function(args, bool(with_diagnostics), False)(*args)
            alive = alive.numpy()
        if not alive.all():
            self._record_origins(origin, alive)
        self._alive_before = alive
        self.iterations += num_updates
        self._all_alive = bool(alive.all())
        metrics = []
        if with_diagnostics:
            rows = values.numpy().tolist()
            metrics = [reader.read(row) for reader, row in zip(self._readers, rows, strict=True)]
        return BatchedUpdate(alive, metrics, weights)

    def _kernel_burst(self, num_updates: int) -> bool:
        """Whether this burst takes the fused kernel unconditionally (see `update`). Not for one-update
        bursts: returning the start state costs the variables a copy each burst (the kernel writes buffers
        the returned reads share), more than the one cond it saves."""
        return num_updates > 1 and self._shared_epsilon and self._shared_lr and self._all_alive

    def _function(self, args: list[np.ndarray], with_diagnostics: bool, kernel: bool) -> Compiled:
        return self._compiled.get((with_diagnostics, kernel)) or self._compile(args, with_diagnostics, kernel)

    def _restore(self, start: Sequence[tf.Tensor]) -> None:
        """The state a `_kernel_burst` started from, back in the variables (every run was alive then)."""
        variables = [*self.online, *self._m, *self._v, self._b1_power, self._b2_power]
        for var, value in zip(variables, start, strict=True):
            var.assign(value)
        self.alive.assign(tf.ones([self.num_runs], tf.bool))

    def set_learning_rates(self, rates: Sequence[float]) -> None:
        """The runs' learning rates for the next bursts (a schedule's values at the burst's env step)."""
        rates = np.asarray(rates, np.float32)
        self.learning_rates.assign(rates)
        self._shared_lr = bool(np.all(rates == rates[0]))

    def mask(self, runs: Sequence[int]) -> None:
        """Mask `runs` out (their env failed): their weights and optimizer state freeze from now on."""
        alive = self.alive.numpy()
        alive[list(runs)] = False
        self.alive.assign(alive)
        self._alive_before = alive
        self._all_alive = bool(alive.all())

    def nonfinite_origin(self, i: int) -> dict | None:
        """Where run i's updates went non-finite, as `Learner.nonfinite_origin` says it, or None while it
        has not: the update of its last burst (0-based, `update_in_burst`) whose loss or raw gradient norm
        was not finite, and the variables whose raw (pre-clip) gradient had a non-finite sum of squares
        there, in model order (`variable`: the first; None when there is none)."""
        return self._origins.get(i)

    def _record_origins(self, origin: tf.Tensor, alive: np.ndarray) -> None:
        rows = origin.numpy()
        for i in np.flatnonzero(self._alive_before & ~alive):
            one_update = rows.shape[1] == len(self.variable_tags)  # `_origin`'s row of a one-update burst
            half_squares, update = (rows[i], 0) if one_update else (rows[i, :-1], int(rows[i, -1]))
            self._origins[int(i)] = divergence_origin(self.variable_tags, half_squares, update)

    def update_target(self) -> None:
        """Every run's target from its online weights (a hard copy at tau 1, Polyak averaging below)."""
        self._sync()

    def online_weights(self) -> list[np.ndarray]:
        return [v.numpy() for v in self.online]

    def run_weights(self, i: int) -> list[np.ndarray]:
        """Run i's online weights, as the unbatched learner's `online_weights`."""
        return run_slice(self.online, i)

    # -- checkpoints (not on the hot path) ------------------------------------------------------------

    def run_state(self, i: int) -> dict[str, list[np.ndarray]]:
        """Run i's slice of every stacked variable: online and target weights, Adam's m and v."""
        return {
            "online": run_slice(self.online, i),
            "target": run_slice(self.target, i),
            "m": run_slice(self._m, i),
            "v": run_slice(self._v, i),
        }

    def beta_powers(self) -> tuple[np.float32, np.float32]:
        """Adam's beta_1^t and beta_2^t, one pair for the batch (t: the batch's updates, masked runs' too)."""
        return np.float32(self._b1_power.numpy()), np.float32(self._b2_power.numpy())

    def load_run(self, i: int, state: dict[str, Sequence[np.ndarray]]) -> None:
        """Put run i's slice back (`run_state`'s arrays); the other runs' slices are not touched."""
        for name, stacked in (
            ("online", self.online),
            ("target", self.target),
            ("m", self._m),
            ("v", self._v),
        ):
            for var, value in zip(stacked, state[name], strict=True):
                whole = var.numpy()
                if whole[i].shape != np.shape(value):
                    raise ValueError(f"{name}: run slice {whole[i].shape}, given {np.shape(value)}")
                whole[i] = value
                var.assign(whole)

    def load_counters(self, updates: int, beta_powers: tuple[float, float], alive: Sequence[bool]) -> None:
        """The batch's shared state after `updates` updates (a resume): the panel position's count, Adam's
        beta powers and which runs are live (the others masked: their slices are never read by a live run)."""
        self.iterations = int(updates)
        self._b1_power.assign(np.float32(beta_powers[0]))
        self._b2_power.assign(np.float32(beta_powers[1]))
        self.alive.assign(np.asarray(alive, bool))
        self._alive_before = np.asarray(alive, bool).copy()
        self._all_alive = bool(self._alive_before.all())

    # -- compiled -----------------------------------------------------------------------------------

    def _compile(self, args: list[np.ndarray], with_diagnostics: bool, kernel: bool) -> Compiled:
        specs = [tf.TensorSpec(a.shape, a.dtype) for a in args]
        burst = self._measured_burst if with_diagnostics else self._plain_burst
        compiled = Compiled(functools.partial(burst, kernel=kernel), specs)
        self._compiled[(with_diagnostics, kernel)] = compiled
        if with_diagnostics:
            self._readers = [self._metric_reader(i, args[0].shape[1]) for i in range(self.num_runs)]
        return compiled

    def _sync_impl(self) -> None:
        for t, o in zip(self.target, self.online, strict=True):
            tau = per_run(self._tau, o.shape.rank)
            t.assign(tf.where(tau >= 1.0, o, tau * o + (1.0 - tau) * t))

    def _burst_start(self, kernel: bool) -> tuple:
        """What a burst reads once: alive [N], the target weights (`expand_biases`), Adam's beta powers, and
        whether every run has the same learning rate now (the fused kernel's condition, with a shared
        epsilon; None with `kernel`: the kernel at every update, see `update`)."""
        rates = self.learning_rates.read_value()
        shared_lr = None if kernel else tf.reduce_all(tf.equal(rates, rates[0]))
        target = expand_biases([tf.convert_to_tensor(v) for v in self.target])
        return (
            self.alive.read_value(),
            target,
            self._b1_power.read_value(),
            self._b2_power.read_value(),
            shared_lr,
        )

    def _burst_end(self, alive: tf.Tensor, b1_power: tf.Tensor, b2_power: tf.Tensor) -> list[tf.Tensor]:
        """Store what the burst carried; the online weights after it (read after every update)."""
        self._b1_power.assign(b1_power)
        self._b2_power.assign(b2_power)
        self.alive.assign(alive)
        return [tf.convert_to_tensor(v) for v in self.online]

    def _start_state(self, kernel: bool) -> list[tf.Tensor]:
        """With `kernel`, what `_restore` needs to undo the burst, read before its first update."""
        if not kernel:
            return []
        return [v.read_value() for v in (*self.online, *self._m, *self._v, self._b1_power, self._b2_power)]

    def _plain_burst(self, packed: tf.Tensor, kernel: bool = False):
        start_state = self._start_state(kernel)
        alive, target, b1_power, b2_power, shared_lr = self._burst_start(kernel)
        num_updates = packed.shape[1]

        def body(i, alive, b1_power, b2_power, origin):
            b1_power, b2_power = b1_power * BETA_1, b2_power * BETA_2
            applied = self._apply(packed[:, i], target, alive, b1_power, b2_power, shared_lr)
            origin = self._origin(origin, i, alive, applied, kernel, num_updates)
            return i + 1, tf.logical_and(alive, applied.finite), b1_power, b2_power, origin

        start = (tf.constant(0), alive, b1_power, b2_power, self._no_origin())
        if num_updates == 1:  # a straight line: no loop machinery for one-update-per-call settings
            _, alive, b1_power, b2_power, origin = body(*start)
        else:
            loop = tf.while_loop(lambda i, *_: i < num_updates, body, start)
            _, alive, b1_power, b2_power, origin = loop
        weights = self._burst_end(alive, b1_power, b2_power)
        return alive, tf.zeros([0]), weights, origin, *start_state

    def _measured_burst(self, packed: tf.Tensor, position: tf.Tensor, kernel: bool = False):
        """Every update keeps a record [N, R] (TD errors, dL/dQ(s,a), loss, raw norm, max Q, samples); the
        update at `position` also computes the panel [N, P]. Returns alive, [panel, burst sums, burst maxes]
        per run [N, M], and the weights (and with `kernel`, the start state)."""
        start_state = self._start_state(kernel)
        alive, target, b1_power, b2_power, shared_lr = self._burst_start(kernel)
        num_updates = packed.shape[1]

        def update(i, alive, b1_power, b2_power, origin):
            b1_power, b2_power = b1_power * BETA_1, b2_power * BETA_2
            applied = self._apply(packed[:, i], target, alive, b1_power, b2_power, shared_lr)
            origin = self._origin(origin, i, alive, applied, kernel, num_updates)
            return applied, tf.logical_and(alive, applied.finite), b1_power, b2_power, origin

        if num_updates == 1:  # its own panel update, no loop
            applied, alive, b1_power, b2_power, origin = update(
                0, alive, b1_power, b2_power, self._no_origin()
            )
            panel, rows = self._panel(applied), self._record(applied)[None]
        else:

            def body(i, alive, b1_power, b2_power, origin, panel, records):
                applied, alive, b1_power, b2_power, origin = update(i, alive, b1_power, b2_power, origin)
                panel = tf.cond(tf.equal(i, position), lambda: self._panel(applied), lambda: panel)
                records = records.write(i, self._record(applied))
                return i + 1, alive, b1_power, b2_power, origin, panel, records

            records = tf.TensorArray(tf.float32, size=num_updates)
            panel = tf.zeros([self.num_runs, self._panel_size()])
            start = (tf.constant(0), alive, b1_power, b2_power, self._no_origin(), panel, records)
            loop = tf.while_loop(lambda i, *_: i < num_updates, body, start)
            _, alive, b1_power, b2_power, origin, panel, records = loop
            rows = records.stack()
        table = self._burst_table(rows)  # [K, N, S]
        values = tf.concat([panel, tf.reduce_sum(table, 0), tf.reduce_max(table, 0)], axis=1)
        return alive, values, self._burst_end(alive, b1_power, b2_power), origin, *start_state

    def _no_origin(self) -> tf.Tensor:
        return tf.zeros([self.num_runs, len(self.online) + 1])

    def _origin(self, origin, i, alive, applied: Applied, kernel: bool, num_updates: int) -> tf.Tensor:
        """[N, V + 1]: for a run that goes non-finite at update `i` (alive before it, not finite now), that
        update's raw half squares and `i`; the rows of the others as they were. For `nonfinite_origin`. The
        kernel burst keeps none (a run going non-finite there reruns the burst through the cond). One
        update a burst: that update's raw half squares as they are ([N, V]; the update is 0), no op added."""
        if kernel:
            return origin
        if num_updates == 1:
            return applied.raw_half_squares
        row = tf.concat([applied.raw_half_squares, tf.fill([self.num_runs, 1], tf.cast(i, tf.float32))], 1)
        first = tf.logical_and(alive, tf.logical_not(applied.finite))
        return tf.where(first[:, None], row, origin)

    def _panel_size(self) -> int:
        return len(PANEL_SCALARS) + len(PANEL_FAMILIES) * len(self.online)

    def _q_values(self, weights: list[tf.Tensor], obs: tf.Tensor, trained: bool = False) -> tf.Tensor:
        """Q-values [N, B, A] of obs [N, B, D]: one batched matmul per layer for all runs; `weights` as
        `expand_biases` gives them. `trained`: the pass the tape differentiates (`add_bias`'s gradient)."""
        add = add_bias if trained else tf.add
        h = obs
        for j in range(0, len(weights) - 2, 2):
            h = self._act(add(tf.linalg.matmul(h, weights[j]), weights[j + 1]))
        return add(tf.linalg.matmul(h, weights[-2]), weights[-1])

    def _per_sample_loss(self, delta: tf.Tensor) -> tf.Tensor:
        """Each run's own loss kind and bound, per sample [N, B]. With several kinds in the batch, each kind
        is computed on its own runs' TD errors (the others' replaced by 0) and the kinds selected with
        `tf.where`: the gradient a run gets is its own kind's alone, exactly, even where its TD error is
        not finite (a kind evaluated at another run's NaN would send back 0 x NaN = NaN through the select,
        and a finite clipped-delta gradient would read NaN: the divergence origin would differ from the
        unbatched run's)."""
        bound = self._bound[:, None]
        if len(self._loss_kinds) == 1:
            return LOSSES[self._loss_kinds[0]](delta, bound)
        loss = None
        for k, kind in enumerate(self._loss_kinds):
            mine = tf.equal(self._loss_index, k)[:, None]
            value = LOSSES[kind](tf.where(mine, delta, 0.0), bound)
            loss = value if loss is None else tf.where(mine, value, loss)
        return loss

    def _apply(self, packed, target, alive, b1_power, b2_power, shared_lr) -> Applied:
        """One update of every run from packed [N, B, F]: TD loss, its gradient, the per-run clip, and Adam
        applied to the variables (a run not alive, or not finite now, keeps its weights and Adam state)."""
        weights = [tf.convert_to_tensor(v) for v in self.online]
        b = unpack(packed, self._obs_dim)
        discounts = b.discounts * self._gamma[:, None]  # [N, B]
        q_next = self._q_values(target, b.next_obs)  # [N, B, A]
        selector = self._q_values(expand_biases(weights), b.next_obs) if self._double else None
        target_tm1 = td_target(b.rewards, discounts, q_next, selector)  # [N, B]
        with tf.GradientTape() as tape:
            tape.watch(weights)
            q = self._q_values(expand_biases(weights), b.obs, trained=True)
            qa = tf.gather(q, b.actions, batch_dims=2)  # [N, B]
            delta = target_tm1 - qa
            loss = tf.reduce_mean(self._per_sample_loss(delta), axis=1)  # [N]: each run's own mean
            total = tf.reduce_sum(loss)  # run i's weights get run i's gradient only
        *grads, dloss_dqa = tape.gradient(total, [*weights, qa])
        raw_half = half_squares_of(grads)  # [N, V]
        preclip = tf.sqrt(tf.reduce_sum(raw_half, 1) * 2.0)  # [N]
        if self._any_clip:
            # tf.clip_by_global_norm's own arithmetic, per run: NaN scale when the norm is not finite.
            scale = self._clip * tf.minimum(1.0 / preclip, 1.0 / self._clip) + (preclip - preclip)
            if not self._all_clip:
                scale = tf.where(self._clip > 0, scale, 1.0)
            grads = [g * per_run(scale, g.shape.rank) for g in grads]
        finite = tf.logical_and(tf.math.is_finite(loss), tf.math.is_finite(preclip))
        self._adam(grads, weights, tf.logical_and(alive, finite), b1_power, b2_power, shared_lr)
        return Applied(finite, loss, q, target_tm1, delta, dloss_dqa, grads, preclip, weights, raw_half)

    def _adam(self, grads, weights, keep, b1_power, b2_power, shared_lr) -> None:
        """Adam on the stacked variables, in place. When every run is kept and all share learning rate and
        epsilon (a batch of seeds), TensorFlow's fused `ResourceApplyAdam` (what `optimizers.FusedAdam`
        calls; elementwise, so the run axis changes nothing): one pass per variable. Otherwise its arithmetic
        written out with per-run learning rates and epsilons, a run not kept selected back to its weights and
        state (`_written_adam`). The two are equal bit for bit (tests/test_batched_learner.py), so which one
        ran does not show in the results. One `tf.cond` per update: each costs about as much as a few
        elementwise ops (its inputs are switched), so a batch with per-run learning rates takes the masked
        branch, selects included, rather than a second cond."""
        masked = lambda: self._written_adam(grads, weights, keep, b1_power, b2_power)  # noqa: E731
        if shared_lr is None:  # a `_kernel_burst`: every run kept unless it goes non-finite (then undone)
            return self._fused_adam(grads, b1_power, b2_power)
        if not self._shared_epsilon:
            return masked()
        kernel = lambda: self._fused_adam(grads, b1_power, b2_power)  # noqa: E731
        return tf.cond(tf.logical_and(shared_lr, tf.reduce_all(keep)), kernel, masked)

    def _fused_adam(self, grads, b1_power, b2_power) -> tf.Tensor:
        lr = self.learning_rates[0]
        for g, var, m, v in zip(grads, self.online, self._m, self._v, strict=True):
            tf.raw_ops.ResourceApplyAdam(
                var=var.handle,
                m=m.handle,
                v=v.handle,
                beta1_power=b1_power,
                beta2_power=b2_power,
                lr=lr,
                beta1=tf.constant(BETA_1, tf.float32),
                beta2=tf.constant(BETA_2, tf.float32),
                epsilon=self._epsilon[0],
                grad=g,
            )
        return tf.constant(True)

    def _written_adam(self, grads, weights, keep, b1_power, b2_power) -> tf.Tensor:
        """ResourceApplyAdam's arithmetic with per-run learning rate and epsilon, in its order and with its
        float32 constants: alpha = lr sqrt(1 - b2^t) / (1 - b1^t); m += (g - m)(1 - b1);
        v += (g^2 - v)(1 - b2); w -= m alpha / (sqrt(v) + eps). A run not kept (`keep` [N]) keeps its
        weights and state."""
        alpha = self.learning_rates * tf.sqrt(1.0 - b2_power) / (1.0 - b1_power)  # [N]
        for g, w, var, m_var, v_var in zip(grads, weights, self.online, self._m, self._v, strict=True):
            rank = w.shape.rank
            m0, v0 = tf.convert_to_tensor(m_var), tf.convert_to_tensor(v_var)
            m = m0 + (g - m0) * ONE_MINUS_BETA_1
            v = v0 + (tf.square(g) - v0) * ONE_MINUS_BETA_2
            new = w - (m * per_run(alpha, rank)) / (tf.sqrt(v) + per_run(self._epsilon, rank))
            kept = per_run(keep, rank)
            new, m, v = tf.where(kept, new, w), tf.where(kept, m, m0), tf.where(kept, v, v0)
            var.assign(new)
            m_var.assign(m)
            v_var.assign(v)
        return tf.constant(True)

    def _norm(self, preclip: tf.Tensor) -> tf.Tensor:
        """The applied gradient's global norm [N]: min(raw, clip) where clipping is on."""
        if not self._any_clip:
            return preclip
        clipped = tf.minimum(preclip, self._clip)
        return clipped if self._all_clip else tf.where(self._clip > 0, clipped, preclip)

    def _panel(self, applied: Applied) -> tf.Tensor:
        """The panel update's entries [N, P]: `PANEL_SCALARS`, then each of `PANEL_FAMILIES` over the
        variables; the same quantities as `Learner._panel` and `learner.per_variable_families`, per run."""
        norm = self._norm(applied.preclip_norm)
        abs_delta = tf.abs(applied.delta)
        sign_delta = tf.sign(applied.delta)
        half_nonzero = half_squares(sign_delta)
        samples = tf.cast(tf.shape(applied.delta)[1], tf.float32)
        scalars = [
            applied.loss,
            tf.reduce_mean(applied.q, axis=[1, 2]),
            tf.reduce_max(applied.q, axis=[1, 2]),
            tf.reduce_mean(applied.target, axis=1),
            tf.reduce_mean(abs_delta, axis=1),
            tf.reduce_max(abs_delta, axis=1),
            half_nonzero - half_squares(sign_delta * tf.sign(applied.dloss_dqa)),
            half_nonzero,
            tf.reduce_sum(tf.cast(abs_delta > self._bound[:, None], tf.float32), axis=1),
            tf.fill([self.num_runs], samples),
            norm,
            applied.preclip_norm,
        ]
        grads, before = applied.grads, applied.before
        after = [tf.convert_to_tensor(v) for v in self.online]  # read after the update wrote them
        raw_squares = half_squares_of(grads)  # of the applied gradient
        weight_norm = tf.sqrt(2.0 * tf.stack([half_squares(w) for w in before], axis=1))
        step_norm = tf.sqrt(
            2.0 * tf.stack([half_squares(a - w) for a, w in zip(after, before, strict=True)], 1)
        )
        finite = tf.stack([counts(tf.cast(tf.math.is_finite(g), tf.float32)) for g in grads], axis=1)
        families = [
            tf.sqrt(2.0 * raw_squares),
            tf.stack([half_squares(tf.sign(g)) for g in grads], axis=1),
            tf.constant(self._sizes) - finite,
            weight_norm,
            tf.math.divide_no_nan(step_norm, weight_norm),
        ]
        return tf.concat([tf.stack(scalars, axis=1), *families], axis=1)

    def _record(self, applied: Applied) -> tf.Tensor:
        """What a measured burst keeps of every update [N, 2B + 4]."""
        samples = tf.cast(tf.shape(applied.delta)[1], tf.float32)
        scalars = [applied.loss, applied.preclip_norm, tf.reduce_max(applied.q, axis=[1, 2])]
        scalars.append(tf.fill([self.num_runs], samples))
        return tf.concat([applied.delta, applied.dloss_dqa, tf.stack(scalars, axis=1)], axis=1)

    def _burst_table(self, rows: tf.Tensor) -> tf.Tensor:
        """`BURST_NAMES` statistics of every update and run [K, N, S] from the records [K, N, R]."""
        c = (rows.shape[2] - 4) // 2
        delta, dloss_dqa = rows[..., :c], rows[..., c : 2 * c]
        loss, preclip, q_max, samples = tf.unstack(rows[..., 2 * c :], axis=2)  # [K, N] each
        abs_delta, sign_delta = tf.abs(delta), tf.sign(delta)
        nonzero = tf.reduce_sum(tf.square(sign_delta), 2)
        blocked = nonzero - tf.reduce_sum(tf.square(sign_delta * tf.sign(dloss_dqa)), 2)
        beyond = tf.reduce_sum(tf.cast(abs_delta > self._bound[None, :, None], tf.float32), 2)
        stats = {
            "loss/td": loss,
            "td/grad_blocked_frac": tf.math.divide_no_nan(blocked, nonzero),
            "td/beyond_bound_frac": tf.math.divide_no_nan(beyond, samples),
            "td/abs_max": tf.reduce_max(abs_delta, 2),
            "q/max": q_max,
            "grad_norm/global": self._norm(preclip),
            PRECLIP: preclip,
            "td/grad_blocked_count": blocked,
            "td/nonzero_delta_count": nonzero,
        }
        return tf.stack([stats[name] for name in BURST_NAMES], axis=2)

    # -- reading --------------------------------------------------------------------------------------

    def pulled_names(self) -> list[str]:
        """The entries of a measured burst's row, in order."""
        families = [f"{family}/{tag}" for family in PANEL_FAMILIES for tag in self.variable_tags]
        sums = [f"~sum/{name}" for name in BURST_NAMES]
        return [*PANEL_SCALARS, *families, *sums, *(f"~max/{name}" for name in BURST_NAMES)]

    def _metric_reader(self, run: int, num_updates: int) -> MetricReader:
        """Run `run`'s tags read off its row: the tags `Learner._metric_reader` gives the unbatched run of
        the same config (the pre-clip norm and `grad/clipped` only where its clipping is on)."""
        clip = float(self.cfgs[run].train.grad_clip_norm)
        reader = MetricReader(self.pulled_names())
        for name in self.pulled_names():
            if not name.startswith("~") and (clip > 0 or name != PRECLIP):
                reader.tag(name)
        reader.ratio("td/grad_blocked_frac", "~half_blocked", "~half_nonzero_delta")
        reader.ratio("td/beyond_bound_frac", "~beyond_bound", "~samples")
        if clip > 0:
            reader.above("grad/clipped", PRECLIP, clip)
        reader.total("grad/nonfinite", [f"grad_nonfinite/{tag}" for tag in self.variable_tags])
        hidden = [tag for tag in self.variable_tags if tag.startswith("hidden_") and tag.endswith("/kernel")]
        if len(hidden) >= 2:
            reader.ratio("grad/depth_ratio", f"grad_norm/{hidden[0]}", f"grad_norm/{hidden[-1]}")
        for tag, size in zip(self.variable_tags, self._sizes, strict=True):
            reader.zero_frac(f"grad_zero_frac/{tag}", f"~half_nonzero/{tag}", size)
        stats = [name for name in BURST_STATS if clip > 0 or name != PRECLIP]
        burst_tags(reader, stats, num_updates)
        reader.finish()
        return reader
