"""Cases found by a robustness sweep over what the rest of the suite does not name: each test fails on the
code before its fix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import dqnlab
from dqnlab.aggregate import update_aggregates
from dqnlab.cli import build_parser
from dqnlab.config import ConfigError
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


@pytest.mark.parametrize(
    "overrides, steps, message",
    [
        (["train.gamma=0.5"], 300, "was started with another config (train.gamma: 0.99 -> 0.5)"),
        ([], 600, "is done at 300 env steps; --resume continues unfinished runs and does not extend"),
    ],
    ids=["other-config", "more-steps"],
)
def test_resume_of_a_done_run_refuses_what_it_would_silently_ignore(tmp_path, overrides, steps, message):
    """`dqnlab train --resume` of a finished run returned it as it was, exit 0, whatever --set or --steps
    asked: another gamma, or twice the steps, and the user got the old 300-step run without a word."""
    cfg = dqnlab.load_preset("huber_relu")
    run = fake_run(tmp_path / "x" / "huber_relu" / "CartPole-v1" / "seed_0")
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "config": cfg.to_dict()}))
    before = (run / "run.json").read_bytes()
    asked = dqnlab.load_preset("huber_relu", overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
        dqnlab.train(asked, seed=0, steps=steps, logdir=tmp_path, name="x", resume=True)
    assert (run / "run.json").read_bytes() == before
    # Asked as it was trained (or for fewer steps), it is its result.
    for same in (300, 200):
        assert dqnlab.train(cfg, seed=0, steps=same, logdir=tmp_path, name="x", resume=True).status == "done"


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "huber_relu", "--env", ""], "--env: expected a gymnasium id, got an empty argument"),
        (["ab", "huber_relu", "lstm", "--env", " "], "--env: expected a gymnasium id, got an empty argument"),
        (["train", "huber_relu", "--logdir", ""], "--logdir: expected a directory, got an empty argument"),
        (["sweep", "huber_relu", "--name", ""], "--name: expected an experiment name, got an empty argument"),
        (["ab", "huber_relu", "lstm", "--backend", "ray", "--ray-address", ""], "expected a Ray address"),
    ],
    ids=["train-env", "ab-env", "logdir", "name", "ray-address"],
)
def test_an_empty_argument_is_refused_not_read_as_the_default(capsys, args, message):
    """`--env "$ENV"` with ENV unset trained the preset's own env (50k steps of CartPole); an empty --logdir
    wrote into the current directory, an empty --name under a timestamp; an empty --ray-address reached
    ray.init, a traceback with the experiment directory left behind. Refused as argparse refuses a typo."""
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_ab_and_train_resume_refuse_to_extend_a_done_run_before_anything_starts(tmp_path):
    """`ab --resume --steps 600` of runs done at 300 came back with the 300-step runs and exit 0 (the runner
    settles a finished run before the trainer could refuse it); `train --resume` refused only after
    TensorFlow's import. Both now refuse in one line, exit 2, nothing written; as trained, they still
    return the runs."""
    from helpers import FAST, dqnlab_cmd

    common = ["--seeds", "1", "--workers", "1", "--logdir", str(tmp_path), "--name", "e", "--quiet", *FAST]
    first = dqnlab_cmd("ab", "huber_relu", "squared_relu", "--steps", "300", *common)
    assert first.returncode == 0, first.stderr
    exp = tmp_path / "e"
    before = {p: p.read_bytes() for p in exp.rglob("*.json")}
    longer = dqnlab_cmd("ab", "huber_relu", "squared_relu", "--steps", "600", "--resume", *common)
    assert longer.returncode == 2 and longer.stderr.count("\n") == 1, longer.stderr
    assert "is done at 300 env steps; --resume continues unfinished runs and does not extend" in longer.stderr
    assert {p: p.read_bytes() for p in exp.rglob("*.json")} == before
    again = dqnlab_cmd("ab", "huber_relu", "squared_relu", "--steps", "300", "--resume", *common)
    assert again.returncode == 0, again.stderr
    args = ["--steps", "300", "--logdir", str(tmp_path), "--name", "t", "--quiet", *FAST]
    assert dqnlab_cmd("train", "huber_relu", *args).returncode == 0
    refused = dqnlab_cmd("train", "huber_relu", *args[:1], "600", *args[2:], "--resume")
    assert refused.returncode == 2 and "is done at 300 env steps" in refused.stderr, refused.stderr


def test_resume_of_an_unfinished_run_for_fewer_steps_than_its_checkpoint_is_refused(tmp_path):
    """An interrupted run checkpointed at 300 env steps, resumed with --steps 200: it went on from the
    checkpoint, trained nothing, and was written `done` at 300 steps, a run longer than asked. Refused before
    anything is written, by the command and by `dqnlab.train`; asked for 300 or more, it resumes."""
    from helpers import FAST, dqnlab_cmd

    cfg = dqnlab.load_preset("huber_relu", [a for a in FAST if a != "--set"])
    where = {"seed": 0, "logdir": tmp_path, "name": "t", "checkpoint_every": 100}
    assert dqnlab.train(cfg, steps=300, **where).status == "done"
    run = tmp_path / "t" / "huber_relu" / "CartPole-v1" / "seed_0"
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    args = ["--logdir", str(tmp_path), "--name", "t", "--quiet", "--checkpoint-every", "100", *FAST]
    refused = dqnlab_cmd("train", "huber_relu", "--steps", "200", "--resume", *args)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    said = "checkpoint is at env step 300, past --steps 200: resume it with --steps 300 or more"
    assert said in refused.stderr
    with pytest.raises(ConfigError, match="past --steps 200"):
        dqnlab.train(cfg, steps=200, resume=True, **where)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert dqnlab.train(cfg, steps=400, resume=True, **where).env_steps == 400


def test_a_run_too_short_to_learn_is_warned_about(tmp_path):
    """--steps at or below learning_starts trained nothing, said nothing and ended `done`: now one warning
    line says no update will run (a run one step past it gets none)."""
    said = []
    cfg = dqnlab.load_preset("huber_relu", {"train.eval_every": 0, "train.learning_starts": 300})
    res = dqnlab.train(cfg, steps=300, logdir=tmp_path, name="short", warn=said.append)
    assert res.status == "done" and said == [
        "warning: 300 env steps <= train.learning_starts 300: no update will run (the run only acts and "
        "fills replay), and the doctor will have no evidence"
    ]
    said.clear()
    dqnlab.train(cfg, steps=301, logdir=tmp_path, name="long", warn=said.append)
    assert not [line for line in said if "no update will run" in line]


def test_the_python_api_refuses_an_empty_env_as_the_cli_does(tmp_path):
    with pytest.raises(ConfigError, match="env: expected a gymnasium id, got an empty string"):
        dqnlab.train(dqnlab.load_preset("huber_relu"), env=" ", steps=10, logdir=tmp_path, name="e")
    assert not (tmp_path / "e").exists()


def test_ab_resume_of_an_experiment_train_made_checks_its_arms(tmp_path):
    """`train` writes experiment.json without `overrides`: the whole check was skipped, and `ab --resume`
    took any arms into it. Its presets and envs are checked now."""
    from helpers import FAST, dqnlab_cmd

    args = ["--steps", "200", "--logdir", str(tmp_path), "--name", "t", "--quiet", *FAST]
    assert dqnlab_cmd("train", "huber_relu", *args).returncode == 0
    other = dqnlab_cmd("ab", "squared_relu", "relu_dead", "--resume", "--workers", "1", *args)
    assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr
    assert "was started with other presets (presets: ['huber_relu'] -> ['relu_dead', 'squared_relu'])" in (
        other.stderr
    )
