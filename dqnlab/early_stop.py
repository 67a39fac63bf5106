"""`dqnlab sweep --stop-on-fatal`: a run stops as soon as the live doctor finds a pathology it cannot
recover from, so a big grid does not spend its budget on cells already lost.

Fatal here means the backward pass can never bring the run back:

- `divergence`: a non-finite gradient, written into the weights, stays there (a non-finite loss already
  stops every run as `diverged`; this catches a non-finite gradient logged with a finite loss);
- `dead_relu` at 100% of a layer (the doctor's summary rounds, so at least 99.5%): every unit outputs 0 on
  every probe state, so every weight of the layer and of the layers below it gets exactly zero gradient.

The trainer passes each live finding to its `warn` callback as a line (`dqnlab.doctor.warning_line`);
`stop_if_fatal` reads the rule, the subject and the share back from it and raises `FatalPathology`, a stop
request, which the trainer handles like SIGTERM: summaries flushed, run.json `interrupted`. `record` then
adds `stopped_early` to run.json, which makes the run a result: `--resume` leaves it as it is, and the
sweep's maps show it as stopped, beside what the doctor found in what it logged.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from dqnlab.rundir import RUN_JSON, write_json_atomic
from dqnlab.signals import StopRequested

# dqnlab.doctor.warning_line: "doctor:[ now] <severity> <rule>[ [<subject>]] at env step <n>: <summary>"
_WARNING = re.compile(
    r"^doctor:(?: now)? (?P<severity>\w+) (?P<rule>\w+)(?: \[(?P<subject>[^\]]*)\])?"
    r" at env step (?P<step>[\d,]+): (?P<summary>.*)$"
)
_SHARE = re.compile(r"^\S+: (?P<pct>\d+)% of units")  # rule_dead_relu's summary: "<layer>: 100% of units ..."
FATAL_RULES = ("divergence", "dead_relu")
BY_FLAG = "--stop-on-fatal"


class FatalPathology(StopRequested):
    """A stop requested by --stop-on-fatal; its message names the finding."""

    def __init__(self, rule: str, subject: str, step: int, summary: str):
        where = f" [{subject}]" if subject else ""
        super().__init__(f"{BY_FLAG}: {rule}{where} at env step {step:,}: {summary}")
        self.rule, self.subject, self.step = rule, subject, step


class Paused(StopRequested):
    """A stop at a rung of successive halving (`dqnlab.halving`): the next rung resumes the run."""


def fatal_finding(line: str) -> FatalPathology | None:
    """The stop a live doctor's warning line calls for, or None when its finding is not fatal."""
    match = _WARNING.match(line)
    if match is None or match["rule"] not in FATAL_RULES:
        return None
    summary = match["summary"]
    if match["rule"] == "dead_relu":
        share = _SHARE.match(summary)
        if share is None or int(share["pct"]) < 100:
            return None
    step = int(match["step"].replace(",", ""))
    return FatalPathology(match["rule"], match["subject"] or "", step, summary)


def stop_if_fatal(line: str) -> None:
    if (stop := fatal_finding(line)) is not None:
        raise stop


def record(run_dir: Path, stop: FatalPathology) -> dict:
    """Add `stopped_early` to the run.json the trainer left `interrupted`; returns it."""
    return record_stopped(
        run_dir, {"by": BY_FLAG, "rule": stop.rule, "subject": stop.subject, "step": stop.step}
    )


def record_stopped(run_dir: Path, stopped: dict) -> dict:
    """run.json's `stopped_early` := `stopped` (`by`: the flag that stopped it, and why); returns it."""
    path = Path(run_dir) / RUN_JSON
    info = json.loads(path.read_text())
    info["stopped_early"] = stopped
    write_json_atomic(path, info)
    return stopped


def stopped_early(run_dir: Path) -> dict | None:
    """run.json's `stopped_early` when the run was stopped so (and not continued since), else None."""
    info = _run_json(run_dir) or {}
    stopped = info.get("stopped_early")
    return stopped if info.get("status") == "interrupted" and isinstance(stopped, dict) else None


def finished(run_dir: Path) -> dict | None:
    """The run.json of a run that is `done` or `diverged` (a resume leaves it as it is), else None."""
    info = _run_json(run_dir)
    return info if info is not None and info.get("status") in ("done", "diverged") else None


def _run_json(run_dir: Path) -> dict | None:
    try:
        info = json.loads((Path(run_dir) / RUN_JSON).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def paused_at(run_dir: Path) -> int | None:
    """The env steps of a run that stopped `interrupted` (and may be resumed), else None."""
    info = _run_json(run_dir)
    if info is None or info.get("status") != "interrupted":
        return None
    steps = info.get("env_steps")
    return steps if isinstance(steps, int) else None


def describe(stopped: dict) -> str:
    """'stopped early (--stop-on-fatal): dead_relu [hidden_1] at env step 5,120', or
    'stopped early (--halving): cut at rung 0 at env step 3,333'."""
    where = f" [{stopped['subject']}]" if stopped.get("subject") else ""
    step = stopped.get("step")
    at = f" at env step {step:,}" if isinstance(step, int) else ""
    what = stopped.get("rule") or f"cut at rung {stopped.get('rung')}"
    return f"stopped early ({stopped.get('by')}): {what}{where}{at}"
