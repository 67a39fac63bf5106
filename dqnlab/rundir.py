"""The run directory (a contract: docs/architecture.md) and reading a run back from disk.

    <logdir>/<experiment>/<preset>/<env>/seed_<k>/   TensorBoard event files, run.json
    <logdir>/<experiment>/experiment.json           what was asked

run.json is rewritten atomically (temp file + rename) so a crash never leaves half a file. Event files are
read by `dqnlab.events`; this module never imports TensorFlow.

Directories are claimed, not found: an experiment (`dqnlab ab`) and a run directory are created with
`os.mkdir`, which fails when another process got there first, and a run's run.json is created exclusively;
no directory dqnlab writes into below the logdir (experiment, preset, env, run, `checkpoints/`) may be a
symbolic link, or what a run writes would land wherever the link points. The logdir itself may be one.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import socket
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from dqnlab import checkpoint
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
    """`--logdir` and `--name` name a directory dqnlab can create, or an existing experiment it can write
    in, inside the logdir and with no symbolic link below it: a ConfigError naming the problem otherwise
    (before anything is written)."""
    parts = Path(name).parts
    if not name.strip() or Path(name).is_absolute() or ".." in parts or set(parts) <= {"."}:
        raise ConfigError(f"--name {name!r}: expected a plain name inside --logdir (no '..', not absolute)")
    path = Path(logdir) / name
    if problem := _path_length_problem(path):
        raise ConfigError(f"cannot create {_shorten(path)}: {problem}")
    for depth in range(1, len(parts) + 1):
        refuse_link(Path(logdir).joinpath(*parts[:depth]))
    if path.is_dir():  # an experiment to add runs to or resume: written in, never above
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"cannot write in {path}: it is not writable")
        refuse_links_in_layout(path)
        return
    problem = f"{path} is a file, not a directory" if path.exists() else creation_problem(path)
    if problem:
        raise ConfigError(f"cannot create {path}: {problem}")


# Bytes kept free below an experiment's path for what a run writes there:
# <preset>/<env>/seed_<k>/earlier_lives/<n>/checkpoints/.staging-<random>/<file>.
_ROOM_BELOW = 512


def _path_length_problem(path: Path) -> str | None:
    """Why the file system would refuse `path` for its length (a name over NAME_MAX bytes, or too little
    room left below it under PATH_MAX), or None."""
    anchor = next((p for p in [path.absolute(), *path.absolute().parents] if _exists(p)), Path("/"))
    name_max = _pathconf(anchor, "PC_NAME_MAX", 255)
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            shown = _shorten(part)
            return f"the name {shown} has {len(os.fsencode(part))} bytes; this file system allows {name_max}"
    path_max = _pathconf(anchor, "PC_PATH_MAX", 4096)
    length = len(os.fsencode(str(path.absolute())))
    if length + _ROOM_BELOW > path_max:
        return f"a path of {length} bytes leaves too little room for the runs below it (PATH_MAX {path_max})"
    return None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long to even look up
        return False


def _pathconf(path: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(path, name)
    except (OSError, ValueError):
        return default


def _shorten(text: str | Path, keep: int = 60) -> str:
    """A path or value as shown in a one-line message: a very long one cut in its middle."""
    text = str(text)
    return text if len(text) <= keep else f"{text[: keep // 2]}...{text[-keep // 2 :]}"


def refuse_link(path: Path) -> None:
    """A ConfigError when `path` is a symbolic link: a run directory (or one above it, below the logdir)
    that is a link would have everything the run writes land at its target."""
    if path.is_symlink():
        raise ConfigError(
            f"{path} is a symbolic link: dqnlab writes runs only into real directories below the logdir "
            "(the logdir itself may be a link)"
        )


# What dqnlab writes into inside a run directory (dqnlab.checkpoint's CHECKPOINTS, and earlier lives).
_RUN_SUBDIRS = ("checkpoints", EARLIER_LIVES)
_LAYOUT_DEPTH = 3  # <preset>/<env>/seed_<k> (and _aggregate/<preset>/<env>) below an experiment


def refuse_links_in_layout(exp_dir: Path) -> None:
    """Refuse (ConfigError) a symbolic link among the directories of an existing experiment: its preset,
    env and run directories and each run's `checkpoints/` and `earlier_lives/`."""
    level = [exp_dir]
    for _ in range(_LAYOUT_DEPTH):
        below = []
        for directory in level:
            for entry in _entries(directory):
                refuse_link(Path(entry.path))
                if entry.is_dir(follow_symlinks=False):
                    below.append(Path(entry.path))
        level = below
    for run_dir in level:
        for sub in _RUN_SUBDIRS:
            refuse_link(run_dir / sub)


def _entries(directory: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(directory) as it:
            return list(it)
    except OSError:  # unreadable: nothing dqnlab could have written there either
        return []


def claim_experiment_dir(exp_dir: Path, resume: bool = False) -> None:
    """Claim `exp_dir` for one `dqnlab ab`: created here, or RunDirExists when it already exists (two
    commands started with the same --name: the second is refused before it writes anything). `resume`
    continues an existing experiment instead, which must be a real directory."""
    if resume and exp_dir.is_dir():
        refuse_link(exp_dir)
        return
    try:
        exp_dir.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(exp_dir)
    except FileExistsError:
        refuse_link(exp_dir)
        raise RunDirExists(
            f"experiment {exp_dir} already exists; choose another --name, or --resume it"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot create {exp_dir}: {exc.strerror or exc}") from None


def claim_run_dir(run_dir: Path) -> None:
    """Claim `run_dir` (<logdir>/<experiment>/<preset>/<env>/seed_<k>) for one run: create it and the
    experiment, preset and env directories above it that are missing (none may be a symbolic link), and
    its run.json exclusively (a placeholder the trainer replaces). An existing run directory is taken
    only when it holds nothing but the earlier lives of a run started over. Of two processes claiming one
    run directory at once, one gets it and the other RunDirExists."""
    taken = RunDirExists(
        f"run directory {run_dir} already exists; choose another --name or --logdir, or delete it"
    )
    try:
        run_dir.parents[3].mkdir(parents=True, exist_ok=True)
        for directory in (run_dir.parents[2], run_dir.parents[1], run_dir.parent):
            _make_real_dir(directory)
        try:
            os.mkdir(run_dir)
        except FileExistsError:
            refuse_link(run_dir)
            if holds_a_run(run_dir):
                raise taken from None
        fd = os.open(run_dir / RUN_JSON, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:  # run.json: another process claimed it first
        raise taken from None
    except OSError as exc:
        raise ConfigError(f"cannot create {run_dir}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w") as f:
        f.write("{}\n")


def _make_real_dir(directory: Path) -> None:
    """`directory` exists afterwards as a real directory (created here if missing), or ConfigError."""
    try:
        os.mkdir(directory)
    except FileExistsError:
        refuse_link(directory)
        if not directory.is_dir():
            raise ConfigError(f"cannot create {directory}: it is a file, not a directory") from None


def holds_a_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds anything besides the earlier lives of a run started over."""
    return any(p.name != EARLIER_LIVES for p in run_dir.iterdir())


def check_run_dir_free(run_dir: Path) -> None:
    """Before a new run (not --resume): RunDirExists when `run_dir` already holds a run, ConfigError when
    it is a symbolic link. The claim itself (`claim_run_dir`) happens later, exclusively."""
    refuse_link(run_dir)
    if run_dir.is_dir() and holds_a_run(run_dir):
        raise RunDirExists(
            f"run directory {run_dir} already exists; choose another --name or --logdir, or delete it"
        )


def check_resumable(run_dir: Path, steps: int | None = None) -> None:
    """Before `--resume` writes in `run_dir`: not a symbolic link, and writable (with its checkpoints)
    unless it is finished (`done` and `diverged` runs are read, never written); a `done` one not asked for
    more than its steps (`check_not_extended`), an unfinished one not for fewer than its checkpoint's
    (`check_not_shortened`)."""
    refuse_link(run_dir)
    for sub in _RUN_SUBDIRS:
        refuse_link(run_dir / sub)
    if not run_dir.is_dir():
        return
    if (finished := _finished(run_dir)) is not None:
        if steps is not None:
            check_not_extended(finished, steps, run_dir)
        return
    if steps is not None:
        check_not_shortened(run_dir, steps)
    for directory in (run_dir, run_dir / _RUN_SUBDIRS[0]):
        if directory.is_dir() and not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigError(f"--resume: cannot write in {directory}: it is not writable")


def _finished(run_dir: Path) -> dict | None:
    """The run's run.json when it says the run is `done` or `diverged`, else None."""
    try:
        info = json.loads((run_dir / RUN_JSON).read_text())
        return info if info.get("status") in ("done", "diverged") else None
    except (OSError, ValueError, AttributeError):
        return None


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
    """Write `path` whole or not at all: a temporary file beside it, renamed over it. The file is created
    with the user's umask applied (0644 under umask 022), as TensorBoard's event files are;
    tempfile.mkstemp would make it 0600."""
    fd, tmp = _create_temp_beside(path)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _create_temp_beside(path: Path) -> tuple[int, Path]:
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # another writer's temporary name: draw again
            continue


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


# run.json's fields as read back: (required, accepted types). Tests and older runs leave some out.
_RUN_FIELDS: dict[str, tuple[bool, tuple[type, ...]]] = {
    "status": (True, (str,)),
    "preset": (True, (str,)),
    "env": (True, (str,)),
    "seed": (True, (int,)),
    "env_steps": (False, (int,)),
    "wall_time_s": (False, (int, float)),
    "final": (False, (dict,)),
    "error": (False, (str, type(None))),
    "config": (False, (dict,)),
    "divergence": (False, (dict,)),
}
_JSON_TYPE = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
              bool: "true or false", type(None): "null"}  # fmt: skip


def read_run(run_dir: str | Path) -> RunResult:
    """The RunResult of a run directory (one that holds run.json). FileNotFoundError without run.json; a
    ConfigError naming the file when it does not read, or is not what dqnlab writes (a field of the wrong
    type, a status dqnlab does not know)."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a dqnlab run directory (no {RUN_JSON})")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"{path}: unreadable ({type(exc).__name__}: {why})") from None
    if problem := run_json_problem(info):
        raise ConfigError(f"{path}: not a dqnlab run.json: {problem}")
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


def run_json_problem(info: Any) -> str | None:
    """What makes a parsed run.json unlike the ones dqnlab writes (one line), or None."""
    if not isinstance(info, dict):
        return f"expected an object, got {_JSON_TYPE.get(type(info), type(info).__name__)}"
    for key, (required, types) in _RUN_FIELDS.items():
        if key not in info:
            if required:
                return f"no {key!r}"
            continue
        value = info[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            expected = " or ".join(_JSON_TYPE[t] for t in types)
            got = _JSON_TYPE.get(type(value), type(value).__name__)
            return f"{key!r} is {got} ({_shorten(json.dumps(value), 40)}), expected {expected}"
    if info["status"] not in STATUSES:
        return f"'status' is {info['status']!r}, expected one of {', '.join(STATUSES)}"
    return None


def find_runs(directory: str | Path) -> list[Path]:
    """Every run directory (holding run.json) at or below `directory`, skipping aggregates and the earlier
    lives a run started over keeps (`<run>/earlier_lives/<n>/run.json` is a past of that run, not a run of
    its own: read as one, it became an arm `seed_<k>/earlier_lives` in the aggregates)."""
    root = Path(directory)
    skip = {"_aggregate", EARLIER_LIVES}
    return sorted(p.parent for p in root.rglob(RUN_JSON) if not skip & set(p.relative_to(root).parts))


def check_not_shortened(run_dir: Path, steps: int) -> None:
    """An unfinished run whose checkpoint lies past `steps` would end at the checkpoint, longer than asked
    and without the final evaluation a run of `steps` makes there: refused."""
    at = checkpoint.latest_step(run_dir)
    if at is not None and at > steps:
        raise ConfigError(
            f"--resume: {run_dir}'s checkpoint is at env step {at:,}, past --steps {steps:,}: resume it with "
            f"--steps {at:,} or more, or train a run of {steps:,} steps under a new --name"
        )


def check_not_extended(previous: dict, steps: int, run_dir: Path) -> None:
    """A `done` run is returned as it is: asked for more steps than it trained, that would silently be a
    shorter run than asked for, so it is refused (resume continues unfinished runs; it never extends one)."""
    done_at = previous.get("env_steps")
    if previous.get("status") == "done" and isinstance(done_at, int) and steps > done_at:
        raise ConfigError(
            f"--resume: {run_dir} is done at {done_at:,} env steps; --resume continues unfinished runs and "
            f"does not extend a finished one to {steps:,}: train it under a new --name"
        )
