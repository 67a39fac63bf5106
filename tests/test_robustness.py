"""Cases found by a robustness sweep over what the rest of the suite does not name: each test fails on the
code before its fix."""

from __future__ import annotations

import json
from pathlib import Path

from dqnlab.aggregate import update_aggregates
from dqnlab.rundir import find_runs


def fake_run(run_dir: Path, status: str = "done") -> Path:
    run_dir.mkdir(parents=True)
    info = {"preset": "huber_relu", "env": "CartPole-v1", "seed": 0, "status": status, "env_steps": 300}
    (run_dir / "run.json").write_text(json.dumps(info))
    return run_dir


def test_the_earlier_life_of_a_run_started_over_is_not_a_run_of_its_own(tmp_path):
    """`--resume` of a run with no checkpoint moves its files to <run>/earlier_lives/1/, run.json too: read
    as a run, it became an arm named `seed_0/earlier_lives` in the experiment's aggregates."""
    exp = tmp_path / "x"
    run = fake_run(exp / "huber_relu" / "CartPole-v1" / "seed_0")
    fake_run(run / "earlier_lives" / "1", status="running")
    assert find_runs(exp) == [run]
    update_aggregates(exp)
    assert sorted(p.relative_to(exp).as_posix() for p in (exp / "_aggregate").glob("*/*")) == [
        "_aggregate/huber_relu/CartPole-v1"
    ]


def test_runs_are_found_below_a_logdir_whose_own_path_says_aggregate(tmp_path):
    run = fake_run(tmp_path / "_aggregate" / "x" / "huber_relu" / "CartPole-v1" / "seed_0")
    assert find_runs(tmp_path / "_aggregate" / "x") == [run]
