"""Checkpoints and `--resume` of a batch (`dqnlab.batched_trainer`): each member checkpoints in its own run
directory in the unbatched format, and a batch stopped after a checkpoint resumes as that batch and ends
exactly (every member's event-file series and final weights, target and Adam state, bit for bit) as the
uninterrupted batch; a kill between two members' saves still resumes; an ended member stays ended; a
damaged member checkpoint is refused with nothing changed."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import BATCH_SMALL, assert_same_run, dqnlab_cmd, run_info, start

from dqnlab import checkpoint
from dqnlab.batched_trainer import train_batch
from dqnlab.config import ConfigError
from dqnlab.events import read_series
from dqnlab.runspec import RunSpec
from dqnlab.trainer import train_run

ENV = "CartPole-v1"
SMALL = (*BATCH_SMALL, "train.target_update_every=300")
STEPS, EVERY = 3_000, 1_000


def batch(logdir, name: str, *, resume: bool = False, diverging: bool = False, replay=True) -> list[RunSpec]:
    """huber_relu seeds 0 and 1 and squared_relu seed 0 (or a learning rate of 1e12, which diverges)."""
    last = ("huber_relu", 2, ("optimizer.learning_rate=1e12",)) if diverging else ("squared_relu", 0, ())
    runs = [("huber_relu", 0, ()), ("huber_relu", 1, ()), last]
    return [
        RunSpec(p, (*SMALL, *extra), ENV, seed, STEPS, str(logdir), name, resume=resume,
                checkpoint_every=EVERY, checkpoint_replay=replay, name=p + ("@lr" if extra else ""))
        for p, seed, extra in runs
    ]  # fmt: skip


def run_dirs(specs: list[RunSpec]) -> list[Path]:
    return [Path(s.logdir) / s.experiment / s.arm / ENV / f"seed_{s.seed}" for s in specs]


info = run_info


def stop_at_save(monkeypatch, number: int) -> None:
    """A Ctrl-C at the `number`-th member save of the batch (1-based), before it writes anything."""
    save, calls = checkpoint.save, [0]

    def counted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == number:
            raise KeyboardInterrupt
        return save(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", counted)


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> list[Path]:
    """The uninterrupted batch, once for the module."""
    logdir = tmp_path_factory.mktemp("whole")
    specs = batch(logdir, "whole")
    assert [r.status for r in train_batch(specs)] == ["done"] * 3
    return run_dirs(specs)


def test_a_member_checkpoints_in_the_unbatched_format(whole):
    run_dir = whole[1]
    ckpt = checkpoint.load(run_dir)
    assert ckpt.step == STEPS and checkpoint.steps(run_dir) == [STEPS]  # the older ones pruned
    alone = train_run(batch(run_dir.parents[3], "alone")[1])
    fresh = checkpoint.load(alone.run_dir)
    assert ckpt.arrays.keys() == fresh.arrays.keys()
    for key, array in fresh.arrays.items():
        assert ckpt.arrays[key].shape == array.shape and ckpt.arrays[key].dtype == array.dtype, key
    np.testing.assert_array_equal(ckpt.arrays["initial_flat"], fresh.arrays["initial_flat"])
    assert ckpt.arrays["optimizer/0"] == fresh.arrays["optimizer/0"] == info(run_dir)["updates"]
    for key in ("optimizer/1", "optimizer/2"):  # beta_1^t, beta_2^t: the same t float32 products
        np.testing.assert_array_equal(ckpt.arrays[key], fresh.arrays[key])
    assert ckpt.state.keys() == fresh.state.keys() and ckpt.state["loop"].keys() == fresh.state["loop"].keys()
    assert ckpt.state["replay"] is not None and ckpt.state["env"] is not None
    assert info(run_dir)["batched"]["lacks"] == []


def test_a_batch_stopped_after_a_checkpoint_resumes_exactly(whole, tmp_path, monkeypatch):
    specs = batch(tmp_path, "cut")
    stop_at_save(monkeypatch, 4)  # the second checkpoint's first save: every member has step 1,000
    with pytest.raises(KeyboardInterrupt):
        train_batch(specs)
    monkeypatch.undo()
    dirs = run_dirs(specs)
    assert [info(d)["status"] for d in dirs] == ["interrupted"] * 3
    assert [checkpoint.steps(d) for d in dirs] == [[EVERY]] * 3
    results = train_batch(batch(tmp_path, "cut", resume=True))
    assert [r.status for r in results] == ["done"] * 3
    for cut, done in zip(dirs, whole, strict=True):
        assert info(cut)["resumed_from"] == [EVERY] and info(cut)["resumed_env"] == ["exact"]
        assert info(cut)["env_steps"] == STEPS and info(cut)["updates"] == info(done)["updates"]
        assert_same_run(done, cut)  # every series but perf/*, and the final weights, target and Adam state


def test_a_kill_between_two_members_saves_resumes_from_the_step_all_have(whole, tmp_path, monkeypatch):
    specs = batch(tmp_path, "cut")
    stop_at_save(monkeypatch, 5)  # the second checkpoint: member 0 saved step 2,000, member 1 not
    with pytest.raises(KeyboardInterrupt):
        train_batch(specs)
    monkeypatch.undo()
    dirs = run_dirs(specs)
    assert [checkpoint.steps(d) for d in dirs] == [[2 * EVERY, EVERY], [EVERY], [EVERY]]
    train_batch(batch(tmp_path, "cut", resume=True))
    for cut, done in zip(dirs, whole, strict=True):
        assert info(cut)["resumed_from"] == [EVERY] and info(cut)["status"] == "done"
        assert_same_run(done, cut)


def test_a_kill_during_the_first_save_starts_the_batch_over(whole, tmp_path, monkeypatch):
    """Member 0 saved the first checkpoint, member 1 had not: there is no step every member can go on from,
    so the batch starts over (what it logged kept in earlier_lives/), and ends as the uninterrupted one."""
    specs = batch(tmp_path, "cut")
    stop_at_save(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train_batch(specs)
    monkeypatch.undo()
    dirs = run_dirs(specs)
    assert [checkpoint.steps(d) for d in dirs] == [[EVERY], [], []]
    train_batch(batch(tmp_path, "cut", resume=True))
    for cut, done in zip(dirs, whole, strict=True):
        assert info(cut)["status"] == "done" and "resumed_from" not in info(cut)
        assert (cut / "earlier_lives" / "1" / "run.json").is_file()
        assert_same_run(done, cut)


def test_a_diverged_member_stays_diverged_and_the_others_still_match(tmp_path, monkeypatch):
    specs = batch(tmp_path, "whole", diverging=True)
    assert [r.status for r in train_batch(specs)] == ["done", "done", "diverged"]
    cut = batch(tmp_path, "cut", diverging=True)
    stop_at_save(monkeypatch, 3)  # the second checkpoint's first save (the diverged member saves none)
    with pytest.raises(KeyboardInterrupt):
        train_batch(cut)
    monkeypatch.undo()
    dirs = run_dirs(cut)
    assert [info(d)["status"] for d in dirs] == ["interrupted", "interrupted", "diverged"]
    diverged = (dirs[2] / "run.json").read_bytes()
    results = train_batch(batch(tmp_path, "cut", resume=True, diverging=True))
    assert [r.status for r in results] == ["done", "done", "diverged"]
    assert (dirs[2] / "run.json").read_bytes() == diverged  # left as it was
    for done, again in zip(run_dirs(specs)[:2], dirs[:2], strict=True):
        assert info(again)["resumed_from"] == [EVERY]
        assert_same_run(done, again)


def test_a_damaged_member_checkpoint_is_refused_and_nothing_changes(tmp_path, monkeypatch):
    specs = batch(tmp_path, "cut", replay=False)
    stop_at_save(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        train_batch(specs)
    monkeypatch.undo()
    dirs = run_dirs(specs)
    arrays = checkpoint.latest(dirs[1]) / "arrays.npz"
    data = bytearray(arrays.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arrays.write_bytes(bytes(data))

    def snapshot() -> dict:
        return {p: p.read_bytes() for d in dirs for p in sorted(d.rglob("*")) if p.is_file()}

    before = snapshot()
    with pytest.raises(ConfigError, match=r"arrays.npz does not match its SHA-256.*nothing was changed"):
        train_batch(batch(tmp_path, "cut", resume=True, replay=False))
    assert snapshot() == before


def test_another_grouping_is_refused_and_a_member_resumes_alone(tmp_path, monkeypatch):
    """A member resumed in another batch than its own is refused (one line, nothing changed); resumed
    alone (`--batch-runs off`), the unbatched trainer continues it from its checkpoint."""
    specs = batch(tmp_path, "cut")
    stop_at_save(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        train_batch(specs)
    monkeypatch.undo()
    again = batch(tmp_path, "cut", resume=True)
    with pytest.raises(
        ConfigError, match="not in this batch of 2 .* resume with the --batch-runs and --workers"
    ):
        train_batch(again[:2])
    alone = train_run(again[2])
    assert alone.status == "done" and info(alone.run_dir)["resumed_from"] == [EVERY]
    assert alone.env_steps == STEPS


def test_without_replay_a_resumed_batch_refills_before_learning(tmp_path, monkeypatch):
    """Without --checkpoint-replay each member's replay starts empty: the batch acts `learning_starts`
    steps after the checkpoint before it learns again (as the unbatched resume does), then finishes."""
    specs = batch(tmp_path, "cut", replay=False)
    stop_at_save(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        train_batch(specs)
    monkeypatch.undo()
    assert [r.status for r in train_batch(batch(tmp_path, "cut", resume=True, replay=False))] == ["done"] * 3
    steps, _ = read_series(run_dirs(specs)[0])["loss/td"]
    assert not any(EVERY < s <= EVERY + 500 for s in steps) and steps.max() > EVERY + 500


@pytest.mark.slow  # ~16 s, the longest end-to-end check of the default run; CI runs it with `-m slow`
def test_cli_sigkill_of_a_batch_then_resume_matches_and_regroups(tmp_path):
    """`dqnlab ab --batch-runs` killed (SIGKILL) after every member's first checkpoint; `--resume` with a
    damaged member checkpoint is one line, exit 2; once repaired, `--resume` with another --batch-runs
    regroups by run.json's `batched.members` and ends as the uninterrupted batch."""
    args = ["ab", "huber_relu", "squared_relu", "--seeds", "2", "--steps", str(STEPS), "--quiet",
            "--checkpoint-every", str(EVERY), "--checkpoint-replay", "--workers", "1"]  # fmt: skip
    args += [arg for o in SMALL for arg in ("--set", o)]
    assert (
        dqnlab_cmd(*args, "--batch-runs", "4", "--logdir", str(tmp_path), "--name", "whole").returncode == 0
    )
    proc = start([*args, "--batch-runs", "4", "--logdir", str(tmp_path), "--name", "cut"])
    cut = sorted((tmp_path / "cut").glob(f"*/{ENV}/seed_*"), key=str)
    deadline = time.monotonic() + 300
    while len(cut) < 4 or not all(checkpoint.latest(d) for d in cut):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
        cut = sorted((tmp_path / "cut").glob(f"*/{ENV}/seed_*"), key=str)
    os.kill(info(cut[0])["pid"], signal.SIGKILL)
    proc.communicate(timeout=300)
    assert {info(d)["status"] for d in cut} == {"failed"}  # the runner's record of the killed process
    resume = [*args, "--batch-runs", "2", "--logdir", str(tmp_path), "--name", "cut", "--resume"]
    arrays = checkpoint.latest(cut[1]) / "arrays.npz"
    kept = arrays.read_bytes()
    arrays.write_bytes(kept[:100] + bytes([kept[100] ^ 0xFF]) + kept[101:])  # damaged: refused, exit 2
    out = dqnlab_cmd(*resume)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "does not match its SHA-256" in out.stderr and "nothing was changed" in out.stderr
    arrays.write_bytes(kept)
    out = dqnlab_cmd(*resume)
    assert out.returncode == 0, out.stderr
    experiment = json.loads((tmp_path / "cut" / "experiment.json").read_text())
    assert experiment["batches"] == [[0, 1, 2, 3]]  # the recorded batch, not --batch-runs 2's two
    for d in cut:
        assert info(d)["status"] == "done" and info(d)["resumed_from"]
        assert_same_run(tmp_path / "whole" / d.relative_to(tmp_path / "cut"), d)
