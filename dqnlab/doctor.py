"""`dqnlab doctor DIR`: name each backward-pass pathology in a run or an experiment, with evidence and fix.

The rules are `dqnlab.doctor_rules` (docs/doctor.md). This module reads run directories, groups the
findings by arm (one block per rule and layer, with the seeds it was found in), and runs the same rules live
during training (`LiveDoctor`): each finding is reported when it appears and again when it grows, as a
warning line and as a TensorBoard text summary under `doctor/findings`; the end of the run records the
final verdict, the same list `dqnlab doctor` gives.

Beside the rules, each run's event files are checked against its run.json (`event_file_findings`): a
damaged file (read up to the damage) and a `done` run whose events end early are findings too, since the
rules then judged only part of the run.

Exit status of the command: 0 healthy, 1 findings, 2 bad input, 3 no finding but not enough evidence (a
rule lacked the measured updates or probes it needs), so a CI job can gate on it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dqnlab.compare import events_end_early, load_run_dirs, registry_threshold
from dqnlab.doctor_rules import ERROR, Finding, diagnose, evidence_gaps
from dqnlab.events import Damage, Series, read_series_checked
from dqnlab.rundir import RUN_JSON

LIVE_EVERY_STEPS = 5_000  # live checks: the problem shows at step 5k; a check's cost: docs/performance.md


@dataclass
class RunDiagnosis:
    run_dir: Path
    preset: str
    env: str
    seed: int
    status: str
    findings: list[Finding]
    gaps: list[str] = field(
        default_factory=list
    )  # what the rules could not judge (doctor_rules.evidence_gaps)


@dataclass
class Report:
    directory: Path
    runs: list[RunDiagnosis]
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """No finding, and every rule had the evidence it needs."""
        return not any(r.findings or r.gaps for r in self.runs)

    @property
    def verdict(self) -> str:
        """'findings', 'not enough evidence' (no finding, but a rule lacked points) or 'healthy'."""
        if any(r.findings for r in self.runs):
            return "findings"
        return "not enough evidence" if any(r.gaps for r in self.runs) else "healthy"


def examine(directory: str | Path) -> Report:
    """Diagnose every run at or below `directory`. Runs whose run.json cannot be read are listed as
    problems; a run's damaged event files are read up to the damage and named by a finding."""
    paths, problems = load_run_dirs(directory)
    runs = []
    for path in paths:
        info = with_reward_threshold(json.loads((path / RUN_JSON).read_text()))
        series, damage = read_series_checked(path)
        findings = event_file_findings(series, info, damage) + diagnose(series, info)
        gaps = evidence_gaps(series, info)
        runs.append(
            RunDiagnosis(path, info["preset"], info["env"], info["seed"], info["status"], findings, gaps)
        )
    return Report(Path(directory), runs, problems)


_FILES_WHY = "The other rules judged only the events that were read, not the steps after them."
_FILES_FIX = (
    "Copy the run's event files again from where it was trained (or train it again); dqnlab compare does "
    "not count it as finished until then."
)


def event_file_findings(series: Series, info: Mapping, damage: list[Damage]) -> list[Finding]:
    """Findings about the event files themselves: damage (one per damaged file), else a `done` run whose
    events end before its last step (dqnlab.compare.events_end_early). Damage explains an early end, so
    the two are never both reported."""
    env_steps = int(info.get("env_steps") or 0)
    if damage:
        return [_damaged_file_finding(found, env_steps) for found in damage]
    early = events_end_early(series, info)
    if early is None:
        return []
    last = early.last_step if early.last_step is not None else 0
    return [
        Finding(
            "events_end_early",
            ERROR,
            "",
            last,
            early.env_steps,
            {
                "env_steps": float(early.env_steps),
                "eval_points": float(early.points),
                "last_eval_step": float(last),
            },
            f"{early}.",
            f"The event files were cut after the run ended (a torn or truncated copy, a full disk, a power "
            f"loss). {_FILES_WHY}",
            _FILES_FIX,
        )
    ]


def _damaged_file_finding(damage: Damage, env_steps: int) -> Finding:
    last = damage.last_step or 0
    return Finding(
        "damaged_event_file",
        ERROR,
        "",
        last,
        max(last, env_steps),
        {
            "offset": float(damage.offset),
            "size": float(damage.size),
            "records_read": float(damage.records_read),
        },
        f"{damage}.",
        f"A record's CRC does not match its bytes: they were changed after they were written (a bad disk, a "
        f"broken copy), and nothing after them can be trusted to be aligned. {_FILES_WHY}",
        _FILES_FIX,
    )


Arm = tuple[str, str, str]  # (experiment below the examined directory, or "", env, preset)


def _arm(report: Report, run: RunDiagnosis) -> Arm:
    """Runs of one preset on one env are one arm only within one experiment: a directory of several
    experiments (scripts/reproduce_post.py's studies) keeps each experiment's arms apart."""
    experiment = Path(run.run_dir).parent.parent.parent  # <experiment>/<preset>/<env>/seed_<n>
    try:
        below = experiment.relative_to(report.directory).as_posix()
    except ValueError:  # the examined directory is the run itself (or its preset dir)
        below = "."
    return ("" if below == "." else below, run.env, run.preset)


def _group(report: Report) -> dict[Arm, dict[tuple[str, str], list[tuple[RunDiagnosis, Finding]]]]:
    """arm -> (rule, subject) -> [(run, finding)], in the order runs were found."""
    arms: dict = {}
    for run in report.runs:
        arm = arms.setdefault(_arm(report, run), {})
        for finding in run.findings:
            arm.setdefault((finding.rule, finding.subject), []).append((run, finding))
    return arms


def _seed_list(seeds: list[int]) -> str:
    """Which seeds, as 'seed 3' or 'seeds 0, 1, 2' (never to be read as a count)."""
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def format_report(report: Report) -> str:
    lines = []
    seeds_of: dict[Arm, list[int]] = {}
    for run in report.runs:
        seeds_of.setdefault(_arm(report, run), []).append(run.seed)
    for (experiment, env, preset), by_rule in _group(report).items():
        seeds = sorted(seeds_of[(experiment, env, preset)])
        name = f"{preset} on {env}" + (f" in {experiment}" if experiment else "")
        count = f"{len(seeds)} seed" + ("" if len(seeds) == 1 else "s")
        short = [r for r in report.runs if _arm(report, r) == (experiment, env, preset) and r.gaps]
        if not by_rule and not short:
            lines.append(f"{name} ({count}): healthy, no finding")
            continue
        if not by_rule:
            lines.append(f"{name} ({count}): no finding, but not enough evidence to call it healthy")
        else:
            lines.append(f"{name} ({count}):")
        for (rule, subject), hits in by_rule.items():
            run, first = hits[0]
            where = f" [{subject}]" if subject else ""
            found_in = _seed_list([r.seed for r, _ in hits])
            lines.append(f"  {first.severity.upper()} {rule}{where}: {len(hits)} of {count} ({found_in})")
            lines.append(
                f"    seed {run.seed}, env steps {first.first_step:,}-{first.last_step:,}: {first.summary}"
            )
            lines.append(f"    why: {first.why}")
            lines.append(f"    fix: {first.fix}")
        for gap in dict.fromkeys(g for r in short for g in r.gaps):  # once per arm, in order
            seeds_short = _seed_list([r.seed for r in short if gap in r.gaps])
            lines.append(f"  not enough evidence ({seeds_short}): {gap}")
    if report.problems:
        lines.append("Not examined:")
        lines += [f"  {p}" for p in report.problems]
    verdict = {
        "healthy": "healthy: no finding",
        "not enough evidence": "no finding, but not enough evidence to call them healthy",
        "findings": f"{sum(len(r.findings) for r in report.runs)} findings",
    }[report.verdict]
    lines.append(f"{len(report.runs)} runs examined, {verdict}")
    return "\n".join(lines)


def to_json(report: Report) -> dict:
    runs = [
        {
            "run_dir": str(r.run_dir),
            "preset": r.preset,
            "env": r.env,
            "seed": r.seed,
            "status": r.status,
            "findings": [f.to_dict() for f in r.findings],
            "not_enough_evidence": r.gaps,
        }
        for r in report.runs
    ]
    return {
        "directory": str(report.directory),
        "healthy": report.healthy,
        "verdict": report.verdict,
        "runs": runs,
        "problems": report.problems,
    }


def with_reward_threshold(info: dict) -> dict:
    """`info` (a run.json dict) with `reward_threshold`, the env's in gymnasium's registry (None where it has
    none or the id is not registered here), unless it says one already: the capacity rules read it
    (`doctor_rules.solves_its_task`). Set in place, so a live run's run.json records it."""
    if "reward_threshold" not in info:
        env = info.get("env")
        info["reward_threshold"] = registry_threshold(env) if isinstance(env, str) and env else None
    return info


class LiveDoctor:
    """The doctor's rules during training, on the scalars logged so far, every `LIVE_EVERY_STEPS` env steps.

    A finding is reported through `report(finding, upgraded)` when it first appears, and again whenever it
    grows: a warning that becomes an error, or evidence that grows by half again (`grew`). `verdict`
    runs the rules once more at the end: that list is what run.json's `final.doctor` records, and it is
    what `dqnlab doctor` finds on the same run. A finding reported during the run that the end's verdict
    does not hold (the run came to solve its task with the units it has left; the late half moved past a
    problem of the early one) goes to `retract(finding)`, so the console and the Text dashboard do not end
    on a finding the verdict drops."""

    def __init__(
        self,
        run_info: Mapping,
        report: Callable[[Finding, bool], None],
        every: int = LIVE_EVERY_STEPS,
        retract: Callable[[Finding], None] | None = None,
    ):
        # The trainer's run.json dict (status, divergence as they are set) with the env's reward threshold.
        self._run = with_reward_threshold(run_info)
        self._report, self._retract = report, retract
        self._every = every
        self._next_check = every
        self._reported: dict[tuple[str, str], Finding] = {}  # the last report of each (rule, subject)

    def state(self) -> dict:
        """What a checkpoint keeps: the findings as last reported (not to repeat them after a resume)."""
        return {"reported": [f.to_dict() for f in self._reported.values()], "next_check": self._next_check}

    def restore(self, state: dict) -> None:
        reported = [Finding(**f) for f in state["reported"]]
        self._reported = {(f.rule, f.subject): f for f in reported}
        self._next_check = int(state["next_check"])

    def maybe_check(self, step: int, history: Mapping[str, tuple[list[int], list[float]]]) -> None:
        if step < self._next_check:
            return
        self._next_check = step + self._every
        self.check(history)

    def check(self, history: Mapping[str, tuple[list[int], list[float]]]) -> list[Finding]:
        """Run the rules; report what is new or has grown. Returns every current finding."""
        findings = diagnose(_as_series(history), self._run)
        for finding in findings:
            key = (finding.rule, finding.subject)
            before = self._reported.get(key)
            if before is None or grew(before, finding):
                self._reported[key] = finding
                self._report(finding, before is not None)
        return findings

    def verdict(
        self, history: Mapping[str, tuple[list[int], list[float]]]
    ) -> tuple[list[Finding], list[str]]:
        """The findings at the end of the run (reporting those new or grown since the last check, and
        retracting those reported that it no longer holds), and what the rules could not judge for want of
        evidence."""
        findings = self.check(history)
        held = {(f.rule, f.subject) for f in findings}
        for key in [key for key in self._reported if key not in held]:
            dropped = self._reported.pop(key)
            if self._retract is not None:
                self._retract(dropped)
        return findings, evidence_gaps(_as_series(history), self._run)


def _as_series(history: Mapping[str, tuple[list[int], list[float]]]) -> Series:
    return {tag: (np.asarray(s, np.int64), np.asarray(v, np.float64)) for tag, (s, v) in history.items()}


_RANK = {ERROR: 2, "warning": 1}


def grew(before: Finding, now: Finding) -> bool:
    """A finding worth reporting again: more severe, or its leading evidence (the first number of its
    evidence, e.g. the blocked share) half again as large."""
    if _RANK.get(now.severity, 0) != _RANK.get(before.severity, 0):
        return _RANK.get(now.severity, 0) > _RANK.get(before.severity, 0)
    old, new = next(iter(before.evidence.values()), 0.0), next(iter(now.evidence.values()), 0.0)
    return bool(np.isfinite(new) and abs(new) >= 1.5 * abs(old) and new != old)


def retraction_line(finding: Finding) -> str:
    where = f" [{finding.subject}]" if finding.subject else ""
    step = f"{finding.last_step:,}"
    return f"doctor: {finding.rule}{where}, reported at env step {step}, no longer holds on the whole run"


def warning_line(finding: Finding, grew: bool = False) -> str:
    where = f" [{finding.subject}]" if finding.subject else ""
    step = f"{finding.last_step:,}"
    now = " now" if grew else ""  # a finding reported before, grown since
    return f"doctor:{now} {finding.severity} {finding.rule}{where} at env step {step}: {finding.summary}"
