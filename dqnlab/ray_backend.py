"""`dqnlab ab --backend ray`: every job a Ray task, on a cluster (or a local Ray), retried when its worker
or node dies. Needs the `ray` extra (`pip install -e ".[ray]"`); docs/cluster.md says how to run it.

A job is one run, or with `--batch-runs` a batch of runs (`dqnlab.batched_trainer`), planned as the local
backend plans them (`runner.plan_jobs`; `auto` splits each group over the cluster's CPUs). Each task asks
for one CPU (or one GPU with `--device gpu`), sets one TensorFlow thread, and trains with `resume=True`: a
first attempt starts the run (or batch), and an attempt retried after its worker died continues it from
its last checkpoint (a batch: from the newest step all its running members have), in the same run
directories. So the logdir must be the same path on every node
(a shared filesystem); it is checked on every node before anything starts. Outputs are the local backend's:
the same run directories, run.json, aggregates and summary.
"""

from __future__ import annotations

import time
from pathlib import Path

from dqnlab.config import ConfigError
from dqnlab.progress import progress_bar
from dqnlab.rundir import claim_experiment_dir
from dqnlab.runner import (
    SINGLE_THREAD_ENV,
    RunOutcome,
    RunSpec,
    dispatch_order,
    plan_jobs,
    run_batch_in_worker,
    run_in_worker,
    update_job_aggregates,
    write_experiment_json,
)

MAX_RETRIES = 3  # attempts after a worker or node death


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError('--backend ray needs Ray: pip install -e ".[ray]"') from None
    return ray


def _check_logdir(ray, logdir: Path) -> None:
    """Write and remove a probe file in `logdir` from every alive node; one line naming the node if not."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def probe(path: str) -> str | None:
        import socket
        import uuid

        target = Path(path) / f".dqnlab-probe-{uuid.uuid4().hex}"
        try:
            target.write_text("ok")
            target.unlink()
            return None
        except OSError as exc:
            return f"{socket.gethostname()}: {exc}"

    nodes = [n for n in ray.nodes() if n["Alive"]]
    checks = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            str(logdir.resolve())
        )
        for n in nodes
    ]
    problems = [p for p in ray.get(checks) if p]
    if problems:
        raise ConfigError(
            f"the logdir {logdir} must be a path every Ray node can write (a shared filesystem); "
            f"it is not on {len(problems)} node(s): {problems[0]}"
        )


def _task(specs: list[RunSpec]) -> list[RunOutcome]:
    """One job: a run, or a batch of runs; each run's outcome."""
    from dqnlab._tf import tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return [run_in_worker(specs[0])] if len(specs) == 1 else run_batch_in_worker(specs)


def run_experiment_ray(
    specs: list[RunSpec],
    address: str | None = None,
    quiet: bool = False,
    batch_runs: int | str | None = None,
) -> list[RunOutcome]:
    """Run every job (a run, or with `batch_runs` a batch) as a Ray task on the cluster at `address` (None: a
    local Ray); each run's outcome, in spec order."""
    ray = _import_ray()
    if not specs:
        return []
    exp_dir = Path(specs[0].logdir) / specs[0].experiment
    claim_experiment_dir(exp_dir, resume=specs[0].resume)  # before Ray starts: a taken --name is refused
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        _check_logdir(ray, Path(specs[0].logdir))
        cpus = int(ray.cluster_resources().get("CPU", 0))
        jobs = plan_jobs(specs, batch_runs, max(1, cpus), {})
        batches = [job for job in jobs if len(job) > 1]
        write_experiment_json(specs, backend="ray", workers=cpus, batches=batches)
        runtime_env = {"env_vars": dict(SINGLE_THREAD_ENV)}
        remote = ray.remote(_task)
        pending = {}
        for job in [jobs[number] for number in dispatch_order(jobs, specs)]:
            # Every attempt resumes: a retry after a worker death continues from the last checkpoint.
            attempt = [RunSpec(**{**specs[i].__dict__, "resume": True}) for i in job]
            gpus = 1 if attempt[0].device == "gpu" else 0
            options = {
                "num_cpus": 1,
                "num_gpus": gpus,
                "max_retries": MAX_RETRIES,
                "runtime_env": runtime_env,
            }
            pending[remote.options(**options).remote(attempt)] = job
        outcomes: dict[int, RunOutcome] = {}
        desc = f"{len(specs)} runs on Ray" + (f", {len(batches)} batched" if batches else "")
        with progress_bar(total=len(specs), unit="run", disable=quiet, desc=desc) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in done:
                    job = pending.pop(ref)
                    try:
                        outcomes.update(zip(job, ray.get(ref), strict=True))
                    except Exception as exc:  # retries exhausted, or the task raised outside train()
                        why = f"{type(exc).__name__}: {exc}"
                        outcomes.update({i: RunOutcome(specs[i], "", "failed", why, None) for i in job})
                    update_job_aggregates(exp_dir, [specs[i] for i in job], bar)
                    bar.update(len(job))
                time.sleep(0.05)
        return [outcomes[i] for i in range(len(specs))]
    finally:
        if started_here:
            ray.shutdown()
