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
import socket
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from dqnlab.cliargs import creation_problem
from dqnlab.config import ConfigError
from dqnlab.envs import env_dirname

STATUSES = ("running", "done", "failed", "diverged", "interrupted")
RUN_JSON = "run.json"
EXPERIMENT_JSON = "experiment.json"
EARLIER_LIVES = "earlier_lives"  # a run started over by --resume keeps its earlier files here


class RunDirExists(FileExistsError):
    """The run directory already holds a run; dqnlab never overwrites one silently."""


def run_dir_for(logdir: str | Path, experiment: str, preset: str, env_id: str, seed: int) -> Path:
    return Path(logdir) / experiment / preset / env_dirname(env_id) / f"seed_{seed}"


def default_experiment_name() -> str:
    """A timestamp, so that running the same command twice never collides with an earlier experiment."""
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def check_experiment_path(logdir: str | Path, name: str) -> None:
    """`--logdir` and `--name` name a directory dqnlab can create, inside the logdir: a ConfigError naming
    the problem otherwise (before anything is written)."""
    parts = Path(name).parts
    if not name.strip() or Path(name).is_absolute() or ".." in parts or set(parts) <= {"."}:
        raise ConfigError(f"--name {name!r}: expected a plain name inside --logdir (no '..', not absolute)")
    path = Path(logdir) / name
    problem = f"{path} is a file, not a directory" if path.is_file() else creation_problem(path)
    if problem:
        raise ConfigError(f"cannot create {path}: {problem}")


def claim_run_dir(run_dir: Path) -> None:
    """Create `run_dir`, refusing one that already holds files (other than the earlier lives of a run
    started over)."""
    if run_dir.exists() and any(p.name != EARLIER_LIVES for p in run_dir.iterdir()):
        raise RunDirExists(
            f"run directory {run_dir} already exists; choose another --name or --logdir, or delete it"
        )
    run_dir.mkdir(parents=True, exist_ok=True)


def set_aside_earlier_life(run_dir: Path) -> Path:
    """Move what a run directory holds into `<run_dir>/earlier_lives/<n>/`, so a run started over loses
    nothing it logged (TensorBoard shows it as its own run; compare and doctor read only the new life)."""
    lives = run_dir / EARLIER_LIVES
    target = lives / str(len(list(lives.iterdir())) + 1 if lives.is_dir() else 1)
    target.mkdir(parents=True)
    for entry in list(run_dir.iterdir()):
        if entry != lives:
            entry.rename(target / entry.name)
    return target


def process_is_gone(info: dict[str, Any]) -> bool:
    """A run.json that says 'running' while the process it names is no longer alive on this host: the run
    was killed (SIGKILL, the OOM killer, a reboot) before it could say so."""
    return _process_alive(info) is False


def process_is_alive(info: dict[str, Any]) -> bool:
    """A run.json that says 'running' whose process is alive on this host (another process than this one):
    the run is training right now."""
    return _process_alive(info) is True and int(info["pid"]) != os.getpid()


def _process_alive(info: dict[str, Any]) -> bool | None:
    """Whether the process a 'running' run.json names is alive; None when that cannot be told (another
    status, another host, no pid)."""
    if info.get("status") != "running" or info.get("host") != socket.gethostname() or "pid" not in info:
        return None
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    except (ValueError, OverflowError, TypeError):  # not a pid
        return None
    return True


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
