"""scripts/*.py on bad input: one line on stderr, exit status 2, no traceback, and nothing created or
overwritten (not in the working directory, not in TMPDIR), before any training or benchmarking starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dqnlab.cliargs import int_at_least, new_directory_problem, output_file_problem

SCRIPTS = Path(__file__).parents[1] / "scripts"
EXISTING_JSON = b'{"kept": true}\n'
EXISTING_PNG = b"not a real png, and not to be overwritten"

CASES = [
    # reproduce_post.py
    ("reproduce_post", ["--seeds", "abc"]),
    ("reproduce_post", ["--bogus"]),
    ("reproduce_post", ["--out", "post", "--seeds", "0"]),
    ("reproduce_post", ["--out", "post", "--workers", "0"]),
    ("reproduce_post", ["--out", "post", "--workers", "-3"]),
    ("reproduce_post", ["--out", "afile/sub", "--seeds", "1"]),
    ("reproduce_post", ["--out", "afile"]),
    ("reproduce_post", ["--out", "post", "--scale", "0"]),
    # bench_compare.py
    ("bench_compare", ["--source", "/nonexistent"]),
    ("bench_compare", ["--source", "afile"]),
    ("bench_compare", ["--source", "exp"]),  # a directory, but no run.json
    ("bench_compare", ["--repeats", "0"]),
    ("bench_compare", ["--seeds", "0"]),
    ("bench_compare", ["--steps", "0"]),
    # bench_determinism.py
    ("bench_determinism", ["--preset", "nosuch"]),
    ("bench_determinism", ["--steps", "0"]),
    ("bench_determinism", ["--repeats", "0"]),
    # bench_diagnostics.py
    ("bench_diagnostics", ["--calls", "0"]),
    ("bench_diagnostics", ["--calls", "-5"]),
    ("bench_diagnostics", ["--steps", "0"]),
    ("bench_diagnostics", ["--repeats", "0"]),
    # bench_throughput.py, bench_peers.py (scripts/bench.py's parse_bench_args)
    ("bench_throughput", ["--steps", "0"]),
    ("bench_throughput", ["--seed", "-1"]),
    ("bench_throughput", ["--settings", "nosuch"]),
    ("bench_throughput", ["--json", "/nonexistent/x.json"]),
    ("bench_throughput", ["--json", "exists.json"]),
    ("bench_throughput", ["--json", "exp"]),
    ("bench_peers", ["--repeats", "0"]),
    ("bench_peers", ["--json", "/nonexistent/x.json"]),
    ("bench_peers", ["--json", "exists.json"]),
    ("bench_peers", ["--settings", "cleanrl"]),  # CleanRL's defaults: no SB3 peer (MSE)
    # parity.py
    ("parity", ["pong"]),
    ("parity", ["cartpole", "--seeds", "1"]),
    ("parity", ["cartpole", "--steps", "0"]),
    ("parity", ["cartpole", "--json", "exists.json"]),
    # seed_curves.py
    ("seed_curves", []),
    ("seed_curves", ["/nonexistent"]),
    ("seed_curves", ["exp"]),  # a directory, but no run.json
    ("seed_curves", ["exp", "--threshold", "abc"]),
    # bench_replay.py
    ("bench_replay", ["--json", "/nonexistent/x.json"]),
    ("bench_replay", ["--json", "exists.json"]),
    ("bench_replay", ["--transitions", "999999999999"]),
    ("bench_replay", ["--transitions", "10"]),
    ("bench_replay", ["--batches", "abc"]),
    # bench_summaries.py
    ("bench_summaries", ["--events", "0"]),
    ("bench_summaries", ["--rounds", "x"]),
    # bench_first_calls.py
    ("bench_first_calls", ["--repeats", "0"]),
    ("bench_first_calls", ["--calls", "x"]),
    # bench_loop_parts.py
    ("bench_loop_parts", ["--pairs", "0"]),
    ("bench_loop_parts", ["--steps", "999"]),
    # bench_panel_parts.py (imports TensorFlow, trains nothing)
    ("bench_panel_parts", ["--hidden", "abc"]),
    ("bench_panel_parts", ["--calls", "0"]),
    # screenshot_board.py
    ("screenshot_board", []),
    ("screenshot_board", ["/nonexistent", "shots1"]),
    ("screenshot_board", ["afile", "shots1"]),
    ("screenshot_board", ["empty", "shots1"]),  # a directory without event files
    ("screenshot_board", ["exp", "afile"]),
    ("screenshot_board", ["exp", "afile/shots"]),
    ("screenshot_board", ["exp", "shots"]),  # would overwrite shots/hparams.png
    # atari_ab.py (and the A/B wrappers: dqnlab's own parser)
    ("atari_ab", ["--throughput", "abc"]),
    ("atari_ab", ["--throughput=abc"]),
    ("atari_ab", ["--throughput", "10"]),
    ("atari_ab", ["--throughput", "10000", "extra"]),
    ("atari_ab", ["--set", "train.gamma=x"]),
    ("atari_ab", ["--seeds", "abc"]),
    ("headline_ab", ["--seeds", "0"]),
    ("lunarlander_ab", ["--bogus"]),
    ("recurrent_ab", ["--workers", "abc"]),
]


def _tree(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize(("script", "args"), CASES, ids=[f"{s}:{' '.join(a)}" for s, a in CASES])
def test_bad_input_is_one_line_and_exit_2_and_nothing_is_written(tmp_path, script, args):
    (tmp_path / "afile").write_text("a file, not a directory\n")
    (tmp_path / "exists.json").write_bytes(EXISTING_JSON)
    (tmp_path / "exp" / "arm").mkdir(parents=True)
    (tmp_path / "exp" / "arm" / "events.out.tfevents.1.host").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    (tmp_path / "shots").mkdir()
    (tmp_path / "shots" / "hparams.png").write_bytes(EXISTING_PNG)
    (tmp_path / "tmp").mkdir()
    before = _tree(tmp_path)

    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / f"{script}.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "error" in done.stderr
    assert done.stdout == ""
    assert _tree(tmp_path) == before  # nothing created, nothing overwritten


@pytest.mark.parametrize(
    "script",
    ["reproduce_post", "bench_compare", "bench_throughput", "bench_replay", "screenshot_board", "parity"],
)
def test_help_still_works(script, tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / f"{script}.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.startswith("usage:"), done.stderr
    assert list(tmp_path.iterdir()) == []


def test_output_file_problem(tmp_path):
    existing = tmp_path / "r.json"
    existing.write_text("{}")
    assert output_file_problem(None, False, "--json") is None
    assert output_file_problem(tmp_path / "new.json", False, "--json") is None
    assert output_file_problem(existing, True, "--json") is None  # --force
    assert "pass --force" in output_file_problem(existing, False, "--json")
    assert "no such directory" in output_file_problem(tmp_path / "no" / "r.json", True, "--json")
    assert "is a directory" in output_file_problem(tmp_path, True, "--json")


def test_new_directory_problem(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("")
    assert new_directory_problem(tmp_path / "a" / "b", "--out") is None
    assert "exists" in new_directory_problem(tmp_path / "f", "--out")
    assert "is a file" in new_directory_problem(tmp_path / "f" / "sub", "--out")
    # A read-only folder, as os.access reports it (the tests may run as root, who can write anywhere).
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    assert "not writable" in new_directory_problem(tmp_path / "out", "--out")


def test_int_at_least_says_what_it_wanted():
    import argparse

    parse = int_at_least(1, below=10)
    assert parse("3") == 3
    for text, message in [("x", "expected an integer"), ("0", ">= 1"), ("10", "< 10")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse(text)
