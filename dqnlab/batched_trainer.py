"""A batch of runs (`dqnlab.batched_loop`) written as the runs they are: each member its own run directory,
event file, run.json and live doctor, through the trainer's own per-event code (`trainer.EventRecorder`).

`train_batch(specs)` trains the `RunSpec`s of one batch in this process (they share env, steps and what
`batched_learner.check_batchable` requires) and returns each member's RunResult. A member's files are those
of an unbatched run of its spec: the same layout, the same tags (measured bursts, episodes, greedy
evaluations, probes, perf, the doctor's text), the same run.json fields and statuses, with one more field,
`batched`: `{"runs": N, "members": [run directories below the experiment], "index": i, "lacks": [...]}`.

A member ends as its unbatched run would: `diverged` when its burst goes non-finite (the batch masks it out
and goes on; its weights stay as they were before that update, so run.json's `divergence` names no
non-finite weight and no origin), `failed` when its env raises (with the traceback), `done` otherwise. An
error of the batch as a whole (not one member's) fails, or Ctrl-C interrupts, every member still running.

What a batched member lacks (`batched.lacks`): checkpoints (none is written, so `--resume` cannot continue
a batch: the CLI refuses the two together). Its `wall_time_s` is the batch's wall time.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dqnlab._tf import tf
from dqnlab.batched_learner import check_batchable
from dqnlab.batched_loop import EnvFailed, batched_events, make_members
from dqnlab.config import Config, ConfigError, check_env_fits
from dqnlab.doctor import LiveDoctor
from dqnlab.envs import make_env
from dqnlab.rundir import RunResult, claim_run_dir, read_run, run_dir_for
from dqnlab.runspec import RunSpec
from dqnlab.signals import stop_reason
from dqnlab.summaries import Summaries
from dqnlab.trainer import (
    EventRecorder,
    RunJson,
    configure_device,
    divergence_line,
    hparams_of,
    judge,
    make_deterministic,
    new_run_info,
    report_finding,
    write_experiment_json_once,
)

_log = logging.getLogger("dqnlab")
LACKS = ["checkpoints"]  # what a batched member does not write that an unbatched run does
BatchProgress = Callable[[int, int, float | None], None]  # (member, env step, latest episode return)


class FrozenAtDivergence:
    """What `trainer.judge` asks of a learner about a divergence, for a masked member: the batch kept its
    weights from before the non-finite update (none is non-finite) and does not record where it began."""

    def nonfinite_origin(self) -> None:
        return None

    def nonfinite_variables(self) -> list[str]:
        return []


@dataclass
class Member:
    """One run of the batch as the trainer sees it: its run.json, summaries, live doctor and recorder."""

    spec: RunSpec
    run_json: RunJson
    hparams: dict
    summaries: Summaries | None = None
    live: LiveDoctor | None = None
    recorder: EventRecorder | None = None
    status: str | None = None  # set once it ended

    def open(self, progress: Callable | None, say: Callable[[str], None]) -> None:
        self.summaries = Summaries(self.run_json.path.parent)
        self.summaries.hparams(self.hparams)
        summaries, run_json = self.summaries, self.run_json
        self.live = LiveDoctor(
            run_json.info, lambda f, grew: report_finding(f, grew, summaries, run_json, say)
        )
        self.recorder = EventRecorder(summaries, run_json, progress, self.live, None)
        run_json.write("running")

    def end(self, status: str, error: str | None = None, tb: str | None = None) -> None:
        """Judge (done, diverged), close the event file and write run.json's last word."""
        if status in ("done", "diverged"):
            judge(status, FrozenAtDivergence(), self.summaries, self.run_json, self.live)
        if status == "diverged":
            error = divergence_line(self.run_json.info)
        self.close()
        self.run_json.write(status, error, **({"traceback": tb} if tb else {}))
        self.status = status

    def close(self) -> None:
        if self.summaries is not None:
            self.summaries.close()
            self.summaries = None


def check_batch(specs: Sequence[RunSpec]) -> list[Config]:
    """The members' configs; a ConfigError naming why these specs cannot train as one batch."""
    if not specs:
        raise ConfigError("a batch needs at least one run")

    def shared(s: RunSpec) -> tuple:
        return (s.env, s.steps, s.logdir, s.experiment, s.device, s.deterministic)

    for spec in specs:
        if spec.resume:
            raise ConfigError("--resume cannot continue a batched run (a batch writes no checkpoints)")
        if shared(spec) != shared(specs[0]):
            raise ConfigError(f"{spec.arm} seed {spec.seed}: a batch's runs share env, steps and experiment")
    cfgs = [spec.config() for spec in specs]
    try:
        check_batchable(cfgs)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for cfg in cfgs:
        check_env_fits(cfg, specs[0].env)
    return cfgs


def train_batch(
    specs: Sequence[RunSpec],
    progress: BatchProgress | None = None,
    warn: Callable[[int, str], None] | None = None,
) -> list[RunResult]:
    """Train the batch of `specs` in this process; each member's RunResult, in order (see the module)."""
    if os.environ.get("DQNLAB_EAGER") == "1":
        tf.config.run_functions_eagerly(True)
    cfgs = check_batch(specs)
    first = specs[0]
    configure_device(first.device)
    if first.deterministic:
        make_deterministic()
    env = make_env(first.env)
    obs_shape, num_actions = env.observation_space.shape, int(env.action_space.n)
    env.close()
    seeds = [spec.seed for spec in specs]
    learner, shadows = make_members(cfgs, seeds, obs_shape, num_actions)  # built before anything is written
    members = [_claim(spec, cfg, i, specs) for i, (spec, cfg) in enumerate(zip(specs, cfgs, strict=True))]
    try:
        for i, member in enumerate(members):
            say = (lambda line, i=i: warn(i, line)) if warn else _log.warning
            member.open((lambda step, ret, i=i: progress(i, step, ret)) if progress else None, say)
        _consume(
            batched_events(cfgs, seeds, first.env, first.steps, learner=learner, shadows=shadows), members
        )
    except KeyboardInterrupt as exc:
        _end_running(members, "interrupted", stop_reason(exc))
        raise
    except Exception as exc:
        _end_running(members, "failed", f"{type(exc).__name__}: {exc}", traceback.format_exc())
        raise
    finally:
        for member in members:
            member.close()
    return [read_run(m.run_json.path.parent) for m in members]


def _claim(spec: RunSpec, cfg: Config, index: int, specs: Sequence[RunSpec]) -> Member:
    """Member `index`'s run directory claimed, its run.json as it starts (saying it is batched)."""
    run_dir = run_dir_for(spec.logdir, spec.experiment, cfg.name, spec.env, spec.seed)
    claim_run_dir(run_dir)
    write_experiment_json_once(run_dir, cfg, spec.env, spec.seed, spec.steps)
    info = new_run_info(cfg, spec.env, spec.seed, spec.deterministic)
    below = [f"{s.arm}/{run_dir.parent.name}/seed_{s.seed}" for s in specs]
    info["batched"] = {"runs": len(specs), "members": below, "index": index, "lacks": LACKS}
    hparams = {**hparams_of(cfg, spec.env, spec.seed), "train.steps": spec.steps}
    return Member(spec, RunJson(run_dir, info), hparams)


def _consume(events, members: list[Member]) -> None:
    """Each event to its member's recorder; a member ends at its divergence or env failure, the others at
    the end of the batch."""
    for run, event in events:
        member = members[run]
        if member.status is not None:
            continue
        if isinstance(event, EnvFailed):
            member.end("failed", event.error, event.traceback)
        elif member.recorder.handle(event) == "diverged":
            member.end("diverged")
    for member in members:
        if member.status is None:
            member.recorder.finish()
            member.end("done")


def _end_running(members: list[Member], status: str, error: str, tb: str | None = None) -> None:
    """The batch stopped as a whole: every member still running ends with `status` (on a full disk, as
    the trainer does, in place)."""
    for member in members:
        if member.status is not None:
            continue
        member.close()
        try:
            member.run_json.write(status, error, **({"traceback": tb} if tb else {}))
        except OSError:
            member.run_json.last_words(status, error)
        member.status = status
