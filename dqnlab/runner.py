"""Run many training runs (presets x envs x seeds) in parallel local processes.

Each run is its own `spawn`ed process, `workers` at a time; it imports TensorFlow itself and uses one intra-op
and one inter-op thread (and one BLAS thread), so N workers use N cores without oversubscription. A run that
fails is recorded in its run.json and the other runs go on, also when its process is killed outright. Runs
report progress through a queue; the parent draws one progress bar over all runs.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue as queue_module
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from dqnlab import checkpoint, early_stop
from dqnlab.aggregate import update_aggregates
from dqnlab.batch_plan import member_ended, plan_batches
from dqnlab.components import check_components
from dqnlab.config import (
    Config,
    ConfigError,
    check_env_fits,
    check_fits_memory,
)
from dqnlab.envs import env_dirname, make_env
from dqnlab.progress import progress_bar
from dqnlab.rundir import (
    EXPERIMENT_JSON,
    RUN_JSON,
    RunDirExists,
    check_experiment_path,
    check_resumable,
    claim_experiment_dir,
    package_versions,
    run_dir_for,
    write_json_atomic,
)
from dqnlab.runspec import RunSpec, arm_config
from dqnlab.signals import stop_on_signals, stop_reason, stop_with_parent

SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


@dataclass(frozen=True)
class ArmPlan:
    """An arm to plan: a preset with its cell's overrides and name (both empty for `dqnlab ab`'s arms),
    on the envs given (None: `plan_arms`' default)."""

    preset: str
    cell: tuple[str, ...] = ()
    name: str = ""
    envs: tuple[str, ...] | None = None


@dataclass(frozen=True)
class RunOutcome:
    spec: RunSpec
    run_dir: str
    status: str
    error: str | None
    eval_return: float | None


def plan_experiment(
    presets: list[str],
    envs: list[str] | None,
    seeds: list[int],
    steps: int | None,
    logdir: str | Path,
    experiment: str,
    overrides: list[str] | tuple[str, ...] = (),
    device: str = "auto",
    deterministic: bool = False,
    *,
    resume: bool = False,
    checkpoint_every: int = 10_000,
    checkpoint_replay: bool = False,
) -> tuple[list[RunSpec], dict[str, Config]]:
    """Validate everything a user typed and return the runs, before any process or file is created."""
    if not presets:
        raise ConfigError("give at least one preset")
    if len(set(presets)) != len(presets):
        raise ConfigError(f"a preset is given twice: {' '.join(presets)}")
    specs, configs = plan_arms(
        [ArmPlan(p) for p in presets],
        envs,
        seeds,
        steps,
        logdir,
        experiment,
        overrides,
        device,
        deterministic,
        resume=resume,
        checkpoint_every=checkpoint_every,
        checkpoint_replay=checkpoint_replay,
    )
    return specs, {arm.preset: cfg for arm, cfg in configs.items()}


def plan_arms(
    arms: list[ArmPlan],
    envs: list[str] | None,
    seeds: list[int],
    steps: int | None,
    logdir: str | Path,
    experiment: str,
    overrides: list[str] | tuple[str, ...] = (),
    device: str = "auto",
    deterministic: bool = False,
    *,
    resume: bool = False,
    checkpoint_every: int = 10_000,
    checkpoint_replay: bool = False,
    stop_on_fatal: bool = False,
) -> tuple[list[RunSpec], dict[ArmPlan, Config]]:
    """`plan_experiment` for arms that may be a sweep's cells. Each arm runs on its own `envs` when it names
    them; otherwise on `envs`, or without those on every arm's env (`dqnlab ab`'s rule)."""
    configs = {a: arm_config(a.preset, [*overrides, *a.cell], a.name) for a in arms}
    names = [c.name for c in configs.values()]
    if len(set(names)) != len(names):
        raise ConfigError(f"two presets share the name {names}: their run directories would collide")
    everywhere = envs or sorted({c.env for c in configs.values()})
    arm_envs = {a: list(a.envs) if a.envs is not None else everywhere for a in arms}
    env_ids = sorted({e for ids in arm_envs.values() for e in ids}, key=_first_seen(everywhere))
    _check_arms_fit(configs, arm_envs, env_ids, given_envs=bool(envs))
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    check_experiment_path(logdir, experiment)
    exp_dir = Path(logdir) / experiment
    labels = [a.name or a.preset for a in arms]  # as experiment.json records them
    _check_experiment_json(exp_dir, labels, env_ids, list(overrides), resume)
    if not resume and os.path.lexists(exp_dir):  # run_experiment claims it; say so before any process
        raise RunDirExists(f"experiment {exp_dir} already exists; choose another --name, or --resume it")
    if device == "gpu":  # the runs would each fail with it: say it once, before anything is written
        from dqnlab.trainer import configure_device

        configure_device(device)
    specs = []
    for env_id in env_ids:
        for arm, cfg in configs.items():
            if env_id not in arm_envs[arm]:
                continue
            for seed in seeds:
                n = steps if steps is not None else cfg.train.steps
                spec = RunSpec(
                    arm.preset,
                    tuple(overrides),
                    env_id,
                    seed,
                    n,
                    str(logdir),
                    experiment,
                    device,
                    deterministic,
                    resume,
                    checkpoint_every,
                    checkpoint_replay,
                    name=arm.name,
                    cell=arm.cell,
                    stop_on_fatal=stop_on_fatal,
                )
                specs.append(spec)
                if resume:  # a new experiment's run directories cannot exist: its directory is claimed
                    check_resumable(run_dir_for(logdir, experiment, cfg.name, env_id, seed), n)
    return specs, configs


def _check_arms_fit(configs: dict, arm_envs: dict, env_ids: list[str], given_envs: bool) -> None:
    """Every arm can run on each of its envs (memory, observations), every env exists, and every component
    an arm names by import path meets its contract: one ConfigError line before any run starts."""
    for env_id in env_ids:  # every arm runs on its envs: each must be able to read it
        for arm, cfg in configs.items():
            if env_id not in arm_envs[arm]:
                continue
            check_fits_memory(cfg, env_id)  # first: its refusal owes nothing to the choice of envs
            every = not given_envs and arm.envs is None
            how = " (without --env, every preset runs on every preset's env)" if every else ""
            try:
                check_env_fits(cfg, env_id, source=f"{arm.name or arm.preset} on {env_id}")
            except ConfigError as exc:
                raise ConfigError(f"{exc}{how}") from None
    for env_id in env_ids:
        validate_env(env_id)
    for arm, cfg in configs.items():  # your own components: imported and checked before any run starts
        for env_id in arm_envs[arm]:
            check_components(cfg, env_id)


def _first_seen(order: list[str]):
    """A sort key: the envs of `order` in that order, any other after them, alphabetically."""
    return lambda env_id: (order.index(env_id), "") if env_id in order else (len(order), env_id)


def _check_experiment_json(
    exp_dir: Path, presets: list[str], envs: list[str], overrides: list[str], resume: bool
) -> None:
    """An existing experiment is only continued (--resume), and only with what it was started with."""
    path = exp_dir / EXPERIMENT_JSON
    if not path.is_file():
        return
    if not resume:
        raise RunDirExists(f"experiment {exp_dir} already exists; choose another --name, or --resume it")
    try:
        started = json.loads(path.read_text())
        was = {"presets": sorted(started["presets"]), "envs": sorted(started["envs"])}
        if "overrides" in started:  # `train` writes none: its run.json's config is checked run by run
            was["overrides"] = list(started["overrides"])
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return  # unreadable: the run directories are still checked one by one
    asked = {"presets": sorted(presets), "envs": sorted(envs), "overrides": list(overrides)}
    differs = [k for k in was if was[k] != asked[k]]
    if differs:
        shown = "; ".join(f"{k}: {was[k]} -> {asked[k]}" for k in differs)
        raise ConfigError(
            f"--resume: experiment {exp_dir} was started with other {' and '.join(differs)} ({shown})"
        )


def validate_env(env_id: str) -> None:
    try:
        make_env(env_id).close()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


@contextmanager
def _single_threaded_children():
    """Children inherit the environment at spawn: give them one thread each, restore ours after."""
    saved = {k: os.environ.get(k) for k in SINGLE_THREAD_ENV}
    os.environ.update(SINGLE_THREAD_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_progress_queue = None
_stop_event = None  # set by the parent on Ctrl-C: runs not started yet must not start


def _process_main(
    indices: list[int], specs: list[RunSpec], progress_queue, stop_event, parent_pid: int
) -> None:
    """Entry point of one job's process (a run, or a batch of runs): train, then send each run's outcome
    to the parent."""
    global _progress_queue, _stop_event
    _progress_queue, _stop_event = progress_queue, stop_event
    # Ctrl-C (the terminal signals the whole group), SIGTERM, or the parent's death: each stops the run
    # cleanly, once.
    stop_on_signals((signal.SIGINT, signal.SIGTERM))
    stop_with_parent(parent_pid)
    from dqnlab._tf import tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    try:
        outcomes = [run_in_worker(specs[0])] if len(specs) == 1 else run_batch_in_worker(specs)
    except KeyboardInterrupt as exc:  # run.json already says 'interrupted'
        outcomes = [RunOutcome(spec, "", "interrupted", stop_reason(exc), None) for spec in specs]
    for index, outcome in zip(indices, outcomes, strict=True):
        progress_queue.put(("outcome", index, outcome))


def run_batch_in_worker(specs: list[RunSpec]) -> list[RunOutcome]:
    """A batch of runs in this process (`dqnlab.batched_trainer`); each member's outcome. A batch that
    fails as a whole is a failed outcome for each member (and its run.json says so, where it was written)."""
    from dqnlab.batched_trainer import train_batch

    keys = [(spec.name or spec.preset, spec.env, spec.seed) for spec in specs]  # ArmReturns' keys
    last_sent = [[0.0, 0] for _ in specs]

    def report(member: int, step: int, episode_return: float | None) -> None:
        now, sent = time.monotonic(), last_sent[member]
        if _progress_queue is not None and (now - sent[0] > 0.5 or step >= specs[member].steps):
            _progress_queue.put(("progress", step - sent[1], keys[member], episode_return))
            sent[:] = [now, step]

    def warn(member: int, line: str) -> None:
        if _progress_queue is not None:
            spec = specs[member]
            _progress_queue.put(("warn", f"{spec.arm} on {spec.env}, seed {spec.seed}: {line}"))

    dirs = [str(run_dir_for(s.logdir, s.experiment, s.arm, s.env, s.seed)) for s in specs]
    if _stop_event is not None and _stop_event.is_set():
        why = "not started: the experiment was interrupted"
        return [RunOutcome(spec, d, "cancelled", why, None) for spec, d in zip(specs, dirs, strict=True)]
    try:
        results = train_batch(specs, progress=report, warn=warn)
    except Exception as exc:  # recorded in each member's run.json by train_batch; the other jobs go on
        why = f"the batch failed: {type(exc).__name__}: {exc}"
        return [RunOutcome(spec, d, "failed", why, None) for spec, d in zip(specs, dirs, strict=True)]
    return [
        RunOutcome(spec, str(res.run_dir), res.status, res.error, res.final.get("eval_return"))
        for spec, res in zip(specs, results, strict=True)
    ]


def run_in_worker(spec: RunSpec) -> RunOutcome:
    from dqnlab.trainer import train_run

    last_sent = [0.0, 0]
    spec_key = (spec.name or spec.preset, spec.env, spec.seed)  # ArmReturns' key
    trained = [False]  # the loop reached its last step: what the doctor says now is the end's verdict

    def report(step: int, episode_return: float | None) -> None:
        trained[0] = trained[0] or step >= spec.steps
        now = time.monotonic()
        if _progress_queue is not None and (now - last_sent[0] > 0.5 or step >= spec.steps):
            _progress_queue.put(("progress", step - last_sent[1], spec_key, episode_return))
            last_sent[:] = [now, step]
        if 0 < spec.pause_at < step < spec.steps:  # past the rung's checkpoint: the trainer records it
            raise early_stop.Paused(f"successive halving's rung at env step {spec.pause_at:,}")

    def warn(line: str) -> None:
        if _progress_queue is not None:
            _progress_queue.put(("warn", f"{cfg.name} on {spec.env}, seed {spec.seed}: {line}"))
        if spec.stop_on_fatal and not trained[0]:  # a finished run is judged, not stopped
            early_stop.stop_if_fatal(line)  # raises FatalPathology: the trainer records 'interrupted'

    cfg = spec.config()
    run_dir = run_dir_for(spec.logdir, spec.experiment, cfg.name, spec.env, spec.seed)
    if _stop_event is not None and _stop_event.is_set():
        return RunOutcome(
            spec, str(run_dir), "cancelled", "not started: the experiment was interrupted", None
        )
    if (settled := settled_outcome(spec)) is not None:
        return settled
    try:
        res = train_run(spec, progress=report, warn=warn)
        return RunOutcome(spec, str(res.run_dir), res.status, res.error, res.final.get("eval_return"))
    except early_stop.FatalPathology as exc:  # run.json says 'interrupted'; say why, so it stays a result
        stopped = early_stop.record(run_dir, exc)
        return RunOutcome(spec, str(run_dir), "interrupted", early_stop.describe(stopped), None)
    except early_stop.Paused as exc:  # run.json says 'interrupted'; the next rung resumes it
        return RunOutcome(spec, str(run_dir), PAUSED, str(exc), None)
    except Exception as exc:  # recorded in run.json by train(); the other runs go on
        return RunOutcome(spec, str(run_dir), "failed", f"{type(exc).__name__}: {exc}", None)


PAUSED = "paused"  # an outcome's status (never run.json's): stopped at its rung, to be resumed


def settled_outcome(spec: RunSpec) -> RunOutcome | None:
    """The outcome of a resumed run that has nothing left to do, or None: one finished (`done`,
    `diverged`) or stopped early (a result), or, at a rung of successive halving, one that already paused
    past it."""
    if not spec.resume:
        return None
    run_dir = run_dir_for(spec.logdir, spec.experiment, spec.arm, spec.env, spec.seed)
    if (stopped := early_stop.stopped_early(run_dir)) is not None:
        return RunOutcome(spec, str(run_dir), "interrupted", early_stop.describe(stopped), None)
    if (finished := early_stop.finished(run_dir)) is not None:  # what the trainer would return at once
        eval_return = (finished.get("final") or {}).get("eval_return")
        return RunOutcome(spec, str(run_dir), finished["status"], finished.get("error"), eval_return)
    steps = early_stop.paused_at(run_dir)
    if spec.pause_at and steps is not None and steps > spec.pause_at:
        return RunOutcome(spec, str(run_dir), PAUSED, f"paused at env step {steps:,}", None)
    return None


def recorded_batches(specs: list[RunSpec], settled: dict[int, RunOutcome]) -> list[list[int]]:
    """On `--resume` with `--batch-runs`: the batches the runs trained in, read from each run.json's
    `batched.members`, as lists of spec indices in the batch's order (the ended members included: they
    keep their slots, masked), whatever `--batch-runs` and `--workers` say now; batches whose members are
    all settled are left out. A ConfigError when a recorded member is not in this plan."""
    below = {}
    for i, spec in enumerate(specs):
        run_dir = run_dir_for(spec.logdir, spec.experiment, spec.arm, spec.env, spec.seed)
        below[f"{spec.arm}/{run_dir.parent.name}/seed_{spec.seed}"] = (i, run_dir)
    batches, seen = [], set()
    for i, run_dir in below.values():
        try:
            recorded = json.loads((run_dir / RUN_JSON).read_text()).get("batched") or {}
        except (OSError, ValueError, AttributeError):
            continue  # no run.json (or a damaged one: the trainer says why)
        members = recorded.get("members") if isinstance(recorded, dict) else None
        if i in seen or not isinstance(members, list):
            continue
        missing = [m for m in members if m not in below]
        if missing:
            raise ConfigError(
                f"--resume: {run_dir} was trained in a batch with {missing[0]}, which this experiment's plan "
                "does not have; resume with the presets, envs and seeds it was started with"
            )
        batch = [below[m][0] for m in members]
        seen.update(batch)
        if not all(j in settled for j in batch):
            _check_batch_checkpoints([below[m][1] for m in members])
            batches.append(batch)
    return batches


def _check_batch_checkpoints(run_dirs: list[Path]) -> None:
    """Before any process starts: the batch's running members have a checkpoint step in common, whole
    (its manifests verified), or none at all; a ConfigError (one line, exit 2) otherwise. The batch's own
    process checks it all again, with the config, when it loads them."""
    running = []
    for run_dir in run_dirs:
        try:
            info = json.loads((run_dir / RUN_JSON).read_text())
        except (OSError, ValueError):
            info = {}
        if not (isinstance(info, dict) and member_ended(info)):
            running.append(run_dir)
    try:
        checkpoint.common_step(running)
    except (checkpoint.CheckpointError, OSError) as exc:
        raise ConfigError(f"--resume: {exc}; nothing was changed") from None


def plan_jobs(
    specs: list[RunSpec], batch_runs: int | str | None, workers: int, settled: dict[int, RunOutcome]
) -> list[list[int]]:
    """The jobs of an experiment (lists of spec indices; a job of several runs is a batch), for every
    backend: on `--resume` with `--batch-runs`, the batches the runs trained in (`recorded_batches`, whatever
    `batch_runs` and `workers` say now) first; then the other runs not `settled`, grouped by
    `batch_plan.plan_batches`."""
    again = recorded_batches(specs, settled) if batch_runs is not None and specs[0].resume else []
    again_runs = {i for job in again for i in job}
    queued = [i for i in range(len(specs)) if i not in settled and i not in again_runs]
    planned = plan_batches([specs[i] for i in queued], batch_runs, workers)
    return again + [[queued[i] for i in job] for job in planned]


def dispatch_order(jobs: list[list[int]], specs: list[RunSpec]) -> list[int]:
    """The order the jobs start in: most env steps first (planned order among equals). Workers take the
    next job as they free up, so the long jobs starting first leaves none to run alone at the end: 30 runs
    in batches of 7, 8, 7, 8 on 2 workers ended 14 and 16 runs a worker in planned order, 15 and 15 so."""
    work = [sum(min(specs[i].steps, specs[i].pause_at or specs[i].steps) for i in job) for job in jobs]
    return sorted(range(len(jobs)), key=lambda number: -work[number])


def run_experiment(
    specs: list[RunSpec],
    workers: int | None = None,
    quiet: bool = False,
    batch_runs: int | str | None = None,
) -> list[RunOutcome]:
    """Run every spec in its own spawned process, `workers` at a time (default: the CPU count); outcomes in
    spec order. With `batch_runs`, the runs `dqnlab.batch_plan` groups train as batches of up to that many
    (`auto`: each group split over the workers), a batch in one process (`dqnlab.batched_trainer`); the
    other runs as before.

    One process per job, not a pool: a job whose process dies (SIGKILL, the out-of-memory killer, a crash in
    native code) takes nothing else with it. Each of its runs is recorded as `failed` with the signal, in its
    outcome and in its run.json, and the other jobs go on."""
    if not specs:
        return []
    exp_dir = Path(specs[0].logdir) / specs[0].experiment
    claim_experiment_dir(exp_dir, resume=specs[0].resume)  # another `ab --name` the same: refused here
    # Runs with nothing left to do (stopped early, or paused past their rung) need no process.
    outcomes: dict[int, RunOutcome] = {
        i: settled for i, spec in enumerate(specs) if (settled := settled_outcome(spec)) is not None
    }
    wanted = workers or os.cpu_count() or 1
    jobs = plan_jobs(specs, batch_runs, wanted, outcomes)
    queued = sorted(i for job in jobs for i in job)
    workers = max(1, min(wanted, len(jobs) + len(outcomes)))
    batches = [job for job in jobs if len(job) > 1]
    write_experiment_json(specs, backend="local", workers=workers, batches=batches)
    ctx = mp.get_context("spawn")
    progress_queue, stop_event = ctx.Queue(), ctx.Event()
    returns = ArmReturns(specs)
    running: dict[int, mp.process.BaseProcess] = {}  # job number -> its process
    bar = progress_bar(
        total=sum(min(specs[i].steps, specs[i].pause_at or specs[i].steps) for i in queued),
        unit="step",
        disable=quiet,
        dynamic_ncols=True,
        desc=f"{len(specs)} runs on {workers} workers" + (f", {len(batches)} batched" if batches else ""),
    )
    try:
        with _single_threaded_children():
            waiting = dispatch_order(jobs, specs)

            def start_waiting() -> None:
                while waiting and len(running) < workers:
                    number = waiting.pop(0)
                    job = jobs[number]
                    args = (job, [specs[i] for i in job], progress_queue, stop_event, os.getpid())
                    running[number] = proc = ctx.Process(target=_process_main, args=args)
                    proc.start()

            while waiting or running:
                start_waiting()
                _drain(progress_queue, bar, outcomes, returns)
                ended = [n for n, proc in running.items() if not proc.is_alive()]
                for number in ended:
                    _reap(running.pop(number), jobs[number], specs, outcomes, (progress_queue, bar, returns))
                if ended:
                    # The next jobs start first: refreshing an arm's aggregate reads every event file of it
                    # (~0.5 s for 10 runs), and a new process would wait on each refresh.
                    start_waiting()
                    update_job_aggregates(exp_dir, [specs[i] for n in ended for i in jobs[n]], bar)
                    bar.set_postfix_str(returns.postfix(len(outcomes)))
                time.sleep(0.1)
    except KeyboardInterrupt:
        _stop(stop_event, running)
        raise
    finally:
        _drain(progress_queue, bar, outcomes, returns)
        bar.close()
    return [outcomes[i] for i in range(len(specs))]


def _reap(proc, job: list[int], specs: list[RunSpec], outcomes: dict[int, RunOutcome], drained) -> None:
    """A job's process ended: its outcomes (sent just before it exited), or `failed` for each run it did not
    report."""
    proc.join()
    _drain(drained[0], drained[1], outcomes, drained[2])
    for index in job:
        if index not in outcomes:
            outcomes[index] = _died(specs[index], proc.exitcode)


def _stop(stop_event, running: dict) -> None:
    """Ctrl-C: the running processes got the SIGINT too: they record 'interrupted' and flush. Queued jobs
    never start (they would leave no trace until they finish)."""
    stop_event.set()
    for proc in running.values():  # a SIGTERM to this process alone reaches them this way
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)  # ignored by a run already stopping on Ctrl-C
    for proc in running.values():
        proc.join(timeout=60)


def write_experiment_json(
    specs: list[RunSpec], backend: str, workers: int, batches: list[list[int]] | None = None
) -> None:
    """experiment.json: what was asked (presets in the order given, envs, seeds, steps, how it ran; the
    batches, as lists of `runs` indices, when some runs trained batched), in the experiment directory the
    caller claimed (`claim_experiment_dir`)."""
    exp_dir = Path(specs[0].logdir) / specs[0].experiment
    extra = {"batches": batches} if batches else {}
    write_json_atomic(
        exp_dir / EXPERIMENT_JSON,
        {
            "presets": list(dict.fromkeys(s.name or s.preset for s in specs)),  # arms, in the order given
            "envs": sorted({s.env for s in specs}),
            "seeds": sorted({s.seed for s in specs}),
            "steps": max(s.steps for s in specs),
            "overrides": list(specs[0].overrides),
            "backend": backend,
            "workers": workers,
            "runs": [asdict(s) for s in specs],
            "versions": package_versions(),
            **extra,
        },
    )


def _died(spec: RunSpec, exitcode: int | None) -> RunOutcome:
    """The outcome of a run whose process ended without reporting one; its run.json is marked failed."""
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        reason = f"the run's process was killed by {name}"
        if name == "SIGKILL":
            reason += " (sent by `kill -9` or by the kernel's out-of-memory killer)"
    else:
        reason = f"the run's process exited with status {exitcode} without reporting an outcome"
    run_dir = run_dir_for(spec.logdir, spec.experiment, spec.arm, spec.env, spec.seed)
    path = run_dir / RUN_JSON
    try:
        info = json.loads(path.read_text())
        if info.get("status") == "running":  # what it logged is kept; only the status changes
            info.update(status="failed", error=reason)
            write_json_atomic(path, info)
    except (OSError, ValueError):
        pass  # it died before writing run.json: the outcome still says why
    return RunOutcome(spec, str(run_dir), "failed", reason, None)


class ArmReturns:
    """The progress bar's returns: per arm, in the order given, the mean over its seeds of each run's last
    training episode return; past `MAX_SHOWN` arms (a sweep's cells), only the best and the worst arm."""

    MAX_SHOWN = 4

    def __init__(self, specs: list[RunSpec]):
        self.num_runs = len(specs)
        several_envs = len({s.env for s in specs}) > 1
        self._arm = {}
        for s in specs:
            label = s.name or s.preset
            self._arm[(label, s.env, s.seed)] = f"{label}@{s.env}" if several_envs else label
        self._last: dict[tuple[str, str, int], float] = {}

    def record(self, key: tuple[str, str, int], episode_return: float) -> None:
        self._last[key] = episode_return

    def postfix(self, num_finished: int) -> str:
        by_arm: dict[str, list[float]] = {arm: [] for arm in self._arm.values()}
        for key, value in self._last.items():
            by_arm[self._arm[key]].append(value)
        means = {arm: sum(v) / len(v) for arm, v in by_arm.items() if v}
        if len(by_arm) > self.MAX_SHOWN and len(means) > 1:
            best, worst = max(means, key=means.get), min(means, key=means.get)
            means = {f"best {best}": means[best], f"worst {worst}": means[worst]}
        shown = ", ".join(f"{arm} {mean:.1f}" for arm, mean in means.items())
        finished = f"{num_finished}/{self.num_runs} runs finished"
        return f"return {shown} | {finished}" if shown else finished


def update_job_aggregates(exp_dir: Path, ended: Sequence[RunSpec], bar) -> None:
    """Refresh the finished runs' arms in `_aggregate/` so TensorBoard's seed bands grow as runs end: each
    (arm, env) once, however many of its runs a batch just ended."""
    for arm, env in dict.fromkeys((spec.arm, env_dirname(spec.env)) for spec in ended):
        try:
            update_aggregates(exp_dir, only=(arm, env))
        except Exception as exc:  # derived data: never worth losing the experiment over
            bar.write(f"dqnlab: warning: could not update the aggregate of {arm}: {exc}")


def _drain(progress_queue, bar, outcomes: dict[int, RunOutcome], returns: ArmReturns) -> None:
    while True:
        try:
            item = progress_queue.get_nowait()
        except queue_module.Empty:
            return
        kind = item[0]
        if kind == "warn":  # a live doctor finding: a line above the bar
            bar.write(item[1], file=sys.stderr)
        elif kind == "outcome":
            outcomes[item[1]] = item[2]
        else:
            _, steps, key, episode_return = item
            if episode_return is not None:
                returns.record(key, episode_return)
                bar.set_postfix_str(returns.postfix(len(outcomes)), refresh=False)
            bar.update(steps)
