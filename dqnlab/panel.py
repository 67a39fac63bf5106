"""The panel for your own training loop: dqnlab's diagnostics on a hand-written TF2/Keras DQN step.

    panel = dqnlab.Panel(q_net, env="CartPole-v1", arm="my_dqn", experiment="mine", gamma=0.99)
    with tf.GradientTape() as tape:
        q = q_net(obs)
        qa = tf.gather(q, actions, batch_dims=1)
        loss = loss_object(target, qa)
    grads = panel.gradients(tape, loss, q_net.trainable_variables, qa=qa, target=target, q=q, obs=obs,
                            step=env_step)                     # instead of tape.gradient(loss, variables)
    optimizer.apply_gradients(zip(grads, q_net.trainable_variables))
    panel.episode(env_step, episode_return, length, epsilon)   # when an episode ends
    panel.evaluate(env_step, greedy_returns)                   # optional
    panel.close()                                              # or `with dqnlab.Panel(...) as panel:`

It writes what `dqnlab train` writes, in the same run directory (`<logdir>/<experiment>/<arm>/<env>/seed_<k>/`
with docs/metrics.md's tags, and run.json with `"source": "panel"`), so `dqnlab compare`, `doctor`, `board`
and `dqnlab.read_run` read it as any run; the live doctor runs on what was logged (`warn`).

Each `gradients` call is one `tape.gradient` (dL/dQ(s,a) comes out of the same backward pass as dL/dW) and a
finiteness check of the loss and gradient norm (a divergence marks the run `diverged` and raises `Diverged`).
One call in `every` is measured: its whole panel is computed in one compiled call when the next `gradients`
call (or `applied()`, or `close()`) finds the weights the optimizer step left, exactly as dqnlab's learner
computes its one-update burst (`learner.td_counts`, `learner.per_variable_families`). Every `probe_every`
calls the activation probes run wherever the model applies an activation (`user_layers.probe_plan`), on a
fixed batch of the `obs` it was given. What the loop did not pass (no `qa`/`target`, no `q`, no `obs`) is
not logged, and run.json's `panel.missing` and the doctor's "not enough evidence" say which tags and rules
that leaves out.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any, NamedTuple

import numpy as np

from dqnlab._tf import keras, tf
from dqnlab.doctor import LiveDoctor, retraction_line, warning_line
from dqnlab.learner import (
    MetricReader,
    divergence_origin,
    global_norm_parts,
    per_variable_families,
    td_counts,
)
from dqnlab.networks import variable_tag
from dqnlab.rundir import (
    EXPERIMENT_JSON,
    RUN_JSON,
    check_experiment_path,
    claim_run_dir,
    default_experiment_name,
    package_versions,
    run_dir_for,
    write_json_atomic,
)
from dqnlab.summaries import Summaries
from dqnlab.trainer import finding_markdown, verdict_markdown
from dqnlab.user_layers import ProbePlan, activation_stats, error_line, probe_plan, probed_activations

_log = logging.getLogger("dqnlab")

PROBE_TAGS = ["act_*/<layer>", "features/srank"]
PROBE_RULES = ["dead_relu", "saturated_activation", "dormant_growth"]
TD_TAGS = [
    "td/grad_blocked_frac",
    "td/beyond_bound_frac",
    "td/abs_mean",
    "td/abs_max",
    "td/grad_blocked_count/burst_sum",
    "td/nonzero_delta_count/burst_sum",
]


def _check_arguments(
    model, env, arm, every, probe_every, probe_size, seed, gamma, bound, clip_norm, config
) -> None:
    """`Panel`'s arguments, each refused in one line (a PanelError) before anything is written."""
    _check(isinstance(model, keras.Model), f"model: expected a keras.Model, got {type(model).__name__}")
    _check(bool(model.trainable_variables), "model: has no trainable variables (build it first)")
    _check(isinstance(env, str) and env.strip() != "", f"env: expected an environment id, got {env!r}")
    _check(
        isinstance(arm, str) and arm.strip() != "" and "/" not in arm,
        f"arm: expected a name, got {arm!r}",
    )
    for name, value, low in (
        ("every", every, 1),
        ("probe_every", probe_every, 0),
        ("probe_size", probe_size, 2),
    ):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        _check(ok, f"{name}: expected an integer >= {low}, got {value!r}")
    _check(
        isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0,
        f"seed: expected an integer >= 0, got {seed!r}",
    )
    _check(_number(gamma) and 0.0 < gamma <= 1.0, f"gamma: expected a number in (0, 1], got {gamma!r}")
    _check(_number(bound) and bound > 0, f"bound: expected a number > 0, got {bound!r}")
    _check(_number(clip_norm) and clip_norm >= 0, f"clip_norm: expected a number >= 0, got {clip_norm!r}")
    _check(
        config is None or isinstance(config, dict),
        f"config: expected a dict, got {type(config).__name__}",
    )


class PanelError(ValueError):
    """A bad argument to the panel: one line saying which and what was expected."""


class Diverged(FloatingPointError):
    """The loss or the gradient norm of a `Panel.gradients` call was not finite: the run is recorded as
    `diverged` (run.json says where) and the loop should stop, as `dqnlab train` does."""


class _Pending(NamedTuple):
    """A measured call, waiting for the weights its optimizer step leaves."""

    step: int
    inputs: list[tf.Tensor]  # loss, [dqa, qa, target] or [target], [q], raw grads, weights before
    key: tuple[bool, bool, bool]  # (with the TD terms, with the target only, with q): one trace each


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise PanelError(message)


class Panel:
    """dqnlab's panel on a user's own TF2/Keras training loop (module docstring; docs/your_agent.md)."""

    def __init__(
        self,
        model: keras.Model,
        *,
        env: str,
        arm: str = "panel",
        experiment: str | None = None,
        logdir: str | os.PathLike = "runs",
        seed: int = 0,
        gamma: float = 0.99,
        bound: float = 1.0,
        loss: str = "user",
        clip_norm: float = 0.0,
        every: int = 128,
        probe_every: int = 2560,
        probe_size: int = 256,
        config: dict | None = None,
        warn: Callable[[str], None] | None = None,
        stop_on_divergence: bool = True,
        dormant_tau: float = 0.025,
        saturation_margin: float = 0.03,
        srank_delta: float = 0.01,
        near_zero_tol: float = 1e-8,
    ):
        """`model`: the online Q-network (a built Keras model); `env`: the environment id (the run directory's
        env part); `arm`: the arm's name (the run directory's preset part; compare lists arms by it);
        `gamma`, `bound` (the TD errors counted in `td/beyond_bound_frac`; your loss's clip or Huber kappa),
        `loss` (a name for your loss, shown by the doctor) and `clip_norm` (> 0: `gradients` returns the
        gradient clipped to this global norm, as `train.grad_clip_norm`) go to run.json's config with
        `config` (any JSON-able dict of yours; sections as dicts). One call in `every` is measured; probes
        every `probe_every` calls (0: never) on `probe_size` states."""
        _check_arguments(
            model, env, arm, every, probe_every, probe_size, seed, gamma, bound, clip_norm, config
        )
        self.model = model
        self.variables = list(model.trainable_variables)
        self.variable_tags = [variable_tag(v) for v in self.variables]
        self._sizes = [float(np.prod(v.shape)) for v in self.variables]
        self._size = tf.constant(self._sizes, tf.float32)
        self._initial = [tf.constant(v.numpy()) for v in self.variables]
        self._bound, self._clip_norm = float(bound), float(clip_norm)
        self._every, self._probe_every, self._probe_size = every, probe_every, probe_size
        self._near_zero_tol = float(near_zero_tol)
        self._diag = _Diag(dormant_tau, saturation_margin, srank_delta)
        self._hidden = _dense_layers(model)[:-1]  # the last Dense is the head; grad/depth_ratio's ends
        self._plan: ProbePlan | None = None  # where the model applies its activations (`_probe_plan`)
        self._stop_on_divergence = stop_on_divergence
        self._say = warn or _log.warning
        self._calls = 0
        self._pending: _Pending | None = None
        self._measure_fns: dict[tuple, Any] = {}
        self._readers: dict[tuple, MetricReader] = {}
        self._check_fn = None
        self._in_host_call = False
        self._counter: tf.Variable | None = None  # calls made inside a tf.function (`_graph_gradients`)
        self.env_step = 0  # the last env step the panel was given: `gradients`' default step
        self._probe_fn = None
        self._probe_states: np.ndarray | None = None
        self._recent_obs: list[np.ndarray] = []
        self._missing: dict[str, dict] = {}
        self._last_step = 0
        self._perf_mark: tuple[float, int, int] | None = None
        self._closed = False

        # A functional model is read now, so that run.json and the HParams name its activation from the
        # start; a subclassed one at its first probe, from the probe states.
        spec = _input_spec(model) if probe_every else None
        self._plan, why_not = _read_plan(model, spec) if spec is not None else (None, None)
        cfg = _run_config(config, gamma, bound, loss, clip_norm, every, probe_every, probe_size, self._diag,
                          near_zero_tol, self._activation_name())  # fmt: skip
        self._open_run(logdir, experiment or default_experiment_name(), arm, env, seed, cfg)
        self._live = LiveDoctor(self.info, self._report_finding, retract=self._retract_finding)
        if why_not:
            self._note_missing("probes", *why_not)

    def _open_run(self, logdir, experiment: str, arm: str, env: str, seed: int, cfg: dict) -> None:
        """Claim the run directory and write what `dqnlab train` writes at a start: run.json, the
        experiment's description (for a panel run on its own) and the HParams."""
        check_experiment_path(logdir, experiment)
        self.run_dir = run_dir_for(logdir, experiment, arm, env, seed)
        claim_run_dir(self.run_dir)
        self.info: dict[str, Any] = {
            "preset": arm,
            "env": env,
            "seed": seed,
            "status": "running",
            "source": "panel",  # a user's own loop, not `dqnlab train`
            "env_steps": 0,
            "updates": 0,
            "wall_time_s": 0.0,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "deterministic": False,
            "final": {},
            "error": None,
            "config": cfg,
            "panel": {"every": self._every, "probe_every": self._probe_every, "missing": []},
            "versions": package_versions(),
        }
        self.final: dict[str, Any] = self.info["final"]
        self._clock = time.perf_counter()
        experiment_json = self.run_dir.parents[2] / EXPERIMENT_JSON
        if not experiment_json.exists():
            description = {
                "presets": [arm],
                "envs": [env],
                "seeds": [seed],
                "steps": None,
                "backend": "panel",
            }
            write_json_atomic(experiment_json, description)
        self._write()
        self.summaries = Summaries(self.run_dir)
        hparams = {"preset": arm, "env": env, "seed": seed}
        for section, table in cfg.items():
            items = table.items() if isinstance(table, dict) else [("", table)]
            for key, value in items:
                name = f"{section}.{key}" if key else section
                hparams[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
        self.summaries.hparams(hparams)

    # -- the user's calls ----------------------------------------------------------------------------------

    def gradients(
        self,
        tape: tf.GradientTape,
        loss: tf.Tensor,
        variables: Sequence[tf.Variable],
        *,
        step: int | tf.Tensor | None = None,
        qa: tf.Tensor | None = None,
        target: tf.Tensor | None = None,
        q: tf.Tensor | None = None,
        obs: Any = None,
    ) -> list[tf.Tensor]:
        """`tape.gradient(loss, variables)`, as applied (clipped to `clip_norm` when set), measuring on the
        way: `qa` the Q(s, a) [B] the loss was computed from (inside the tape), `target` the TD target [B]
        (delta = target - qa), `q` the Q-values [B, A], `obs` the batch's observations (probe states),
        `step` the env step the call is logged at (default `env_step`: the last step given to the panel).
        Raises `Diverged` when the loss or gradient norm is not finite (run.json: `diverged`).

        Inside a `tf.function` the same call works: the schedule then runs in the graph (a counter, a
        `tf.cond`) and only the measured, probed and diverged calls (and the call after a measured one,
        whose weights are the measured step's result) go to the host through `tf.py_function`; `step` is
        then a tensor, or None for `env_step` as the host sees it when the call runs."""
        _check(not self._closed, "gradients: the panel is closed")
        variables = list(variables)
        _check(
            len(variables) == len(self.variables)
            and all(a is b for a, b in zip(variables, self.variables, strict=True)),
            "variables: expected the model's trainable_variables, in order",
        )
        _check(
            tf.convert_to_tensor(loss).shape.rank == 0,
            f"loss: expected a scalar, got shape {list(loss.shape)}",
        )
        if not tf.executing_eagerly():
            return self._graph_gradients(tape, loss, step, qa, target, q, obs)
        step = self.env_step if step is None else step
        _check(
            isinstance(step, (int, np.integer)) and step >= 0,
            f"step: expected an env step >= 0, got {step!r}",
        )
        step = int(step)
        self._last_step = self.env_step = max(self._last_step, step)
        self._calls += 1
        if self._pending is not None:
            self._flush()
        measured = self._calls % self._every == 0
        with_td = measured and qa is not None and target is not None
        if measured:
            self._note_inputs(qa, target, q, obs)
        sources = self.variables + ([qa] if with_td else [])
        raw = tape.gradient(loss, sources)
        if with_td:
            raw, dqa = raw[:-1], raw[-1]
            _check(
                dqa is not None,
                "qa: not on the path from the loss (pass the Q(s, a) the loss was computed from)",
            )
        given = list(raw)  # a variable the loss does not reach has None: returned as such, measured as 0
        raw = [tf.zeros_like(v) if g is None else g for g, v in zip(raw, self.variables, strict=True)]
        if obs is not None and self._probe_every:
            self._keep_obs(obs)
        out = self._checked(loss, raw)
        grads, vector = out[:-1], out[-1].numpy()
        finite = bool(vector[-1])
        if measured:
            before = [tf.convert_to_tensor(v.value) for v in self.variables]
            td = [_flat(dqa), _flat(qa), _flat(target)] if with_td else []
            q_part = [_float(q)] if q is not None else []
            target_part = [_flat(target)] if target is not None and not with_td else []
            inputs = [_float(loss), *td, *target_part, *q_part, *map(_float, raw), *map(_float, before)]
            key = (with_td, bool(target_part), bool(q_part))
            self._pending = _Pending(step, inputs, key)
        if self._probe_every and self._calls % self._probe_every == 0:
            self.probe(step, raw)
        if not finite:
            self._diverged(step, vector)
        if self._clip_norm > 0:
            return [None if g is None else c for g, c in zip(given, grads, strict=True)]
        return given

    def _graph_gradients(self, tape, loss, step, qa, target, q, obs) -> list[tf.Tensor]:
        """`gradients` inside a tf.function (its docstring): one `tape.gradient`, the finiteness check and
        the schedule in the graph; the host gets a call's tensors only when it has something to do."""
        with_td = qa is not None and target is not None
        self._note_inputs(qa, target, q, obs)
        raw = tape.gradient(loss, self.variables + ([qa] if with_td else []))
        dqa = raw.pop() if with_td else None
        _check(
            not with_td or dqa is not None,
            "qa: not on the path from the loss (pass the Q(s, a) the loss was computed from)",
        )
        given = list(raw)
        raw = [tf.zeros_like(v) if g is None else g for g, v in zip(raw, self.variables, strict=True)]
        out = self._check_impl(loss, raw)
        grads, vector = out[:-1], out[-1]
        finite = vector[-1] > 0
        if self._counter is None:
            with tf.init_scope():
                self._counter = tf.Variable(0, dtype=tf.int64, trainable=False, name="panel_calls")
        n = self._counter.assign_add(1)
        wanted = tf.logical_or(tf.equal(n % self._every, 0), tf.equal((n - 1) % self._every, 0) & (n > 1))
        if self._probe_every:
            wanted = tf.logical_or(wanted, tf.equal(n % self._probe_every, 0))
        wanted = tf.logical_or(wanted, tf.logical_not(finite))
        step_t = tf.constant(-1, tf.int64) if step is None else tf.cast(step, tf.int64)
        parts = {"loss": tf.cast(loss, tf.float32), "vector": vector}
        if with_td:
            parts.update(dqa=_flat(dqa), qa=_flat(qa), target=_flat(target))
        elif target is not None:
            parts["target"] = _flat(target)
        if q is not None:
            parts["q"] = _float(q)
        if obs is not None:
            parts["obs"] = tf.cast(obs, tf.float32)
        names = list(parts)

        def host_call():
            weights = [tf.convert_to_tensor(v.value) for v in self.variables]  # read before the step
            flat = [n, step_t, *(parts[k] for k in names), *raw, *weights]
            return tf.py_function(lambda *a: self._host_call(names, *a), flat, Tout=tf.int64)

        tf.cond(wanted, host_call, lambda: tf.constant(0, tf.int64))
        if self._clip_norm > 0:
            return [None if g is None else c for g, c in zip(given, grads, strict=True)]
        return given

    def _host_call(self, names: list[str], *args) -> int:
        """On the host, from a graph call (`tf.py_function`). The panel's math runs op by op here, not as a
        compiled call: a compiled call would wait for an inter-op thread that the loop's own graph holds,
        a deadlock with one inter-op thread (`TF_NUM_INTEROP_THREADS=1`, `--deterministic`); eager ops run
        on this thread. Every 128 calls, that costs about a millisecond."""
        self._in_host_call = True
        try:
            return self._host_work(names, *args)
        finally:
            self._in_host_call = False

    def _host_work(self, names: list[str], n, step, *args) -> int:
        """Flush the pending measured call with these weights (its step's result), keep a measured call's
        tensors, probe, or record a divergence."""
        if self._closed:  # diverged (or closed) while the loop's graph still runs
            return 0
        v = len(self.variables)
        parts = dict(zip(names, args[: len(names)], strict=True))
        raw, weights = list(args[len(names) : len(names) + v]), list(args[len(names) + v :])
        n, step = int(n), int(step)
        step = self.env_step if step < 0 else step
        self._calls = n
        self._last_step = self.env_step = max(self._last_step, step)
        if self._pending is not None:
            self._flush(after=weights)
        if n % self._every == 0:
            with_td = "dqa" in parts
            td = [parts["dqa"], parts["qa"], parts["target"]] if with_td else []
            target_part = [parts["target"]] if "target" in parts and not with_td else []
            q_part = [parts["q"]] if "q" in parts else []
            inputs = [parts["loss"], *td, *target_part, *q_part, *map(_float, raw), *map(_float, weights)]
            self._pending = _Pending(step, inputs, (with_td, bool(target_part), bool(q_part)))
        if "obs" in parts and self._probe_every:
            self._keep_obs(parts["obs"].numpy())
        if self._probe_every and n % self._probe_every == 0:
            self.probe(step, raw)
        vector = parts["vector"].numpy()
        if not vector[-1]:
            self._diverged(step, vector)
        return 0

    def applied(self) -> None:
        """Optional, after `optimizer.apply_gradients`: write the measured call's panel now (otherwise the
        next `gradients` call or `close` does, from the weights then: the same unless something else
        changed the weights in between)."""
        if self._pending is not None:
            self._flush()

    def episode(
        self, step: int, episode_return: float, length: int | None = None, epsilon: float | None = None
    ) -> None:
        """A finished training episode: `episode/return` (and `episode/length`, `charts/epsilon`)."""
        _check(_number(episode_return), f"episode_return: expected a number, got {episode_return!r}")
        values = {"episode/return": float(episode_return)}
        if length is not None:
            values["episode/length"] = float(length)
        if epsilon is not None:
            values["charts/epsilon"] = float(epsilon)
        self._last_step = self.env_step = max(self._last_step, int(step))
        self.summaries.scalars(int(step), values)
        self.final["episodes"] = self.final.get("episodes", 0) + 1

    def evaluate(self, step: int, returns: float | Iterable[float]) -> float:
        """Greedy evaluation returns at `step`: their mean is `eval/return` (run.json's `final.eval_return`,
        `best_eval_return`, `eval_history`). Returns the mean."""
        values = [float(returns)] if _number(returns) else [float(r) for r in returns]
        _check(bool(values), "returns: expected at least one evaluation return")
        mean = float(np.mean(values))
        self._last_step = self.env_step = max(self._last_step, int(step))
        self.summaries.scalars(int(step), {"eval/return": mean})
        self.final["eval_return"] = mean
        self.final["best_eval_return"] = max(self.final.get("best_eval_return", float("-inf")), mean)
        self.final.setdefault("eval_history", []).append([int(step), mean])
        self._write()
        return mean

    def probe(self, step: int, grads: Sequence[tf.Tensor] | None = None) -> dict[str, float]:
        """The activation probes on the fixed probe states (the `obs` given so far), and with `grads` (a raw
        gradient) `grad_near_zero_frac/<var>`; `weight_dist_init/<var>` always. Called every `probe_every`
        calls and at `close`; returns what it logged."""
        m: dict[str, float] = {}
        for tag, var, w0 in zip(self.variable_tags, self.variables, self._initial, strict=True):
            m[f"weight_dist_init/{tag}"] = float(
                tf.sqrt(2.0 * tf.nn.l2_loss(tf.convert_to_tensor(var.value) - w0))
            )
        if grads is not None:
            for tag, g, size in zip(self.variable_tags, grads, self._sizes, strict=True):
                m[f"grad_near_zero_frac/{tag}"] = (
                    float(tf.reduce_sum(tf.cast(tf.abs(g) < self._near_zero_tol, tf.float32))) / size
                )
        states = self._states()
        plan = self._probe_plan(states) if states is not None else None
        if plan is not None and (plan.points or plan.head is not None):
            if self._probe_fn is None:
                self._probe_fn = tf.function(self._probe_impl, autograph=False)
            probe_fn = self._probe_impl if self._in_host_call else self._probe_fn
            try:
                m.update({k: float(v) for k, v in probe_fn(tf.constant(states)).items()})
            except Exception as err:  # a model of yours may fail in ways the panel cannot list: go on without
                self._plan = ProbePlan((), None)
                why = f"the activation probe failed ({error_line(err)})"
                self._note_missing("probes", PROBE_TAGS, why, PROBE_RULES)
        elif states is None and self._may_probe():
            why = "no obs= given to gradients() yet: the probes need states"
            self._note_missing("probe states", PROBE_TAGS, why, PROBE_RULES)
        self._last_step = self.env_step = max(self._last_step, int(step))
        self.final["probe"] = self.summaries.metrics(int(step), m)
        self._live.maybe_check(int(step), self.summaries.history)
        return m

    def close(self, status: str = "done", error: str | None = None) -> None:
        """Write what is pending, the last probe, the doctor's verdict, and run.json's status (`done`,
        `failed` or `interrupted`; a diverged run stays `diverged`). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.info["status"] == "diverged":
                return
            if self._pending is not None:
                self._flush()
            if self._probe_every and self._calls and self._calls % self._probe_every:
                self.probe(self._last_step)
            self._judge()
            self.info["status"] = status
            self._write(error=error)
        finally:
            self.summaries.close()

    def __enter__(self) -> Panel:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or issubclass(exc_type, Diverged):
            self.close()
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("interrupted", "KeyboardInterrupt")
        else:
            self.info["traceback"] = "".join(traceback.format_exception(exc_type, exc, tb))
            self.close("failed", f"{exc_type.__name__}: {exc}")

    # -- inside ---------------------------------------------------------------------------------------------

    def _write(self, error: str | None = None) -> None:
        self.info.update(
            error=error or self.info.get("error"),
            env_steps=self._last_step,
            updates=self._calls,
            wall_time_s=round(time.perf_counter() - self._clock, 3),
        )
        write_json_atomic(self.run_dir / RUN_JSON, self.info)

    def _activation_name(self) -> str | None:
        """The one activation the probed units go through (None: several, or not known yet)."""
        names = {p.activation for p in self._plan.points} if self._plan is not None else set()
        return names.pop() if len(names) == 1 else None

    def _may_probe(self) -> bool:
        """Whether probe states would give activation probes (yes, while the model has not been read)."""
        return self._plan is None or bool(self._plan.points)

    def _probe_plan(self, states: np.ndarray) -> ProbePlan:
        """The model's probe plan (`_read_plan`), made once; a subclassed model's from the probe states."""
        if self._plan is None:
            spec = tf.TensorSpec([None, *states.shape[1:]], tf.as_dtype(states.dtype))
            self._plan, why_not = _read_plan(self.model, spec)
            self.info["config"]["network"]["activation"] = self._activation_name()
            if why_not:
                self._note_missing("probes", *why_not)
        return self._plan

    def _note_inputs(self, qa, target, q, obs) -> None:
        td_rules = ["blocked_td_gradient"]
        if qa is None or target is None:
            absent = " and ".join(n for n, v in (("qa", qa), ("target", target)) if v is None)
            self._note_missing("td", TD_TAGS, f"gradients() got no {absent}", td_rules)
        if target is None:
            self._note_missing("target", ["q/target_mean"], "gradients() got no target", [])
        if q is None:
            self._note_missing(
                "q", ["q/mean", "q/max"], "gradients() got no q (the Q-values [B, A])", ["q_overestimation"]
            )
        if obs is None and self._probe_every and self._probe_states is None and self._may_probe():
            why = "gradients() got no obs: the probes need states"
            self._note_missing("probe states", PROBE_TAGS, why, PROBE_RULES)

    def _note_missing(self, what: str, tags: list[str], why: str, rules: list[str]) -> None:
        """Say once what is not logged and why (run.json `panel.missing`, the doctor's evidence gaps)."""
        if what in self._missing:
            return
        entry = {"what": what, "tags": tags, "why": why, "rules": rules}
        self._missing[what] = entry
        self.info["panel"]["missing"].append(entry)
        self._say(f"dqnlab panel: not logging {', '.join(tags)}: {why}")
        self._write()

    def _keep_obs(self, obs) -> None:
        if self._probe_states is not None:
            return
        array = np.asarray(obs, np.float32)
        self._recent_obs.append(array)
        while sum(len(a) for a in self._recent_obs[1:]) >= self._probe_size:
            self._recent_obs.pop(0)

    def _states(self) -> np.ndarray | None:
        """The probe states: the last `probe_size` observations given before the first probe, kept."""
        if self._probe_states is None and self._recent_obs:
            states = np.concatenate(self._recent_obs)[-self._probe_size :]
            if len(states) >= 2:
                self._probe_states = states
                self._recent_obs = []
        return self._probe_states

    def _checked(self, loss: tf.Tensor, raw: list[tf.Tensor]) -> list[tf.Tensor]:
        """One compiled call: the applied gradient (clipped when on) and one vector [loss, raw half squares
        [V], finite], finite when the loss and the raw global norm are."""
        if self._check_fn is None:
            self._check_fn = tf.function(self._check_impl, autograph=False)
        return self._check_fn(tf.convert_to_tensor(loss), raw)

    def _check_impl(self, loss, raw):
        preclip_norm, half_squares = global_norm_parts(raw)
        finite = tf.logical_and(tf.math.is_finite(loss), tf.math.is_finite(preclip_norm))
        grads = list(raw)
        if self._clip_norm > 0:
            grads, _ = tf.clip_by_global_norm(raw, self._clip_norm, use_norm=preclip_norm)
        # judged in the model's own dtype (a float64 model's norm may not fit a float32), logged in float32
        vector = tf.concat([_float(loss)[None], _float(half_squares), tf.cast(finite, tf.float32)[None]], 0)
        return [*grads, vector]

    def _flush(self, after: list[tf.Tensor] | None = None) -> None:
        """The pending measured call's panel, from its inputs and the weights `after` its step (now)."""
        pending, self._pending = self._pending, None
        key = pending.key
        fn = self._measure_fns.get(key)
        if fn is None:
            fn = self._measure_fns[key] = tf.function(lambda *a: self._measure_impl(key, *a), autograph=False)
        after = [_float(w) for w in (after or [v.value for v in self.variables])]
        if self._in_host_call:  # inside the loop's graph: op by op (see `_host_call`)
            fn = functools.partial(self._measure_impl, key)
        vector = fn(*pending.inputs, *after)
        metrics = dict(self._readers[key].read(vector.numpy().tolist()).items())
        step = pending.step
        self.final["diagnostics"] = metrics
        self.summaries.scalars(step, metrics)
        now = time.perf_counter()
        if self._perf_mark is not None:
            clock, last_step, calls = self._perf_mark
            seconds = max(now - clock, 1e-9)
            perf = {
                "perf/env_steps_per_s": (step - last_step) / seconds,
                "perf/updates_per_s": (self._calls - 1 - calls) / seconds,
            }
            self.summaries.scalars(step, perf)
        self._perf_mark = (now, step, self._calls - 1)
        self._live.maybe_check(step, self.summaries.history)

    def _measure_impl(self, key: tuple, *args: tf.Tensor) -> tf.Tensor:
        """The measured call's panel as one vector, as `Learner._panel` computes a one-update burst's; the
        reader for it is built while tracing."""
        with_td, target_only, with_q = key
        v = len(self.variables)
        args = list(args)
        loss = args.pop(0)
        m: dict[str, tf.Tensor] = {"loss/td": loss}
        if with_td:
            dqa, qa, target = args[:3]
            args = args[3:]
        elif target_only:
            target = args.pop(0)
        if with_q:
            q = args.pop(0)
            m["q/mean"] = tf.reduce_mean(q)
            m["q/max"] = tf.reduce_max(q)
        if with_td or target_only:
            m["q/target_mean"] = tf.reduce_mean(target)
        raw, before, after = args[:v], args[v : 2 * v], args[2 * v :]
        preclip_norm, half_squares = global_norm_parts(raw)
        norm = tf.minimum(preclip_norm, self._clip_norm) if self._clip_norm > 0 else preclip_norm
        grads = raw
        if self._clip_norm > 0:
            grads, _ = tf.clip_by_global_norm(raw, self._clip_norm, use_norm=preclip_norm)
        if with_td:
            delta = target - qa
            abs_delta = tf.abs(delta)
            m["td/abs_mean"] = tf.reduce_mean(abs_delta)
            m["td/abs_max"] = tf.reduce_max(abs_delta)
            m.update(td_counts(delta, dqa, abs_delta, self._bound))
        m["grad_norm/global"] = norm
        if self._clip_norm > 0:
            m["grad_norm/preclip_global"] = preclip_norm
        families = per_variable_families(
            grads, before, after, half_squares, preclip_norm, norm, self._clip_norm, self._size
        )
        scalars = list(m)
        pulled = [*scalars, *(f"{family}/{tag}" for family in families for tag in self.variable_tags)]
        self._readers[key] = self._reader(pulled, with_td)
        return tf.concat([tf.stack([m[name] for name in scalars]), *families.values()], 0)

    def _reader(self, pulled: list[str], with_td: bool) -> MetricReader:
        """The tags of a measured call (`Learner._metric_reader` of a one-update burst)."""
        reader = MetricReader(pulled)
        for name in pulled:
            if not name.startswith("~"):
                reader.tag(name)
        if with_td:
            reader.ratio("td/grad_blocked_frac", "~half_blocked", "~half_nonzero_delta")
            reader.ratio("td/beyond_bound_frac", "~beyond_bound", "~samples")
        if self._clip_norm > 0:
            reader.above("grad/clipped", "grad_norm/preclip_global", self._clip_norm)
        reader.total("grad/nonfinite", [f"grad_nonfinite/{tag}" for tag in self.variable_tags])
        kernels = [variable_tag(layer.kernel) for layer in self._hidden]
        if len(kernels) >= 2:
            reader.ratio("grad/depth_ratio", f"grad_norm/{kernels[0]}", f"grad_norm/{kernels[-1]}")
        for tag, size in zip(self.variable_tags, self._sizes, strict=True):
            reader.zero_frac(f"grad_zero_frac/{tag}", f"~half_nonzero/{tag}", size)
        if with_td:
            reader.quotient("td/grad_blocked_count/burst_sum", "~half_blocked", 0.5)
            reader.quotient("td/nonzero_delta_count/burst_sum", "~half_nonzero_delta", 0.5)
        reader.finish()
        return reader

    def _probe_impl(self, states: tf.Tensor) -> dict[str, tf.Tensor]:
        """`Learner._probe_impl`'s activation statistics, at the activations `_probe_plan` found."""
        points, features = probed_activations(self.model, self._plan, states)
        return activation_stats(points, features, self._diag, histograms=False)

    def _diverged(self, step: int, vector: np.ndarray) -> None:
        """Record the divergence as `dqnlab train` does, close, and raise `Diverged` (unless told not to)."""
        half_squares = vector[1:-1]
        weights = [
            t
            for t, v in zip(self.variable_tags, self.variables, strict=True)
            if not np.isfinite(v.numpy()).all()
        ]
        origin = divergence_origin(self.variable_tags, half_squares, 0)
        self.info["divergence"] = {"step": step, "origin": origin, "nonfinite_weights": weights}
        if self._pending is not None:
            self._flush()
        self.info["status"] = "diverged"
        first = f"; began in the raw gradient of {origin['variable']}" if origin["variable"] else ""
        error = f"non-finite TD loss or gradient at env step {step}{first}"
        self._judge()
        self._write(error=error)
        self._closed = True
        self.summaries.close()
        self._say(f"dqnlab panel: run diverged: {error}")
        if self._stop_on_divergence:
            raise Diverged(error)

    def _judge(self) -> None:
        verdict, gaps = self._live.verdict(self.summaries.history)
        self.final["doctor"] = [f.to_dict() for f in verdict]
        self.final["doctor_not_enough_evidence"] = gaps
        self.summaries.text(self._last_step, "doctor/verdict", verdict_markdown(verdict, gaps))
        self.summaries.flush()

    def _retract_finding(self, finding) -> None:
        self.summaries.text(self._last_step, "doctor/findings", f"*retracted:* {retraction_line(finding)}")
        self._say(retraction_line(finding))

    def _report_finding(self, finding, grew: bool) -> None:
        key = (finding.rule, finding.subject)
        kept = [f for f in self.final.get("doctor", []) if (f["rule"], f["subject"]) != key]
        self.final["doctor"] = [*kept, finding.to_dict()]
        self.summaries.text(finding.last_step, "doctor/findings", finding_markdown(finding, grew))
        self._say(warning_line(finding, grew))
        self._write()


class _Diag(NamedTuple):
    """The probe settings `probes.layer_stats` reads (a DiagnosticsConfig's names)."""

    dormant_tau: float
    saturation_margin: float
    srank_delta: float


def _float(x) -> tf.Tensor:
    """A loop's tensor (or array) as float32: a float64 target, loss or model (or a float16 activation) is
    measured as the learner's are."""
    return tf.cast(x, tf.float32)


def _flat(x) -> tf.Tensor:
    """A per-sample tensor ([B] or [B, 1]) as float32 [B]."""
    return tf.reshape(_float(x), [-1])


def _number(x) -> bool:
    return (
        isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool) and math.isfinite(x)
    )


def _read_plan(model: keras.Model, spec: tf.TensorSpec) -> tuple[ProbePlan, tuple | None]:
    """`user_layers.probe_plan` of `model` on inputs of `spec`, and why it gives no activation probe
    (tags, why, rules for run.json's `panel.missing`; None when it gives some). A model that cannot be read
    that way gets an empty plan, and the user's loop goes on."""
    try:
        plan = probe_plan(model, spec)
    except Exception as err:  # a model of yours may fail in ways the panel cannot list: measure the rest
        why = f"the model did not run on the probe states ({error_line(err)})"
        return ProbePlan((), None), (PROBE_TAGS, why, PROBE_RULES)
    if not plan.points:
        why = 'the model applies no activation the probes can read (docs/metrics.md, "Where the probes look")'
        return plan, (["act_*/<layer>"], why, PROBE_RULES)
    return plan, None


def _input_spec(model: keras.Model) -> tf.TensorSpec | None:
    """A functional model's one input as a spec with any batch size (None: subclassed, or several inputs)."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs or len(inputs) != 1:
        return None
    return tf.TensorSpec([None, *inputs[0].shape[1:]], tf.as_dtype(inputs[0].dtype))


def _dense_layers(model: keras.Model) -> list[keras.layers.Dense]:
    """The model's Dense layers, input side first (nested models flattened)."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += _dense_layers(layer)
        elif isinstance(layer, keras.layers.Dense):
            found.append(layer)
    return found


def _run_config(user, gamma, bound, loss, clip_norm, every, probe_every, probe_size, diag, near_zero_tol,
                activation) -> dict:  # fmt: skip
    """run.json's config: the sections the doctor's rules read, then the user's own (merged by section)."""
    cfg: dict[str, Any] = {
        "loss": {"kind": loss, "bound": float(bound)},
        "network": {"kind": "user", "activation": activation},
        "train": {"gamma": float(gamma), "grad_clip_norm": float(clip_norm)},
        "diagnostics": {
            "enabled": True,
            "every": every,
            "probe_every": probe_every,
            "probe_size": probe_size,
            "near_zero_tol": near_zero_tol,
            "dormant_tau": diag.dormant_tau,
            "saturation_margin": diag.saturation_margin,
            "srank_delta": diag.srank_delta,
            "histograms": False,
        },
    }
    for section, value in (user or {}).items():
        if isinstance(value, dict) and isinstance(cfg.get(section), dict):
            cfg[section] = {**cfg[section], **value}
        else:
            cfg[section] = value
    return cfg
