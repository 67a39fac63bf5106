"""Checkpoints of a run, for `--resume`: `<run_dir>/checkpoints/latest/`.

    arrays.npz   online and target weights, optimizer state (Adam's moments and step), initial weights
    state.pkl    the loop's state (step, observation, recurrent state, episode so far, update counters,
                 probe set, exploration RNG), the training env (pickled with its RNG and time-limit counter),
                 run.json's counters, the live doctor's reported findings, and the replay buffer when asked
    step         the env step it was taken after (text)

Written into a fresh folder and swapped in, so a crash mid-write leaves the previous checkpoint whole. The
replay buffer is saved only with `--checkpoint-replay`: it is the bulk of a checkpoint (44 B per CartPole
transition, 4.4 MB at the presets' 100k capacity), and a run resumed without it refills replay from scratch,
so it continues but is no longer the same run bit for bit.
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHECKPOINTS = "checkpoints"
LATEST = "latest"


@dataclass
class Checkpoint:
    step: int
    arrays: dict[str, np.ndarray]
    state: dict  # loop, env, replay (or None), counters, doctor


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS / LATEST


def save(run_dir: Path, step: int, arrays: dict[str, np.ndarray], state: dict) -> Path:
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".new-", dir=root))
    np.savez(staging / "arrays.npz", **arrays)
    with open(staging / "state.pkl", "wb") as f:
        pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
    (staging / "step").write_text(f"{step}\n")
    target = root / LATEST
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=".old-", dir=root))
        target.rename(retired / LATEST)
        staging.rename(target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(target)
    return target


def load(run_dir: Path) -> Checkpoint | None:
    """The latest checkpoint of a run, or None when it has none."""
    path = checkpoint_dir(run_dir)
    if not (path / "step").is_file():
        return None
    with np.load(path / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    with open(path / "state.pkl", "rb") as f:
        state = pickle.load(f)  # noqa: S301 - our own file, in the user's own run directory
    return Checkpoint(int((path / "step").read_text()), arrays, state)
