"""One training run end to end: config -> learner + replay + loop -> summaries and run.json.

`train()` is the `dqnlab.train` of the public API, in two steps: resolve where the run starts (`Start`:
fresh, or resumed from its checkpoint; the only place the two differ), then run from there (`_run`). It
records the run's fate in run.json (`RunJson`, its one writer) whatever happens: `done`, `diverged` (first
non-finite loss: the run stops, everything logged before it is kept), `failed` (an exception, re-raised after
recording) or `interrupted` (Ctrl-C, re-raised after recording). `train_run` starts the run a `RunSpec`
describes: the one way `dqnlab train`, the local runner and the Ray backend call it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from dqnlab import checkpoint, snapshot
from dqnlab._tf import tf
from dqnlab.checkpoint import CheckpointError
from dqnlab.components import describe
from dqnlab.config import Config, ConfigError, check_env_fits
from dqnlab.doctor import LiveDoctor, retraction_line, warning_line
from dqnlab.doctor_rules import Finding, env_data_cause
from dqnlab.envs import make_env
from dqnlab.events import read_series
from dqnlab.kinds import make_learner, make_replay, make_sampler
from dqnlab.loop import (
    CheckpointDue,
    EpisodeEnd,
    Evaluated,
    LoopState,
    Probed,
    Sampler,
    Schedule,
    Trainable,
    Updated,
    run_loop,
)
from dqnlab.rundir import (
    EXPERIMENT_JSON,
    RUN_JSON,
    RunResult,
    check_experiment_path,
    check_not_extended,
    check_not_shortened,
    claim_run_dir,
    default_experiment_name,
    package_versions,
    process_is_alive,
    read_run,
    run_dir_for,
    run_json_problem,
    set_aside_earlier_life,
    write_json_atomic,
)
from dqnlab.runspec import RunSpec
from dqnlab.signals import stop_reason
from dqnlab.summaries import Summaries

_log = logging.getLogger("dqnlab")
ProgressFn = Callable[[int, float | None], None]  # (env step, latest episode return)


def previous_run_json(run_dir: Path) -> dict:
    try:
        previous = json.loads((run_dir / RUN_JSON).read_text())
    except (OSError, ValueError) as exc:
        why = f"{type(exc).__name__}: {exc}"
        raise ConfigError(f"--resume: {run_dir / RUN_JSON} is unreadable ({why})") from None
    if previous == {}:  # the claim's placeholder: the process died before it wrote anything
        return previous
    problem = run_json_problem(previous)
    if problem:
        raise ConfigError(f"--resume: {run_dir / RUN_JSON} is not a dqnlab run.json: {problem}")
    return previous


def check_same_config(previous: dict, cfg: Config, run_dir: Path) -> None:
    """A resumed run must go on with the config it was started with (only the step budget may change)."""
    started = previous.get("config") or {}
    before = {f"{sec}.{k}": v for sec, t in started.items() if isinstance(t, dict) for k, v in t.items()}
    now = flat_config(cfg)
    keys = (before.keys() | now.keys()) - {"train.steps"}
    changed = sorted(k for k in keys if before.get(k) != now.get(k))
    if changed:
        shown = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:3])
        more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
        raise ConfigError(
            f"--resume: {run_dir} was started with another config ({shown}{more}); resume it with the same "
            "preset and --set values, or start a new --name"
        )


def flat_config(cfg: Config) -> dict[str, object]:
    """Every section value of a config as `section.key` -> value (lists stay lists)."""
    return {
        f"{section}.{key}": value
        for section, table in cfg.to_dict().items()
        if isinstance(table, dict)
        for key, value in table.items()
    }


def _resume_from_checkpoint(run_dir: Path, cfg: Config, learner, env, replay, seed: int):
    """The run's newest checkpoint, verified and put into the fresh learner, env and replay: (checkpoint,
    Restored), or (None, None) when it has none. A damaged, changed or unfitting one is a ConfigError
    (one line, exit 2) and nothing on disk is changed."""
    try:
        ckpt = checkpoint.load(run_dir)
        if ckpt is None:
            return None, None
        return ckpt, snapshot.restore(ckpt, learner, env, replay, seed, cfg.train.learning_starts)
    except (CheckpointError, OSError) as exc:
        raise ConfigError(f"--resume: {exc}; nothing was changed") from None


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


@dataclass
class Start:
    """Where a run begins, fresh or resumed: its built parts, the loop state it continues from, run.json as
    it (re)starts, and what the earlier lives leave to the summaries and the live doctor. Resolving it is
    the only place a fresh start and a resume differ."""

    run_json: RunJson
    learner: Trainable
    sampler: Sampler
    loop_state: LoopState
    history: dict | None  # the scalars the earlier lives logged up to the checkpoint (None: fresh)
    open_summaries: Callable[[Summaries], None]  # a fresh run writes its HParams; a resumed one its restart
    doctor_state: dict | None  # the live doctor's memory (None: fresh)


class RunJson:
    """run.json of a run in progress, and its one writer: the counters, `final` and the run's fate."""

    def __init__(self, run_dir: Path, info: dict, elapsed_before: float = 0.0):
        self.path = run_dir / RUN_JSON
        self.info = info
        self.final: dict = info["final"]
        self._clock = time.perf_counter() - elapsed_before  # wall time counts the earlier lives too

    def elapsed(self) -> float:
        return time.perf_counter() - self._clock

    def counters(self) -> dict:
        """What a checkpoint keeps of run.json, for the resumed run to go on counting from."""
        return {"final": self.final, "updates": self.info["updates"], "wall_time_s": self.elapsed()}

    def write(self, status: str, error: str | None = None, **extra) -> None:
        self.info.update(status=status, error=error, final=self.final, wall_time_s=round(self.elapsed(), 3))
        self.info.update(extra)
        write_json_atomic(self.path, self.info)

    def last_words(self, status: str, error: str) -> None:
        """Say in run.json why the run failed, even on a full disk: atomically if a new file still fits,
        else over the old one in place (no new blocks needed for a file of about the same size)."""
        self.info.update(status=status, error=error, final=self.final)
        try:
            write_json_atomic(self.path, self.info)
        except OSError:
            try:
                with open(self.path, "r+") as f:
                    f.write(json.dumps(self.info, indent=2, default=str))
                    f.truncate()
            except OSError as exc:  # nothing more can be written here: the console is all that is left
                _log.error(f"{self.path}: could not record the failure ({_os_error(exc)}): {error}")


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
    checkpoint_every: int = 10_000,
    checkpoint_replay: bool = False,
    resume: bool = False,
    progress: ProgressFn | None = None,
    warn: Callable[[str], None] | None = None,
) -> RunResult:
    """Train one agent and return its RunResult (also readable later with `dqnlab.read_run`).

    Every `checkpoint_every` env steps (0: never) and at the end, the run is checkpointed (dqnlab.checkpoint;
    the replay buffer too with `checkpoint_replay`). `resume=True` continues the run directory of the same
    name from its latest checkpoint, with the config it was started with (a ConfigError otherwise); one
    with no checkpoint starts over, its earlier files moved to `<run_dir>/earlier_lives/<n>/`; a `done` or
    `diverged` run is returned as is (a ConfigError when asked with another config, or a `done` one with more
    steps than it trained). TensorBoard and dqnlab's readers then show each step once.

    The doctor's rules run live on what was logged so far (every 5k env steps): each finding, when it
    appears and when it grows, is written to TensorBoard's Text dashboard (`doctor/findings`), to run.json
    (`final.doctor`), and passed to `warn` (default: the `dqnlab` logger's warning). At the end, the
    verdict on the whole run replaces `final.doctor` and is written as `doctor/verdict`."""
    if os.environ.get("DQNLAB_EAGER") == "1":
        tf.config.run_functions_eagerly(True)
    configure_device(device)
    if deterministic:
        make_deterministic()
    if env is not None and not env.strip():  # an unset variable, not the preset's env (as --env "")
        raise ConfigError("env: expected a gymnasium id, got an empty string")
    env_id = env or cfg.env
    steps = int(steps if steps is not None else cfg.train.steps)
    if steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    name = name or default_experiment_name()
    check_experiment_path(logdir, name)
    # Build the environments first: a bad id must fail before anything is written.
    check_env_fits(cfg, env_id)
    train_env = make_env(env_id, seed=seed, atari=cfg.atari)
    eval_env = make_env(env_id, atari=cfg.atari, evaluation=True)  # Atari: the real score, unclipped
    run_dir = run_dir_for(logdir, name, cfg.name, env_id, seed)
    say = warn or _log.warning
    try:
        start = _resolve_start(cfg, env_id, seed, steps, run_dir, train_env, resume, deterministic, say)
        if isinstance(start, RunResult):  # resumed a finished run: its result is what it logged
            return start
        if (idle := no_learning_line(cfg, steps)) is not None:  # said once the run really starts
            say(idle)
        keep_replay = start.sampler.replay if checkpoint_replay else None
        _run(start, cfg, (train_env, eval_env), seed, steps, checkpoint_every, keep_replay, progress, say)
    finally:
        train_env.close()
        eval_env.close()
    return read_run(run_dir)


def train_run(spec: RunSpec, progress: ProgressFn | None = None, warn=None) -> RunResult:
    """`train` of a `RunSpec`: how `dqnlab train`, the local runner and the Ray backend start a run."""
    return train(
        spec.config(),
        env=spec.env,
        seed=spec.seed,
        steps=spec.steps,
        logdir=spec.logdir,
        name=spec.experiment,
        device=spec.device,
        deterministic=spec.deterministic,
        checkpoint_every=spec.checkpoint_every,
        checkpoint_replay=spec.checkpoint_replay,
        resume=spec.resume,
        progress=progress,
        warn=warn,
    )


def _resolve_start(
    cfg: Config, env_id: str, seed: int, steps: int, run_dir: Path, env, resume: bool, deterministic, say
) -> Start | RunResult:
    """Build the run's parts and decide where it begins: a fresh start (the run directory claimed), or a
    resume from its verified checkpoint (restored into the fresh parts), or, for a run that already ended,
    its result. Everything is built and checked before anything is written."""
    replay = make_replay(cfg, env.observation_space.shape, seed)  # it may not fit in memory
    learner = make_learner(cfg, env.observation_space.shape, int(env.action_space.n), seed)
    sampler = make_sampler(cfg, replay)
    info = new_run_info(cfg, env_id, seed, deterministic)
    ckpt, restored, previous = None, None, {}
    if resume and (run_dir / RUN_JSON).is_file():
        previous = previous_run_json(run_dir)
        if previous.get("status") in ("done", "diverged"):
            check_same_config(previous, cfg, run_dir)  # other --set values would be silently ignored
            check_not_extended(previous, steps, run_dir)
            return read_run(run_dir)
        if process_is_alive(previous):  # two processes must never write one run directory
            raise ConfigError(f"--resume: {run_dir} is still training (process {previous['pid']})")
        if previous:  # not the bare claim of a process that died at once: it must go on as it started
            check_same_config(previous, cfg, run_dir)
            check_not_shortened(run_dir, steps)
            ckpt, restored = _resume_from_checkpoint(run_dir, cfg, learner, env, replay, seed)
        if ckpt is None:  # it never reached a checkpoint: start over, keeping what it logged
            kept = set_aside_earlier_life(run_dir)
            say(f"{run_dir} had no checkpoint: started over, its earlier files kept in {kept}")
        elif not restored.exact_env:
            say(f"{env_id} keeps state dqnlab cannot store as data: resumed at step {ckpt.step:,} with a "
                "fresh episode (docs/resume.md)")  # fmt: skip
    if ckpt is None:
        claim_run_dir(run_dir)
    else:
        checkpoint.remove_staging(run_dir)  # what a killed save left behind
    write_experiment_json_once(run_dir, cfg, env_id, seed, steps)
    if ckpt is None:
        hparams = {**hparams_of(cfg, env_id, seed), "train.steps": steps}
        return Start(
            RunJson(run_dir, info),
            learner,
            sampler,
            LoopState.start(env, learner, seed),
            history=None,
            open_summaries=lambda summaries: summaries.hparams(hparams),
            doctor_state=None,
        )
    saved = ckpt.state["run"]
    resumed_info(info, previous, ckpt, restored.exact_env)
    return Start(
        RunJson(run_dir, info, elapsed_before=saved["wall_time_s"]),
        learner,
        sampler,
        restored.loop_state,
        # TensorBoard (and dqnlab.events) drop what the earlier life logged after the checkpoint.
        history=history_until(run_dir, ckpt.step),
        open_summaries=lambda summaries: summaries.restart_after(ckpt.step),
        doctor_state=ckpt.state["doctor"],
    )


def resumed_info(info: dict, previous: dict, ckpt, exact_env: bool) -> None:
    """run.json of a run resumed from `ckpt`, in place: its counters from the checkpoint, its start and
    the resumes so far from the `previous` run.json (not the checkpoint: two resumes from one checkpoint are
    two entries), this one added."""
    saved = ckpt.state["run"]
    info.update(env_steps=ckpt.step, updates=saved["updates"], final=saved["final"])
    info["started_at"] = previous.get("started_at", info["started_at"])
    info["resumed_from"] = [*previous.get("resumed_from", []), ckpt.step]
    info["resumed_env"] = [*previous.get("resumed_env", []), "exact" if exact_env else "fresh episode"]


def new_run_info(cfg: Config, env_id: str, seed: int, deterministic: bool) -> dict:
    """run.json of a run starting now."""
    return {
        "preset": cfg.name,
        "env": env_id,
        "seed": seed,
        "status": "running",
        "env_steps": 0,
        "updates": 0,
        "wall_time_s": 0.0,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pid": os.getpid(),  # to find (or stop) the process training it
        "host": socket.gethostname(),  # where that pid lives
        "deterministic": deterministic,
        "final": {},
        "error": None,
        "config": cfg.to_dict(),
        "versions": package_versions(),
        "components": describe(cfg, env_id),  # your own loss, network or env: import path and source hash
    }


def write_experiment_json_once(run_dir: Path, cfg: Config, env_id: str, seed: int, steps: int) -> None:
    """The experiment's description, for a run trained on its own (the runner writes its own first)."""
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


def _run(
    start: Start,
    cfg: Config,
    envs: tuple,
    seed: int,
    steps: int,
    checkpoint_every: int,
    keep_replay,
    progress: ProgressFn | None,
    say: Callable[[str], None],
) -> None:
    """Train from `start` to `steps` and record the run's fate in run.json whatever happens: `done`,
    `diverged` (first non-finite loss: the run stops, everything logged before it is kept), `failed` (an
    exception, re-raised after recording; an OSError such as a full disk is recorded and not raised) or
    `interrupted` (Ctrl-C, re-raised after recording)."""
    run_json, learner = start.run_json, start.learner
    run_json.write("running")
    try:
        schedule = Schedule.of(cfg.diagnostics, cfg.train, steps, checkpoint_every)
        loop = run_loop(*envs, learner, start.sampler, cfg.train, schedule, steps=steps, seed=seed,
                        state_from=start.loop_state)  # fmt: skip
        with Summaries(run_json.path.parent, history=start.history) as summaries:
            start.open_summaries(summaries)
            live = LiveDoctor(
                run_json.info,
                lambda f, grew: report_finding(f, grew, summaries, run_json, say),
                retract=lambda f: retract_finding(f, summaries, run_json, say),
            )
            if start.doctor_state is not None:
                live.restore(start.doctor_state)

            def save_checkpoint(loop_state: LoopState) -> None:
                summaries.flush()
                bundle = snapshot.capture(loop_state, envs[0], keep_replay, run_json.counters(), live.state())
                checkpoint.save(run_json.path.parent, loop_state.step, learner.state_arrays(), bundle)
                run_json.write("running")  # its counters as of this checkpoint: how far a killed run got

            recorder = EventRecorder(summaries, run_json, progress, live, save_checkpoint)
            status = consume(loop, recorder)
            judge(status, learner, summaries, run_json, live, recorder.nonfinite_env_data)
            if status == "done" and checkpoint_every:
                save_checkpoint(
                    start.loop_state
                )  # the end state: what the final weights are compared against
        run_json.write(status, divergence_line(run_json.info) if status == "diverged" else None)
    except KeyboardInterrupt as exc:
        run_json.write("interrupted", stop_reason(exc))
        raise
    except OSError as exc:  # the disk filled up, went read-only or failed: the run ends saying why
        run_json.last_words("failed", _os_error(exc, run_json.info["env_steps"]))
    except Exception as exc:
        run_json.write("failed", f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        raise


def judge(
    status: str,
    learner,
    summaries: Summaries,
    run_json: RunJson,
    live: LiveDoctor,
    env_data: Mapping[str, int] | None = None,
) -> None:
    """The run's end: where a divergence began (`env_data`: the non-finite entries the env had put in
    replay, when it diverged), and the doctor's verdict on the whole run (run.json's `final.doctor` and
    `final.doctor_not_enough_evidence`, and the Text dashboard's `doctor/verdict`)."""
    info = run_json.info
    if status == "diverged":
        info["divergence"] = _divergence(learner, info["env_steps"], env_data)
    info["status"] = status  # the verdict judges the run as it ended, as `dqnlab doctor` will
    verdict, gaps = live.verdict(summaries.history)
    run_json.final["doctor"] = [f.to_dict() for f in verdict]
    run_json.final["doctor_not_enough_evidence"] = gaps
    summaries.text(info["env_steps"], "doctor/verdict", verdict_markdown(verdict, gaps))
    summaries.flush()


def no_learning_line(cfg: Config, steps: int) -> str | None:
    """A warning for a run too short to learn: `steps` at or below `train.learning_starts` runs no update
    (it acts, fills replay and evaluates), so the doctor will have no evidence either."""
    starts = cfg.train.learning_starts
    if steps > starts:
        return None
    return (
        f"warning: {steps:,} env steps <= train.learning_starts {starts:,}: no update will run (the run only "
        "acts and fills replay), and the doctor will have no evidence"
    )


def divergence_line(info: dict) -> str:
    """run.json's `error` for a diverged run: where it stopped, and where the non-finite values began."""
    divergence = info["divergence"]
    origin = divergence["origin"] or {}
    cause = env_data_cause(divergence.get("nonfinite_env_data"))
    first = f"; began in the raw gradient of {origin['variable']}" if origin.get("variable") else ""
    bad = divergence["nonfinite_weights"]
    where = f"{cause}{first}; non-finite weights: {', '.join(bad)}" if bad else cause + first
    return f"non-finite TD loss or gradient in the burst ending at env step {info['env_steps']}{where}"


def _os_error(exc: OSError, step: int | None = None) -> str:
    """'no space left on device at env step 2,000 (writing <file>)'."""
    what = exc.strerror[:1].lower() + exc.strerror[1:] if exc.strerror else f"{type(exc).__name__}: {exc}"
    when = "" if step is None else f" at env step {step:,}"
    return f"{what}{when} (writing {exc.filename})" if exc.filename else f"{what}{when}"


def hparams_of(cfg: Config, env_id: str, seed: int) -> dict[str, bool | int | float | str]:
    """Every config value, flattened to `section.key` (lists as text), plus preset, env and seed."""
    values: dict[str, bool | int | float | str] = {"preset": cfg.name, "env": env_id, "seed": seed}
    values.update({k: str(v) if isinstance(v, list) else v for k, v in flat_config(cfg).items()})
    for role, component in describe(cfg, env_id).items():  # the code a result came from
        values[f"components.{role}.sha256"] = component["sha256"] or "unknown"
    return values


def history_until(run_dir: Path, step: int) -> dict[str, tuple[list[int], list[float]]]:
    """The scalars an earlier life of the run logged up to `step` (the live doctor's memory)."""
    history = {}
    for tag, (steps, values) in read_series(run_dir).items():
        keep = steps <= step
        history[tag] = (steps[keep].tolist(), values[keep].tolist())
    return history


def _divergence(learner, step: int, env_data: Mapping[str, int] | None) -> dict:
    """run.json's `divergence`: the step; where it began (`origin`: the first update of the burst whose loss
    or raw gradient went non-finite, and the variables whose raw gradient did, in model order: with
    clipping, the NaN then spreads to every variable); the variables whose weights ended non-finite; and
    `nonfinite_env_data`, the non-finite entries the env had put in replay by field (empty: the data were
    finite, and the divergence is the learning's own)."""
    return {
        "step": step,
        "origin": learner.nonfinite_origin(),
        "nonfinite_weights": learner.nonfinite_variables(),
        "nonfinite_env_data": dict(env_data or {}),
    }


def report_finding(finding: Finding, grew: bool, summaries: Summaries, run_json: RunJson, warn) -> None:
    """A live finding, new or grown: run.json keeps its latest state (one entry per rule and subject), the
    Text dashboard and the console get a note each time."""
    key = (finding.rule, finding.subject)
    kept = [f for f in run_json.final.get("doctor", []) if (f["rule"], f["subject"]) != key]
    run_json.final["doctor"] = [*kept, finding.to_dict()]
    summaries.text(finding.last_step, "doctor/findings", finding_markdown(finding, grew))
    warn(warning_line(finding, grew))


def retract_finding(finding: Finding, summaries: Summaries, run_json: RunJson, warn) -> None:
    """A live finding the end's verdict does not hold: the Text dashboard and the console say so."""
    summaries.text(run_json.info["env_steps"], "doctor/findings", f"*retracted:* {retraction_line(finding)}")
    warn(retraction_line(finding))


def finding_markdown(finding: Finding, grew: bool = False) -> str:
    head = f"**{finding.rule}** {finding.subject}: {finding.summary}" + (" *(grown)*" if grew else "")
    return f"{head}\n\n*why:* {finding.why}\n\n*fix:* {finding.fix}"


def verdict_markdown(findings: list[Finding], gaps: list[str]) -> str:
    """The doctor's verdict at the end of the run, for the Text dashboard: the same lists as run.json."""
    short = "".join(f"\n- not enough evidence: {gap}" for gap in gaps)
    if not findings:
        head = "**not enough evidence**: no finding" if gaps else "**healthy**: no finding"
        return f"{head} at the end of the run" + (f":\n{short}" if gaps else "")
    notes = [f"- {f.severity} **{f.rule}** {f.subject}: {f.summary}" for f in findings]
    return f"**{len(findings)} findings** at the end of the run:\n\n" + "\n".join(notes) + short


class EventRecorder:
    """One run's handling of the loop's events: summaries, run.json's counters and `final`, progress, the
    live doctor, checkpoints. `consume` feeds it one run's events; `dqnlab.batched_trainer` feeds each
    member of a batch its own events, so a batched run's files are written by the same code."""

    def __init__(
        self,
        summaries: Summaries,
        run_json: RunJson,
        progress: ProgressFn | None,
        live: LiveDoctor,
        save_checkpoint: Callable[[LoopState], None] | None,
    ):
        self.summaries, self.run_json, self.progress = summaries, run_json, progress
        self.live, self.save_checkpoint = live, save_checkpoint
        self.last_return: float | None = None
        # perf/* spans two measured bursts: the first only sets the marks (from the start it would count the
        # build, the tracing and the acting before learning_starts, and after --resume the earlier lives'
        # steps).
        self.perf_mark: tuple[float, int, int] | None = None
        self.nonfinite_env_data: dict[str, int] = {}  # what the env put in replay, when the run diverged

    def handle(self, event) -> str | None:
        """Write one event; keep run.json's counters current. Returns 'diverged' when the run ends here."""
        info, final, summaries = self.run_json.info, self.run_json.final, self.summaries
        info["env_steps"] = event.step
        if isinstance(event, EpisodeEnd):
            summaries.episode(event)
            self.last_return = event.episode_return
            final["episodes"] = final.get("episodes", 0) + 1
            if self.progress:
                self.progress(event.step, self.last_return)
        elif isinstance(event, Updated):
            info["updates"] = event.updates
            if event.metrics:
                final["diagnostics"] = summaries.metrics(event.step, event.metrics)
                self._perf(event)
            if not event.finite:
                self.nonfinite_env_data = dict(event.nonfinite_env_data)
                return "diverged"
            self.live.maybe_check(event.step, summaries.history)
        elif isinstance(event, Probed):
            final["probe"] = summaries.metrics(event.step, event.metrics)
            self.live.maybe_check(event.step, summaries.history)
        elif isinstance(event, CheckpointDue):
            if self.save_checkpoint is not None:
                self.save_checkpoint(event.state)
        elif isinstance(event, Evaluated):
            summaries.evaluation(event)
            final["eval_return"] = event.mean_return
            final["best_eval_return"] = max(final.get("best_eval_return", float("-inf")), event.mean_return)
            final.setdefault("eval_history", []).append([event.step, event.mean_return])
        return None

    def _perf(self, event: Updated) -> None:
        now = time.perf_counter()
        if self.perf_mark is not None:
            clock, step, updates = self.perf_mark
            seconds = max(now - clock, 1e-9)
            self.summaries.scalars(
                event.step,
                {
                    "perf/env_steps_per_s": (event.step - step) / seconds,
                    "perf/updates_per_s": (event.updates - updates) / seconds,
                },
            )
        self.perf_mark = (now, event.step, event.updates)

    def finish(self) -> None:
        """The run's loop ended: the last progress report."""
        if self.progress:
            self.progress(self.run_json.info["env_steps"], self.last_return)


def consume(events, recorder: EventRecorder) -> str:
    """Write every event of one run. Returns 'done' or 'diverged'."""
    for event in events:
        if recorder.handle(event) == "diverged":
            return "diverged"
    recorder.finish()
    return "done"
