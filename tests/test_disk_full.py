"""A full disk ends a run `failed`, saying why and where, with nothing half-written left and everything
logged before it kept; the run then resumes once there is space again.

Two ways in: a real size-limited tmpfs as the logdir (needs root's `mount`, as on this project's machines
and CI; skipped elsewhere), and `ENOSPC` injected in process (always runs)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import dqnlab_cmd

import dqnlab
from dqnlab import checkpoint
from dqnlab.events import read_series

# One checkpoint of huber_relu (256-256, no replay) is about 1.3 MB: a 2 MB disk holds one, not two.
TRAIN = ["train", "huber_relu", "--steps", "3000", "--checkpoint-every", "1000", "--quiet"]
TRAIN += ["--set", "train.learning_starts=500", "--set", "train.eval_every=500"]


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); the injected ENOSPC tests run"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def leftovers(root: Path) -> list[str]:
    """Staging directories and temporary files: what a failed write must not leave behind."""
    return [str(p) for p in root.rglob(".*") if p.name.startswith((".staging-", ".run.json."))]


def test_a_full_disk_ends_the_run_failed_and_resume_continues_once_there_is_space(small_disk):
    out = dqnlab_cmd(*TRAIN, "--logdir", str(small_disk), "--name", "x")
    run = small_disk / "x" / "huber_relu" / "CartPole-v1" / "seed_0"
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed"
    assert info["error"].startswith("no space left on device at env step 2,000"), info["error"]
    assert info["error"] in out.stdout
    assert leftovers(small_disk) == []
    assert checkpoint.load(run).step == 1000  # the last whole checkpoint is intact
    logged = read_series(run)["eval/return"][0].tolist()
    assert logged[:3] == [500, 1000, 1500]  # everything logged before the disk filled is kept
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    again = dqnlab_cmd(*TRAIN, "--logdir", str(small_disk), "--name", "x", "--resume")
    assert again.returncode == 0, again.stderr
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and info["env_steps"] == 3000 and info["resumed_from"] == [1000]


def enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_enospc_inside_a_checkpoint_save_fails_the_run_and_leaves_no_staging(tmp_path, monkeypatch):
    real_write, calls = checkpoint.write_file, []

    def write_until_full(path, fill):
        calls.append(path)
        if len(calls) == 6:  # the second checkpoint's state.npz: arrays.npz is already written
            path.write_bytes(b"half")
            raise enospc(path)
        real_write(path, fill)

    monkeypatch.setattr(checkpoint, "write_file", write_until_full)
    cfg = dqnlab.load_preset("huber_relu", ["train.learning_starts=500", "train.eval_every=0"])
    res = dqnlab.train(cfg, steps=3000, logdir=tmp_path, name="x", checkpoint_every=1000)
    assert res.status == "failed"
    assert res.error.startswith("no space left on device at env step 2,000 (writing ")
    assert res.error.endswith("state.npz)") and ".staging-" in res.error
    assert leftovers(tmp_path) == []
    assert checkpoint.latest_step(res.run_dir) == 1000
    assert json.loads((res.run_dir / "run.json").read_text())["status"] == "failed"


def test_enospc_while_writing_events_fails_the_run_saying_so(tmp_path, monkeypatch):
    from dqnlab import summaries

    real_scalars = summaries.Summaries.scalars

    def scalars(self, step, values):
        if step >= 1200:
            raise enospc(self._writer.path)
        real_scalars(self, step, values)

    monkeypatch.setattr(summaries.Summaries, "scalars", scalars)
    cfg = dqnlab.load_preset("huber_relu", ["train.learning_starts=500", "train.eval_every=0"])
    res = dqnlab.train(cfg, steps=3000, logdir=tmp_path, name="x", checkpoint_every=1000)
    assert res.status == "failed" and res.error.startswith("no space left on device at env step 1,2")
    assert "events.out.tfevents" in res.error
    assert checkpoint.latest_step(res.run_dir) == 1000
