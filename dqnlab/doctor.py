"""`dqnlab doctor DIR`: name each backward-pass pathology in a run or an experiment, with evidence and fix.

The rules are `dqnlab.doctor_rules` (docs/doctor.md). This module reads run directories, groups the
findings by arm (one block per rule and layer, with the seeds it was found in), and runs the same rules live
during training (`LiveDoctor`): each finding is reported once per run, as a warning line and as a
TensorBoard text summary under `doctor/findings`.

Exit status of the command: 0 healthy, 1 findings, 2 bad input (so a CI job can gate on it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dqnlab.compare import load_run_dirs, no_runs_message
from dqnlab.config import ConfigError
from dqnlab.doctor_rules import Finding, diagnose
from dqnlab.events import DamagedEventFile, read_series
from dqnlab.rundir import RUN_JSON

LIVE_EVERY_STEPS = 5_000  # live checks: the problem shows at step 5k, and costs ~1 ms per check


@dataclass
class RunDiagnosis:
    run_dir: Path
    preset: str
    env: str
    seed: int
    status: str
    findings: list[Finding]


@dataclass
class Report:
    directory: Path
    runs: list[RunDiagnosis]
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not any(r.findings for r in self.runs)


def examine(directory: str | Path) -> Report:
    """Diagnose every run at or below `directory`. Unreadable runs are listed as problems."""
    paths, problems = load_run_dirs(directory)
    runs = []
    for path in paths:
        info = json.loads((path / RUN_JSON).read_text())
        try:
            series = read_series(path)
        except DamagedEventFile as exc:
            problems.append(f"{path}: not examined: {exc}")
            continue
        runs.append(
            RunDiagnosis(
                path, info["preset"], info["env"], info["seed"], info["status"], diagnose(series, info)
            )
        )
    if not runs:
        raise ConfigError(no_runs_message(Path(directory), problems))
    return Report(Path(directory), runs, problems)


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


def format_report(report: Report) -> str:
    lines = []
    seeds_of: dict[Arm, list[int]] = {}
    for run in report.runs:
        seeds_of.setdefault(_arm(report, run), []).append(run.seed)
    for (experiment, env, preset), by_rule in _group(report).items():
        seeds = sorted(seeds_of[(experiment, env, preset)])
        name = f"{preset} on {env}" + (f" in {experiment}" if experiment else "")
        count = f"{len(seeds)} seed" + ("" if len(seeds) == 1 else "s")
        if not by_rule:
            lines.append(f"{name} ({count}): healthy, no finding")
            continue
        lines.append(f"{name} ({count}):")
        for (rule, subject), hits in by_rule.items():
            run, first = hits[0]
            where = f" [{subject}]" if subject else ""
            found_in = ", ".join(str(r.seed) for r, _ in hits)
            lines.append(f"  {first.severity.upper()} {rule}{where}: seeds {found_in} of {len(seeds)}")
            lines.append(
                f"    seed {run.seed}, env steps {first.first_step:,}-{first.last_step:,}: {first.summary}"
            )
            lines.append(f"    why: {first.why}")
            lines.append(f"    fix: {first.fix}")
    if report.problems:
        lines.append("Not examined:")
        lines += [f"  {p}" for p in report.problems]
    verdict = (
        "healthy: no finding" if report.healthy else f"{sum(len(r.findings) for r in report.runs)} findings"
    )
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
        }
        for r in report.runs
    ]
    return {
        "directory": str(report.directory),
        "healthy": report.healthy,
        "runs": runs,
        "problems": report.problems,
    }


class LiveDoctor:
    """The doctor's rules during training, on the scalars logged so far, every `LIVE_EVERY_STEPS` env steps.

    Each (rule, subject) is reported once per run through `report(finding)`."""

    def __init__(self, run_info: Mapping, report: Callable[[Finding], None], every: int = LIVE_EVERY_STEPS):
        self._run = run_info
        self._report = report
        self._every = every
        self._next_check = every
        self._seen: set[tuple[str, str]] = set()
        self.findings: list[Finding] = []

    def state(self) -> dict:
        """What a checkpoint keeps: the findings reported so far (not to repeat them after a resume)."""
        return {"seen": sorted(self._seen), "next_check": self._next_check}

    def restore(self, state: dict) -> None:
        self._seen = {tuple(key) for key in state["seen"]}
        self._next_check = state["next_check"]

    def maybe_check(self, step: int, history: Mapping[str, tuple[list[int], list[float]]]) -> None:
        if step < self._next_check:
            return
        self._next_check = step + self._every
        self.check(history)

    def check(self, history: Mapping[str, tuple[list[int], list[float]]]) -> None:
        series = {
            tag: (np.asarray(s, np.int64), np.asarray(v, np.float64)) for tag, (s, v) in history.items()
        }
        for finding in diagnose(series, self._run):
            key = (finding.rule, finding.subject)
            if key not in self._seen:
                self._seen.add(key)
                self.findings.append(finding)
                self._report(finding)


def warning_line(finding: Finding) -> str:
    where = f" [{finding.subject}]" if finding.subject else ""
    step = f"{finding.last_step:,}"
    return f"doctor: {finding.severity} {finding.rule}{where} at env step {step}: {finding.summary}"
