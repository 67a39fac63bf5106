"""Nothing lost when a process dies: SIGKILL after a checkpoint, `--resume`, and the run ends exactly as an
uninterrupted one (deterministic mode, replay checkpointed); an A/B with a killed run completes on resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from helpers import assert_same_run, dqnlab_cmd, kill_after_first_checkpoint, points_after_purge, start

from dqnlab import checkpoint

TRAIN = ["train", "huber_relu", "--steps", "20000", "--deterministic", "--checkpoint-every", "4000"]
TRAIN += ["--checkpoint-replay", "--quiet", "--set", "diagnostics.probe_every=256"]


def test_sigkill_then_resume_ends_exactly_like_an_uninterrupted_run(tmp_path):
    # The uninterrupted run trains beside the killed one and its resume (both deterministic, one thread
    # each: a second core would otherwise sit idle).
    uninterrupted = start([*TRAIN, "--logdir", str(tmp_path), "--name", "whole"])
    try:
        proc = start([*TRAIN, "--logdir", str(tmp_path), "--name", "cut"])
        cut = tmp_path / "cut" / "huber_relu" / "CartPole-v1" / "seed_0"
        at = kill_after_first_checkpoint(cut, proc)
        info = json.loads((cut / "run.json").read_text())
        assert info["status"] == "running" and at < 20_000  # killed mid-run: nothing recorded it
        out = dqnlab_cmd(*TRAIN, "--logdir", str(tmp_path), "--name", "cut", "--resume")
        assert out.returncode == 0, out.stderr
        _, err = uninterrupted.communicate(timeout=600)
        assert uninterrupted.returncode == 0, err
    finally:
        uninterrupted.kill()
        uninterrupted.communicate(timeout=60)
    whole = next((tmp_path / "whole").rglob("seed_0"))
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
    while checkpoint.latest(victim) is None:
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


SHORT = ["--steps", "300", "--quiet", "--set", "train.learning_starts=100", "--set", "train.eval_every=0"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One short finished run, checkpointed (every 200 steps: its checkpoint is its last step's, 300),
    trained once for the module; `short_run` gives each test its own copy to kill, damage and resume."""
    logdir = tmp_path_factory.mktemp("finished")
    out = dqnlab_cmd("train", "huber_relu", *SHORT, "--logdir", str(logdir), "--name", "x",
                     "--checkpoint-every", "200")  # fmt: skip
    assert out.returncode == 0, out.stderr
    return logdir / "x"


def short_run(tmp_path, finished: Path) -> Path:
    """The experiment `x` of one finished 300-step run, as `train ... --checkpoint-every 200` left it."""
    shutil.copytree(finished, tmp_path / "x")
    return tmp_path / "x" / "huber_relu" / "CartPole-v1" / "seed_0"


def as_if_killed(run: Path, keep_checkpoint: bool) -> None:
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "running"}))
    if not keep_checkpoint:
        shutil.rmtree(run / "checkpoints")


def test_resume_without_a_checkpoint_starts_over_and_keeps_the_earlier_life(tmp_path, finished):
    run = short_run(tmp_path, finished)
    before = {p.name: p.read_bytes() for p in run.glob("events.out.tfevents.*")}
    as_if_killed(run, keep_checkpoint=False)
    out = dqnlab_cmd("train", "huber_relu", *SHORT, "--logdir", str(tmp_path), "--name", "x", "--resume")
    assert out.returncode == 0, out.stderr
    assert "had no checkpoint: started over" in out.stderr
    kept = run / "earlier_lives" / "1"
    assert {p.name: p.read_bytes() for p in kept.glob("events.out.tfevents.*")} == before
    assert json.loads((kept / "run.json").read_text())["status"] == "running"
    assert json.loads((run / "run.json").read_text())["status"] == "done"


def test_resume_refuses_another_config_and_damaged_checkpoints_changing_nothing(tmp_path, finished):
    run = short_run(tmp_path, finished)
    as_if_killed(run, keep_checkpoint=True)
    snapshot = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    resume = ["train", "huber_relu", *SHORT, "--logdir", str(tmp_path), "--name", "x", "--resume"]
    other = dqnlab_cmd(*resume, "--set", "network.hidden=[32,32]")
    assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr
    assert "was started with another config (network.hidden: [256, 256] -> [32, 32])" in other.stderr
    state = checkpoint.latest(run) / "state.json"
    flipped = bytearray(state.read_bytes())
    flipped[len(flipped) // 2] ^= 0x01
    state.write_bytes(bytes(flipped))
    snapshot[state] = state.read_bytes()
    damaged = dqnlab_cmd(*resume)
    assert damaged.returncode == 2 and damaged.stderr.count("\n") == 1, damaged.stderr
    assert "state.json does not match its SHA-256" in damaged.stderr
    assert "nothing was changed" in damaged.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == snapshot


def test_a_diverged_run_is_its_result_and_resume_leaves_it(tmp_path):
    diverge = ["--set", "optimizer.learning_rate=1e12", "--set", "loss.kind=squared"]
    args = ["train", "huber_relu", *SHORT, "--logdir", str(tmp_path), "--name", "x", *diverge]
    assert dqnlab_cmd(*args).returncode == 1
    run = tmp_path / "x" / "huber_relu" / "CartPole-v1" / "seed_0"
    snapshot = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert json.loads(snapshot[run / "run.json"])["status"] == "diverged"
    again = dqnlab_cmd(*args, "--resume")
    assert again.stdout.startswith("diverged:"), again.stdout + again.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == snapshot


def test_ab_refuses_an_existing_experiment_and_a_resume_that_asks_for_other_arms(tmp_path):
    base = ["--seeds", "1", *SHORT, "--logdir", str(tmp_path), "--name", "x"]
    assert dqnlab_cmd("ab", "huber_relu", "squared_relu", *base).returncode == 0
    started = (tmp_path / "x" / "experiment.json").read_bytes()
    again = dqnlab_cmd("ab", "clipped_delta_relu", "sigmoid_glorot", *base)
    assert again.returncode == 2 and "experiment" in again.stderr and "already exists" in again.stderr
    other = dqnlab_cmd("ab", "clipped_delta_relu", "huber_relu", *base, "--resume")
    assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr
    assert "was started with other presets" in other.stderr
    assert (tmp_path / "x" / "experiment.json").read_bytes() == started
    assert not (tmp_path / "x" / "clipped_delta_relu").exists()


def test_resume_refuses_a_run_that_is_still_training(tmp_path):
    args = ["train", "huber_relu", "--steps", "200000", "--quiet", "--logdir", str(tmp_path), "--name", "x"]
    proc = start(args)
    run = tmp_path / "x" / "huber_relu" / "CartPole-v1" / "seed_0"
    try:
        deadline = time.monotonic() + 120
        while not (run / "run.json").is_file():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        out = dqnlab_cmd(*args, "--resume")
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert f"is still training (process {proc.pid})" in out.stderr
    finally:
        proc.kill()
        proc.communicate(timeout=60)


def test_two_resumes_from_one_checkpoint_are_both_recorded(tmp_path, finished):
    """`resumed_from` comes from run.json, not from the checkpoint: a run killed twice before its next
    checkpoint was resumed twice from the same step, and says so. The second resume re-saves the same step,
    replacing the checkpoint in place."""
    run = short_run(tmp_path, finished)
    resume = ["train", "huber_relu", *SHORT, "--logdir", str(tmp_path), "--name", "x", "--resume"]
    for _ in range(2):
        as_if_killed(run, keep_checkpoint=True)
        assert dqnlab_cmd(*resume).returncode == 0
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and info["resumed_from"] == [300, 300]
    assert info["resumed_env"] == ["exact", "exact"]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000000000300"]
    assert checkpoint.load(run).step == 300


def test_resume_refuses_a_malformed_run_json_and_restarts_a_bare_claim(tmp_path, finished):
    run = short_run(tmp_path, finished)
    resume = ["train", "huber_relu", *SHORT, "--logdir", str(tmp_path), "--name", "x", "--resume"]
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "running", "config": "oops"}))
    out = dqnlab_cmd(*resume)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "is not a dqnlab run.json: 'config' is a string" in out.stderr
    # A process killed between claiming the run directory and its first write leaves run.json's placeholder:
    # the run never started, so a resume starts it (its directory's files set aside as an earlier life).
    shutil.rmtree(run)
    run.mkdir()
    (run / "run.json").write_text("{}\n")
    again = dqnlab_cmd(*resume)
    assert again.returncode == 0, again.stderr
    assert json.loads((run / "run.json").read_text())["status"] == "done"
