"""Property-based: malformed presets, overrides and command lines give one clear line and exit status 2,
never a traceback, and never leave a half-written run directory behind."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dqnlab import cli
from dqnlab.config import AGENTS_DIR, SECTIONS, Config, ConfigError, load_preset, tomllib  # tomli on 3.10

BASE = tomllib.loads((AGENTS_DIR / "huber_relu.toml").read_text())
KEYS = [(section, key) for section in SECTIONS for key in BASE[section]]

toml_scalars = st.one_of(
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=12),
    st.lists(st.integers(-5, 300), max_size=4),
    st.lists(st.text(max_size=3), max_size=2),
)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode().replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def render(data: dict) -> str:
    lines = [f"{k} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, table in data.items():
        if isinstance(table, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@st.composite
def mutated_presets(draw) -> dict:
    """huber_relu with some keys changed to arbitrary values, removed, or added."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for section, key in draw(st.lists(st.sampled_from(KEYS), max_size=3, unique=True)):
        action = draw(st.sampled_from(["change", "remove", "add"]))
        if action == "change":
            data[section][key] = draw(toml_scalars)
        elif action == "remove":
            data[section].pop(key, None)
        else:
            data[section][draw(st.text("abcdefgh_", min_size=1, max_size=8))] = draw(toml_scalars)
    if draw(st.booleans()) and draw(st.booleans()):
        data.pop(draw(st.sampled_from(list(SECTIONS))))
    return data


def one_line(message: str) -> bool:
    return bool(message) and "\n" not in message.strip() and "Traceback" not in message


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=mutated_presets())
def test_any_malformed_preset_is_one_line_config_error(tmp_path, data):
    path = tmp_path / "p.toml"
    path.write_text(render(data))
    try:
        cfg = load_preset(str(path))
    except ConfigError as exc:
        assert one_line(str(exc)), str(exc)
    else:
        assert isinstance(cfg, Config)


OVERRIDE_KEYS = [f"{s}.{k}" for s, k in KEYS] + ["nope.x", "loss", "train.nope", ""]


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(OVERRIDE_KEYS), value=st.text(max_size=15))
def test_any_override_is_applied_or_one_line_config_error(key, value):
    try:
        load_preset("huber_relu", [f"{key}={value}"])
    except ConfigError as exc:
        assert one_line(str(exc)), str(exc)


def run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse's one-line errors
            code = exc.code
    return code, err.getvalue()


WORDS = ["-1", "0", "1.5", "abc", "", "huber_relu", "nope", "CartPole-v1", "dqnlab/Nope-v0", "x=1"]
WORDS += ["train.gamma=2", "loss.kind=nope", "network.hidden=[]", "--steps", "--seeds", "--set", "--env"]
words = st.one_of(st.sampled_from(WORDS), st.text(max_size=8))


@pytest.fixture
def never_trains(monkeypatch):
    """Valid command lines must not start training here: stop them where work would begin."""

    class Reached(Exception):
        pass

    def stop(*args, **kwargs):
        raise Reached

    monkeypatch.setattr("dqnlab.runner.run_experiment", stop)
    monkeypatch.setattr("dqnlab.trainer.train", stop)
    return Reached


@example(command="compare", args=["somewhere", "an\nextra"])  # a line break in what was typed (hypothesis)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    command=st.sampled_from(["train", "ab", "compare", "doctor", "board"]),
    args=st.lists(words, max_size=5),
)
def test_any_malformed_command_line_is_one_line_exit_2_and_writes_nothing(
    tmp_path_factory, never_trains, command, args
):
    logdir = tmp_path_factory.mktemp("logdir")
    argv = [command, *args, "--logdir", str(logdir)] if command in ("train", "ab") else [command, *args]
    if command == "board":
        argv = [command, str(logdir / "missing"), *args]
    try:
        code, err = run_cli(argv)
    except never_trains:
        return  # a valid command line: it got as far as training, which is not what this test is about
    assert code == 2, (argv, code, err)
    assert one_line(err), err
    assert not any(Path(logdir).rglob("run.json")), argv  # nothing half-written


def test_a_preset_that_cannot_read_an_env_is_refused_before_any_run(tmp_path, never_trains):
    # Without --env, ab runs every preset on every preset's env: an MLP cannot read Pong's frames.
    code, err = run_cli(["ab", "huber_relu", "pong_huber", "--seeds", "1", "--logdir", str(tmp_path)])
    assert code == 2 and err.count("\n") == 1, err
    assert "huber_relu on ALE/Pong-v5: ALE/Pong-v5 gives image observations" in err
    assert "without --env, every preset runs on every preset's env" in err
    code, err = run_cli(["ab", "lstm", "pong_huber", "--env", "CartPole-v1", "--logdir", str(tmp_path)])
    assert code == 2 and "pong_huber on CartPole-v1: network.kind = 'cnn' needs an Atari id" in err, err
    code, err = run_cli(["train", "huber_relu", "--env", "ALE/Breakout-v5", "--logdir", str(tmp_path)])
    assert code == 2 and err.count("\n") == 1 and "gives image observations" in err, err
    assert not any(tmp_path.iterdir())
