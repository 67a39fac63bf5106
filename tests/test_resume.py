"""Nothing lost when a process dies: SIGKILL after a checkpoint, `--resume`, and the run ends exactly as an
uninterrupted one (deterministic mode, replay checkpointed); an A/B with a killed run completes on resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from test_cli import dqnlab_cmd

from dqnlab.events import event_files, iter_events, read_series

TRAIN = ["train", "huber_relu", "--steps", "20000", "--deterministic", "--checkpoint-every", "4000"]
TRAIN += ["--checkpoint-replay", "--quiet", "--set", "diagnostics.probe_every=256"]


def start(args: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dqnlab.cli", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_after_first_checkpoint(run: Path, proc: subprocess.Popen) -> int:
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "latest" / "step").is_file():
        assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint was written"
        time.sleep(0.05)
    os.kill(json.loads((run / "run.json").read_text())["pid"], signal.SIGKILL)
    proc.communicate(timeout=60)
    return int((run / "checkpoints" / "latest" / "step").read_text())


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


def test_sigkill_then_resume_ends_exactly_like_an_uninterrupted_run(tmp_path):
    assert dqnlab_cmd(*TRAIN, "--logdir", str(tmp_path), "--name", "whole").returncode == 0
    whole = next((tmp_path / "whole").rglob("seed_0"))
    proc = start([*TRAIN, "--logdir", str(tmp_path), "--name", "cut"])
    cut = tmp_path / "cut" / "huber_relu" / "CartPole-v1" / "seed_0"
    at = kill_after_first_checkpoint(cut, proc)
    info = json.loads((cut / "run.json").read_text())
    assert info["status"] == "running" and at < 20_000  # killed mid-run: nothing recorded it
    out = dqnlab_cmd(*TRAIN, "--logdir", str(tmp_path), "--name", "cut", "--resume")
    assert out.returncode == 0, out.stderr
    info = json.loads((cut / "run.json").read_text())
    assert info["status"] == "done" and info["env_steps"] == 20_000 and info["resumed_from"] == [at]
    # Every step exactly once, in TensorBoard's reading of the two event files.
    for tag, steps in points_after_purge(cut).items():
        assert len(steps) == len(set(steps)), f"{tag} has duplicated steps"
    assert_same_run(whole, cut)
    # The resumed life's rates span two of its own measured bursts: its first one writes no perf/ point.
    points = points_after_purge(cut)
    measured = [s for s in points["loss/td"] if s > at]
    assert measured[1:] == [s for s in points["perf/updates_per_s"] if s > at]


def assert_same_run(whole: Path, cut: Path) -> dict[str, list]:
    """The resumed run `cut` logged the same numbers as the uninterrupted `whole`, every tag but the
    wall-clock rates, and ended with the same weights, target and optimizer state, bit for bit. Returns
    the series compared."""
    same = {t: v.tolist() for t, (_, v) in read_series(whole).items() if not t.startswith("perf/")}
    again = {t: v.tolist() for t, (_, v) in read_series(cut).items() if not t.startswith("perf/")}
    assert same.keys() == again.keys() and same == again
    assert points_after_purge(cut)["loss/td"] == points_after_purge(whole)["loss/td"]
    with (
        np.load(whole / "checkpoints/latest/arrays.npz") as a,
        np.load(cut / "checkpoints/latest/arrays.npz") as b,
    ):
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    return same


def test_resume_completes_an_experiment_with_a_killed_run(tmp_path):
    args = [
        "ab",
        "huber_relu",
        "squared_relu",
        "--seeds",
        "1",
        "--steps",
        "8000",
        "--checkpoint-every",
        "2000",
    ]
    args += ["--logdir", str(tmp_path), "--name", "x", "--quiet"]
    proc = start(args)
    victim = tmp_path / "x" / "squared_relu" / "CartPole-v1" / "seed_0"
    deadline = time.monotonic() + 300
    while not (victim / "checkpoints" / "latest" / "step").is_file():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.kill(json.loads((victim / "run.json").read_text())["pid"], signal.SIGKILL)
    proc.communicate(timeout=300)  # the other run finishes; the A/B reports the killed one
    assert json.loads((victim / "run.json").read_text())["status"] == "failed"
    survivor = tmp_path / "x" / "huber_relu" / "CartPole-v1" / "seed_0" / "run.json"
    finished = json.loads(survivor.read_text())
    assert finished["status"] == "done"
    out = dqnlab_cmd(*args, "--resume")
    assert out.returncode == 0, out.stderr
    resumed = json.loads((victim / "run.json").read_text())
    assert resumed["status"] == "done" and resumed["env_steps"] == 8000 and resumed["resumed_from"]
    assert json.loads(survivor.read_text()) == finished  # the finished run is left as it was
    assert out.stdout.count("1/1 done") == 2  # the compare table: both arms complete
