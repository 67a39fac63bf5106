"""One training run end to end: config -> learner + replay + loop -> summaries and run.json.

`train()` is the `dqnlab.train` of the public API. It records the run's fate in run.json whatever happens:
`done`, `diverged` (first non-finite loss: the run stops, everything logged before it is kept), `failed`
(an exception, re-raised after recording) or `interrupted` (Ctrl-C, re-raised after recording).
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from dqnlab._tf import tf
from dqnlab.config import Config, ConfigError
from dqnlab.doctor import LiveDoctor, warning_line
from dqnlab.doctor_rules import Finding
from dqnlab.envs import make_env
from dqnlab.learner import Learner
from dqnlab.loop import EpisodeEnd, Evaluated, Probed, Updated, run_loop
from dqnlab.replay import ReplayBuffer
from dqnlab.rundir import (
    EXPERIMENT_JSON,
    RUN_JSON,
    RunResult,
    claim_run_dir,
    default_experiment_name,
    package_versions,
    read_run,
    run_dir_for,
    write_json_atomic,
)
from dqnlab.summaries import Summaries

_log = logging.getLogger("dqnlab")
ProgressFn = Callable[[int, float | None], None]  # (env step, latest episode return)


def configure_device(device: str) -> None:
    """'cpu' hides GPUs from TensorFlow, 'gpu' insists on one, 'auto' uses one when visible."""
    if device not in ("auto", "cpu", "gpu"):
        raise ConfigError(f"--device {device!r}: expected auto, cpu or gpu")
    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise ConfigError("--device gpu: TensorFlow sees no GPU (see the README's GPU install)")
    if device == "cpu" and gpus:
        tf.config.set_visible_devices([], "GPU")


def make_deterministic() -> None:
    """Bit-identical reruns on CPU: TensorFlow's deterministic kernels and one thread, so no reduction order
    depends on scheduling. Weights, replay, exploration and envs are seeded from the run's seed anyway."""
    tf.config.experimental.enable_op_determinism()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already started: only possible to check, not to change
        if tf.config.threading.get_intra_op_parallelism_threads() != 1:
            raise ConfigError(
                "--deterministic needs one TensorFlow thread, but TensorFlow already started with more; "
                "set TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 before starting Python"
            ) from None


def train(
    cfg: Config,
    env: str | None = None,
    seed: int = 0,
    steps: int | None = None,
    logdir: str | Path = "runs",
    name: str | None = None,
    *,
    device: str = "auto",
    deterministic: bool = False,
    progress: ProgressFn | None = None,
    warn: Callable[[str], None] | None = None,
) -> RunResult:
    """Train one agent and return its RunResult (also readable later with `dqnlab.read_run`).

    The doctor's rules run live on what was logged so far (every 5k env steps): each finding is written to
    TensorBoard's Text dashboard (`doctor/findings`), to run.json (`final.doctor`), and passed to `warn`
    (default: the `dqnlab` logger's warning)."""
    if os.environ.get("DQNLAB_EAGER") == "1":
        tf.config.run_functions_eagerly(True)
    configure_device(device)
    if deterministic:
        make_deterministic()
    env_id = env or cfg.env
    steps = int(steps if steps is not None else cfg.train.steps)
    if steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    name = name or default_experiment_name()
    # Build the environments first: a bad id must fail before anything is written.
    train_env = make_env(env_id, seed=seed)
    eval_env = make_env(env_id)
    run_dir = run_dir_for(logdir, name, cfg.name, env_id, seed)
    claim_run_dir(run_dir)
    experiment_json = run_dir.parents[2] / EXPERIMENT_JSON
    if not experiment_json.exists():
        write_json_atomic(
            experiment_json,
            {
                "presets": [cfg.name],
                "envs": [env_id],
                "seeds": [seed],
                "steps": steps,
                "backend": "in-process",
            },
        )

    info = {
        "preset": cfg.name,
        "env": env_id,
        "seed": seed,
        "status": "running",
        "env_steps": 0,
        "updates": 0,
        "wall_time_s": 0.0,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pid": os.getpid(),  # to find (or stop) the process training it
        "deterministic": deterministic,
        "final": {},
        "error": None,
        "config": cfg.to_dict(),
        "versions": package_versions(),
    }
    write_json_atomic(run_dir / RUN_JSON, info)
    start = time.perf_counter()
    final: dict = {}

    def record(status: str, error: str | None = None, **extra) -> None:
        info.update(
            status=status, error=error, final=final, wall_time_s=round(time.perf_counter() - start, 3)
        )
        info.update(extra)
        write_json_atomic(run_dir / RUN_JSON, info)

    try:
        learner, replay = _learner_and_replay(cfg, train_env, seed)
        diag = cfg.diagnostics
        every = diag.every if diag.enabled else None
        probe_every = diag.probe_every if diag.enabled and diag.probe_every > 0 else None
        events = run_loop(
            train_env,
            eval_env,
            learner,
            replay,
            cfg.train,
            steps=steps,
            seed=seed,
            diagnostics_every=every,
            probe_every=probe_every,
            probe_size=diag.probe_size,
        )
        with Summaries(run_dir) as summaries:
            summaries.hparams({**hparams_of(cfg, env_id, seed), "train.steps": steps})
            live = LiveDoctor(info, lambda f: _report_finding(f, summaries, final, warn or _log.warning))
            status = _consume(events, summaries, info, final, progress, start, live)
            live.check(summaries.history)
            summaries.flush()
        if status == "diverged":
            bad = learner.nonfinite_variables()
            where = f"; non-finite weights: {', '.join(bad)}" if bad else ""
            record(
                "diverged",
                f"non-finite TD loss or gradient in the burst ending at env step {info['env_steps']}{where}",
                divergence={"step": info["env_steps"], "nonfinite_weights": bad},
            )
        else:
            record("done")
    except KeyboardInterrupt:
        record("interrupted", "interrupted by the user (Ctrl-C)")
        raise
    except Exception as exc:
        record("failed", f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        raise
    finally:
        train_env.close()
        eval_env.close()
    return read_run(run_dir)


def _learner_and_replay(cfg: Config, env, seed: int):
    """The learner and replay of the config's network kind: transitions for an MLP, sequences for an RNN."""
    obs_dim, num_actions = int(env.observation_space.shape[0]), int(env.action_space.n)
    if cfg.network.kind == "rnn":
        from dqnlab.recurrent_learner import RecurrentLearner
        from dqnlab.sequence_replay import SequenceReplay

        learner = RecurrentLearner(cfg, obs_dim=obs_dim, num_actions=num_actions, seed=seed)
        stored = learner.state_size if cfg.recurrent.initial_state == "stored" else 0
        return learner, SequenceReplay(cfg.replay.capacity, obs_dim, state_dim=stored, seed=seed)
    learner = Learner(cfg, obs_dim=obs_dim, num_actions=num_actions, seed=seed)
    return learner, ReplayBuffer(cfg.replay.capacity, env.observation_space.shape, seed=seed)


def hparams_of(cfg: Config, env_id: str, seed: int) -> dict[str, bool | int | float | str]:
    """Every config value, flattened to `section.key` (lists as text), plus preset, env and seed."""
    values: dict[str, bool | int | float | str] = {"preset": cfg.name, "env": env_id, "seed": seed}
    for section, table in cfg.to_dict().items():
        if isinstance(table, dict):
            for key, value in table.items():
                values[f"{section}.{key}"] = str(value) if isinstance(value, list) else value
    return values


def _report_finding(finding: Finding, summaries: Summaries, final: dict, warn: Callable[[str], None]) -> None:
    final.setdefault("doctor", []).append(finding.to_dict())
    head = f"**{finding.rule}** {finding.subject}: {finding.summary}"
    markdown = f"{head}\n\n*why:* {finding.why}\n\n*fix:* {finding.fix}"
    summaries.text(finding.last_step, "doctor/findings", markdown)
    warn(warning_line(finding))


def _consume(
    events,
    summaries: Summaries,
    info: dict,
    final: dict,
    progress: ProgressFn | None,
    start: float,
    live: LiveDoctor,
) -> str:
    """Write every event; keep run.json's counters current. Returns 'done' or 'diverged'."""
    last_return: float | None = None
    perf_clock, perf_step, perf_updates = start, 0, 0
    for event in events:
        info["env_steps"] = event.step
        if isinstance(event, EpisodeEnd):
            summaries.episode(event)
            last_return = event.episode_return
            final["episodes"] = final.get("episodes", 0) + 1
            if progress:
                progress(event.step, last_return)
        elif isinstance(event, Updated):
            info["updates"] = event.updates
            if event.metrics:
                final["diagnostics"] = summaries.metrics(event.step, event.metrics)
                now = time.perf_counter()
                summaries.scalars(
                    event.step,
                    {
                        "perf/env_steps_per_s": (event.step - perf_step) / max(now - perf_clock, 1e-9),
                        "perf/updates_per_s": (event.updates - perf_updates) / max(now - perf_clock, 1e-9),
                    },
                )
                perf_clock, perf_step, perf_updates = now, event.step, event.updates
            if not event.finite:
                return "diverged"
            live.maybe_check(event.step, summaries.history)
        elif isinstance(event, Probed):
            final["probe"] = summaries.metrics(event.step, event.metrics)
            live.maybe_check(event.step, summaries.history)
        elif isinstance(event, Evaluated):
            summaries.evaluation(event)
            final["eval_return"] = event.mean_return
            final["best_eval_return"] = max(final.get("best_eval_return", float("-inf")), event.mean_return)
            final.setdefault("eval_history", []).append([event.step, event.mean_return])
    if progress:
        progress(info["env_steps"], last_return)
    return "done"
