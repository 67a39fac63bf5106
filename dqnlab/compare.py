"""`dqnlab compare DIR`: the numbers an A/B is judged by, per env, with honest few-seed statistics.

For each arm: how many seeds finished, the final greedy eval return (mean and 95% t-interval over the
finished seeds), the area under the eval curve (its mean height), the steps to a return threshold, and the
diagnostics that tell the pathologies apart. Then each arm against the first (arms share seeds): paired
differences with a paired t-test (`dqnlab.stats`). Broken or partial runs are listed, never fatal; so is a
`done` run whose event files are damaged or end before its last step (`events_end_early`): their curves are
not whole, so they are not counted as finished.

Only the tags used here are kept while reading (`dqnlab.events`; docs/performance.md has what it costs).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dqnlab.aggregate import AGGREGATE_DIR
from dqnlab.cliargs import not_a_directory
from dqnlab.config import ConfigError
from dqnlab.events import Series, read_series_checked
from dqnlab.rundir import EXPERIMENT_JSON, RUN_JSON, process_is_gone, read_run
from dqnlab.stats import (
    Estimate,
    PairedDifference,
    area_under_curve,
    first_step_reaching,
    mean_ci,
    paired_difference,
)

EVAL_TAG = "eval/return"
# Per-run diagnostics: (column, tag or `family/` prefixes, statistic over the points of the matching tags).
# Of several prefixes the first logged is used: the pre-clip norm shows a spike the clipped one hides.
DIAGNOSTICS = (
    ("blocked_frac_mean", ("td/grad_blocked_frac",), "mean"),
    ("dead_frac_max", ("act_dead_frac/",), "max"),
    ("saturated_frac_max", ("act_saturated_frac/",), "max"),
    ("grad_norm_max", ("grad_norm/preclip_global", "grad_norm/global"), "max"),
)
PLOTTED = ("grad/depth_ratio",)
FINISHED = "done"
# A `done` run whose event files cannot back its numbers: listed, not counted as finished.
DAMAGED, TRUNCATED = "damaged", "truncated"


def _matches(tag: str, prefix: str) -> bool:
    return tag == prefix or (prefix.endswith("/") and tag.startswith(prefix))


def _wanted(tag: str) -> bool:
    prefixes = (EVAL_TAG, *PLOTTED, *(p for _, ps, _ in DIAGNOSTICS for p in ps))
    return any(_matches(tag, p) for p in prefixes)


@dataclass
class Run:
    preset: str
    env: str
    seed: int
    status: str
    path: Path
    series: Series = field(repr=False)
    note: str = ""  # why it is not counted as finished


@dataclass
class Arm:
    preset: str
    env: str
    runs: list[Run]
    final: Estimate
    auc: Estimate
    reached: int
    steps_to_threshold: list[int]
    diagnostics: dict[str, float]
    per_seed: dict[int, dict[str, float]]

    @property
    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for run in self.runs:
            counts[run.status] = counts.get(run.status, 0) + 1
        return counts


@dataclass
class EnvComparison:
    env: str
    threshold: float | None
    arms: list[Arm]
    paired: dict[str, dict[str, PairedDifference]]  # arm preset -> metric -> difference vs arms[0]


@dataclass
class Comparison:
    directory: Path
    envs: list[EnvComparison]
    problems: list[str]


def load_run_dirs(directory: str | Path) -> tuple[list[Path], list[str]]:
    """The run directories at or below `directory` (an experiment or one run) whose run.json reads, and a
    line for each seed directory that is broken (no run.json, or one that does not read or parse)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(not_a_directory(directory))
    if (directory / RUN_JSON).is_file() or directory.name.startswith("seed_"):
        candidates = [directory]
    else:
        candidates = sorted(
            p
            for p in directory.rglob("seed_*")
            if p.is_dir() and AGGREGATE_DIR not in p.relative_to(directory).parts
        )
    paths, problems = [], []
    for path in candidates:
        try:
            json.loads((path / RUN_JSON).read_text())["status"]
        except FileNotFoundError:
            problems.append(f"{path}: no {RUN_JSON} (never started, or its directory was emptied)")
        except OSError as exc:  # a directory, no permission, an I/O error
            problems.append(f"{path}: unreadable {RUN_JSON} ({type(exc).__name__}: {exc.strerror or exc})")
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"{path}: unreadable {RUN_JSON} ({type(exc).__name__}: {exc})")
        else:
            paths.append(path)
    if not paths:
        raise ConfigError(no_runs_message(directory, problems))
    return paths, problems


def no_runs_message(directory: Path, problems: list[str]) -> str:
    """One line: why `directory` gave no run to read (the first broken run's reason, when there is one)."""
    if not problems:
        return f"{directory} holds no dqnlab runs (no */*/seed_*/{RUN_JSON})"
    more = f" (and {len(problems) - 1} more broken run(s))" if len(problems) > 1 else ""
    return f"{directory} holds no readable dqnlab run: {problems[0]}{more}"


def load_runs(directory: str | Path) -> tuple[list[Run], list[str], list[str]]:
    """Every run below `directory` (an experiment or one run), the preset order, and the problems found."""
    paths, problems = load_run_dirs(directory)
    runs = [_load_run(path, problems) for path in paths]
    return runs, _preset_order(Path(directory), runs), problems


@dataclass(frozen=True)
class EarlyEnd:
    """A `done` run whose event files end before its last env step."""

    env_steps: int  # run.json's; the final evaluation is logged at this step
    last_step: int | None  # of the last `eval/return` point read (None: not one was)
    points: int  # `eval/return` points read

    def __str__(self) -> str:
        read = f"end at env step {self.last_step:,}" if self.last_step is not None else "hold no point"
        return (
            f"run.json says done at {self.env_steps:,} env steps, but its {EVAL_TAG} events {read} "
            f"(a done run logs its final evaluation at its last step): the tail of its event files was lost"
        )


def events_end_early(series: Series, info: Mapping) -> EarlyEnd | None:
    """Whether a `done` run's events end early: its last `eval/return` step is below run.json's `env_steps`.

    The loop evaluates at every `train.eval_every` steps and always at the last step, and that final
    evaluation is the last scalar a run writes, so a done run of N env steps has an `eval/return` point at
    step N; a last point below N (or none) means the files lost their tail after the run ended cleanly:
    torn, truncated by a copy, or zero-filled by a power loss. Other statuses stop wherever they stopped.
    A run of your own loop (`dqnlab.Panel`, run.json `"source": "panel"`) evaluates when its loop does, if at
    all: it has no point due at its last step, and is not judged here (a damaged record still is)."""
    if info.get("status") != FINISHED or info.get("source") == "panel":
        return None
    due = int(info.get("env_steps") or 0)
    steps = series[EVAL_TAG][0] if EVAL_TAG in series else np.zeros(0, np.int64)
    last = int(steps[-1]) if steps.size else None
    if due <= 0 or (last is not None and last >= due):
        return None
    return EarlyEnd(due, last, int(steps.size))


def _load_run(path: Path, problems: list[str]) -> Run:
    """The run at `path`; a line in `problems` for each reason it is not counted as finished."""
    res = read_run(path)
    series, damage = read_series_checked(path, tags=_wanted)
    run = Run(res.preset, res.env, res.seed, res.status, path, series)
    notes = [f"{DAMAGED}: {found}" for found in damage]
    if res.status != FINISHED:
        notes.insert(0, _status_note(res))
    elif damage:
        run.status = DAMAGED  # read only up to the damage: its curve cannot be trusted to be whole
    elif (early := events_end_early(series, res.info)) is not None:
        run.status = TRUNCATED
        notes.append(f"{TRUNCATED}: {early}")
    run.note = "; ".join(notes)
    problems += [f"{path}: {note}" for note in notes]
    return run


def _status_note(res) -> str:
    """Why a run that is not `done` is not counted."""
    if res.status == "running" and process_is_gone(res.info):
        return (
            f"killed without a word at {res.env_steps} env steps or later (its process is gone; "
            "--resume continues it from its last checkpoint)"
        )
    if res.status == "running":
        return f"still running ({res.env_steps} env steps so far)"
    if res.status == "diverged":
        step = (res.info.get("divergence") or {}).get("step", res.env_steps)
        return f"diverged at env step {step}"
    return f"{res.status}: {res.error or 'no error recorded'}"


def _preset_order(directory: Path, runs: list[Run]) -> list[str]:
    order: list[str] = []
    exp = directory / EXPERIMENT_JSON
    if exp.is_file():
        try:
            order = list(json.loads(exp.read_text()).get("presets", []))
        except ValueError:
            order = []
    return order + sorted({r.preset for r in runs} - set(order))


def compare(directory: str | Path, threshold: float | None = None) -> Comparison:
    """Compare the arms of an experiment (or summarize one run). `threshold` defaults to the env's
    `reward_threshold` in the gymnasium registry (CartPole-v1: 475)."""
    runs, order, problems = load_runs(directory)
    envs = []
    for env in sorted({r.env for r in runs}):
        env_threshold = threshold if threshold is not None else registry_threshold(env)
        arms = [
            _summarize_arm(
                preset, env, [r for r in runs if r.env == env and r.preset == preset], env_threshold
            )
            for preset in order
            if any(r.env == env and r.preset == preset for r in runs)
        ]
        envs.append(EnvComparison(env, env_threshold, arms, _paired(arms)))
    return Comparison(Path(directory), envs, problems)


def registry_threshold(env_id: str) -> float | None:
    """The env's `reward_threshold` in gymnasium's registry, or None (no such id, or no threshold)."""
    import gymnasium

    import dqnlab.envs  # noqa: F401  (registers the dqnlab/ ids)

    try:
        return gymnasium.spec(env_id).reward_threshold
    except gymnasium.error.Error:
        return None


def _summarize_arm(preset: str, env: str, runs: list[Run], threshold: float | None) -> Arm:
    per_seed: dict[int, dict[str, float]] = {}
    for run in sorted(runs, key=lambda r: r.seed):
        values = {name: _diagnostic(run.series, prefixes, stat) for name, prefixes, stat in DIAGNOSTICS}
        if run.status == FINISHED and EVAL_TAG in run.series:
            steps, returns = run.series[EVAL_TAG]
            values["final_return"] = float(returns[-1])
            values["auc"] = area_under_curve(steps, returns)
            if threshold is not None:
                hit = first_step_reaching(steps, returns, threshold)
                values["steps_to_threshold"] = math.nan if hit is None else float(hit)
        per_seed[run.seed] = values
    finished = [v for v in per_seed.values() if "final_return" in v]
    hits = [
        int(v["steps_to_threshold"])
        for v in finished
        if not math.isnan(v.get("steps_to_threshold", math.nan))
    ]
    diagnostics = {}
    for name, _, _ in DIAGNOSTICS:
        observed = [v[name] for v in per_seed.values() if not math.isnan(v[name])]
        diagnostics[name] = float(np.mean(observed)) if observed else math.nan
    return Arm(
        preset=preset,
        env=env,
        runs=runs,
        final=mean_ci([v["final_return"] for v in finished]),
        auc=mean_ci([v["auc"] for v in finished]),
        reached=len(hits),
        steps_to_threshold=sorted(hits),
        diagnostics=diagnostics,
        per_seed=per_seed,
    )


def _diagnostic(series: Series, prefixes: tuple[str, ...], stat: str) -> float:
    """`stat` (mean or max) over every point of the tags matching the first of `prefixes` that was logged."""
    for prefix in prefixes:
        matching = [v for tag, (_, v) in series.items() if _matches(tag, prefix) and v.size]
        if matching:
            values = np.concatenate(matching)
            return float(values.mean() if stat == "mean" else values.max())
    return math.nan


def _paired(arms: list[Arm]) -> dict[str, dict[str, PairedDifference]]:
    if len(arms) < 2:
        return {}
    base = arms[0]
    out = {}
    for arm in arms[1:]:
        seeds = sorted(
            s
            for s in arm.per_seed
            if "final_return" in arm.per_seed[s] and "final_return" in base.per_seed.get(s, {})
        )
        out[arm.preset] = {
            metric: paired_difference(
                [arm.per_seed[s][metric] for s in seeds], [base.per_seed[s][metric] for s in seeds]
            )
            for metric in ("final_return", "auc")
        }
    return out


# ---- output -------------------------------------------------------------------------------------------


def _fmt(x: float, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_estimate(e: Estimate) -> str:
    if e.n == 0:
        return "-"
    if e.n == 1:
        return f"{e.mean:.1f} (1 seed)"
    return f"{e.mean:.1f} ± {e.half_width:.1f}"


def _fmt_seeds(arm: Arm) -> str:
    counts = arm.statuses
    done = counts.pop(FINISHED, 0)
    rest = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return f"{done}/{len(arm.runs)} done" + (f" ({rest})" if rest else "")


def _fmt_steps(arm: Arm, threshold: float | None) -> str:
    if threshold is None:
        return "-"
    finished = sum(1 for v in arm.per_seed.values() if "final_return" in v)
    if not arm.reached:
        return f"0/{finished}"
    return f"{arm.reached}/{finished} @ {int(np.median(arm.steps_to_threshold)):,}"


def format_comparison(comparison: Comparison) -> str:
    lines: list[str] = []
    for env in comparison.envs:
        threshold = "" if env.threshold is None else f"; threshold {env.threshold:g}"
        lines.append(
            f"{env.env}  (final eval return and AUC: mean ± 95% t-interval over done seeds{threshold})"
        )
        header = [
            "arm",
            "seeds",
            "final return",
            "AUC",
            "reached",
            "blocked",
            "dead max",
            "sat max",
            "|g| max",
        ]
        rows = [
            [
                arm.preset,
                _fmt_seeds(arm),
                _fmt_estimate(arm.final),
                _fmt_estimate(arm.auc),
                _fmt_steps(arm, env.threshold),
                _fmt(arm.diagnostics["blocked_frac_mean"], 3),
                _fmt(arm.diagnostics["dead_frac_max"], 2),
                _fmt(arm.diagnostics["saturated_frac_max"], 2),
                _fmt_sci(arm.diagnostics["grad_norm_max"]),
            ]
            for arm in env.arms
        ]
        lines += _columns(header, rows)
        if env.paired:
            base = env.arms[0].preset
            lines.append(f"  paired differences vs {base} (same seeds; paired t-test):")
            for preset, metrics in env.paired.items():
                parts = [f"{name} {_fmt_difference(d)}" for name, d in metrics.items()]
                lines.append(f"    {preset}: " + "; ".join(parts))
        lines.append("")
    if comparison.problems:
        lines.append("Not counted as finished:")
        lines += [f"  {p}" for p in comparison.problems]
    return "\n".join(lines).rstrip()


def _fmt_sci(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.3g}"


def _fmt_difference(d: PairedDifference) -> str:
    if d.n == 0:
        return "no shared done seeds"
    if d.n == 1:
        return f"{d.mean:+.1f} (1 seed, no test)"
    return f"{d.mean:+.1f} [{d.ci_low:+.1f}, {d.ci_high:+.1f}] p={d.p_value:.3g} (n={d.n})"


def _columns(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def to_json(comparison: Comparison) -> dict:
    """The comparison as plain data (NaN written as null)."""

    def clean(x):
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    envs = []
    for env in comparison.envs:
        arms = [
            {
                "preset": arm.preset,
                "seeds": arm.statuses,
                "final_return": arm.final.to_dict(),
                "auc": arm.auc.to_dict(),
                "reached_threshold": arm.reached,
                "steps_to_threshold": arm.steps_to_threshold,
                "diagnostics": arm.diagnostics,
                "per_seed": arm.per_seed,
            }
            for arm in env.arms
        ]
        paired = {
            preset: {metric: d.to_dict() for metric, d in metrics.items()}
            for preset, metrics in env.paired.items()
        }
        envs.append(
            {
                "env": env.env,
                "threshold": env.threshold,
                "baseline": env.arms[0].preset,
                "arms": arms,
                "paired": paired,
            }
        )
    return clean({"directory": str(comparison.directory), "envs": envs, "problems": comparison.problems})
