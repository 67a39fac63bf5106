"""The DQN learner: online and target Q-networks, the optimizer, and one compiled update burst.

`Learner.update(batch, with_diagnostics)` runs K = batch.actions.shape[0] gradient updates inside ONE compiled
call (a `tf.while_loop` written with autograph off), because per-call dispatch and not arithmetic is what a
small DQN spends its time on (docs/performance.md, "Where the time goes"). A burst with diagnostics is
*measured*: every one of its updates adds a few scalars (TD loss and statistics, gradient norms, Q max) to a
running sum and a running max, and one update of it, the *panel update* at `panel_position(burst, K)`,
computes the whole panel (per-variable gradient norms, zero counts, update ratios...). The panel and the
burst's sums and maxes come back as one vector, pulled to the host once and read as tag -> float
(`MetricValues`; the tags are docs/metrics.md's). A plain burst's updates return nothing but a finiteness flag
and their raw gradient's half sums of squares (where a divergence started: `nonfinite_origin`). Nothing in the
graph writes summaries.

Set DQNLAB_EAGER=1 to run the step eagerly (debuggable with print and pdb).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from dqnlab import probes
from dqnlab._tf import keras, tf
from dqnlab.compiled import Compiled
from dqnlab.config import Config
from dqnlab.losses import get_loss, td_target
from dqnlab.networks import (
    NumpyMLP,
    depth_path_layers,
    hidden_activations,
    penultimate_features,
    variable_tag,
)
from dqnlab.replay import Batch  # one transition structure, numpy in replay, tensors in the graph


class TDTerms(NamedTuple):
    """What one TD-loss evaluation gives the update and its diagnostics (per trained sample, flat)."""

    loss: tf.Tensor
    grads: list[tf.Tensor]
    dloss_dqa: tf.Tensor | None  # dL/dQ(s,a) per sample; None unless asked for
    q: tf.Tensor  # [N, A] Q-values of the trained samples
    target: tf.Tensor  # [N]
    delta: tf.Tensor  # [N]
    extra: dict[str, tf.Tensor]  # architecture-specific metrics of the measured update (BPTT norms)
    capacity: int | None = None  # the most trained samples a batch can hold, when N is not static (the RNN's)


class MetricValues(Mapping):
    """The measured burst's metrics, tag -> float: a read-only view of the values read off the pulled vector.
    Its one consumer (the summary writer) walks it once, so building a dict of ~70 entries per measured burst
    first would be spent for nothing (~1% of a small network's update call)."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: Sequence[float]):
        self._index, self._values = index, values

    def __getitem__(self, tag: str) -> float:
        return self._values[self._index[tag]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._values)

    def items(self) -> Iterable[tuple[str, float]]:  # in tag order, without a lookup per tag
        return zip(self._index, self._values, strict=True)

    def __repr__(self) -> str:
        return f"MetricValues({dict(self.items())})"


class MetricReader:
    """How the measured burst's pulled float32 vector becomes tag -> float, built while tracing.

    Most entries are tags as they are. Some are raw (named `~...`, not tags), and the host finishes them in
    float64: count-based fractions are divided here, exactly (a float32 division is off in the 8th digit when
    the denominator is not a power of two: 19/768 = 0.0247395833, not 0.0247395635), half counts doubled,
    burst sums divided by the burst's length. A few scalars of the panel are cheaper here too, a Python
    operation against a graph op or three (`Learner._metric_reader`).

    A derived value may read pulled entries and values derived before it: tags, or raw values named `~...`
    that only later ones read. `finish` writes them all as one Python function of the pulled list (one
    expression per value, no loop or lookup per value): a measured update's ~50 tags cost ~1.4 us to read
    instead of ~3.6 us through per-kind loops (docs/performance.md)."""

    def __init__(self, pulled: list[str]):
        self._pulled = {name: f"v[{i}]" for i, name in enumerate(pulled)}
        self._tags: dict[str, str] = {}  # tag -> the expression of its value
        self._derived: dict[str, str] = {}  # derived name (tag or `~raw`) -> its local variable
        self._lines: list[str] = []  # the local variables' assignments, in order
        self._consts: dict[str, float] = {}
        self._read: Callable | None = None

    def _ref(self, name: str) -> str:
        """The expression of a value derived before, else of a pulled entry."""
        return self._derived.get(name) or self._pulled[name]

    def _const(self, value: float) -> str:
        name = f"k{len(self._consts)}"
        self._consts[name] = float(value)
        return name

    def tag(self, tag: str, name: str | None = None) -> None:
        """`tag` is the pulled entry `name` (itself by default) or another tag's value."""
        self._tags[tag] = self._tags[name] if name in self._tags else self._pulled[name or tag]

    def _derive(self, name: str, expression: str) -> None:
        local = f"d{len(self._lines)}"
        self._lines.append(f"{local} = {expression}")
        self._derived[name] = local
        if not name.startswith("~"):
            self._tags[name] = local

    def reserve(self, tags: list[str]) -> None:
        """Place `tags` here in the tag order; each must then be derived (or tagged) before `finish`."""
        for tag in tags:
            self._tags[tag] = ""

    def minimum(self, tag: str, name: str, bound: float) -> None:
        """min(entry, bound), NaN where the entry is NaN (as `tf.minimum`)."""
        x, bound = self._ref(name), self._const(bound)
        self._derive(tag, f"({bound} if {x} > {bound} else {x})")

    def root(self, tag: str, half: str, scale: str | None = None) -> None:
        """sqrt(2 half), times the value `scale` if given: a norm from its half sum of squares."""
        self._derive(tag, f"sqrt(2.0 * {self._ref(half)})" + (f" * {self._ref(scale)}" if scale else ""))

    def nonfinite(self, tag: str, name: str, size: float) -> None:
        """0 where the entry is finite, else `size`."""
        self._derive(tag, f"(0.0 if isfinite({self._ref(name)}) else {self._const(size)})")

    def zero_frac(self, tag: str, half_nonzero: str, size: float) -> None:
        """1 - nonzero / size, from half the count of nonzero entries."""
        size = self._const(size)
        self._derive(tag, f"({size} - 2.0 * {self._ref(half_nonzero)}) / {size}")

    def ratio(self, tag: str, numerator: str, denominator: str) -> None:
        """numerator / denominator, 0 where the denominator is 0 (as `tf.math.divide_no_nan`)."""
        a, b = self._ref(numerator), self._ref(denominator)
        self._derive(tag, f"({a} / {b} if {b} else 0.0)")

    def quotient(self, tag: str, name: str, divisor: float) -> None:
        self._derive(tag, f"{self._ref(name)} / {self._const(divisor)}")

    def above(self, tag: str, name: str, bound: float) -> None:
        """1.0 where the entry is above `bound`, else 0.0."""
        self._derive(tag, f"(1.0 if {self._ref(name)} > {self._const(bound)} else 0.0)")

    def total(self, tag: str, names: list[str]) -> None:
        self._derive(tag, " + ".join(["0", *map(self._ref, names)]))

    def finish(self) -> None:
        """Write the function that reads a pulled list: the derived values, then every tag's, in tag order."""
        source = "\n    ".join(["def read(v):", *self._lines, f"return ({', '.join(self._tags.values())},)"])
        missing = [tag for tag, expression in self._tags.items() if not expression]
        if missing:
            raise ValueError(f"reserved tags never derived: {missing}")
        namespace = {"sqrt": math.sqrt, "isfinite": math.isfinite, **self._consts}
        # Code generation as `dataclasses` does it: the source is made only of this class's own templates,
        # integer indices and local names (no tag, file or config text enters it; constants are passed in
        # the namespace), so nothing read from outside can reach it.
        exec(source, namespace)  # noqa: S102
        self._read = namespace["read"]
        self._index = {tag: i for i, tag in enumerate(self._tags)}

    def read(self, v: list[float]) -> MetricValues:
        """The metrics of one pulled vector `v` (as Python floats)."""
        return MetricValues(self._index, self._read(v))


class UpdateOutput(NamedTuple):
    finite: tf.Tensor  # bool: every loss and gradient norm of the burst was finite
    metrics: Mapping[str, float]  # the measured burst's diagnostics (one host pull); empty without them
    weights: list[tf.Tensor]  # online weights after the burst, in `Learner.variables` order


class LastBurst(NamedTuple):
    """What `Learner.nonfinite_origin` reads of the last burst: its returned vector ends with its health, the
    index just after the update its loop stopped at (K > 1 only) and that update's raw half squares [V]."""

    finite: tf.Tensor  # bool: every update's loss and raw gradient norm was finite
    values: tf.Tensor | np.ndarray  # the burst's returned vector, health last
    num_updates: int


class Applied(NamedTuple):
    """One update, applied: the TD terms and gradients its measurements are made of."""

    finite: tf.Tensor  # bool: its loss and raw gradient norm are finite
    td: TDTerms
    grads: list[tf.Tensor]  # as applied: clipped when clipping is on
    preclip_norm: tf.Tensor
    half_squares: tf.Tensor  # [V] the raw gradient's half sums of squares (`global_norm_parts`)


class Step(NamedTuple):
    """One update inside a burst, and what it measured."""

    finite: tf.Tensor  # bool: its loss and raw gradient norm are finite
    half_squares: tf.Tensor  # [V] its raw gradient's half sums of squares (`global_norm_parts`)
    record: tf.Tensor | None  # [M] what a measured burst keeps of it (`Learner._record`)
    panel: dict[str, tf.Tensor] | None  # the panel update's pulled entries: name -> scalar or [V]


def pack(batch: Batch) -> np.ndarray:
    """Transitions as one float32 array [.., B, 2 * obs_dim + 3]: (s, a, r, s', discount) side by side.

    One array is one tensor conversion and one argument to bind per call instead of five, which is most
    of the per-call overhead at one update per call. Actions are small integers, exact in float32.
    """
    obs, actions, rewards, next_obs, discounts = batch
    return np.concatenate(
        [obs, actions[..., None], rewards[..., None], next_obs, discounts[..., None]],
        axis=-1,
        dtype=np.float32,
    )


def unpack(packed: tf.Tensor, obs_dim: int) -> Batch:
    """The inverse of `pack`, inside the graph."""
    return Batch(
        obs=packed[..., :obs_dim],
        actions=tf.cast(packed[..., obs_dim], tf.int32),
        rewards=packed[..., obs_dim + 1],
        next_obs=packed[..., obs_dim + 2 : 2 * obs_dim + 2],
        discounts=packed[..., 2 * obs_dim + 2],
    )


# Per-variable families of the panel update, in output order; tags are `<family>/<variable tag>`. Each is
# something only the update can tell: its gradient and the step it applied. The weights' own state
# (`weight_dist_init`) and the "tiny but not zero" share (`grad_near_zero_frac`, read with the log10|g|
# histogram) are taken at the probes instead (`PROBE_PER_VARIABLE`): in a measured update they cost 6% of a
# bare one at 64-64 and 7% at 256-256 (docs/performance.md).
PANEL_TD = ("loss/td", "q/mean", "q/max", "q/target_mean", "td/abs_mean", "td/abs_max")  # the panel's TD tags
PER_VARIABLE = ("grad_norm", "grad_zero_frac", "grad_nonfinite", "weight_norm", "update_ratio")
PROBE_PER_VARIABLE = ("grad_near_zero_frac", "weight_dist_init")

# The statistics of every update of a measured burst, logged as the burst's `<tag>/burst_mean` and
# `<tag>/burst_max` (grad_norm/preclip_global only with clipping on) ...
BURST_STATS = (
    "loss/td",
    "td/grad_blocked_frac",
    "td/beyond_bound_frac",
    "td/abs_max",
    "q/max",
    "grad_norm/global",
    "grad_norm/preclip_global",
)
# ... and its counts, summed over the burst as `<tag>/burst_sum`. Pooled over a run, blocked over nonzero is
# the share of TD errors the loss blocked, each sample weighing the same. Each names the panel's raw entry
# that holds half of it (`Learner._td_counts`).
BURST_COUNTS = {"td/grad_blocked_count": "~half_blocked", "td/nonzero_delta_count": "~half_nonzero_delta"}

# How much of an update `Learner._update` computes: a plain burst's, a measured burst's, its panel update.
PLAIN, RECORDED, PANEL = 0, 1, 2

_WEYL = 2654435769  # round(2**32 / golden ratio): Knuth's multiplicative hash


def panel_position(burst: int, num_updates: int) -> int:
    """Which update of a measured burst of `num_updates` (K) computes the per-variable panel:
    floor(frac(burst / golden ratio) * K) for the run's `burst`-th burst (optimizer iterations // K, so a
    resumed run continues the sequence). Every position comes up evenly over a run and in no pattern: the
    panel is an unbiased sample of the burst's updates, where the first (just after a target sync) reads high
    and the last low (docs/metrics.md). `Learner._panel_position` is the same arithmetic in the graph."""
    return (burst * _WEYL) % 2**32 * num_updates >> 32


def burst_tags(reader: MetricReader, stats: Sequence[str], num_updates: int) -> None:
    """The burst's tags of a measured burst of `num_updates`: each of `stats`' mean and max over the burst,
    and the pooled `BURST_COUNTS`. A one-update burst is its panel update: its means and maxes would repeat
    the panel's tags, and its counts are the panel's halves."""
    for tag in stats if num_updates > 1 else []:
        reader.quotient(f"{tag}/burst_mean", f"~sum/{tag}", num_updates)
        reader.tag(f"{tag}/burst_max", f"~max/{tag}")
    for tag, half in BURST_COUNTS.items():
        if num_updates == 1:
            reader.quotient(f"{tag}/burst_sum", half, 0.5)
        else:
            reader.tag(f"{tag}/burst_sum", f"~sum/{tag}")


def global_norm_parts(grads: list[tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
    """`tf.linalg.global_norm(grads)` written with its own ops, so that the per-variable half sums of
    squares [V] it is made of come out too (tests/test_learner.py checks it is TF's norm, bit for bit)."""
    half_squares = tf.stack([tf.nn.l2_loss(g) for g in grads])
    return tf.sqrt(tf.reduce_sum(half_squares) * 2.0), half_squares


def td_counts(
    delta: tf.Tensor, dloss_dqa: tf.Tensor, abs_delta: tf.Tensor, bound: float
) -> dict[str, tf.Tensor]:
    """The panel's raw TD counts, for the host to divide exactly: halves of the samples nonzero in delta
    and blocked, those beyond the bound, and all trained samples."""
    sign_delta = tf.sign(delta)  # [N]
    # sign(x)^2 is 1 on a nonzero entry and 0 on a zero, so l2_loss(sign(x)) is half the count of nonzero
    # entries: a count with no bool tensor and cast. The samples whose dL/dQ(s,a) is blocked are those
    # nonzero in delta less those nonzero in both.
    half_nonzero = tf.nn.l2_loss(sign_delta)
    return {
        "~half_blocked": half_nonzero - tf.nn.l2_loss(sign_delta * tf.sign(dloss_dqa)),
        "~half_nonzero_delta": half_nonzero,
        "~beyond_bound": tf.reduce_sum(tf.cast(abs_delta > bound, tf.float32)),
        "~samples": tf.cast(tf.size(delta), tf.float32),  # a constant but for the RNN's trained steps
    }


def per_variable_families(
    grads: list[tf.Tensor],
    before: list[tf.Tensor],
    after: list[tf.Tensor],
    half_squares: tf.Tensor,
    preclip_norm: tf.Tensor,
    norm: tf.Tensor,
    clip_norm: float,
    size: tf.Tensor,
) -> dict[str, tf.Tensor]:
    """The `PER_VARIABLE` families, each a [V] vector over the variables, for the applied gradient `grads`
    (clipped to the global `norm` from the raw one's `preclip_norm` and `half_squares` when `clip_norm` > 0)
    that took the weights from `before` to `after`; `size` [V] the variables' sizes. The zero fractions come
    as half the count of nonzero entries (`~half_nonzero`), which the host divides exactly. `dqnlab.Panel`
    computes them so; the learner pulls `per_variable_halves` and takes the roots and ratios on the host.

    A small network's update pays per op (~0.5-1 us) more than per element, so each variable gets only
    the reductions nothing else gives: half sums of squares (`l2_loss`, one fused pass) of w_before and
    w_after - w_before, and the count of nonzero entries of g as half the sum of sign(g)^2 (no bool tensor
    and cast). Roots and ratios then take one op per family for all variables. No flat parameter vector is
    built: copying into one is fewer ops but many more passes over memory, 3x the cost at 256-256
    (docs/performance.md).
    """
    squares, nonzero = [], []
    for g, w0, w1 in zip(grads, before, after, strict=True):
        squares += [tf.nn.l2_loss(w0), tf.nn.l2_loss(w1 - w0)]
        nonzero.append(tf.nn.l2_loss(tf.sign(g)))  # NaN if g holds a NaN
    if clip_norm > 0:
        # clip_by_global_norm scales every entry by NaN when the norm is not finite, and a finite norm
        # means every raw entry is finite: the applied gradient is all finite or all NaN, so its count is
        # 0 or the variable's size (tests/test_learner.py checks this against a count).
        nonfinite = tf.where(tf.math.is_finite(preclip_norm), 0.0, size)
    else:
        finite = [tf.reduce_sum(tf.cast(tf.math.is_finite(g), tf.float32)) for g in grads]
        nonfinite = size - tf.stack(finite)
    weight_norm, step_norm = tf.unstack(tf.reshape(tf.sqrt(2.0 * tf.stack(squares)), [-1, 2]), axis=1)
    # The raw half sums of squares the global norm was made of give each variable's norm without another
    # pass; the clip scales all of them by one factor, norm / preclip_norm.
    grad_norm = tf.sqrt(2.0 * half_squares)
    if clip_norm > 0:
        grad_norm *= tf.math.divide_no_nan(norm, preclip_norm)
    return {
        "grad_norm": grad_norm,
        "~half_nonzero": tf.stack(nonzero),
        "grad_nonfinite": nonfinite,
        "weight_norm": weight_norm,
        "update_ratio": tf.math.divide_no_nan(step_norm, weight_norm),
    }


def per_variable_halves(grads: list[tf.Tensor], before: list[tf.Tensor], after: list[tf.Tensor]) -> list:
    """What the panel's per-variable families need of each variable's tensors, as scalars, variable by
    variable: the half sums of squares of w_before and of the step w_after - w_before (`l2_loss`, one
    fused pass each), and half the count of nonzero entries of the applied gradient g (half the sum of
    sign(g)^2: no bool tensor and cast; NaN if g holds a NaN). The host takes the roots and ratios
    (`Learner._metric_reader`): one Python expression each against a graph op per family and its
    packing."""
    halves = []
    for g, w0, w1 in zip(grads, before, after, strict=True):
        halves += [tf.nn.l2_loss(w0), tf.nn.l2_loss(w1 - w0), tf.nn.l2_loss(tf.sign(g))]
    return halves


def divergence_origin(variable_tags: Sequence[str], raw_half_squares, update: int) -> dict:
    """Where an update went non-finite, as run.json's `divergence.origin` says it: the update's index in its
    burst and the variables whose raw (pre-clip) gradient had a non-finite half sum of squares, in model
    order (`variable`: the first of them, None when there is none)."""
    bad = [t for t, h in zip(variable_tags, raw_half_squares, strict=True) if not np.isfinite(h)]
    return {"variable": bad[0] if bad else None, "update_in_burst": update, "variables": bad}


def nonfinite_counts(grads: list[tf.Tensor], size: tf.Tensor) -> tf.Tensor:
    """The count of non-finite entries of each of `grads` [V], `size` [V] their sizes."""
    return size - tf.stack([tf.reduce_sum(tf.cast(tf.math.is_finite(g), tf.float32)) for g in grads])


def _at(batch, i):
    """Update `i`'s batch of a burst's stacked batches [K, B, ...] (`i` a Python int or a scalar tensor)."""
    return tf.nest.map_structure(lambda x: x[i], batch)


class CompiledPolicy:
    """Q-values of one observation through one concrete TF function of the live online network: the acting
    policy of a network with no numpy twin (the CNN, a user's own). The `NumpyMLP` interface
    (`initial_state`, `step`, `set_weights`); epsilon-greedy stays in the loop. The function reads the
    variables themselves, so `set_weights` has nothing to do."""

    def __init__(self, forward: Callable[[tf.Tensor], tf.Tensor], obs_shape: tuple[int, ...], dtype):
        self._dtype = np.dtype(dtype)
        self._fn = Compiled(forward, [tf.TensorSpec([1, *obs_shape], tf.as_dtype(self._dtype))])

    def initial_state(self) -> None:
        return None

    def set_weights(self, weights) -> None:
        pass

    def step(self, obs: np.ndarray, state: None) -> tuple[np.ndarray, None]:
        return self(obs), None

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """obs [*obs_shape] -> Q-values [num_actions] (float32)."""
        return self._fn(np.asarray(obs, self._dtype)[None])[0].numpy()


class Learner:
    """Owns the networks and optimizer; `update` is the only thing the loop calls per burst."""

    # Whether a measured burst's panel update can be its recorded update plus the panel's own ops: not when
    # the panel needs another gradient in the update's tape (the RNN's dL/dh through time).
    _panel_shares_trace = True
    # Whether a burst hands the online weights back (for a numpy acting twin). A compiled policy reads the
    # variables themselves: no copy per burst (6.7 MB for the Nature CNN).
    _returns_weights = True

    def __init__(self, cfg: Config, online: keras.Model, target: keras.Model, optimizer, obs_shape):
        """A learner of built parts (`dqnlab.kinds.make_learner` builds them for a config): the online and
        target networks (target a copy of online), the optimizer built for online's trainable variables, and
        the shape of one observation."""
        self.cfg = cfg
        self.online, self.target, self.optimizer = online, target, optimizer
        self.variables = list(self.online.trainable_variables)
        # Initial weights, for the distance-from-initialisation diagnostic.
        self._initial = [tf.constant(v.numpy()) for v in self.variables]
        self._sizes = [float(np.prod(v.shape)) for v in self.variables]
        self._size = tf.constant(self._sizes, tf.float32)
        # Set by tracing the measured burst: how its pulled vector reads as tags, and its record's width.
        self._reader: MetricReader | None = None
        self._record_capacity = 0
        self._last: LastBurst | None = None
        self._panel_after: list[tf.Tensor] | None = None  # the weights the panel read, while tracing a burst
        self._hidden_layers = depth_path_layers(self.online)  # probed, and the ends of grad/depth_ratio
        self._obs_shape = tuple(int(d) for d in obs_shape)
        self._obs_dim = int(np.prod(self._obs_shape))
        self.variable_tags = [variable_tag(v) for v in self.variables]
        self._family_tags = {fam: [f"{fam}/{tag}" for tag in self.variable_tags] for fam in PER_VARIABLE}
        self._family_tags["~grad_half"] = [f"~grad_half/{tag}" for tag in self.variable_tags]
        halves = ("~half_weight", "~half_step", "~half_nonzero")
        self._half_names = [f"{half}/{tag}" for tag in self.variable_tags for half in halves]
        self._loss_fn = get_loss(cfg.loss.kind)
        self._bound = float(cfg.loss.bound)
        self._gamma = float(cfg.train.gamma)
        self._clip_norm = float(cfg.train.grad_clip_norm)
        self._double = bool(cfg.train.double_dqn)
        self._near_zero_tol = float(cfg.diagnostics.near_zero_tol)
        self._tau = float(cfg.train.target_tau)
        preclip = "grad_norm/preclip_global"
        self._burst_stats = [t for t in BURST_STATS if t != preclip or self._clip_norm > 0]
        self._burst_names = [*self._burst_stats, *BURST_COUNTS]  # a burst's sums and maxes, in this order
        self._diag = cfg.diagnostics
        self._compiled: dict[bool, Compiled] = {}  # diagnostics flag -> fn
        self._probe_fn = None
        self._sync_target = tf.function(self._sync_target_impl, autograph=False)

    def _q_values(self, network: keras.Model, obs: tf.Tensor) -> tf.Tensor:
        """Q-values [B, A] of `obs` inside the compiled update (a subclass may prepare the input first).
        The Keras call, not the layers' ops written out: those round differently in float32 and would move
        every golden trace and published number."""
        return network(obs)

    def _pack(self, batch) -> tuple[np.ndarray, ...]:
        """The burst's inputs as the compiled function's arguments (see `pack`)."""
        return (pack(Batch(*batch)),)

    def _unpack(self, *packed: tf.Tensor):
        return unpack(packed[0], self._obs_dim)

    # -- public -------------------------------------------------------------------------------------

    def update(self, batch: Batch, with_diagnostics: bool) -> UpdateOutput:
        """K updates in one compiled call (K = batch.actions.shape[0]).

        Returns whether every loss and gradient norm of the burst was finite, the measured burst's metrics
        as floats (empty without diagnostics; all pulled from the device in one transfer) and the online
        weights after the burst (for the numpy acting path, so no extra call reads them). A burst stops
        after its first non-finite update (the run ends there): `nonfinite_origin` says which.
        """
        packed = self._pack(batch)
        if tf.config.functions_run_eagerly():  # DQNLAB_EAGER=1: plain Python, debuggable
            finite, values, weights = self._burst_impl(*map(tf.constant, packed), bool(with_diagnostics))
        else:
            fn = self._compiled.get(bool(with_diagnostics)) or self._compile(
                [tf.TensorSpec(p.shape, p.dtype) for p in packed], bool(with_diagnostics)
            )
            finite, values, weights = fn(*packed)
        metrics = {}
        if with_diagnostics:
            values = values._numpy()  # no copy: read-only here and in `nonfinite_origin`
            metrics = self._reader.read(values.tolist())
        self._last = LastBurst(finite, values, packed[0].shape[0])
        return UpdateOutput(finite, metrics, weights)

    def nonfinite_origin(self) -> dict | None:
        """Where the last burst went non-finite, or None if it stayed finite: the first update (0-based,
        `update_in_burst`) whose loss or raw gradient norm was not finite, and the `variables` whose raw
        (pre-clip) gradient had a non-finite sum of squares there (a NaN or inf entry, or entries whose
        squares overflow float32), in model order; `variable` is the first of them, None when there is none
        (the loss itself was not finite, or only the per-variable sums added up to an overflow). With
        global-norm clipping the applied gradient is NaN in every variable once the raw norm is not: only the
        raw one says where the divergence began."""
        last = self._last
        if last is None or bool(last.finite):
            return None
        values = np.asarray(last.values)
        half_squares = values[len(values) - len(self.variables) :]  # [V]
        end = int(values[-len(self.variables) - 1]) if last.num_updates > 1 else 1
        return divergence_origin(self.variable_tags, half_squares, end - 1)

    def policy(self) -> NumpyMLP:
        """The acting policy: a numpy copy of the online network (refresh with `set_weights`)."""
        policy = NumpyMLP(self.cfg.network.activation, self.cfg.network.dueling)
        policy.set_weights(self.online_weights())
        return policy

    def update_target(self) -> None:
        self._sync_target()

    def probe(self, states, batch) -> dict[str, tf.Tensor]:
        """Activation statistics of every probed layer on `states` (the kind's sampler draws them: see
        `dqnlab.kinds`), the penultimate layer's srank, and (when histograms are on) histograms of weights,
        activations and of the gradient of the TD loss on `batch` (computed, not applied). One compiled
        call, traced once."""
        return self._call_probe(*self._probe_states(states), *self._pack(batch))

    def _probe_states(self, states) -> tuple[np.ndarray, ...]:
        """The probe states as the compiled probe's leading arguments."""
        return (np.asarray(states, np.float32),)

    def _call_probe(self, *args: np.ndarray) -> dict[str, tf.Tensor | np.ndarray]:
        """`_probe_impl(*args)`, traced once for these arrays' shapes and dtypes (eager with DQNLAB_EAGER),
        with `grad_near_zero_frac/<var>` divided from its count in float64 (exact) and
        `hist/log10_abs_grad/<var>` from each `hist/grad/<var>` it returns."""
        if tf.config.functions_run_eagerly():
            m = self._probe_impl(*map(tf.constant, args))
        else:
            if self._probe_fn is None:
                self._probe_fn = Compiled(self._probe_impl, [tf.TensorSpec(a.shape, a.dtype) for a in args])
            m = self._probe_fn(*args)
        for tag, size in zip(self.variable_tags, self._sizes, strict=True):
            m[f"grad_near_zero_frac/{tag}"] = float(m.pop(f"~near_zero/{tag}")) / size
        # On the host: selecting the nonzero entries in the graph takes a dozen ops per variable, and tracing
        # them cost a run a tenth of a second once (docs/performance.md), for a histogram written a few times
        # per run.
        for tag in [t for t in m if t.startswith("hist/grad/")]:
            g = np.asarray(m[tag])
            m["hist/log10_abs_grad/" + tag.removeprefix("hist/grad/")] = np.log10(np.abs(g[g != 0]))
        return m

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Online and target weights, optimizer state, initial weights: what a checkpoint stores."""
        arrays = {f"online/{i}": v.numpy() for i, v in enumerate(self.online.weights)}
        arrays.update({f"target/{i}": v.numpy() for i, v in enumerate(self.target.weights)})
        arrays.update({f"optimizer/{i}": v.numpy() for i, v in enumerate(self.optimizer.variables)})
        arrays["initial_flat"] = np.concatenate([w.numpy().ravel() for w in self._initial])
        return arrays

    def load_state_arrays(self, arrays) -> None:
        for prefix, variables in (
            ("online", self.online.weights),
            ("target", self.target.weights),
            ("optimizer", self.optimizer.variables),
        ):
            for i, v in enumerate(variables):
                v.assign(arrays[f"{prefix}/{i}"])
        ends = np.cumsum([int(np.prod(w.shape)) for w in self._initial])[:-1]
        parts = np.split(arrays["initial_flat"], ends)
        self._initial = [tf.constant(p.reshape(w.shape)) for p, w in zip(parts, self._initial, strict=True)]

    def nonfinite_variables(self) -> list[str]:
        """Tags of the online variables holding a NaN or inf, in model order (input side first)."""
        return [
            t
            for t, v in zip(self.variable_tags, self.variables, strict=True)
            if not np.isfinite(v.numpy()).all()
        ]

    def online_weights(self) -> list[np.ndarray]:
        """Host copy of the online weights (kernel, bias, ...), for the numpy acting path."""
        return [v.numpy() for v in self.variables]

    # -- compiled -----------------------------------------------------------------------------------

    def _compile(self, specs: list[tf.TensorSpec], with_diagnostics: bool):
        """Trace the burst once per diagnostics flag, for this run's fixed batch shape [K, B, 2D + 3] (the
        specs of `_pack`'s arrays: float32 here, uint8 frames for the CNN).

        Per-call dispatch is what a small DQN pays for: the traced function is called without TF's
        per-call argument matching (`Compiled`) and autograph is off (it spends most of a trace transpiling
        Keras internals that have no data-dependent Python control flow); docs/performance.md has the
        figures of both.
        """
        compiled = Compiled(lambda *packed: self._burst_impl(*packed, with_diagnostics), specs)
        self._compiled[with_diagnostics] = compiled
        return compiled

    def _burst_impl(self, *args):
        """The burst's finiteness, one vector (the measured burst's metrics, if measured, then the burst's
        health: see `LastBurst`) and the online weights after it. The health rides in the vector a plain
        burst returns anyway: another output would cost a bare update call measurably."""
        *packed, with_diagnostics = args
        batch = self._unpack(*packed)  # [K, B, ...]
        num_updates = packed[0].shape[0]  # static: part of the signature
        burst = self._measured_burst if with_diagnostics else self._plain_burst
        self._panel_after = None
        finite, values = burst(batch, num_updates)
        after, self._panel_after = self._panel_after, None  # no graph tensor kept past its trace
        if not self._returns_weights:
            return finite, values, []
        if num_updates == 1 and after is not None:
            # A one-update burst's panel read the weights after its update: they are the burst's, already read
            # tensors (six reads and six identities fewer at 64-64).
            return finite, values, list(after)
        return finite, values, [tf.identity(v.value) for v in self.variables]

    @staticmethod
    def _health(end: tf.Tensor | None, half_squares: tf.Tensor) -> list[tf.Tensor]:
        """The burst's health as vector parts: [end] for a loop (a one-update burst ends after update 0), then
        the half squares [V]."""
        return [half_squares] if end is None else [tf.cast(end, tf.float32)[None], half_squares]

    def _plain_burst(self, batch, num_updates: int) -> tuple[tf.Tensor, tf.Tensor]:
        if num_updates == 1:  # a straight line: no loop machinery for one-update-per-call settings
            step = self._update(_at(batch, 0), PLAIN)
            return step.finite, step.half_squares

        def update(i, finite, half_squares):
            step = self._update(_at(batch, i), PLAIN)
            return i + 1, step.finite, step.half_squares

        start = (tf.constant(0), tf.constant(True), tf.zeros([len(self.variables)]))
        end, finite, half_squares = self._loop(update, num_updates, start)
        return finite, tf.concat(self._health(end, half_squares), 0)

    def _measured_burst(self, batch, num_updates: int) -> tuple[tf.Tensor, tf.Tensor]:
        """Every update keeps a record (`_record`) and the one at `_panel_position` computes the panel too;
        after the loops, the records give every update's statistics at once, summed and maxed over the burst.
        Returns the burst's finiteness and the pulled vector: the panel, the sums and maxes, the health. A
        one-update burst is its own panel.

        Records, not running sums and maxes: a record is what the update computed anyway, put side by side
        (a reduction and two joins), where an update's statistics themselves take about four times the ops,
        on every update of every measured burst. The records hold K x (2B + 4 + V) floats; docs/performance.md
        has what each way costs.
        """
        if num_updates == 1:
            step = self._update(_at(batch, 0), PANEL)
            return step.finite, self._pulled(step.panel, [], self._health(None, step.half_squares), 1)

        self._record_capacity = self._samples_per_update(batch)

        # One trace of an update for both loops and the panel's: tracing an update is most of what a measured
        # burst costs to trace (once per run; docs/performance.md).
        @tf.function(autograph=False)
        def recorded_update(i):
            applied = self._apply(_at(batch, i), with_qa_grad=True)
            return applied, self._record(applied)

        def recorded(i, finite, records):
            applied, record = recorded_update(i)
            return i + 1, applied.finite, records.write(i, record)

        records = tf.TensorArray(tf.float32, size=num_updates, element_shape=[self._record_size()])
        position = self._panel_position(num_updates)
        end, finite, records = self._loop(recorded, position, (tf.constant(0), tf.constant(True), records))
        if self._panel_shares_trace:
            before = self._weights_now()
            applied, record = recorded_update(position)
            panel = Step(applied.finite, applied.half_squares, record, self._panel(applied, before))
        else:
            panel = self._update(_at(batch, position), PANEL)
        # The panel update runs even after a non-finite one (on a network already diverged), but the burst's
        # health stays that of its first non-finite update.
        resume = (
            tf.where(finite, position + 1, end),
            tf.logical_and(finite, panel.finite),
            records.write(position, panel.record),
        )
        end, finite, records = self._loop(recorded, num_updates, resume)
        rows = records.stack()  # [K, M]; rows after a non-finite update are zeros
        table = self._burst_table(rows)  # [K, S]
        accumulated = [tf.reduce_sum(table, 0), tf.reduce_max(table, 0)]
        health = self._health(end, rows[end - 1, -len(self.variables) :])
        return finite, self._pulled(panel.panel, accumulated, health, num_updates)

    def _samples_per_update(self, batch) -> int:
        """The most TD errors one update's batch holds (static): its batch size."""
        return int(batch.rewards.shape[1])

    def _record_size(self) -> int:
        return 2 * self._record_capacity + 4 + len(self.variables)

    def _record(self, applied: Applied) -> tf.Tensor:
        """What a measured burst keeps of an update [M]: delta and dL/dQ(s,a) per sample ([C] each,
        zero-padded when fewer samples were trained), the loss, the raw norm, max Q and the trained samples'
        count, and the raw half squares [V] (where a divergence began)."""
        td = applied.td
        size = tf.cast(tf.size(td.delta), tf.float32)
        scalars = [td.loss, applied.preclip_norm, tf.reduce_max(td.q), size]
        per_sample = [td.delta, td.dloss_dqa]
        if td.capacity is not None:  # fewer samples than the batch holds: pad with zeros, which count nowhere
            per_sample = [
                tf.reshape(tf.pad(x, [[0, td.capacity - tf.size(x)]]), [td.capacity]) for x in per_sample
            ]
        return tf.concat([*per_sample, tf.stack(scalars), applied.half_squares], 0)

    def _burst_table(self, rows: tf.Tensor) -> tf.Tensor:
        """The `_burst_names` statistics of every update [K, S], from their records [K, M] at once."""
        c = self._record_capacity
        delta, dloss_dqa = rows[:, :c], rows[:, c : 2 * c]  # [K, C]
        loss, preclip_norm, q_max, samples = tf.unstack(rows[:, 2 * c : 2 * c + 4], axis=1)  # [K] each
        abs_delta = tf.abs(delta)
        sign_delta = tf.sign(delta)
        # A sample is blocked when delta != 0 and dL/dQ(s,a) == 0: nonzero in delta less nonzero in both.
        nonzero = tf.reduce_sum(tf.square(sign_delta), 1)
        blocked = nonzero - tf.reduce_sum(tf.square(sign_delta * tf.sign(dloss_dqa)), 1)
        beyond = tf.reduce_sum(tf.cast(abs_delta > self._bound, tf.float32), 1)
        clipped = tf.minimum(preclip_norm, self._clip_norm) if self._clip_norm > 0 else preclip_norm
        stats = {
            "loss/td": loss,
            "td/grad_blocked_frac": tf.math.divide_no_nan(blocked, nonzero),
            "td/beyond_bound_frac": tf.math.divide_no_nan(beyond, samples),
            "td/abs_max": tf.reduce_max(abs_delta, 1),
            "q/max": q_max,
            "grad_norm/global": clipped,
            "grad_norm/preclip_global": preclip_norm,
            "td/grad_blocked_count": blocked,
            "td/nonzero_delta_count": nonzero,
        }
        return tf.stack([stats[name] for name in self._burst_names], axis=1)

    @staticmethod
    def _loop(body, stop, loop_vars: tuple) -> tuple:
        """`body(i, finite, ...)` from i = loop_vars[0] while i < stop, stopping after an update that is not
        finite: the weights then hold what it did, and `end` says which it was."""
        return tf.while_loop(lambda i, finite, *_: tf.logical_and(i < stop, finite), body, loop_vars)

    def _panel_position(self, num_updates: int) -> tf.Tensor:
        """`panel_position` of this burst (int32), from the optimizer's update count before the burst: it is
        checkpointed, so a resumed run picks the same positions."""
        burst = tf.convert_to_tensor(self.optimizer.iterations) // num_updates  # int64
        return tf.cast((burst * _WEYL) % 2**32 * num_updates // 2**32, tf.int32)

    def _sync_target_impl(self) -> None:
        for t, o in zip(self.target.weights, self.online.weights, strict=True):
            t.assign(o if self._tau >= 1.0 else self._tau * o + (1.0 - self._tau) * t)

    def _td_gradients(self, b: Batch, with_qa_grad: bool, with_extra: bool = False) -> TDTerms:
        """TD loss of a batch and its gradients (not applied); with `with_qa_grad`, also dL/dQ(s,a); with
        `with_extra`, the architecture's own panel metrics (none for the MLP)."""
        obs_tm1 = tf.cast(b.obs, tf.float32)  # [B, D]
        obs_t = tf.cast(b.next_obs, tf.float32)  # [B, D]
        a_tm1 = tf.cast(b.actions, tf.int32)  # [B]
        r_t = tf.cast(b.rewards, tf.float32)  # [B]
        discount_t = tf.cast(b.discounts, tf.float32) * self._gamma  # [B]

        q_t = self._q_values(self.target, obs_t)  # [B, A]
        selector = self._q_values(self.online, obs_t) if self._double else None  # Double DQN picks a_t
        target_tm1 = td_target(r_t, discount_t, q_t, selector)  # [B]

        with tf.GradientTape() as tape:
            q_tm1 = self._q_values(self.online, obs_tm1)  # [B, A]
            qa_tm1 = tf.gather(q_tm1, a_tm1, batch_dims=1)  # [B]
            delta = target_tm1 - qa_tm1  # [B]
            loss = tf.reduce_mean(self._loss_fn(delta, self._bound))
        # dL/dQ(s,a) per sample is exactly 0 where the loss blocks the TD signal (the clip bug). The backward
        # pass computes it on its way to the weights anyway: asking for it costs nothing measurable.
        sources = self.variables + ([qa_tm1] if with_qa_grad else [])
        grads = tape.gradient(loss, sources)
        dloss_dqa = grads[len(self.variables)] if with_qa_grad else None
        return TDTerms(loss, grads[: len(self.variables)], dloss_dqa, q_tm1, target_tm1, delta, {})

    def _apply(self, b, with_qa_grad: bool, with_extra: bool = False) -> Applied:
        """One update: the TD loss's gradient of batch `b`, clipped (when clipping is on) and applied."""
        td = self._td_gradients(b, with_qa_grad, with_extra)
        preclip_norm, half_squares = global_norm_parts(td.grads)
        grads = td.grads
        if self._clip_norm > 0:
            grads, _ = tf.clip_by_global_norm(grads, self._clip_norm, use_norm=preclip_norm)
        self.optimizer.apply(grads, self.variables)
        finite = tf.logical_and(tf.math.is_finite(td.loss), tf.math.is_finite(preclip_norm))
        return Applied(finite, td, grads, preclip_norm, half_squares)

    def _update(self, b: Batch, level: int) -> Step:
        """One update of the burst; `level` (PLAIN, RECORDED, PANEL) says how much it also measures."""
        before = self._weights_now() if level == PANEL else None
        applied = self._apply(b, with_qa_grad=level >= RECORDED, with_extra=level == PANEL)
        if level == PLAIN:
            return Step(applied.finite, applied.half_squares, None, None)
        panel = self._panel(applied, before) if level == PANEL else None
        # A one-update burst's panel update leaves its record unused: pruned from the graph.
        return Step(applied.finite, applied.half_squares, self._record(applied), panel)

    def _weights_now(self) -> list[tf.Tensor]:
        """The online weights, read now. Keras's `.value` is the tf.Variable itself, read wherever it is used;
        a read tensor keeps its value when the optimizer then updates the variable (TF copies on write while
        a read is alive)."""
        return [tf.convert_to_tensor(v.value) for v in self.variables]

    def _td_counts(self, td: TDTerms, abs_delta: tf.Tensor) -> dict[str, tf.Tensor]:
        """`td_counts` of this update's TD terms."""
        return td_counts(td.delta, td.dloss_dqa, abs_delta, self._bound)

    def _panel(self, applied: Applied, before: list[tf.Tensor]) -> dict[str, tf.Tensor]:
        """The panel update's pulled entries, name -> scalar, then the [V] ones (`_family_tags`), from the
        update `applied` to the weights `before`: each a sum, count or extreme that needs the tensors; the
        roots, ratios, clipped norm and what follows from the pre-clip norm are the host's
        (`_metric_reader`)."""
        td, preclip_norm = applied.td, applied.preclip_norm
        abs_delta = tf.abs(td.delta)  # [N]
        m: dict[str, tf.Tensor] = {
            "loss/td": td.loss,
            "q/mean": tf.reduce_mean(td.q),
            "q/max": tf.reduce_max(td.q),
            "q/target_mean": tf.reduce_mean(td.target),
            "td/abs_mean": tf.reduce_mean(abs_delta),
            "td/abs_max": tf.reduce_max(abs_delta),
            **self._td_counts(td, abs_delta),
            # the applied gradient's norm, min(this, clip) when clipping is on: the host's
            "grad_norm/preclip_global" if self._clip_norm > 0 else "grad_norm/global": preclip_norm,
            **td.extra,
        }
        after = self._panel_after = self._weights_now()  # the step is applied: read now
        m.update(zip(self._half_names, per_variable_halves(applied.grads, before, after), strict=True))
        m["~grad_half"] = applied.half_squares  # [V] the raw gradient's, as the global norm's
        if self._clip_norm <= 0:  # with clipping, the count follows from the pre-clip norm (`_metric_reader`)
            m["grad_nonfinite"] = nonfinite_counts(applied.grads, self._size)
        return m

    def _pulled(
        self,
        panel: dict[str, tf.Tensor],
        accumulated: list[tf.Tensor],
        health: list[tf.Tensor],
        num_updates: int,
    ) -> tf.Tensor:
        """One vector of the panel's entries, the burst's `accumulated` sums and maxes and its `health` (one
        host pull); `_reader` says which entry is which tag, and finishes the raw ones. A one-update burst's
        health holds its panel update's raw half squares: they are not pulled twice."""
        if num_updates == 1:
            panel = {name: x for name, x in panel.items() if name != "~grad_half"}
        scalars = [name for name in panel if name not in self._family_tags]
        families = [name for name in panel if name in self._family_tags]
        pulled = [*scalars, *(t for family in families for t in self._family_tags[family])]
        for kind in ("sum", "max")[: len(accumulated)]:
            pulled += [f"~{kind}/{name}" for name in self._burst_names]
        pulled += ["~end"] * (len(health) - 1) + [f"~half_squares/{tag}" for tag in self.variable_tags]
        self._reader = self._metric_reader(pulled, num_updates)
        parts = [tf.stack([panel[name] for name in scalars]), *(panel[name] for name in families)]
        return tf.concat([*parts, *accumulated, *health], 0)

    def _metric_reader(self, pulled: list[str], num_updates: int) -> MetricReader:
        """The tags of a measured burst of `num_updates`, read off the `pulled` vector's entries, in the order
        they have always come: the panel's scalars, then its families, then what the host derives."""
        reader = MetricReader(pulled)
        clip, preclip = self._clip_norm, "grad_norm/preclip_global"
        families = [family for family in PER_VARIABLE if family != "grad_zero_frac"]
        known = {"grad_norm/global", preclip, *(t for family in families for t in self._family_tags[family])}
        for tag in PANEL_TD:
            reader.tag(tag)
        reader.reserve(["grad_norm/global"])
        for name in pulled:
            if not name.startswith("~") and name not in known and name not in PANEL_TD:
                reader.tag(name)  # an architecture's own (`TDTerms.extra`)
        if clip > 0:
            reader.tag(preclip)
        reader.reserve([t for family in families for t in self._family_tags[family]])
        for name in pulled:
            if name in known and not name.startswith("~") and name != preclip:
                reader.tag(name)  # the applied norm without clipping; the non-finite counts without it
        # The per-variable families from the pulled sums: the clip scales every gradient by one factor.
        if clip > 0:
            reader.minimum("grad_norm/global", preclip, clip)
            reader.ratio("~clip_scale", "grad_norm/global", preclip)
        grad_half = "~grad_half" if num_updates > 1 else "~half_squares"
        for tag, size in zip(self.variable_tags, self._sizes, strict=True):
            reader.root(f"grad_norm/{tag}", f"{grad_half}/{tag}", "~clip_scale" if clip > 0 else None)
            if clip > 0:
                # clip_by_global_norm scales every entry by NaN when the norm is not finite, and a finite
                # norm means every raw entry is finite: the applied gradient is all finite or all NaN, so
                # its count is 0 or the variable's size (tests/test_learner.py checks this against a count).
                reader.nonfinite(f"grad_nonfinite/{tag}", preclip, size)
            reader.root(f"weight_norm/{tag}", f"~half_weight/{tag}")
            reader.root(f"~step_norm/{tag}", f"~half_step/{tag}")
            reader.ratio(f"update_ratio/{tag}", f"~step_norm/{tag}", f"weight_norm/{tag}")
        reader.ratio("td/grad_blocked_frac", "~half_blocked", "~half_nonzero_delta")
        reader.ratio("td/beyond_bound_frac", "~beyond_bound", "~samples")
        # Panel scalars of one or two pulled entries each: a Python operation here, 1-3 graph ops there.
        if clip > 0:
            reader.above("grad/clipped", preclip, clip)
        reader.total("grad/nonfinite", self._family_tags["grad_nonfinite"])
        if len(self._hidden_layers) >= 2:  # vanishing indicator: first over last hidden kernel's gradient
            first, last = (variable_tag(h.kernel) for h in (self._hidden_layers[0], self._hidden_layers[-1]))
            reader.ratio("grad/depth_ratio", f"grad_norm/{first}", f"grad_norm/{last}")
        for tag, size in zip(self.variable_tags, self._sizes, strict=True):
            reader.zero_frac(f"grad_zero_frac/{tag}", f"~half_nonzero/{tag}", size)
        burst_tags(reader, self._burst_stats, num_updates)
        reader.finish()
        return reader

    def _probe_impl(self, states: tf.Tensor, *packed: tf.Tensor) -> dict[str, tf.Tensor]:
        d, activation = self._diag, self.cfg.network.activation
        m: dict[str, tf.Tensor] = {}
        traces = hidden_activations(self.online, states)  # (name, pre-activations, outputs), input side first
        for name, x, z in traces:
            m.update(probes.layer_stats(name, x, z, activation, d))
            if d.histograms:
                m[f"hist/activation/{name}"] = z
        features = penultimate_features(traces) if traces else states  # a linear network's are its inputs
        m["features/srank"] = tf.cast(probes.srank(features, d.srank_delta), tf.float32)
        m.update(self._probe_weights_and_gradient(self._unpack(*packed)))
        return m

    def _probe_weights_and_gradient(self, batch) -> dict[str, tf.Tensor]:
        """The `PROBE_PER_VARIABLE` families of every variable, from the weights now and the TD-loss gradient
        of `batch` (computed, not applied); with histograms on, also `hist/weight` and `hist/grad`."""
        m = {}
        grads = self._td_gradients(batch, False).grads
        for tag, g, var, w_init in zip(self.variable_tags, grads, self.variables, self._initial, strict=True):
            w = tf.convert_to_tensor(var.value)
            # A count: `_call_probe` divides it exactly, in float64.
            m[f"~near_zero/{tag}"] = tf.reduce_sum(tf.cast(tf.abs(g) < self._near_zero_tol, tf.float32))
            m[f"weight_dist_init/{tag}"] = tf.sqrt(2.0 * tf.nn.l2_loss(w - w_init))
            if not self._diag.histograms:
                continue
            m[f"hist/weight/{tag}"] = w
            m[f"hist/grad/{tag}"] = g  # `_call_probe` adds hist/log10_abs_grad from it
        return m
