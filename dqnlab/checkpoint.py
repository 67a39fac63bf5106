"""Checkpoints of a run, for `--resume`: data only, verified before use, replaced atomically.

    <run_dir>/checkpoints/step-<012d>/   one whole checkpoint, taken after env step <step>:
        arrays.npz      online and target weights, optimizer state, initial weights
        state.json      the loop's state (step, observation, recurrent state, episode so far, update
                        counters, probe set, exploration RNG), the training env's state (dqnlab.envstate),
                        run.json's counters, the live doctor's state, and the replay when asked: a tree of
                        JSON values whose arrays live in state.npz (dqnlab.plainstate)
        state.npz       those arrays
        MANIFEST.json   written last: format version, dqnlab version, step, and the SHA-256 and size of
                        every other file

Nothing in a checkpoint can execute code when loaded: JSON, and `.npz` read with `allow_pickle=False`. A
checkpoint is loaded only after its manifest matches every file, byte for byte, and the step it names
agrees with the directory's name and the state; anything else is a `CheckpointError` and nothing is
changed. (The manifest catches damage, not forgery: whoever can write the run directory can write a
consistent checkpoint, but it stays data.)

A save writes into a fresh `.staging-*` directory and renames it into place when whole, then removes the
older checkpoints; so a crash at any point leaves the previous checkpoint whole, and a load takes the
newest directory that has its manifest. Staging directories left by a killed process are removed by the
next save (and by a resume). The replay buffer is saved only with `--checkpoint-replay`: it is the bulk of
a checkpoint (44 B per CartPole transition, 4.4 MB at the presets' 100k capacity), and a run resumed
without it refills replay from scratch, so it continues but is no longer the same run bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dqnlab import plainstate

CHECKPOINTS = "checkpoints"
FORMAT = 2
MANIFEST = "MANIFEST.json"
ARRAYS, STATE_JSON, STATE_ARRAYS = "arrays.npz", "state.json", "state.npz"
STAGING_PREFIX = ".staging-"
_NAME = re.compile(r"step-(\d{12})")


class CheckpointError(ValueError):
    """A checkpoint that is damaged, tampered with, of another format, or does not fit this run."""


@dataclass
class Checkpoint:
    step: int
    arrays: dict[str, np.ndarray]
    state: dict  # loop, env, replay (or None), run, doctor: plain data (dqnlab.plainstate)
    path: Path


def checkpoints_root(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def save(
    run_dir: Path, step: int, arrays: dict[str, np.ndarray], state: dict[str, Any], prune: bool = True
) -> Path:
    """Write a whole checkpoint of env step `step` and make it the newest; returns its directory. With
    `prune` false the older checkpoints stay (a batch prunes them once every member has its new one:
    `prune_before`)."""
    root = checkpoints_root(run_dir)
    if root.is_symlink():
        raise CheckpointError(f"{root} is a symbolic link; dqnlab writes checkpoints only inside the run")
    root.mkdir(exist_ok=True)
    remove_staging(run_dir)
    state_arrays: dict[str, np.ndarray] = {}
    tree = plainstate.encode(state, state_arrays)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
    try:
        write_file(staging / ARRAYS, lambda f: np.savez(f, **arrays))
        write_file(staging / STATE_ARRAYS, lambda f: np.savez(f, **state_arrays))
        write_file(staging / STATE_JSON, lambda f: f.write(json.dumps(tree).encode()))
        files = {p.name: file_digest(p) for p in sorted(staging.iterdir())}
        manifest = {"format": FORMAT, "dqnlab": _version(), "step": int(step), "files": files}
        write_file(staging / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
        target = root / f"step-{int(step):012d}"
        if target.exists():  # the same step saved again: set the older copy aside first
            os.rename(target, Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root)) / "old")
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_dir(root)
    if prune:
        for older in _complete(root):
            if older != target:
                shutil.rmtree(older, ignore_errors=True)
    remove_staging(run_dir)
    return target


def prune_before(run_dir: Path, step: int) -> None:
    """Remove the run's whole checkpoints older than step `step` (a batch's, once all members saved it)."""
    for older in _complete(checkpoints_root(run_dir)):
        if _step_of(older) < step:
            shutil.rmtree(older, ignore_errors=True)


def steps(run_dir: Path) -> list[int]:
    """The steps of the run's whole checkpoints (those with a manifest), newest first."""
    return [_step_of(p) for p in _complete(checkpoints_root(run_dir))]


def common_step(run_dirs: list[Path]) -> int | None:
    """The newest step of which every run in `run_dirs` (a batch's running members) has a whole
    checkpoint, its manifest verified for each; None when one of them has none (the batch was stopped before
    or during its first save: it starts over). A CheckpointError when each has checkpoints but there is
    no step all of them have, or one of them is damaged."""
    have = {Path(d): steps(d) for d in run_dirs}
    if not all(have.values()):
        return None
    common = set.intersection(*(set(found) for found in have.values()))
    if not common:
        shown = "; ".join(
            f"{'/'.join(d.parts[-3:])}: {', '.join(f'{s:,}' for s in found) or 'none'}"
            for d, found in have.items()
        )
        raise CheckpointError(f"the batch's running members have no checkpoint step in common ({shown})")
    step = max(common)
    for d in have:
        _verified_manifest(checkpoints_root(d) / f"step-{step:012d}")
    return step


def _step_of(path: Path) -> int:
    return int(_NAME.fullmatch(path.name).group(1))


def latest(run_dir: Path) -> Path | None:
    """The newest whole checkpoint directory of a run (the newest one with its manifest), or None."""
    found = _complete(checkpoints_root(run_dir))
    return found[0] if found else None


def latest_step(run_dir: Path) -> int | None:
    path = latest(run_dir)
    return None if path is None else int(_NAME.fullmatch(path.name).group(1))


def load(run_dir: Path, step: int | None = None) -> Checkpoint | None:
    """The newest whole checkpoint of a run (or the one of `step`), verified; None when it has none. A
    CheckpointError says why one cannot be used."""
    root = checkpoints_root(run_dir)
    if root.is_symlink():
        raise CheckpointError(f"{root} is a symbolic link; dqnlab reads checkpoints only inside the run")
    if (root / "latest" / "state.pkl").exists():
        raise CheckpointError(
            f"{root / 'latest'} is a checkpoint of dqnlab's first format (a pickle, which can run code when "
            "loaded): it is not read; start the run again under a new --name"
        )
    path = latest(run_dir) if step is None else root / f"step-{int(step):012d}"
    if path is None:
        return None
    if not (path / MANIFEST).is_file():
        raise CheckpointError(f"{path}: no whole checkpoint there (its {MANIFEST} is missing)")
    manifest = _verified_manifest(path)
    step = manifest["step"]
    arrays, state_arrays = _read_arrays(path / ARRAYS), _read_arrays(path / STATE_ARRAYS)
    try:
        state = plainstate.decode(json.loads((path / STATE_JSON).read_bytes()), state_arrays)
    except (ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: {STATE_JSON} is not a dqnlab checkpoint state ({exc})") from None
    saved_step = state.get("loop", {}).get("step") if isinstance(state, dict) else None
    if saved_step != step:
        raise CheckpointError(f"{path}: the manifest says step {step}, the state says {saved_step!r}")
    return Checkpoint(step, arrays, state, path)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an `.npz`, never unpickling one (an object array is refused)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: not plain arrays ({exc})") from None


def remove_staging(run_dir: Path) -> None:
    """Remove what killed saves left behind (staging directories; they can be as large as the replay)."""
    root = checkpoints_root(run_dir)
    if root.is_dir() and not root.is_symlink():
        for entry in root.iterdir():
            if entry.name.startswith(STAGING_PREFIX):
                shutil.rmtree(entry, ignore_errors=True)


def check_arrays_fit(saved: dict[str, np.ndarray], fresh: dict[str, np.ndarray], where: Path) -> None:
    """The checkpoint's arrays are the ones this run's learner has: the same names, shapes and dtypes."""
    if saved.keys() != fresh.keys():
        extra, missing = sorted(saved.keys() - fresh.keys()), sorted(fresh.keys() - saved.keys())
        raise CheckpointError(f"{where}: arrays do not fit this network (extra {extra}, missing {missing})")
    for key, array in fresh.items():
        got = saved[key]
        if got.shape != array.shape or got.dtype != array.dtype:
            raise CheckpointError(
                f"{where}: {key} is {got.dtype}{list(got.shape)}, this network's is "
                f"{array.dtype}{list(array.shape)}"
            )


def _complete(root: Path) -> list[Path]:
    """Checkpoint directories with a manifest, newest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.fullmatch(p.name) and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: p.name, reverse=True)


def _verified_manifest(path: Path) -> dict:
    """The manifest of `path`, after checking it names exactly the files there with their SHA-256."""
    try:
        manifest = json.loads((path / MANIFEST).read_bytes())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path / MANIFEST} is unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise CheckpointError(f"{path}: checkpoint format {found!r}, this dqnlab reads format {FORMAT}")
    files = manifest.get("files")
    present = {p.name for p in path.iterdir()} - {MANIFEST}
    if not isinstance(files, dict) or set(files) != present or present != {ARRAYS, STATE_JSON, STATE_ARRAYS}:
        raise CheckpointError(f"{path}: the files there are not the ones its manifest lists")
    for name, expected in files.items():
        if file_digest(path / name) != expected:
            raise CheckpointError(
                f"{path / name} does not match its SHA-256 in {MANIFEST}: damaged or changed"
            )
    step = manifest.get("step")
    if not isinstance(step, int) or f"step-{step:012d}" != path.name:
        raise CheckpointError(f"{path}: its manifest names step {step!r}")
    return manifest


def file_digest(path: Path) -> dict[str, Any]:
    """A file's manifest entry: its SHA-256 and size."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return {"sha256": sha.hexdigest(), "bytes": path.stat().st_size}


def write_file(path: Path, fill) -> None:
    """Create `path`, fill it, and flush it to the disk before anything names it."""
    with open(path, "xb") as f:
        fill(f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("dqnlab")
    except metadata.PackageNotFoundError:
        return "unknown"
