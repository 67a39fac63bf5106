"""Damaged files never crash and never hide: event files with a torn or zero-filled tail are read up to the
damage, a `done` run whose events end early is flagged by doctor and compare, and a failed aggregate
refresh (a full disk, a killed process) is one warning and leaves nothing behind.

Runs are synthetic: run.json plus an event file written with dqnlab's own writer, one `eval/return` point
per event. The byte offset where each record ends is taken from the file's size after each write, not from
the reader under test."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tensorboard.compat.proto import event_pb2, summary_pb2

from dqnlab import aggregate
from dqnlab.aggregate import AGGREGATE_DIR, STAGING_PREFIX
from dqnlab.cli import main
from dqnlab.compare import compare
from dqnlab.doctor import examine
from dqnlab.eventfile import EventFile, scalar_value
from dqnlab.events import read_series, read_series_checked
from dqnlab.rundir import write_json_atomic

STEPS = 100
EVAL_STEPS = list(range(10, STEPS + 1, 10))  # a done run of 100 env steps evaluates at 10, 20, ..., 100


def write_run(
    run_dir: Path, eval_steps=EVAL_STEPS, status="done", preset="arm_a", seed=0, scale=1.0
) -> list[int]:
    """A run whose event file holds one `eval/return` point (value = scale * step / 10) per step of
    `eval_steps`. Returns the byte offset at which each point's record ends."""
    run_dir.mkdir(parents=True)
    ends = []
    with EventFile(run_dir) as f:
        for step in eval_steps:
            summary = summary_pb2.Summary(value=[scalar_value("eval/return", scale * step / 10)])
            f.add_event(event_pb2.Event(wall_time=1.0, step=step, summary=summary))
            f.flush()
            ends.append(f.path.stat().st_size)
    info = {"preset": preset, "env": "CartPole-v1", "seed": seed, "status": status, "env_steps": STEPS}
    write_json_atomic(run_dir / "run.json", {**info, "final": {}})
    return ends


def event_file(run_dir: Path) -> Path:
    (path,) = run_dir.glob("events.out.tfevents.*")
    return path


def eval_points(series) -> list[tuple[int, float]]:
    steps, values = series["eval/return"]
    return list(zip(steps.tolist(), values.tolist(), strict=True))


def expected(n: int) -> list[tuple[int, float]]:
    return [(step, step / 10) for step in EVAL_STEPS[:n]]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dqnlab.cli", *args], capture_output=True, text=True)


def dot_entries(directory: Path) -> list[Path]:
    return [
        p
        for p in directory.rglob("*")
        if any(part.startswith(".") for part in p.relative_to(directory).parts)
    ]


@pytest.fixture
def run(tmp_path) -> tuple[Path, list[int]]:
    run_dir = tmp_path / "exp" / "arm_a" / "CartPole-v1" / "seed_0"
    return run_dir, write_run(run_dir)


# ---- reading ---------------------------------------------------------------------------------------------


def test_a_file_cut_mid_record_is_read_up_to_the_cut(run):
    run_dir, ends = run
    path = event_file(run_dir)
    cut = (ends[5] + ends[6]) // 2  # inside the record of the 7th point
    path.write_bytes(path.read_bytes()[:cut])
    series, damage = read_series_checked(run_dir)
    assert eval_points(series) == expected(6) and damage == []  # a crash's tear, not damage
    (compared,) = compare(run_dir).envs[0].arms[0].runs
    assert eval_points(compared.series) == expected(6)
    (diagnosed,) = examine(run_dir).runs
    (finding,) = diagnosed.findings
    assert finding.rule == "events_end_early"
    assert finding.evidence["eval_points"] == 6 and finding.evidence["last_eval_step"] == 60


def test_zero_bytes_appended_lose_no_point(run):
    run_dir, _ = run
    path = event_file(run_dir)
    path.write_bytes(path.read_bytes() + bytes(20))  # a power loss: the file grew, its data never landed
    series, damage = read_series_checked(run_dir)
    assert eval_points(series) == expected(10) and damage == []
    result = compare(run_dir)
    assert result.problems == [] and result.envs[0].arms[0].final.n == 1
    assert examine(run_dir).healthy


@pytest.mark.parametrize("into_last_record", [5, 12 + 5], ids=["header", "data"])
def test_zero_fill_from_inside_the_last_record_is_a_torn_tail(tmp_path, into_last_record):
    run_dir = tmp_path / "seed_0"
    ends = write_run(run_dir)
    path = event_file(run_dir)
    data = path.read_bytes()
    zero_from = ends[8] + into_last_record  # the last record is cut by the zeros a power loss leaves
    path.write_bytes(data[:zero_from] + bytes(len(data) - zero_from))
    series, damage = read_series_checked(run_dir)
    assert eval_points(series) == expected(9) and damage == []
    assert [f.rule for f in examine(run_dir).runs[0].findings] == ["events_end_early"]


def test_a_crc_mismatch_mid_file_stops_the_read_there_and_is_reported(run, caplog):
    run_dir, ends = run
    path = event_file(run_dir)
    data = bytearray(path.read_bytes())
    data[ends[3] + 12 + 2] ^= 0xFF  # a byte of the 5th point's event, as a bad disk would flip it
    path.write_bytes(bytes(data))
    series, (damage,) = read_series_checked(run_dir)
    assert eval_points(series) == expected(4)
    assert damage.offset == ends[3] and damage.records_read == 5 and damage.last_step == 40  # + file_version
    assert "damaged event record at byte" in str(damage) and "its data fails its CRC" in str(damage)
    with caplog.at_level("WARNING", logger="dqnlab.events"):
        assert eval_points(read_series(run_dir)) == expected(4)
    assert len(caplog.records) == 1 and "damaged event record" in caplog.records[0].getMessage()
    result = compare(run_dir)
    assert result.envs[0].arms[0].statuses == {"damaged": 1} and result.envs[0].arms[0].final.n == 0
    (line,) = result.problems
    assert line.startswith(f"{run_dir}: damaged: {path.name}: damaged event record at byte {ends[3]:,}")
    doctor = cli("doctor", str(run_dir))
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    assert "ERROR damaged_event_file: 1 of 1 seed (seed 0)" in doctor.stdout
    assert "events_end_early" not in doctor.stdout


def test_a_crc_mismatch_in_the_last_record_is_damage_not_a_tear(run):
    run_dir, ends = run
    path = event_file(run_dir)
    data = bytearray(path.read_bytes())
    data[ends[8] + 12 + 2] ^= 0xFF  # no zeros after it: bytes changed in place, not a power loss
    path.write_bytes(bytes(data))
    series, (damage,) = read_series_checked(run_dir)
    assert eval_points(series) == expected(9) and damage.offset == ends[8]


# ---- a done run whose events end early -------------------------------------------------------------------


@pytest.fixture
def experiment(tmp_path) -> Path:
    exp = tmp_path / "exp"
    for seed in (0, 1):
        write_run(exp / "arm_a" / "CartPole-v1" / f"seed_{seed}", seed=seed)
    return exp


def test_a_done_run_whose_events_end_early_is_flagged(experiment):
    healthy = cli("doctor", str(experiment))
    assert healthy.returncode == 0 and "healthy: no finding" in healthy.stdout, healthy.stdout
    cut = experiment / "arm_a" / "CartPole-v1" / "seed_2"
    write_run(cut, eval_steps=EVAL_STEPS[:6], seed=2)  # the last 4 points never reached the disk
    doctor = cli("doctor", str(experiment))
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    lines = doctor.stdout.splitlines()
    assert "  ERROR events_end_early: 1 of 3 seeds (seed 2)" in lines, doctor.stdout
    summary = lines[lines.index("  ERROR events_end_early: 1 of 3 seeds (seed 2)") + 1]
    assert summary.startswith(
        "    seed 2, env steps 60-100: run.json says done at 100 env steps, but its eval/return"
    )
    assert "events end at env step 60" in summary
    out = cli("compare", str(experiment))
    assert out.returncode == 0, out.stderr
    assert "2/3 done (1 truncated)" in out.stdout
    note = "truncated: run.json says done at 100 env steps, but its eval/return events end at env step 60"
    assert f"{cut}: {note}" in out.stdout
    assert compare(experiment).envs[0].arms[0].final.n == 2  # its last point is not a final return


def test_other_statuses_are_not_flagged_for_ending_before_env_steps(experiment):
    write_run(
        experiment / "arm_a" / "CartPole-v1" / "seed_2", eval_steps=EVAL_STEPS[:6], status="failed", seed=2
    )
    assert all(not r.findings for r in examine(experiment).runs)


# ---- the aggregate refresh of compare --------------------------------------------------------------------


@pytest.fixture
def two_arms(experiment) -> Path:
    for seed in (0, 1):
        write_run(experiment / "arm_b" / "CartPole-v1" / f"seed_{seed}", preset="arm_b", seed=seed)
    return experiment


def aggregate_points(exp: Path, arm: str) -> list[tuple[int, float]]:
    return eval_points(read_series(exp / AGGREGATE_DIR / arm / "CartPole-v1"))


def fail_on_write(monkeypatch, calls_before_failing: int = 0) -> None:
    """The aggregate writer writes half its file, then the disk is full."""
    real = aggregate.write_event_file
    calls = []

    def full_disk(logdir, events):
        calls.append(logdir)
        path = real(logdir, events)
        if len(calls) <= calls_before_failing:
            return path
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(aggregate, "write_event_file", full_disk)


def test_a_full_disk_during_the_aggregate_write_is_one_warning(two_arms, monkeypatch, capsys):
    fail_on_write(monkeypatch)
    assert main(["compare", str(two_arms)]) == 0
    failed = capsys.readouterr()
    (warning,) = failed.err.splitlines()
    assert warning.startswith("dqnlab: warning: could not write the aggregates in ")
    assert "(No space left on device)" in warning
    assert dot_entries(two_arms) == [] and list((two_arms / AGGREGATE_DIR).rglob("events.*")) == []
    monkeypatch.undo()
    assert main(["compare", str(two_arms)]) == 0
    fine = capsys.readouterr()
    assert fine.err == "" and fine.out == failed.out  # the same table, with or without the failure
    assert aggregate_points(two_arms, "arm_b") == expected(10) and dot_entries(two_arms) == []


def test_a_failed_refresh_keeps_the_old_aggregate_whole_and_the_next_one_rewrites_it(
    two_arms, monkeypatch, capsys
):
    assert main(["compare", str(two_arms)]) == 0
    old = aggregate_points(two_arms, "arm_b")
    new_seed = two_arms / "arm_b" / "CartPole-v1" / "seed_2"
    write_run(new_seed, eval_steps=[10, 20, 30, 40], preset="arm_b", seed=2, scale=4.0)
    fail_on_write(monkeypatch, calls_before_failing=1)  # arm_a is rewritten, then the disk is full
    assert main(["compare", str(two_arms)]) == 0
    assert len(capsys.readouterr().err.splitlines()) == 1
    assert aggregate_points(two_arms, "arm_b") == old and dot_entries(two_arms) == []
    monkeypatch.undo()
    assert aggregate.refresh_aggregates(two_arms) == [
        two_arms / AGGREGATE_DIR / a / "CartPole-v1" for a in ("arm_a", "arm_b")
    ]
    assert aggregate_points(two_arms, "arm_b")[0] == (10, pytest.approx((1.0 + 1.0 + 4.0) / 3))


KILL_BETWEEN_STAGING_AND_SWAP = textwrap.dedent(
    """
    import os, signal, sys
    import dqnlab.aggregate as aggregate

    def killed(staging, target):
        os.kill(os.getpid(), signal.SIGKILL)

    aggregate._swap_in = killed
    aggregate.refresh_aggregates(sys.argv[1])
    """
)


def test_a_writer_killed_between_staging_and_swap_is_cleaned_up_by_the_next_compare(two_arms, capsys):
    killed = subprocess.run([sys.executable, "-c", KILL_BETWEEN_STAGING_AND_SWAP, str(two_arms)])
    assert killed.returncode == -9
    # What the kill left: a staged aggregate, never swapped in.
    (left,) = [p for p in (two_arms / AGGREGATE_DIR).iterdir() if p.name.startswith(".")]
    assert left.name.startswith(STAGING_PREFIX) and list(left.glob("events.out.tfevents.*"))
    assert main(["compare", str(two_arms)]) == 0
    assert capsys.readouterr().err == ""
    assert dot_entries(two_arms) == []
    assert aggregate_points(two_arms, "arm_a") == aggregate_points(two_arms, "arm_b") == expected(10)


def test_the_staging_of_a_live_writer_is_left_alone(two_arms):
    root = two_arms / AGGREGATE_DIR
    root.mkdir()
    live = aggregate.new_staging_dir(root)  # this process: alive
    assert aggregate.remove_stale_staging(root) == [] and live.is_dir()
    other_host = root / f"{STAGING_PREFIX}123@elsewhere.example-abc"
    other_host.mkdir()
    assert aggregate.remove_stale_staging(root) == [] and other_host.is_dir()  # young: may be writing
    old = 2 * aggregate.STALE_STAGING_S
    os.utime(other_host, (other_host.stat().st_atime - old, other_host.stat().st_mtime - old))
    assert aggregate.remove_stale_staging(root) == [other_host] and not other_host.exists()


def test_json_stays_valid_with_damage_findings(run):
    run_dir, ends = run
    path = event_file(run_dir)
    path.write_bytes(path.read_bytes()[: ends[2] + 5])
    data = json.loads(cli("doctor", str(run_dir), "--json").stdout)
    assert not data["healthy"] and data["runs"][0]["findings"][0]["rule"] == "events_end_early"
