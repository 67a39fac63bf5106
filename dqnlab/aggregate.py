"""Across-seed aggregate runs: `<experiment>/_aggregate/<preset>/<env>/`, one per arm.

Each scalar tag of the arm's seeds is written there three times: its across-seed mean under the tag itself
(so it lands on the same chart as the seeds), and the band as `<tag>/min` and `<tag>/max` (min-max rather
than a confidence interval: with 3-5 seeds it shows every seed and claims nothing). The experiment's
custom-scalars layout (`dqnlab.layout`) is stored in every aggregate run.

Steps are aligned two ways. Diagnostics and evaluations are logged on a schedule, so every seed logs them at
the same steps (a run that stopped early logs a prefix): the mean is taken per step over the seeds that
logged it. Episodes end at different steps in each seed: those tags are averaged into (at most) `EPISODE_BINS`
equal-width step bins first. Aggregates are derived data: rewritten as a whole whenever a run of the arm
finishes, and by `dqnlab compare` (best-effort: a failure is one warning line, never a failed compare).

Writes never leave a partial aggregate. Each is built in a staging directory,
`_aggregate/.staging-<pid>@<host>-<random>`, and swapped in by renames; a failure removes it, and each
refresh removes what a killed writer left (its process gone; an hour old when written on another host).
No reader of aggregates looks into dot-directories.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2

from dqnlab.eventfile import scalar_value, write_event_file
from dqnlab.events import EVENT_FILE_GLOB, Series, read_series_checked
from dqnlab.layout import BAND_SUFFIXES, build_layout, layout_summary
from dqnlab.rundir import RUN_JSON, find_runs

AGGREGATE_DIR = "_aggregate"
EPISODE_BINS = 100
SKIPPED_PREFIXES = ("perf/",)  # wall-clock rates: a band over machines' noise says nothing
STAGING_PREFIX = ".staging-"  # <experiment>/_aggregate/.staging-<pid>@<host>-<random>: a write in flight
STALE_STAGING_S = 3600.0  # a staging dir of another host (its process cannot be asked) is dead after this


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
    """Write one aggregate run into a staging directory and swap it in place of `target`
    (`<experiment>/_aggregate/<preset>/<env>`). On any failure the staging directory is removed and the old
    aggregate, if any, stays."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = new_staging_dir(target.parents[1])
    try:
        write_event_file(staging, _aggregate_events(aggregated, layout_tags))
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _aggregate_events(aggregated: dict, layout_tags: Sequence[str]) -> Iterator[event_pb2.Event]:
    wall_time = time.time()
    yield event_pb2.Event(wall_time=wall_time, step=0, summary=layout_summary(build_layout(layout_tags)))
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
        yield event_pb2.Event(wall_time=wall_time, step=step, summary=by_step[step])


def new_staging_dir(aggregate_root: Path) -> Path:
    """An empty directory in `aggregate_root` whose name says which process on which host made it."""
    prefix = f"{STAGING_PREFIX}{os.getpid()}@{socket.gethostname()}-"
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=aggregate_root))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the runs beside it are not
    except BaseException:
        staging.rmdir()
        raise
    return staging


def _swap_in(staging: Path, target: Path) -> None:
    """Put `staging` in place of `target`. POSIX cannot swap two directories in one step: the old one is
    moved aside first, and moved back should the second rename fail."""
    if not target.exists():
        staging.rename(target)
        return
    retired = new_staging_dir(target.parents[1])
    target.rename(retired)  # onto the empty directory: replaces it
    try:
        staging.rename(target)
    except BaseException:
        retired.rename(target)
        raise
    shutil.rmtree(retired, ignore_errors=True)  # what is left of it, the next refresh removes


def remove_stale_staging(aggregate_root: Path) -> list[Path]:
    """Remove the staging directories left in `aggregate_root` by writers that are gone (killed between
    staging and swap); the ones of live writers stay. Returns those removed."""
    if not aggregate_root.is_dir():
        return []
    stale = [p for p in aggregate_root.iterdir() if p.name.startswith(STAGING_PREFIX) and _writer_is_gone(p)]
    # Earlier versions staged beside the target, as `_aggregate/<preset>/.<env>-*`: old enough, dead too.
    stale += [p for p in aggregate_root.glob("*/.*") if _older_than(p, STALE_STAGING_S)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def _writer_is_gone(staging: Path) -> bool:
    """Whether the process named in a staging directory's name is gone (another host's: by the dir's age)."""
    pid, _, host_and_random = staging.name.removeprefix(STAGING_PREFIX).partition("@")
    host = host_and_random.rpartition("-")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return _older_than(staging, STALE_STAGING_S)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # alive under another user; not a pid
        return False
    return False


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.lstat().st_mtime > seconds
    except FileNotFoundError:  # removed meanwhile by its writer
        return False


def aggregate_run_dirs(experiment_dir: Path) -> list[Path]:
    """The aggregate runs `_aggregate/<preset>/<env>` of an experiment (never a staging dot-directory)."""
    return sorted(
        run
        for run in (experiment_dir / AGGREGATE_DIR).glob("*/*")
        if run.is_dir() and not any(part.startswith(".") for part in run.parts[-2:])
    )


def update_aggregates(experiment_dir: str | Path, only: tuple[str, str] | None = None) -> list[Path]:
    """(Re)write the aggregate run of every arm (or only the (preset, env dirname) one) of an experiment.

    Runs in any status contribute what they logged. Returns the aggregate run directories written."""
    experiment_dir = Path(experiment_dir)
    series_of = {
        key: [_read(run) for run in runs]
        for key, runs in _arms(experiment_dir).items()
        if only in (None, key)
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


def _arms(experiment_dir: Path) -> dict[tuple[str, str], list[Path]]:
    """(preset, env dirname) -> the run directories of that arm."""
    groups: dict[tuple[str, str], list[Path]] = {}
    for run_dir in find_runs(experiment_dir):
        groups.setdefault((run_dir.parent.parent.name, run_dir.parent.name), []).append(run_dir)
    return groups


def _read(run_dir: Path) -> Series:
    """A run's series; a damaged file contributes what precedes the damage (compare and doctor report it)."""
    return read_series_checked(run_dir)[0]


def _tags_of_other_aggregates(experiment_dir: Path) -> set[str]:
    """Base tags already aggregated for other arms, so a one-arm update keeps the shared layout complete."""
    suffixes = tuple("/" + s for s in BAND_SUFFIXES)
    return {t for run in aggregate_run_dirs(experiment_dir) for t in _read(run) if not t.endswith(suffixes)}


def refresh_aggregates(directory: str | Path, warn: Callable[[str], None] | None = None) -> list[Path]:
    """Rewrite an experiment's aggregates when a run has logged since they were written (or an arm has none).

    A no-op on a single run directory, and when every arm's aggregate is newer than every run's files.
    Best-effort: an OSError (a full disk, no permission) is one line to `warn` (default: stderr), and no
    partial aggregate is left; an arm not rewritten keeps its old one. Returns the aggregate runs written."""
    directory = Path(directory)
    try:
        runs = find_runs(directory)
        if not runs or (directory / RUN_JSON).is_file():
            return []
        remove_stale_staging(directory / AGGREGATE_DIR)
        if _aggregates_are_fresh(directory, runs):
            return []
        return update_aggregates(directory)
    except OSError as exc:
        (warn or _warn_on_stderr)(
            f"dqnlab: warning: could not write the aggregates in {directory / AGGREGATE_DIR} "
            f"({exc.strerror or exc}); compare's numbers do not use them, and the next compare tries again"
        )
        return []


def _aggregates_are_fresh(experiment_dir: Path, runs: list[Path]) -> bool:
    newest_run = max(p.stat().st_mtime for run in runs for p in run.iterdir())
    for preset, env in {(run.parent.parent.name, run.parent.name) for run in runs}:
        files = list((experiment_dir / AGGREGATE_DIR / preset / env).glob(EVENT_FILE_GLOB))
        if not files or min(p.stat().st_mtime for p in files) < newest_run:
            return False
    return True


def _warn_on_stderr(line: str) -> None:
    print(line, file=sys.stderr)
