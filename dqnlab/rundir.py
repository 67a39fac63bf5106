"""The run directory (a contract, see DESIGN.md) and reading a run back from disk.

    <logdir>/<experiment>/<preset>/<env>/seed_<k>/   TensorBoard event files, run.json
    <logdir>/<experiment>/experiment.json           what was asked

run.json is rewritten atomically (temp file + rename) so a crash never leaves half a file. Event files are
read by `dqnlab.events`; this module never imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from dqnlab.envs import env_dirname

STATUSES = ("running", "done", "failed", "diverged", "interrupted")
RUN_JSON = "run.json"
EXPERIMENT_JSON = "experiment.json"


class RunDirExists(FileExistsError):
    """The run directory already holds a run; dqnlab never overwrites one silently."""


def run_dir_for(logdir: str | Path, experiment: str, preset: str, env_id: str, seed: int) -> Path:
    return Path(logdir) / experiment / preset / env_dirname(env_id) / f"seed_{seed}"


def default_experiment_name() -> str:
    """A timestamp, so that running the same command twice never collides with an earlier experiment."""
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def claim_run_dir(run_dir: Path) -> None:
    """Create `run_dir`, refusing one that already holds files."""
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirExists(
            f"run directory {run_dir} already exists; choose another --name or --logdir, or delete it"
        )
    run_dir.mkdir(parents=True, exist_ok=True)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for pkg in ("dqnlab", "tensorflow", "keras", "tensorboard", "gymnasium", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return versions


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a run's event files, as {tag: [(step, value), ...]} sorted by step."""
    from dqnlab.events import read_series

    series = read_series(run_dir)
    return {
        tag: list(zip(steps.tolist(), values.tolist(), strict=True))
        for tag, (steps, values) in series.items()
    }


@dataclass
class RunResult:
    """One run as recorded on disk: run.json plus lazily read TensorBoard scalars."""

    run_dir: Path
    status: str
    preset: str
    env: str
    seed: int
    env_steps: int
    wall_time_s: float
    final: dict[str, Any]
    error: str | None
    config: dict[str, Any]
    info: dict[str, Any] = field(repr=False, default_factory=dict)
    _scalars: dict[str, list[tuple[int, float]]] | None = field(default=None, repr=False)

    def scalars(self, tag: str) -> list[tuple[int, float]]:
        """The (env step, value) series of one tag; KeyError naming close tags if it was never logged."""
        series = self.all_scalars()
        if tag not in series:
            raise KeyError(f"tag {tag!r} not logged in {self.run_dir}; logged: {', '.join(sorted(series))}")
        return series[tag]

    def all_scalars(self) -> dict[str, list[tuple[int, float]]]:
        if self._scalars is None:
            self._scalars = read_scalars(self.run_dir)
        return self._scalars

    def tags(self) -> list[str]:
        return sorted(self.all_scalars())


def read_run(run_dir: str | Path) -> RunResult:
    """The RunResult of a run directory (one that holds run.json)."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a dqnlab run directory (no {RUN_JSON})")
    info = json.loads(path.read_text())
    return RunResult(
        run_dir=run_dir,
        status=info["status"],
        preset=info["preset"],
        env=info["env"],
        seed=info["seed"],
        env_steps=info.get("env_steps", 0),
        wall_time_s=info.get("wall_time_s", 0.0),
        final=info.get("final", {}),
        error=info.get("error"),
        config=info.get("config", {}),
        info=info,
    )


def find_runs(directory: str | Path) -> list[Path]:
    """Every run directory (holding run.json) at or below `directory`, skipping aggregates."""
    root = Path(directory)
    return sorted(p.parent for p in root.rglob(RUN_JSON) if "_aggregate" not in p.parts)
