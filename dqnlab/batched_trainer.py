"""A batch of runs (`dqnlab.batched_loop`) written as the runs they are: each member its own run directory,
event file, run.json and live doctor, through the trainer's own per-event code (`trainer.EventRecorder`).

`train_batch(specs)` trains the `RunSpec`s of one batch in this process (they share env, steps and what
`batched_learner.check_batchable` requires) and returns each member's RunResult. A member's files are those
of an unbatched run of its spec: the same layout, the same tags (measured bursts, episodes, greedy
evaluations, probes, perf, the doctor's text), the same run.json fields and statuses, with one more field,
`batched`: `{"runs": N, "members": [run directories below the experiment], "index": i, "lacks": [...]}`.

A member ends as its unbatched run would: `diverged` when its burst goes non-finite (the batch masks it out
and goes on; its weights stay as they were before that update, so run.json's `divergence` names no
non-finite weight, and its `origin` is the unbatched learner's), `failed` when its env raises (with the
traceback), `done` otherwise. An error of the batch as a whole (not one member's) fails, or Ctrl-C
interrupts, every member still running.

Checkpoints: every `checkpoint_every` env steps and at the end, each member still running gets its own
checkpoint in the unbatched format (`batched_loop.member_state_arrays`, `member_loop_state`); the older
ones go only once every such member has the new one (`save_batch`). `--resume` (`_resolve_start`) puts the
batch back from the newest step every running member has, each member's run.json and event file going on
as an unbatched resume's do (`resumed_from`, history cut at the checkpoint); members that ended stay ended,
masked. Everything is checked before anything is written: a member trained in another batch, a damaged
checkpoint or irreconcilable steps are a ConfigError and nothing changes (docs/resume.md, "A batch").

What a batched member lacks (`batched.lacks`): nothing now. Its `wall_time_s` is the batch's wall time.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dqnlab import checkpoint, snapshot
from dqnlab._tf import tf
from dqnlab.batch_plan import member_ended
from dqnlab.batched_learner import check_batchable
from dqnlab.batched_loop import (
    BatchCheckpointDue,
    BatchCounters,
    BatchStart,
    EnvFailed,
    Members,
    RunsState,
    batched_events,
    make_members,
    member_loop_state,
    member_state_arrays,
    resume_batch,
)
from dqnlab.checkpoint import CheckpointError
from dqnlab.config import Config, ConfigError, check_env_fits
from dqnlab.doctor import LiveDoctor
from dqnlab.envs import make_env
from dqnlab.rundir import (
    RUN_JSON,
    RunResult,
    claim_run_dir,
    process_is_alive,
    read_run,
    run_dir_for,
    set_aside_earlier_life,
)
from dqnlab.runspec import RunSpec
from dqnlab.signals import stop_reason
from dqnlab.summaries import Summaries
from dqnlab.trainer import (
    EventRecorder,
    RunJson,
    check_same_config,
    configure_device,
    divergence_line,
    history_until,
    hparams_of,
    judge,
    make_deterministic,
    new_run_info,
    no_learning_line,
    previous_run_json,
    report_finding,
    resumed_info,
    retract_finding,
    write_experiment_json_once,
)

_log = logging.getLogger("dqnlab")
LACKS: list[str] = []  # what a batched member does not write that an unbatched run does (nothing now)
BatchProgress = Callable[[int, int, float | None], None]  # (member, env step, latest episode return)


class FrozenAtDivergence:
    """What `trainer.judge` asks of a learner about a divergence, for a masked member: where it began (the
    batch's `BatchedLearner.nonfinite_origin` of that run, as the unbatched learner says it), and no
    non-finite weights: the batch kept them from before the non-finite update."""

    def __init__(self, origin: dict | None = None):
        self.origin = origin

    def nonfinite_origin(self) -> dict | None:
        return self.origin

    def nonfinite_variables(self) -> list[str]:
        return []


@dataclass
class Member:
    """One run of the batch as the trainer sees it: its run.json, summaries, live doctor and recorder. A
    resumed member also carries what its earlier lives leave (`resumed_at`: its checkpoint's step)."""

    spec: RunSpec
    run_json: RunJson
    hparams: dict
    summaries: Summaries | None = None
    live: LiveDoctor | None = None
    recorder: EventRecorder | None = None
    status: str | None = None  # set once it ended (before this process: a resumed batch's ended member)
    judged: bool = False
    resumed_at: int | None = None
    history: dict | None = None  # the scalars its earlier lives logged up to `resumed_at`
    doctor_state: dict | None = None

    @property
    def run_dir(self) -> Path:
        return self.run_json.path.parent

    def open(self, progress: Callable | None, say: Callable[[str], None]) -> None:
        self.summaries = Summaries(self.run_dir, history=self.history)
        if self.resumed_at is None:
            self.summaries.hparams(self.hparams)
        else:  # TensorBoard (and dqnlab.events) drop what an earlier life logged after the checkpoint
            self.summaries.restart_after(self.resumed_at)
        summaries, run_json = self.summaries, self.run_json
        self.live = LiveDoctor(
            run_json.info,
            lambda f, grew: report_finding(f, grew, summaries, run_json, say),
            retract=lambda f: retract_finding(f, summaries, run_json, say),
        )
        if self.doctor_state is not None:
            self.live.restore(self.doctor_state)
        self.recorder = EventRecorder(summaries, run_json, progress, self.live, None)
        run_json.write("running")

    def judge(self, status: str, origin: dict | None = None) -> None:
        """Where a divergence began (`origin`), the doctor's verdict (done, diverged)."""
        if status in ("done", "diverged") and not self.judged:
            env_data = self.recorder.nonfinite_env_data if self.recorder is not None else None
            judge(status, FrozenAtDivergence(origin), self.summaries, self.run_json, self.live, env_data)
        self.judged = True

    def save(self, due: BatchCheckpointDue, i: int) -> None:
        """This member's checkpoint of `due`, in the unbatched format, beside its older ones (the batch
        prunes them once every live member has this one)."""
        self.summaries.flush()
        self.run_json.info["env_steps"] = due.step
        replay = due.runs.replays[i] if self.spec.checkpoint_replay else None
        bundle = snapshot.capture(
            member_loop_state(due, i), due.runs.envs[i], replay, self.run_json.counters(), self.live.state()
        )
        checkpoint.save(self.run_dir, due.step, member_state_arrays(due, i), bundle, prune=False)
        self.run_json.write("running")  # its counters as of this checkpoint: how far a killed batch got

    def end(
        self,
        status: str,
        error: str | None = None,
        tb: str | None = None,
        alone: bool = False,
        origin: dict | None = None,
    ) -> None:
        """Judge (done, diverged: where it began, `origin`), close the event file and write run.json's last
        word. `alone`: it ended on its own (its env raised), not with the batch: a resume leaves it ended."""
        self.judge(status, origin)
        if status == "diverged":
            error = divergence_line(self.run_json.info)
        if alone:
            self.run_json.info["batched"]["ended_alone"] = True
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
        return (s.env, s.steps, s.logdir, s.experiment, s.device, s.deterministic, s.resume,
                s.checkpoint_every, s.checkpoint_replay)  # fmt: skip

    for spec in specs:
        if shared(spec) != shared(specs[0]):
            raise ConfigError(
                f"{spec.arm} seed {spec.seed}: a batch's runs share env, steps, experiment and checkpoints"
            )
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
    start = _resolve_start(specs, cfgs, learner, shadows, warn) if first.resume else None
    if isinstance(start, list):  # a resumed batch whose members had all ended: what they logged
        return start
    if start is None:
        members = [_claim(spec, cfg, i, specs) for i, (spec, cfg) in enumerate(zip(specs, cfgs, strict=True))]
        begin = None
    else:
        members, begin = start
    try:
        for i, member in enumerate(members):
            if member.status is not None:  # ended before this resume: left as it is
                continue
            say = (lambda line, i=i: warn(i, line)) if warn else _log.warning
            member.open((lambda step, ret, i=i: progress(i, step, ret)) if progress else None, say)
            if (idle := no_learning_line(cfgs[i], first.steps)) is not None:
                say(idle)
        events = batched_events(
            cfgs,
            seeds,
            first.env,
            first.steps,
            learner=learner,
            shadows=shadows,
            checkpoint_every=first.checkpoint_every,
            start=begin,
        )
        _consume(events, members, learner)
    except KeyboardInterrupt as exc:
        _end_running(members, "interrupted", stop_reason(exc))
        raise
    except Exception as exc:
        _end_running(members, "failed", f"{type(exc).__name__}: {exc}", traceback.format_exc())
        raise
    finally:
        for member in members:
            member.close()
    return [read_run(m.run_dir) for m in members]


def _claim(spec: RunSpec, cfg: Config, index: int, specs: Sequence[RunSpec]) -> Member:
    """Member `index`'s run directory claimed, its run.json as it starts (saying it is batched)."""
    run_dir = run_dir_for(spec.logdir, spec.experiment, cfg.name, spec.env, spec.seed)
    claim_run_dir(run_dir)
    write_experiment_json_once(run_dir, cfg, spec.env, spec.seed, spec.steps)
    info = new_run_info(cfg, spec.env, spec.seed, spec.deterministic)
    below = [f"{s.arm}/{run_dir.parent.name}/seed_{s.seed}" for s in specs]  # as `_below` gives them
    info["batched"] = {"runs": len(specs), "members": below, "index": index, "lacks": LACKS}
    hparams = {**hparams_of(cfg, spec.env, spec.seed), "train.steps": spec.steps}
    return Member(spec, RunJson(run_dir, info), hparams)


def _consume(events, members: list[Member], learner) -> None:
    """Each event to its member's recorder; a member ends at its divergence or env failure, the others at
    the end of the batch. A checkpoint of the batch is each live member's own checkpoint."""
    for run, event in events:
        if isinstance(event, BatchCheckpointDue):
            if event.final:  # the end: judged before its end state is saved, as the trainer does
                for member in members:
                    if member.status is None:
                        member.recorder.finish()
                        member.judge("done")
            save_batch(event, members)
            continue
        member = members[run]
        if member.status is not None:
            continue
        if isinstance(event, EnvFailed):
            member.end("failed", event.error, event.traceback, alone=True)
        elif member.recorder.handle(event) == "diverged":
            member.end("diverged", origin=learner.nonfinite_origin(run))
    for member in members:
        if member.status is None:
            if not member.judged:
                member.recorder.finish()
            member.end("done")


def save_batch(due: BatchCheckpointDue, members: list[Member]) -> None:
    """Every live member's checkpoint of `due`; then, only once all of them have it, their older ones are
    removed: a kill between two members' saves leaves each member its previous checkpoint, and a resume
    takes the newest step that every live member has."""
    live = [i for i, member in enumerate(members) if member.status is None and due.alive[i]]
    for i in live:
        members[i].save(due, i)
    for i in live:
        checkpoint.prune_before(members[i].run_dir, due.step)


def _resolve_start(specs, cfgs, learner, shadows, warn) -> list[RunResult] | tuple | None:
    """Where a resumed batch begins, everything checked before anything is written: None (no member has
    run.json yet: a fresh start), the members' results (every member had ended), or (members, BatchStart)
    from the newest checkpoint step every member still running has. A ConfigError (one line, exit 2,
    nothing changed) when a member was trained in another batch or alone, another config, is still
    training, or the members' checkpoints cannot be reconciled or verified."""
    dirs = [
        run_dir_for(s.logdir, s.experiment, cfg.name, s.env, s.seed)
        for s, cfg in zip(specs, cfgs, strict=True)
    ]
    below = _below(specs, dirs)
    previous = {}
    for i, run_dir in enumerate(dirs):
        found = previous_run_json(run_dir) if (run_dir / RUN_JSON).is_file() else {}
        if found:
            previous[i] = found
    if not previous:  # never started (or only claimed): a fresh start, what a claim left set aside
        for run_dir in dirs:
            if (run_dir / RUN_JSON).exists():
                set_aside_earlier_life(run_dir)
        return None
    for i, run_dir in enumerate(dirs):
        found = previous.get(i)
        recorded = ((found or {}).get("batched") or {}).get("members")
        if recorded != below and not (found and member_ended(found)):  # an ended member only keeps its slot
            was = "never started" if not found else "trained alone" if not recorded else "in another batch"
            raise ConfigError(
                f"--resume: {run_dir} was {was}, not in this batch of {len(below)} ({', '.join(below)}); "
                "resume with the --batch-runs and --workers it was started with (docs/resume.md)"
            )
        if process_is_alive(found):
            raise ConfigError(f"--resume: {run_dir} is still training (process {found['pid']})")
        check_same_config(found, cfgs[i], run_dir)
    ended = {i for i, found in previous.items() if member_ended(found)}
    if len(ended) == len(specs):
        return [read_run(run_dir) for run_dir in dirs]
    live = [i for i in range(len(specs)) if i not in ended]
    seeds, first = [s.seed for s in specs], specs[0]
    try:
        step = checkpoint.common_step([dirs[i] for i in live])
        if step is None:  # no checkpoint yet: the live members start over, the ended stay ended
            ckpts = {}
            begin, restored = _fresh_start(cfgs, seeds, first.env, first.steps, learner, shadows, live), {}
        else:
            ckpts = {i: checkpoint.load(dirs[i], step) for i in live}
            begin, restored = resume_batch(cfgs, seeds, first.env, first.steps, learner, shadows, ckpts)
    except (CheckpointError, OSError) as exc:
        raise ConfigError(f"--resume: {exc}; nothing was changed") from None
    members = []
    for i, (spec, cfg, run_dir) in enumerate(zip(specs, cfgs, dirs, strict=True)):
        if i in ended:
            members.append(Member(spec, RunJson(run_dir, previous[i]), {}, status=previous[i]["status"]))
            continue
        if not ckpts:
            kept = set_aside_earlier_life(run_dir)
            say = (lambda line, i=i: warn(i, line)) if warn else _log.warning
            say(f"{run_dir} had no checkpoint: started over, its earlier files kept in {kept}")
            members.append(_claim(spec, cfg, i, specs))
            continue
        members.append(_resumed(spec, cfg, run_dir, previous[i], ckpts[i], restored[i]))
        if not restored[i].exact_env:
            say = (lambda line, i=i: warn(i, line)) if warn else _log.warning
            say(f"{spec.env} keeps state dqnlab cannot store as data: resumed at step {step:,} with a "
                "fresh episode (docs/resume.md)")  # fmt: skip
    for i in live if ckpts else []:  # every member read: now what killed saves left behind can go
        checkpoint.remove_staging(dirs[i])
    return members, begin


def _fresh_start(cfgs, seeds, env_id, steps, learner, shadows, live) -> BatchStart:
    """A batch started over from step 0 with only `live` runs (the ended ones masked from the start)."""
    alive = np.zeros(len(cfgs), bool)
    alive[live] = True
    learner.load_counters(0, (1.0, 1.0), alive)
    runs, members = RunsState(cfgs, seeds, env_id), Members(cfgs, seeds, env_id, shadows, steps)
    return BatchStart(runs, members, BatchCounters(), alive)


def _resumed(spec: RunSpec, cfg: Config, run_dir: Path, previous: dict, ckpt, restored) -> Member:
    """A member continuing from `ckpt`: its run.json as an unbatched resume writes it (counters from the
    checkpoint, `resumed_from` and `resumed_env` grown by one), its history until the checkpoint."""
    info = new_run_info(cfg, spec.env, spec.seed, spec.deterministic)
    info["batched"] = {**previous["batched"], "lacks": LACKS}
    resumed_info(info, previous, ckpt, restored.exact_env)
    hparams = {**hparams_of(cfg, spec.env, spec.seed), "train.steps": spec.steps}
    return Member(
        spec,
        RunJson(run_dir, info, elapsed_before=ckpt.state["run"]["wall_time_s"]),
        hparams,
        resumed_at=ckpt.step,
        history=history_until(run_dir, ckpt.step),
        doctor_state=ckpt.state["doctor"],
    )


def _below(specs: Sequence[RunSpec], dirs: Sequence[Path]) -> list[str]:
    """The members' run directories below the experiment, as run.json's `batched.members` lists them."""
    return [f"{s.arm}/{d.parent.name}/seed_{s.seed}" for s, d in zip(specs, dirs, strict=True)]


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
