"""The DQN learner: online and target Q-networks, the optimizer, and one compiled update burst.

`Learner.update(batch, with_diagnostics)` runs K = batch.actions.shape[0] gradient updates inside ONE
`tf.function` call (a `tf.range` loop), because per-call dispatch (0.15-0.2 ms for an empty call) and not
arithmetic is what a small DQN spends its time on. When diagnostics are asked for, the *last* update of the
burst is the measured one: it returns one vector of its metrics, pulled to the host once and read as tag ->
float (`MetricValues`; the tags are docs/metrics.md's); the others return nothing but a finiteness flag.
Nothing in the graph writes summaries.

Set DQNLAB_EAGER=1 to run the step eagerly (debuggable with print and pdb).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

import numpy as np

from dqnlab import probes
from dqnlab._tf import keras, tf
from dqnlab.compiled import Compiled
from dqnlab.config import Config
from dqnlab.losses import get_loss
from dqnlab.networks import NumpyMLP, build_q_network, variable_tag
from dqnlab.optimizers import make_optimizer
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


class MetricValues(Mapping):
    """The measured update's metrics, tag -> float: a read-only view of the pulled vector. Its one consumer
    (the summary writer) walks it once, so building a dict of ~50 entries per measured update first would be
    spent for nothing (~1% of a small network's update call)."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: list[float]):
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


class UpdateOutput(NamedTuple):
    finite: tf.Tensor  # bool: every loss and gradient norm of the burst was finite
    metrics: Mapping[str, float]  # the measured update's diagnostics (one host pull); empty without them
    weights: list[tf.Tensor]  # online weights after the burst, in `Learner.variables` order


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


# Per-variable families of the measured update, in output order; tags are `<family>/<variable tag>`. Each is
# something only the update can tell: its gradient and the step it applied. The weights' own state
# (`weight_dist_init`) and the "tiny but not zero" share (`grad_near_zero_frac`, read with the log10|g|
# histogram) are taken at the probes instead (`PROBE_PER_VARIABLE`): in a measured update they cost 6% of a
# bare one at 64-64 and 7% at 256-256 (docs/performance.md).
PER_VARIABLE = ("grad_norm", "grad_zero_frac", "grad_nonfinite", "weight_norm", "update_ratio")
PROBE_PER_VARIABLE = ("grad_near_zero_frac", "weight_dist_init")


def global_norm_parts(grads: list[tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
    """`tf.linalg.global_norm(grads)` written with its own ops, so that the per-variable half sums of
    squares [V] it is made of come out too (tests/test_learner.py checks it is TF's norm, bit for bit)."""
    half_squares = tf.stack([tf.nn.l2_loss(g) for g in grads])
    return tf.sqrt(tf.reduce_sum(half_squares) * 2.0), half_squares


def _frac(mask: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(tf.cast(mask, tf.float32))


class Learner:
    """Owns the networks and optimizer; `update` is the only thing the loop calls per burst."""

    def __init__(self, cfg: Config, obs_dim: int, num_actions: int, seed: int):
        # Same seed -> same initial weights, so the arms of an A/B start from identical networks.
        keras.utils.set_random_seed(seed)
        self.cfg = cfg
        self.online = self._build_network(obs_dim, num_actions, "q_network")
        self.target = self._build_network(obs_dim, num_actions, "target_network")
        self.target.set_weights(self.online.get_weights())
        self.optimizer = make_optimizer(cfg.optimizer)
        self.optimizer.build(self.online.trainable_variables)
        self.variables = list(self.online.trainable_variables)
        # Initial weights, for the distance-from-initialisation diagnostic.
        self._initial = [tf.constant(v.numpy()) for v in self.variables]
        sizes = np.array([np.prod(v.shape) for v in self.variables], np.float32)
        self._size, self._two_over_size = tf.constant(sizes), tf.constant(2.0 / sizes)
        self._metric_index: dict[str, int] = {}  # the measured update's tag -> its place in the pulled vector
        self._hidden_layers = [layer for layer in self.online.layers if layer.name.startswith("hidden_")]
        self._obs_dim = obs_dim
        self.variable_tags = [variable_tag(v) for v in self.variables]
        self._family_tags = {fam: [f"{fam}/{tag}" for tag in self.variable_tags] for fam in PER_VARIABLE}
        self._loss_fn = get_loss(cfg.loss.kind)
        self._bound = float(cfg.loss.bound)
        self._gamma = float(cfg.train.gamma)
        self._clip_norm = float(cfg.train.grad_clip_norm)
        self._double = bool(cfg.train.double_dqn)
        self._near_zero_tol = float(cfg.diagnostics.near_zero_tol)
        self._tau = float(cfg.train.target_tau)
        self._diag = cfg.diagnostics
        self._compiled: dict[bool, Compiled] = {}  # diagnostics flag -> fn
        self._probe_fn = None
        self._sync_target = tf.function(self._sync_target_impl, autograph=False)

    def _build_network(self, obs_dim: int, num_actions: int, name: str) -> keras.Model:
        return build_q_network(self.cfg.network, obs_dim, num_actions, name=name)

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

        Returns whether every loss and gradient norm of the burst was finite, the measured update's metrics
        as floats (empty without diagnostics; all pulled from the device in one transfer) and the online
        weights after the burst (for the numpy acting path, so no extra call reads them).
        """
        packed = self._pack(batch)
        if tf.config.functions_run_eagerly():  # DQNLAB_EAGER=1: plain Python, debuggable
            finite, values, weights = self._burst_impl(*map(tf.constant, packed), bool(with_diagnostics))
        else:
            fn = self._compiled.get(bool(with_diagnostics)) or self._compile(
                [tf.TensorSpec(p.shape, p.dtype) for p in packed], bool(with_diagnostics)
            )
            finite, values, weights = fn(*packed)
        metrics = MetricValues(self._metric_index, values.numpy().tolist()) if with_diagnostics else {}
        return UpdateOutput(finite, metrics, weights)

    def policy(self) -> NumpyMLP:
        """The acting policy: a numpy copy of the online network (refresh with `set_weights`)."""
        policy = NumpyMLP(self.cfg.network.activation)
        policy.set_weights(self.online_weights())
        return policy

    def sample_burst(self, replay, num_updates: int, batch_size: int):
        """The replayed data of one burst: `num_updates` batches, stacked."""
        return replay.sample_many(num_updates, batch_size)

    def sample_one(self, replay, batch_size: int):
        return replay.sample(batch_size)

    def probe_inputs(self, sample: Batch) -> np.ndarray:
        """What `probe` is given, from a replay sample drawn once: its states."""
        return sample.obs

    def update_target(self) -> None:
        self._sync_target()

    def probe(self, states: np.ndarray, batch: Batch) -> dict[str, tf.Tensor]:
        """Activation statistics of every hidden layer on `states` [N, obs_dim], the penultimate layer's
        srank, and (when histograms are on) histograms of weights, activations and of the gradient of the
        TD loss on `batch` (computed, not applied). One compiled call, traced once."""
        return self._call_probe(np.asarray(states, np.float32), pack(Batch(*batch)))

    def _call_probe(self, *args: np.ndarray) -> dict[str, tf.Tensor | np.ndarray]:
        """`_probe_impl(*args)`, traced once for these arrays' shapes and dtypes (eager with DQNLAB_EAGER),
        and `hist/log10_abs_grad/<var>` from each `hist/grad/<var>` it returns."""
        if tf.config.functions_run_eagerly():
            m = self._probe_impl(*map(tf.constant, args))
        else:
            if self._probe_fn is None:
                self._probe_fn = Compiled(self._probe_impl, [tf.TensorSpec(a.shape, a.dtype) for a in args])
            m = self._probe_fn(*args)
        # On the host: selecting the nonzero entries in the graph takes a dozen ops per variable, and tracing
        # them cost a run ~0.1 s once, for a histogram written a few times per run.
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
        per-call argument matching (`Compiled`: ~0.5 ms a call saved against a polymorphic `tf.function`,
        ~0.06 ms against a concrete function's own call) and autograph is off (it spends ~1 s per trace
        transpiling Keras internals that have no data-dependent Python control flow).
        """
        compiled = Compiled(lambda *packed: self._burst_impl(*packed, with_diagnostics), specs)
        self._compiled[with_diagnostics] = compiled
        return compiled

    def _burst_impl(self, *args):
        *packed, with_diagnostics = args
        batch = self._unpack(*packed)  # [K, B, ...]
        num_updates = packed[0].shape[0]  # static: part of the signature
        num_plain = num_updates - 1 if with_diagnostics else num_updates

        def plain_update(i, finite):
            step = self._update(tf.nest.map_structure(lambda x: x[i], batch), False)
            return i + 1, tf.logical_and(finite, step["finite"])

        finite = tf.constant(True)
        if num_plain == 1:  # a straight line: no loop machinery for one-update-per-call settings
            _, finite = plain_update(0, finite)
        elif num_plain > 1:
            _, finite = tf.while_loop(lambda i, _: i < num_plain, plain_update, (tf.constant(0), finite))
        values = tf.zeros([0])
        if with_diagnostics:
            measured = self._update(tf.nest.map_structure(lambda x: x[-1], batch), True)
            finite = tf.logical_and(finite, measured["finite"])
            values = measured["values"]
        weights = [tf.identity(v.value) for v in self.variables]
        return finite, values, weights

    def _sync_target_impl(self) -> None:
        for t, o in zip(self.target.weights, self.online.weights, strict=True):
            t.assign(o if self._tau >= 1.0 else self._tau * o + (1.0 - self._tau) * t)

    def _td_gradients(self, b: Batch, with_qa_grad: bool) -> TDTerms:
        """TD loss of a batch and its gradients (not applied); with `with_qa_grad`, also dL/dQ(s,a)."""
        obs_tm1 = tf.cast(b.obs, tf.float32)  # [B, D]
        obs_t = tf.cast(b.next_obs, tf.float32)  # [B, D]
        a_tm1 = tf.cast(b.actions, tf.int32)  # [B]
        r_t = tf.cast(b.rewards, tf.float32)  # [B]
        discount_t = tf.cast(b.discounts, tf.float32) * self._gamma  # [B]

        q_t = self._q_values(self.target, obs_t)  # [B, A]
        if self._double:
            a_t = tf.argmax(self._q_values(self.online, obs_t), axis=1, output_type=tf.int32)  # [B]
            v_t = tf.gather(q_t, a_t, batch_dims=1)  # [B]
        else:
            v_t = tf.reduce_max(q_t, axis=1)  # [B]
        target_tm1 = tf.stop_gradient(r_t + discount_t * v_t)  # [B]

        with tf.GradientTape() as tape:
            q_tm1 = self._q_values(self.online, obs_tm1)  # [B, A]
            qa_tm1 = tf.gather(q_tm1, a_tm1, batch_dims=1)  # [B]
            delta = target_tm1 - qa_tm1  # [B]
            loss = tf.reduce_mean(self._loss_fn(delta, self._bound))
        # dL/dQ(s,a) per sample is exactly 0 where the loss blocks the TD signal (the clip bug).
        sources = self.variables + ([qa_tm1] if with_qa_grad else [])
        grads = tape.gradient(loss, sources)
        dloss_dqa = grads[len(self.variables)] if with_qa_grad else None
        return TDTerms(loss, grads[: len(self.variables)], dloss_dqa, q_tm1, target_tm1, delta, {})

    def _update(self, b: Batch, with_diagnostics: bool) -> dict[str, tf.Tensor]:
        loss, grads, dloss_dqa, q_tm1, target_tm1, delta, extra = self._td_gradients(b, with_diagnostics)
        preclip_norm, half_squares = global_norm_parts(grads)
        if self._clip_norm > 0:
            grads, _ = tf.clip_by_global_norm(grads, self._clip_norm, use_norm=preclip_norm)
        # Read now: Keras's `.value` is the tf.Variable itself, read wherever it is used. A read tensor keeps
        # its value when the optimizer then updates the variable (TF copies on write while a read is alive).
        before = [tf.convert_to_tensor(v.value) for v in self.variables] if with_diagnostics else None
        self.optimizer.apply(grads, self.variables)

        finite = tf.logical_and(tf.math.is_finite(loss), tf.math.is_finite(preclip_norm))
        if not with_diagnostics:
            return {"finite": finite}
        # The clipped norm is min(norm, bound): arithmetic on the pre-clip norm, not a second pass.
        norm = tf.minimum(preclip_norm, self._clip_norm) if self._clip_norm > 0 else preclip_norm
        abs_delta = tf.abs(delta)
        sign_delta = tf.sign(delta)
        # sign(x)^2 is 1 on a nonzero entry and 0 on a zero, so l2_loss(sign(x)) is half the count of nonzero
        # entries: a count with no bool tensor and cast. The samples whose dL/dQ(s,a) is blocked are those
        # nonzero in delta less those nonzero in both.
        half_nonzero_delta = tf.nn.l2_loss(sign_delta)
        half_blocked = half_nonzero_delta - tf.nn.l2_loss(sign_delta * tf.sign(dloss_dqa))
        m: dict[str, tf.Tensor] = {
            "loss/td": loss,
            "q/mean": tf.reduce_mean(q_tm1),
            "q/max": tf.reduce_max(q_tm1),
            "q/target_mean": tf.reduce_mean(target_tm1),
            "td/abs_mean": tf.reduce_mean(abs_delta),
            "td/abs_max": tf.reduce_max(abs_delta),
            "td/beyond_bound_frac": _frac(abs_delta > self._bound),
            "td/grad_blocked_frac": tf.math.divide_no_nan(half_blocked, half_nonzero_delta),
            "grad_norm/global": norm,
            **extra,
        }
        if self._clip_norm > 0:
            m["grad_norm/preclip_global"] = preclip_norm
            m["grad/clipped"] = tf.cast(preclip_norm > self._clip_norm, tf.float32)
        families = self._per_variable_families(grads, before, half_squares, preclip_norm, norm)
        m["grad/nonfinite"] = tf.reduce_sum(families["grad_nonfinite"])
        if len(self._hidden_layers) >= 2:  # vanishing indicator: first over last hidden kernel's gradient
            first = self.variable_tags.index(f"{self._hidden_layers[0].name}/kernel")
            last = self.variable_tags.index(f"{self._hidden_layers[-1].name}/kernel")
            norms = families["grad_norm"]
            m["grad/depth_ratio"] = tf.math.divide_no_nan(norms[first], norms[last])
        # One vector of every metric (one host pull); `_metric_index` says which entry is which tag.
        names = [*m, *(t for family in families for t in self._family_tags[family])]
        self._metric_index = {name: i for i, name in enumerate(names)}
        values = tf.concat([tf.stack(list(m.values())), *families.values()], 0)
        return {"finite": finite, "values": values}

    def _per_variable_families(
        self,
        grads: list[tf.Tensor],
        before: list[tf.Tensor],
        half_squares: tf.Tensor,
        preclip_norm: tf.Tensor,
        norm: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        """The `PER_VARIABLE` families, each a [V] vector over the variables, for the applied gradient `grads`
        (clipped to the global `norm` from the raw one's `preclip_norm` and `half_squares`).

        A small network's update pays per op (~0.5-1 us) more than per element, so each variable gets only
        the reductions nothing else gives: half sums of squares (`l2_loss`, one fused pass) of w_before and
        w_after - w_before, and the count of nonzero entries of g as half the sum of sign(g)^2 (no bool tensor
        and cast). Roots, fractions and ratios then take one op per family for all variables. No flat
        parameter vector is built: copying into one is fewer ops but many more passes over memory, 3x the
        cost at 256-256 (docs/performance.md).
        """
        squares, nonzero = [], []
        for g, w0, var in zip(grads, before, self.variables, strict=True):
            w1 = tf.convert_to_tensor(var.value)
            squares += [tf.nn.l2_loss(w0), tf.nn.l2_loss(w1 - w0)]
            nonzero.append(tf.nn.l2_loss(tf.sign(g)))  # NaN if g holds a NaN
        if self._clip_norm > 0:
            # clip_by_global_norm scales every entry by NaN when the norm is not finite, and a finite norm
            # means every raw entry is finite: the applied gradient is all finite or all NaN, so its count is
            # 0 or the variable's size (tests/test_learner.py checks this against a count).
            nonfinite = tf.where(tf.math.is_finite(preclip_norm), 0.0, self._size)
        else:
            finite = [tf.reduce_sum(tf.cast(tf.math.is_finite(g), tf.float32)) for g in grads]
            nonfinite = self._size - tf.stack(finite)
        weight_norm, step_norm = tf.unstack(tf.reshape(tf.sqrt(2.0 * tf.stack(squares)), [-1, 2]), axis=1)
        # The raw half sums of squares the global norm was made of give each variable's norm without another
        # pass; the clip scales all of them by one factor, norm / preclip_norm.
        grad_norm = tf.sqrt(2.0 * half_squares)
        if self._clip_norm > 0:
            grad_norm *= tf.math.divide_no_nan(norm, preclip_norm)
        return {
            "grad_norm": grad_norm,
            "grad_zero_frac": 1.0 - tf.stack(nonzero) * self._two_over_size,
            "grad_nonfinite": nonfinite,
            "weight_norm": weight_norm,
            "update_ratio": tf.math.divide_no_nan(step_norm, weight_norm),
        }

    def _probe_impl(self, states: tf.Tensor, packed: tf.Tensor) -> dict[str, tf.Tensor]:
        d, activation = self._diag, self.cfg.network.activation
        m: dict[str, tf.Tensor] = {}
        h = states  # [N, D]
        for layer in self._hidden_layers:
            x = tf.matmul(h, layer.kernel) + layer.bias  # [N, U] pre-activations
            z = layer.activation(x)  # [N, U]
            m.update(probes.layer_stats(layer.name, x, z, activation, d))
            if d.histograms:
                m[f"hist/activation/{layer.name}"] = z
            h = z
        m["features/srank"] = tf.cast(probes.srank(h, d.srank_delta), tf.float32)
        m.update(self._probe_weights_and_gradient(unpack(packed, self._obs_dim)))
        return m

    def _probe_weights_and_gradient(self, batch) -> dict[str, tf.Tensor]:
        """The `PROBE_PER_VARIABLE` families of every variable, from the weights now and the TD-loss gradient
        of `batch` (computed, not applied); with histograms on, also `hist/weight` and `hist/grad`."""
        m = {}
        grads = self._td_gradients(batch, False).grads
        for tag, g, var, w_init in zip(self.variable_tags, grads, self.variables, self._initial, strict=True):
            w = tf.convert_to_tensor(var.value)
            m[f"grad_near_zero_frac/{tag}"] = _frac(tf.abs(g) < self._near_zero_tol)
            m[f"weight_dist_init/{tag}"] = tf.sqrt(2.0 * tf.nn.l2_loss(w - w_init))
            if not self._diag.histograms:
                continue
            m[f"hist/weight/{tag}"] = w
            m[f"hist/grad/{tag}"] = g  # `_call_probe` adds hist/log10_abs_grad from it
        return m
