"""Helpers shared by several test modules: the `dqnlab` command, killing and resuming runs, the hand-worked
learner batch, small recurrent configs. Imported by name (`from helpers import dqnlab_cmd`); conftest.py has
pytest rewrite its asserts as it does a test module's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dqnlab import checkpoint
from dqnlab.config import load_preset
from dqnlab.events import event_files, iter_events, read_series
from dqnlab.sequence_replay import SequenceBatch

if TYPE_CHECKING:
    from dqnlab.learner import Batch, Learner

# ---- small batched runs (tests/test_batched_runs.py, tests/test_batched_resume.py) ----------------------

BATCH_SMALL = (
    "network.hidden=[32,32]",
    "train.learning_starts=500",
    "train.train_every=50",
    "train.gradient_steps=4",
    "train.eval_every=1000",
    "train.eval_episodes=2",
    "diagnostics.every=4",
    "diagnostics.probe_every=40",
    "diagnostics.min_probes=2",
)


def run_info(run_dir: Path) -> dict:
    """A run directory's run.json."""
    return json.loads((run_dir / "run.json").read_text())


# ---- the command -----------------------------------------------------------------------------------------

FAST = [
    "--set",
    "train.learning_starts=100",
    "--set",
    "train.train_every=50",
    "--set",
    "train.gradient_steps=2",
    "--set",
    "train.eval_every=0",
    "--set",
    "train.eval_episodes=1",
    "--set",
    "diagnostics.every=2",
]


def dqnlab_cmd(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dqnlab.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def start(args: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dqnlab.cli", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ---- killing and resuming runs (tests/test_resume.py) ------------------------------------------------


def kill_after_first_checkpoint(run: Path, proc: subprocess.Popen) -> int:
    deadline = time.monotonic() + 300
    while checkpoint.latest(run) is None:
        assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint was written"
        time.sleep(0.05)
    os.kill(json.loads((run / "run.json").read_text())["pid"], signal.SIGKILL)
    proc.communicate(timeout=60)
    return checkpoint.latest_step(run)


def points_after_purge(run: Path) -> dict[str, list[int]]:
    """Steps of every scalar, applying TensorBoard's restart rule by hand: a SessionLog START at step s
    voids the points logged before it at steps >= s. Independent of dqnlab.events' own handling."""
    steps: dict[str, list[int]] = {}
    for path in event_files(run):
        for event in iter_events(path):
            if event.session_log.status == 1:  # START
                steps = {tag: [s for s in ss if s < event.step] for tag, ss in steps.items()}
            for value in event.summary.value:
                if value.tensor.dtype and not value.tensor.tensor_shape.dim:
                    steps.setdefault(value.tag, []).append(event.step)
    return steps


def assert_same_run(whole: Path, cut: Path) -> dict[str, list]:
    """The resumed run `cut` logged the same numbers as the uninterrupted `whole`, every tag but the
    wall-clock rates, and ended with the same weights, target and optimizer state, bit for bit. Returns
    the series compared."""
    same = {t: v.tolist() for t, (_, v) in read_series(whole).items() if not t.startswith("perf/")}
    again = {t: v.tolist() for t, (_, v) in read_series(cut).items() if not t.startswith("perf/")}
    assert same.keys() == again.keys() and same == again
    assert points_after_purge(cut)["loss/td"] == points_after_purge(whole)["loss/td"]
    with (
        np.load(checkpoint.latest(whole) / "arrays.npz") as a,
        np.load(checkpoint.latest(cut) / "arrays.npz") as b,
    ):
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    return same


# ---- the hand-worked batch of tests/test_learner.py (its docstring has the table) -------------------------

OBS = np.array([[1, 2], [0.5, 0.5], [1, 1], [2, 0]], np.float32)
ACTIONS = np.array([0, 1, 0, 0], np.int32)
REWARDS = np.array([4, 1, -1, 2], np.float32)
B = 4


def tiny_learner(loss_kind: str, **extra) -> Learner:
    from dqnlab.kinds import make_learner  # TensorFlow: only where a test builds a learner

    overrides = {
        "loss.kind": loss_kind,
        "network.hidden": [2],
        "optimizer.kind": "sgd",
        "optimizer.learning_rate": 0.1,
        "train.grad_clip_norm": 0.0,
        "train.batch_size": B,
        **extra,
    }
    learner = make_learner(load_preset("huber_relu", overrides), (2,), 2, seed=0)
    eye, zero = np.eye(2, dtype=np.float32), np.zeros(2, np.float32)
    learner.online.set_weights([eye, zero, eye, zero])
    learner.target.set_weights([eye, zero, eye, zero])
    return learner


def batch(k: int = 1) -> Batch:
    from dqnlab.learner import Batch

    stack = lambda x: np.repeat(x[None], k, axis=0)  # noqa: E731
    return Batch(stack(OBS), stack(ACTIONS), stack(REWARDS), stack(OBS), stack(np.zeros(B, np.float32)))


# ---- small recurrent learners (tests/test_recurrent.py) ---------------------------------------------------


def rnn_cfg(cell="simple", **overrides):
    base = {"recurrent.cell": cell, "recurrent.units": 5, "recurrent.pre_hidden": [6], "network.hidden": [8]}
    if cell != "simple":
        base["recurrent.activation"] = "tanh"
    return load_preset("rnn_exploding", {**base, **overrides})


def windows(n: int, t: int, seed: int = 0) -> SequenceBatch:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, t, 2)).astype(np.float32)
    ones = np.ones((n, t), np.float32)
    actions = rng.integers(0, 2, (n, t)).astype(np.int32)
    no_state = np.zeros((n, 0), np.float32)
    return SequenceBatch(obs, actions, ones, np.roll(obs, -1, axis=1), 0 * ones, ones, ones, no_state)
