"""`dqnlab sweep --halving ETA`: successive halving on the return (Jamieson & Talwalkar 2016).

The budget of --steps is cut into rungs, u, u*ETA, u*ETA^2, ..., --steps, with u = steps / ETA^(rungs - 1)
(rounded down). Every cell's runs train to the first rung and pause there (the first episode end past it,
after the rung's checkpoint: the runs checkpoint every u env steps); the cells whose mean training return
(each seed's last `LAST_EPISODES` episodes before the rung, then the mean over seeds) is among the best
1/ETA go on, resumed from that checkpoint; the others stop for good, `stopped_early` in run.json saying
at which rung and with which score, and the maps show them as cut. The last rung trains the survivors to
--steps. Training returns, not greedy evaluations, rank the cells: they exist at any step, whereas the
evaluations come every train.eval_every steps.

A killed sweep resumes rung by rung: the cuts already made are in run.json, the runs already paused past
a rung are not started again (`dqnlab.runner.settled_outcome`), and the scores are read back from the
event files, up to the rung, so each rung's decision is the one made before.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dqnlab import early_stop
from dqnlab.config import ConfigError
from dqnlab.events import read_series
from dqnlab.runner import PAUSED, RunOutcome, RunSpec

BY_FLAG = "--halving"
LAST_EPISODES = 10
RETURN_TAG = "episode/return"


def rung_steps(steps: int, eta: int, rungs: int) -> list[int]:
    """The env steps at which the rungs end: u * eta^k, the last one `steps`."""
    unit = steps // eta ** (rungs - 1)
    if unit < 1:
        raise ConfigError(
            f"--halving {eta} with {rungs} rungs: --steps {steps:,} leaves no step for the first"
        )
    return [unit * eta**k for k in range(rungs - 1)] + [steps]


def score(run_dir: Path, upto: int) -> float:
    """The mean of the last `LAST_EPISODES` training returns ending at or before env step `upto`."""
    steps, values = read_series(run_dir, tags=[RETURN_TAG]).get(RETURN_TAG, (np.zeros(0), np.zeros(0)))
    values = values[steps <= upto][-LAST_EPISODES:]
    return float(values.mean()) if values.size else math.nan


def survivors(scores: dict[str, float], eta: int) -> list[str]:
    """The best ceil(n / eta) cells by score (NaN last; ties: the order given)."""
    ranked = sorted(scores, key=lambda c: -scores[c] if not math.isnan(scores[c]) else math.inf)
    return ranked[: math.ceil(len(scores) / eta)]


def run_halving(
    specs: list[RunSpec], eta: int, rungs: int, run: Callable[[list[RunSpec]], list[RunOutcome]]
) -> list[RunOutcome]:
    """Run the sweep's `specs` rung by rung with `run` (a backend); the last rung's outcomes, in order."""
    bounds = rung_steps(max(s.steps for s in specs), eta, rungs)
    alive = list(dict.fromkeys(s.arm for s in specs))
    outcomes: list[RunOutcome] = []
    for rung, bound in enumerate(bounds):
        last = rung == len(bounds) - 1
        # Every spec, every rung: experiment.json keeps the whole grid; cut and paused runs start no process.
        resume = specs[0].resume or rung > 0
        outcomes = run([dataclasses.replace(s, resume=resume, pause_at=0 if last else bound) for s in specs])
        if last:
            break
        # Paused at this rung, or (a resumed sweep) already past it: each scored on what it logged up to it.
        paused = [o for o in outcomes if o.spec.arm in alive and o.status in (PAUSED, "done")]
        scores = {cell: _cell_score(cell, paused, bound) for cell in alive}
        kept = survivors(scores, eta)
        for outcome in paused:
            if outcome.spec.arm not in kept and outcome.status == PAUSED:
                stopped = {
                    "by": BY_FLAG,
                    "rung": rung,
                    "step": bound,
                    "score": _finite(scores[outcome.spec.arm]),
                }
                early_stop.record_stopped(Path(outcome.run_dir), stopped)
        alive = kept
    return outcomes


def _cell_score(cell: str, paused: list[RunOutcome], bound: int) -> float:
    values = [score(Path(o.run_dir), bound) for o in paused if o.spec.arm == cell]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


def for_halving(specs: list[RunSpec], eta: int, rungs: int) -> list[RunSpec]:
    """The specs as halving runs them: a checkpoint at every rung (every first rung's steps), with the
    replay, so a run resumed at the next rung goes on as if it had not paused. A ConfigError when the
    checkpoints are off (--checkpoint-every 0) or the first rung would be empty."""
    if any(s.checkpoint_every == 0 for s in specs):
        raise ConfigError("--halving pauses runs at checkpoints: it cannot run with --checkpoint-every 0")
    unit = rung_steps(max(s.steps for s in specs), eta, rungs)[0]
    return [dataclasses.replace(s, checkpoint_every=unit, checkpoint_replay=True) for s in specs]
