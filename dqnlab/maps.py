"""`dqnlab compare DIR --map`: a sweep's cells laid out on its axes, a map per metric and the doctor's.

The data only (drawing is `dqnlab.mapplot`). Every number comes from the readers `compare` and `doctor`
use: `dqnlab.compare.compare` for the returns and the diagnostics columns, `dqnlab.doctor.examine` for the
verdicts, plus two late-half medians read here (BPTT growth per step back, the measured Q overestimation).

- **Axes** come from experiment.json's `runs`: a sweep records each cell's overrides (`cell`) and name
  there, for either backend. An experiment that is not a sweep (`dqnlab ab`) maps on one axis, its arms.
- **Groups.** All cells share one map when each ran on one env (an `env` axis included); cells run on
  several envs each (`--env` twice) get one map per env.
- **Verdicts.** Per seed: the rules that fired, else "not enough evidence" when a rule lacked its points,
  else "healthy". Per cell: the rule found in the most seeds names it (errors before warnings at a tie);
  a cell is *pathological* when at least half its seeds have an error finding, and the boundary is drawn
  between pathological cells and the others.
- Runs stopped by `--stop-on-fatal` or cut by `--halving` keep what they logged: the doctor judges it, the
  cell says how many were stopped and why, and the returns (done runs only) leave them out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import numpy as np

from dqnlab import early_stop
from dqnlab.compare import Comparison, compare
from dqnlab.config import ConfigError, parse_override
from dqnlab.doctor import Report, examine
from dqnlab.doctor_rules import ERROR, RULES
from dqnlab.events import read_series_checked
from dqnlab.rundir import EXPERIMENT_JSON

PRESET_AXIS = "preset"
HEALTHY, NO_EVIDENCE, NO_RUNS = "healthy", "not enough evidence", "no runs"
# (key, title): the returns first, then compare's diagnostics columns, then the two read here.
METRICS = (
    ("final_return", "final greedy return"),
    ("final_return_frac", "final return / threshold"),
    ("auc", "AUC (mean eval return)"),
    ("steps_to_threshold", "env steps to threshold"),
    ("blocked_frac_mean", "blocked TD-gradient fraction"),
    ("dead_frac_max", "max dead fraction"),
    ("saturated_frac_max", "max saturated fraction"),
    ("grad_norm_max", "max global grad norm"),
    ("bptt_growth", "BPTT growth per step back"),
    ("q_overestimation", "Q overestimation (eval)"),
)
RETURNS = ("final_return", "final_return_frac", "auc", "steps_to_threshold")  # done seeds only
RULE_ORDER = [rule.__name__.removeprefix("rule_") for rule in RULES]
_EXTRA_TAGS = ("bptt/grad_norm/t-", "eval/q_overestimation")


@dataclass(frozen=True)
class MapAxis:
    key: str
    values: tuple[str, ...]

    @property
    def short(self) -> str:
        return self.key.rpartition(".")[2]


@dataclass
class SeedResult:
    seed: int
    status: str  # run.json's, or compare's `damaged` / `truncated`
    metrics: dict[str, float]
    findings: list[tuple[str, str, str]]  # (rule, severity, subject)
    gaps: list[str]
    stopped: dict | None = None  # run.json's `stopped_early`

    @property
    def category(self) -> str:
        if self.findings:
            return ", ".join(sorted({r for r, _, _ in self.findings}, key=_rule_rank))
        return NO_EVIDENCE if self.gaps else HEALTHY

    @property
    def has_error(self) -> bool:
        return any(severity == ERROR for _, severity, _ in self.findings)


@dataclass
class CellResult:
    name: str
    coords: dict[str, str]  # axis key -> value text
    env: str
    seeds: list[SeedResult] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        """The metric's value in each seed that has one (NaN left out)."""
        found = [s.metrics.get(metric, math.nan) for s in self.seeds]
        return [v for v in found if not math.isnan(v)]

    def summary(self, metric: str) -> dict:
        values = self.values(metric)
        if not values:
            return {"n": 0, "mean": None, "min": None, "max": None}
        return {"n": len(values), "mean": float(np.mean(values)), "min": min(values), "max": max(values)}

    def rule_counts(self) -> dict[str, int]:
        """rule -> in how many seeds it fired, most frequent first (errors first at a tie)."""
        counts: dict[str, int] = {}
        for seed in self.seeds:
            for rule in {r for r, _, _ in seed.findings}:
                counts[rule] = counts.get(rule, 0) + 1
        errors = {r for s in self.seeds for r, sev, _ in s.findings if sev == ERROR}
        order = sorted(counts, key=lambda r: (-counts[r], r not in errors, _rule_rank(r)))
        return {r: counts[r] for r in order}

    @property
    def verdict(self) -> str:
        """The cell's category: its most frequent rule, else not enough evidence, healthy or no runs."""
        if not self.seeds:
            return NO_RUNS
        counts = self.rule_counts()
        if counts:
            return next(iter(counts))
        return NO_EVIDENCE if any(s.gaps for s in self.seeds) else HEALTHY

    @property
    def pathological(self) -> bool:
        """At least half the seeds have an error finding."""
        errors = sum(s.has_error for s in self.seeds)
        return bool(self.seeds) and 2 * errors >= len(self.seeds)

    def stopped(self) -> int:
        return sum(s.stopped is not None for s in self.seeds)

    def stop_notes(self) -> dict[str, int]:
        """How its seeds were stopped early -> how many: 'stopped: dead_relu', 'cut at 1,111 steps'."""
        notes: dict[str, int] = {}
        for seed in self.seeds:
            if seed.stopped is not None:
                note = _stop_note(seed.stopped)
                notes[note] = notes.get(note, 0) + 1
        return notes

    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.seeds:
            key = "stopped early" if s.stopped else s.status
            counts[key] = counts.get(key, 0) + 1
        return counts

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "coords": self.coords,
            "env": self.env,
            "seeds": len(self.seeds),
            "statuses": self.statuses(),
            "metrics": {key: self.summary(key) for key, _ in METRICS},
            "verdict": {
                "category": self.verdict,
                "pathological": self.pathological,
                "rules": self.rule_counts(),
                "healthy": sum(s.category == HEALTHY for s in self.seeds),
                "not_enough_evidence": sum(s.category == NO_EVIDENCE for s in self.seeds),
                "stopped_early": self.stopped(),
                "stops": self.stop_notes(),
            },
            "per_seed": {
                str(s.seed): {
                    "status": s.status,
                    "verdict": s.category,
                    "findings": [{"rule": r, "severity": sev, "subject": sub} for r, sev, sub in s.findings],
                    "not_enough_evidence": s.gaps,
                    "stopped_early": s.stopped,
                    "metrics": {k: _clean(v) for k, v in s.metrics.items()},
                }
                for s in self.seeds
            },
        }


@dataclass
class MapGroup:
    label: str  # the env, or "envs of the cells" when they ran on different ones
    cells: list[CellResult]


@dataclass
class SweepMap:
    directory: Path
    axes: list[MapAxis]
    groups: list[MapGroup]
    problems: list[str]

    def axis(self, key: str) -> MapAxis:
        for axis in self.axes:
            if key in (axis.key, axis.short):
                return axis
        keys = ", ".join(a.key for a in self.axes)
        raise ConfigError(f"--map: {key!r} is not an axis of {self.directory} (its axes: {keys})")

    def layout(self, x: str | None = None, y: str | None = None) -> Layout:
        """Which axis runs along x and y (default: the first two), the others as facets."""
        x_axis = self.axis(x) if x else self.axes[0]
        rest = [a for a in self.axes if a is not x_axis]
        if y is not None:
            y_axis = self.axis(y)
            if y_axis is x_axis:
                raise ConfigError(f"--map: --x and --y are the same axis, {x_axis.key}")
        else:
            y_axis = rest[0] if rest else None
        facets = [a for a in rest if a is not y_axis]
        return Layout(x_axis, y_axis, facets)


@dataclass(frozen=True)
class Layout:
    x: MapAxis
    y: MapAxis | None  # None: a 1-D map (line plots with seed bands)
    facets: list[MapAxis]

    def facet_values(self) -> list[dict[str, str]]:
        return [
            dict(zip([a.key for a in self.facets], values, strict=True))
            for values in product(*(a.values for a in self.facets))
        ]


def _stop_note(stopped: dict) -> str:
    if stopped.get("by") == "--halving":
        step = stopped.get("step")
        return f"cut at {step:,} steps" if isinstance(step, int) else "cut"
    return f"stopped: {stopped.get('rule')}"


def _rule_rank(rule: str) -> int:
    return RULE_ORDER.index(rule) if rule in RULE_ORDER else len(RULE_ORDER)


def _clean(value):
    return None if isinstance(value, float) and math.isnan(value) else value


# ---- reading ----------------------------------------------------------------------------------------


def build_map(directory: str | Path) -> SweepMap:
    """Read an experiment (a sweep's, or any) into its map."""
    directory = Path(directory)
    comparison = compare(directory)
    report = examine(directory)
    axes, coords_of = _axes(directory, comparison)
    results = _seed_results(comparison, report)
    cells_by_key: dict[tuple[str, str], CellResult] = {}
    for name, coords in coords_of.items():
        for (arm, env), seeds in results.items():
            if arm == name:
                cells_by_key[(name, env)] = CellResult(name, coords, env, sorted(seeds, key=lambda s: s.seed))
    for name, coords in coords_of.items():  # planned, but no run of it was read: still a cell
        if not any(key[0] == name for key in cells_by_key):
            cells_by_key[(name, "")] = CellResult(name, coords, "")
    return SweepMap(directory, axes, _groups(list(cells_by_key.values())), comparison.problems)


def _axes(directory: Path, comparison: Comparison) -> tuple[list[MapAxis], dict[str, dict[str, str]]]:
    """The axes and each cell's coordinates: from experiment.json's sweep record, else one axis of arms."""
    recorded: dict[str, tuple[str, dict[str, str]]] = {}  # cell name -> (preset, its overrides)
    for run in _recorded_runs(directory):
        name, overrides = run.get("name"), run.get("cell")
        if name and isinstance(overrides, list):
            values = dict(str(o).partition("=")[::2] for o in overrides)
            recorded.setdefault(str(name), (str(run.get("preset")), values))
    if not recorded:
        arms = list(dict.fromkeys(arm.preset for env in comparison.envs for arm in env.arms))
        return [MapAxis(PRESET_AXIS, tuple(arms))], {a: {PRESET_AXIS: a} for a in arms}
    several = len({preset for preset, _ in recorded.values()}) > 1
    coords_of = {
        name: {**values, PRESET_AXIS: preset} if several else values
        for name, (preset, values) in recorded.items()
    }
    keys = list(dict.fromkeys(k for coords in coords_of.values() for k in coords))
    axes = [MapAxis(k, _ordered(c[k] for c in coords_of.values() if k in c)) for k in keys]
    return axes, coords_of


def _ordered(values) -> tuple[str, ...]:
    """An axis' values: ascending when they are all numbers (a map reads left to right, bottom to top),
    else in the order given."""
    unique = list(dict.fromkeys(values))
    numbers = [axis_number(v) for v in unique]
    if any(n is None for n in numbers):
        return tuple(unique)
    return tuple(v for _, v in sorted(zip(numbers, unique, strict=True)))


def _recorded_runs(directory: Path) -> list[dict]:
    try:
        runs = json.loads((directory / EXPERIMENT_JSON).read_text()).get("runs", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []


def _seed_results(comparison: Comparison, report: Report) -> dict[tuple[str, str], list[SeedResult]]:
    """(arm, env) -> one SeedResult per run: compare's numbers, the doctor's findings, the two extras."""
    verdicts = {(r.preset, r.env, r.seed): r for r in report.runs}
    out: dict[tuple[str, str], list[SeedResult]] = {}
    for env in comparison.envs:
        for arm in env.arms:
            for run in arm.runs:
                metrics = dict(arm.per_seed.get(run.seed, {}))
                if env.threshold and "final_return" in metrics:
                    metrics["final_return_frac"] = metrics["final_return"] / env.threshold
                metrics.update(_extra_metrics(run.path))
                diagnosis = verdicts.get((arm.preset, env.env, run.seed))
                findings = [(f.rule, f.severity, f.subject) for f in diagnosis.findings] if diagnosis else []
                gaps = list(diagnosis.gaps) if diagnosis else []
                stopped = early_stop.stopped_early(run.path)
                result = SeedResult(run.seed, run.status, metrics, findings, gaps, stopped)
                out.setdefault((arm.preset, env.env), []).append(result)
    return out


def _extra_metrics(run_dir: Path) -> dict[str, float]:
    """BPTT growth per step back and the measured Q overestimation: late-half medians (NaN if not logged)."""
    series, _ = read_series_checked(run_dir, tags=lambda t: t.startswith(_EXTRA_TAGS))
    return {"bptt_growth": bptt_growth_per_step(series), "q_overestimation": _late_median(series)}


def bptt_growth_per_step(series) -> float:
    """10 ** (late-half median of log10(||g|| at t-kmax / ||g|| at t-kmin) / (kmax - kmin)): the factor the
    gradient grows by per step back through time (the doctor's exploding_gradient reads the same ratio)."""
    ks = sorted(int(t.rpartition("-")[2]) for t in series if t.startswith("bptt/grad_norm/t-"))
    if len(ks) < 2:
        return math.nan
    (old_steps, old), (new_steps, new) = (
        series[f"bptt/grad_norm/t-{ks[-1]}"],
        series[f"bptt/grad_norm/t-{ks[0]}"],
    )
    _, i, j = np.intersect1d(old_steps, new_steps, return_indices=True)
    ok = (old[i] > 0) & (new[j] > 0)
    logs = np.log10(old[i][ok] / new[j][ok])
    late = logs[len(logs) // 2 :]
    return float(10 ** (np.median(late) / (ks[-1] - ks[0]))) if late.size else math.nan


def _late_median(series) -> float:
    values = series.get("eval/q_overestimation", (None, np.zeros(0)))[1]
    late = values[len(values) // 2 :]
    late = late[np.isfinite(late)]
    return float(np.median(late)) if late.size else math.nan


def _groups(cells: list[CellResult]) -> list[MapGroup]:
    """One map when every cell ran on one env; else one per env."""
    envs_of: dict[str, set[str]] = {}
    for cell in cells:
        envs_of.setdefault(cell.name, set()).add(cell.env)
    if all(len(envs) <= 1 for envs in envs_of.values()):
        envs = sorted({c.env for c in cells if c.env})
        label = envs[0] if len(envs) == 1 else "envs of the cells"  # an env axis, or presets' own envs
        return [MapGroup(label, cells)]
    return [MapGroup(env, [c for c in cells if c.env == env]) for env in sorted({c.env for c in cells})]


# ---- laying out -------------------------------------------------------------------------------------


def cell_at(
    group: MapGroup, layout: Layout, facet: dict[str, str], x: str, y: str | None
) -> CellResult | None:
    want = {**facet, layout.x.key: x}
    if layout.y is not None:
        want[layout.y.key] = y
    for cell in group.cells:
        if all(cell.coords.get(k) == v for k, v in want.items()):
            return cell
    return None


def shown_metrics(group: MapGroup) -> list[tuple[str, str]]:
    """The metrics some cell has a value of; a diagnostic that is 0 in every cell says nothing."""
    shown = []
    for key, title in METRICS:
        values = [v for c in group.cells for v in c.values(key)]
        if not values or (key not in RETURNS and not any(values)):
            continue
        shown.append((key, title))
    return shown


def axis_number(value: str) -> float | None:
    """An axis value as a number (None: not one), for numeric axes in line plots."""
    try:
        _, parsed = parse_override(f"v={value}")
    except ConfigError:
        return None
    if isinstance(parsed, bool) or not isinstance(parsed, (int, float)):
        return None
    return float(parsed)


# ---- output -----------------------------------------------------------------------------------------


def to_json(sweep: SweepMap, layout: Layout) -> dict:
    return {
        "directory": str(sweep.directory),
        "axes": [{"key": a.key, "values": list(a.values)} for a in sweep.axes],
        "x": layout.x.key,
        "y": layout.y.key if layout.y else None,
        "facets": [a.key for a in layout.facets],
        "groups": [{"label": g.label, "cells": [c.to_json() for c in g.cells]} for g in sweep.groups],
        "problems": sweep.problems,
    }


def format_map(sweep: SweepMap, layout: Layout) -> str:
    """The return map and the verdict map as text tables, per group and facet."""
    lines = []
    for group in sweep.groups:
        for facet in layout.facet_values():
            where = ", ".join(f"{k}={v}" for k, v in facet.items())
            head = f"{group.label}" + (f"  [{where}]" if where else "")
            lines.append(f"{head}: final greedy return, mean over done seeds")
            lines += _table(group, layout, facet, _return_text)
            lines.append(f"{head}: the doctor's verdict (seeds in which the rule fired; * pathological)")
            lines += _table(group, layout, facet, _verdict_text)
            lines.append("")
    if sweep.problems:
        lines.append("Not counted as finished:")
        lines += [f"  {p}" for p in sweep.problems]
    return "\n".join(lines).rstrip()


def _return_text(cell: CellResult | None) -> str:
    if cell is None or not cell.seeds:
        return "-"
    s = cell.summary("final_return")
    text = "-" if s["mean"] is None else f"{s['mean']:.1f}"
    notes = ", ".join(f"{n} {note}" for note, n in cell.stop_notes().items())
    return text + (f" ({notes})" if notes else "")


def _verdict_text(cell: CellResult | None) -> str:
    if cell is None or not cell.seeds:
        return NO_RUNS
    n = len(cell.seeds)
    counts = cell.rule_counts()
    if counts:
        text = " ".join(f"{rule} {k}/{n}" for rule, k in counts.items())
    else:
        text = f"{cell.verdict} {n}/{n}" if cell.verdict == HEALTHY else cell.verdict
    return ("* " if cell.pathological else "") + text


def _table(group: MapGroup, layout: Layout, facet: dict[str, str], text) -> list[str]:
    y_values = tuple(reversed(layout.y.values)) if layout.y else (None,)  # the largest on top, as drawn
    header = [f"{layout.y.short} \\ {layout.x.short}" if layout.y else layout.x.short]
    header += list(layout.x.values)
    rows = [
        [y if y is not None else ""] + [text(cell_at(group, layout, facet, x, y)) for x in layout.x.values]
        for y in y_values
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    ]
