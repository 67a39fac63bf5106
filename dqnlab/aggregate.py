"""Across-seed aggregate runs: `<experiment>/_aggregate/<preset>/<env>/`, one per arm.

Each scalar tag of the arm's seeds is written there three times: its across-seed mean under the tag itself
(so it lands on the same chart as the seeds), and the band as `<tag>/min` and `<tag>/max` (min-max rather
than a confidence interval: with 3-5 seeds it shows every seed and claims nothing). The experiment's
custom-scalars layout (`dqnlab.layout`) is stored in every aggregate run.

Steps are aligned two ways. Diagnostics and evaluations are logged on a schedule, so every seed logs them at
the same steps (a run that stopped early logs a prefix): the mean is taken per step over the seeds that
logged it. Episodes end at different steps in each seed: those tags are averaged into (at most) `EPISODE_BINS`
equal-width step bins first. Aggregates are derived data: rewritten as a whole (built beside the old one,
then swapped in) whenever a run of the arm finishes, and by `dqnlab compare`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2

from dqnlab.eventfile import EventFile, scalar_value
from dqnlab.events import Series, read_series
from dqnlab.layout import BAND_SUFFIXES, build_layout, layout_summary
from dqnlab.rundir import RUN_JSON, find_runs

AGGREGATE_DIR = "_aggregate"
EPISODE_BINS = 100
SKIPPED_PREFIXES = ("perf/",)  # wall-clock rates: a band over machines' noise says nothing


def aggregate_series(
    per_seed: Sequence[Series],
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """tag -> (steps, mean, min, max) over the seeds that logged the tag."""
    tags = sorted({tag for series in per_seed for tag in series if not tag.startswith(SKIPPED_PREFIXES)})
    out = {}
    for tag in tags:
        curves = [series[tag] for series in per_seed if tag in series and series[tag][0].size]
        if curves:
            out[tag] = _combine(_align(curves))
    return out


def _align(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """A [seeds, steps] matrix with NaN where a seed has no value, and its step axis."""
    union = np.unique(np.concatenate([steps for steps, _ in curves]))
    if union.size == max(steps.size for steps, _ in curves):
        grid = union  # every seed's steps are a subset of one schedule
        matrix = np.full((len(curves), grid.size), np.nan)
        for row, (steps, values) in enumerate(curves):
            matrix[row, np.searchsorted(grid, steps)] = values
        return grid, matrix
    # Integer bin edges, right-closed: (e_k, e_k+1] is written at step e_k+1, so no step is written twice.
    edges = np.unique(np.ceil(np.linspace(0, int(union[-1]), EPISODE_BINS + 1)).astype(np.int64))
    grid = edges[1:]
    matrix = np.full((len(curves), grid.size), np.nan)
    for row, (steps, values) in enumerate(curves):
        bins = np.clip(np.searchsorted(edges, steps, side="left") - 1, 0, grid.size - 1)
        sums = np.bincount(bins, weights=values, minlength=grid.size)
        counts = np.bincount(bins, minlength=grid.size)
        filled = counts > 0
        matrix[row, filled] = sums[filled] / counts[filled]
    return grid, matrix


def _combine(aligned: tuple[np.ndarray, np.ndarray]):
    grid, matrix = aligned
    present = ~np.isnan(matrix).all(axis=0)
    grid, matrix = grid[present], matrix[:, present]
    return grid, np.nanmean(matrix, axis=0), np.nanmin(matrix, axis=0), np.nanmax(matrix, axis=0)


def write_aggregate_run(target: Path, aggregated: dict, layout_tags: Sequence[str]) -> None:
    """Write one aggregate run into a fresh directory and swap it in place of `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the runs beside it are not
    writer = EventFile(staging)
    wall_time = time.time()
    writer.add_event(
        event_pb2.Event(wall_time=wall_time, step=0, summary=layout_summary(build_layout(layout_tags)))
    )
    by_step: dict[int, summary_pb2.Summary] = {}
    for tag, (steps, mean, low, high) in aggregated.items():
        for name, values in (
            (tag, mean),
            *zip((f"{tag}/{s}" for s in BAND_SUFFIXES), (low, high), strict=True),
        ):
            for i, (step, value) in enumerate(zip(steps.tolist(), values.tolist(), strict=True)):
                summary = by_step.setdefault(step, summary_pb2.Summary())
                # The plugin metadata once per tag, as TensorBoard reads it from a tag's first value.
                summary.value.append(scalar_value(name, value, with_metadata=i == 0))
    for step in sorted(by_step):  # one event per step, every tag in it: 100x fewer records than per tag
        writer.add_event(event_pb2.Event(wall_time=wall_time, step=step, summary=by_step[step]))
    writer.close()
    _swap_in(staging, target)


def _swap_in(staging: Path, target: Path) -> None:
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
        target.rename(retired / target.name)
        staging.rename(target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(target)


def update_aggregates(experiment_dir: str | Path, only: tuple[str, str] | None = None) -> list[Path]:
    """(Re)write the aggregate run of every arm (or only the (preset, env dirname) one) of an experiment.

    Runs in any status contribute what they logged. Returns the aggregate run directories written."""
    experiment_dir = Path(experiment_dir)
    groups: dict[tuple[str, str], list[Path]] = {}
    for run_dir in find_runs(experiment_dir):
        preset, env = run_dir.parent.parent.name, run_dir.parent.name
        groups.setdefault((preset, env), []).append(run_dir)
    series_of = {
        key: [read_series(run) for run in runs] for key, runs in groups.items() if only in (None, key)
    }
    # The layout names every tag of the experiment, so every copy of it is the same.
    all_tags = sorted({tag for seeds in series_of.values() for series in seeds for tag in series})
    if only is not None:
        all_tags = sorted(set(all_tags) | _tags_of_other_aggregates(experiment_dir))
    written = []
    for (preset, env), seeds in series_of.items():
        target = experiment_dir / AGGREGATE_DIR / preset / env
        write_aggregate_run(target, aggregate_series(seeds), all_tags)
        written.append(target)
    return written


def _tags_of_other_aggregates(experiment_dir: Path) -> set[str]:
    """Base tags already aggregated for other arms, so a one-arm update keeps the shared layout complete."""
    tags: set[str] = set()
    for run in (experiment_dir / AGGREGATE_DIR).glob("*/*"):
        if run.is_dir():
            suffixes = tuple("/" + s for s in BAND_SUFFIXES)
            tags |= {t for t in read_series(run) if not t.endswith(suffixes)}
    return tags


def refresh_aggregates(directory: str | Path) -> list[Path]:
    """Rewrite an experiment's aggregates when a run has logged since they were written (or none exist).

    A no-op on a single run directory, and when every aggregate is newer than every run's files."""
    directory = Path(directory)
    runs = find_runs(directory)
    if not runs or (directory / RUN_JSON).is_file():
        return []
    newest_run = max(p.stat().st_mtime for run in runs for p in run.iterdir())
    aggregates = [p for p in (directory / AGGREGATE_DIR).glob("*/*/events.out.tfevents.*")]
    if aggregates and min(p.stat().st_mtime for p in aggregates) >= newest_run:
        return []
    return update_aggregates(directory)
