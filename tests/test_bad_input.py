"""Property-based: malformed presets, overrides and command lines give one clear line and exit status 2,
never a traceback, and never leave a half-written run directory behind."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FAST, dqnlab_cmd
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


# ---- issue #19: inputs that gave tracebacks; run directories that are claimed, not found ------------------
# Each runs the `dqnlab` command as a user does (a subprocess), and checks the project rule: one line naming
# the problem on stderr, exit status 2, and nothing created under the logdir.

SHORT = ["--steps", "300", "--quiet", "--checkpoint-every", "0", *FAST]


def refused(out: subprocess.CompletedProcess, *fragments: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert out.stderr.startswith("dqnlab: error: ") and out.stderr.count("\n") == 1, out.stderr
    assert "Traceback" not in out.stderr
    for fragment in fragments:
        assert fragment in out.stderr, out.stderr


def cli_without_tensorflow(*args: str) -> tuple[subprocess.CompletedProcess, bool]:
    """Run the CLI in a fresh interpreter; also whether it had imported TensorFlow by the time it exited."""
    code = (
        "import sys; from dqnlab.cli import main; code = main(sys.argv[1:]); "
        "print('tensorflow imported' if 'tensorflow' in sys.modules else 'no tensorflow', file=sys.stderr); "
        "sys.exit(code)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600
    )  # fmt: skip
    lines = out.stderr.splitlines(keepends=True)
    imported = lines[-1].strip() == "tensorflow imported"
    out.stderr = "".join(lines[:-1])
    return out, imported


@pytest.mark.parametrize("command", [["train", "huber_relu"], ["ab", "huber_relu", "squared_relu"]])
def test_a_name_longer_than_the_file_system_allows_is_refused(tmp_path, command):
    out = dqnlab_cmd(*command, "--name", "n" * 300, *SHORT, "--logdir", str(tmp_path))
    refused(out, "has 300 bytes; this file system allows 255")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", f"replay.capacity={'1' * 23}"], f"replay.capacity: must be <= {2**63 - 1}"),
        (["--set", f"replay.capacity={10**18}"], "(the biggest part: the replay (replay.capacity = 1,000,"),
        (["--set", "train.gradient_steps=1000000000000"], "the biggest part: a burst's batch"),
        (["--set", f"network.hidden=[64, {'9' * 20}]"], "network.hidden: must be <= "),
        (["--steps", "1" * 23], "--steps: must be < "),
    ],
    ids=["capacity-23-digits", "capacity-1e18", "gradient-steps", "hidden-20-digits", "steps"],
)
def test_absurd_integers_are_refused(tmp_path, args, message):
    out = dqnlab_cmd("train", "huber_relu", *args, "--quiet", "--logdir", str(tmp_path))
    refused(out, message)
    assert not any(tmp_path.iterdir())


def test_absurd_seed_counts_are_refused(tmp_path):
    out = dqnlab_cmd("ab", "huber_relu", "squared_relu", "--seeds", "1" * 23, "--logdir", str(tmp_path))
    refused(out, "--seeds: must be < 10001")
    assert not any(tmp_path.iterdir())


def widths_beyond_memory() -> dict[str, list[int]]:
    """Hidden layers whose floor exceeds this machine's memory twice over, whatever the machine: two wide
    layers (their weights: 4 float32 copies of width**2 parameters), and one very wide layer (its
    activations: 3 float32 copies per unit for each of the 256 states of a probe)."""
    from dqnlab.config import machine_memory

    memory = machine_memory()
    return {
        "weights": [int(math.sqrt(2 * memory / 16)) + 1] * 2,
        "activations": [2 * memory // (3 * 4 * 256) + 1],
    }


@pytest.mark.parametrize("part", ["weights", "activations"])
@pytest.mark.parametrize("command", [["train", "huber_relu"], ["ab", "huber_relu", "squared_relu"]])
def test_a_network_too_large_for_this_machine_is_refused_before_tensorflow(tmp_path, part, command):
    """[100000, 100000] died of TensorFlow's out-of-memory error, [10000000] of std::bad_alloc with run.json
    left 'running'. Refused now from the parameter count, before TensorFlow is imported."""
    hidden = widths_beyond_memory()[part]
    args = [*command, "--set", f"network.hidden={hidden}", *SHORT, "--logdir", str(tmp_path)]
    out, imported_tensorflow = cli_without_tensorflow(*args)
    what = "weights and optimizer state" if part == "weights" else "activations"
    refused(out, "needs at least", "more than this machine's", f"the biggest part: the Q-network's {what}")
    assert not imported_tensorflow
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A short `dqnlab train` run, made under umask 022: <logdir>/x/huber_relu/CartPole-v1/seed_0."""
    logdir = tmp_path_factory.mktemp("finished")
    args = ["train", "huber_relu", *SHORT, "--logdir", str(logdir), "--name", "x"]
    out = subprocess.run(
        [sys.executable, "-m", "dqnlab.cli", *args],
        capture_output=True, text=True, timeout=600, preexec_fn=lambda: os.umask(0o022),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return logdir / "x" / "huber_relu" / "CartPole-v1" / "seed_0"


def test_run_json_and_experiment_json_follow_the_umask_as_event_files_do(finished_run, tmp_path):
    (event_file,) = finished_run.glob("events.out.tfevents.*")
    for path in (finished_run / "run.json", finished_run.parents[2] / "experiment.json", event_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path  # mkstemp made the JSON files 0600
    from dqnlab.rundir import write_json_atomic

    previous = os.umask(0o077)
    try:
        write_json_atomic(tmp_path / "private.json", {"a": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["private.json"]  # no temporary file left


def test_train_refuses_an_existing_run_directory_before_importing_tensorflow(finished_run):
    logdir = finished_run.parents[3]
    before = sorted(p for p in logdir.rglob("*"))
    out, imported_tensorflow = cli_without_tensorflow(
        "train", "huber_relu", *SHORT, "--logdir", str(logdir), "--name", "x"
    )
    refused(out, f"run directory {finished_run} already exists")
    assert not imported_tensorflow  # it was refused only after TensorFlow's 6 s of import
    assert sorted(p for p in logdir.rglob("*")) == before


def copy_of(run_dir: Path, logdir: Path) -> Path:
    """A copy of a finished run in a new experiment `x` of `logdir`, marked failed (so --resume writes)."""
    copy = logdir / "x" / "huber_relu" / "CartPole-v1" / "seed_0"
    shutil.copytree(run_dir.parents[2], logdir / "x")
    info = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**info, "status": "failed", "error": "killed"}))
    return copy


def in_namespace(read_only: list[Path], writable: list[Path], *args: str) -> subprocess.CompletedProcess:
    """`dqnlab ARGS` in a user and mount namespace where each `read_only` path is a read-only mount (root
    ignores permission bits, not a read-only file system) and each `writable` one stays writable."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs `unshare -rm` (user and mount namespaces) for a read-only mount that binds root")
    steps = [f"mount --bind {shlex.quote(str(p))} {shlex.quote(str(p))}" for p in writable]
    for p in read_only:  # --rbind keeps the writable mounts below; the remount makes only this one read-only
        steps += [f"mount --rbind {shlex.quote(str(p))} {shlex.quote(str(p))}"]
        steps += [f"mount -o remount,bind,ro {shlex.quote(str(p))}"]
    command = shlex.join([sys.executable, "-m", "dqnlab.cli", *args])
    script = " && ".join([*steps, f"exec {command}"])
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=600)


def test_resume_into_a_read_only_run_directory_is_refused_changing_nothing(finished_run, tmp_path):
    run = copy_of(finished_run, tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    out = in_namespace([run], [], "train", "huber_relu", *SHORT, "--logdir", str(tmp_path), "--name", "x",
                       "--resume")  # fmt: skip
    refused(out, f"--resume: cannot write in {run}: it is not writable")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    # The same run as an `ab` experiment's (its experiment.json as `ab huber_relu squared_relu` writes it:
    # `ab --resume` continues only the experiment it was started as).
    experiment_json = tmp_path / "x" / "experiment.json"
    started = json.loads(experiment_json.read_text())
    overrides = [value for flag, value in zip(FAST[::2], FAST[1::2], strict=True) if flag == "--set"]
    experiment_json.write_text(
        json.dumps({**started, "presets": ["huber_relu", "squared_relu"], "overrides": overrides})
    )
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    out = in_namespace([run], [], "ab", "huber_relu", "squared_relu", "--seeds", "1", *SHORT,
                       "--logdir", str(tmp_path), "--name", "x", "--resume")  # fmt: skip
    refused(out, f"--resume: cannot write in {run}: it is not writable")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_resume_works_when_only_the_logdir_above_the_experiment_is_read_only(finished_run, tmp_path):
    """It was refused: the check looked at whether the experiment's parent, the logdir, could be written."""
    copy_of(finished_run, tmp_path)
    experiment = tmp_path / "x"
    args = ["train", "huber_relu", *SHORT, "--logdir", str(tmp_path), "--name", "x", "--resume"]
    out = in_namespace([tmp_path], [experiment], *args, "--seed", "1")
    assert out.returncode == 0, out.stderr
    info = json.loads((experiment / "huber_relu" / "CartPole-v1" / "seed_1" / "run.json").read_text())
    assert info["status"] == "done" and info["env_steps"] == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"config": "oops"}, "'config' is a string (\"oops\"), expected an object"),
        ({"config": [1, 2]}, "'config' is a list ([1, 2]), expected an object"),
        ({"divergence": "x", "status": "diverged"}, "'divergence' is a string"),
        ({"seed": "0"}, "'seed' is a string (\"0\"), expected an integer"),
        ({"preset": None}, "'preset' is null"),
        ({"status": "exploded"}, "'status' is 'exploded', expected one of running, done"),
    ],
    ids=["config-string", "config-list", "divergence-string", "seed-string", "preset-null", "status"],
)
def test_a_malformed_run_json_is_one_line_naming_it(finished_run, tmp_path, change, message):
    run = tmp_path / "x" / "huber_relu" / "CartPole-v1" / "seed_0"
    shutil.copytree(finished_run, run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, **change}))
    for command in ("compare", "doctor"):
        out = dqnlab_cmd(command, str(tmp_path / "x"))
        refused(out, f"{run / 'run.json'}: not a dqnlab run.json: {message}")
    from dqnlab.rundir import read_run

    with pytest.raises(ConfigError, match=re.escape(f"{run / 'run.json'}: not a dqnlab run.json")):
        read_run(run)


def test_symlinked_experiment_and_run_directories_are_refused_writing_nothing_at_their_target(tmp_path):
    logdir, target = tmp_path / "runs", tmp_path / "elsewhere"
    logdir.mkdir()
    target.mkdir()
    (logdir / "linked").symlink_to(target)
    for command in (["train", "huber_relu"], ["ab", "huber_relu", "squared_relu", "--seeds", "1"]):
        for resume in ([], ["--resume"]):
            out = dqnlab_cmd(*command, *SHORT, "--logdir", str(logdir), "--name", "linked", *resume)
            refused(out, f"{logdir / 'linked'} is a symbolic link")
    run = logdir / "real" / "huber_relu" / "CartPole-v1" / "seed_0"
    run.parent.mkdir(parents=True)
    run.symlink_to(target)
    for resume in ([], ["--resume"]):
        out = dqnlab_cmd("train", "huber_relu", *SHORT, "--logdir", str(logdir), "--name", "real", *resume)
        refused(out, f"{run} is a symbolic link")
    assert not any(target.iterdir())


def test_a_symlinked_run_directory_is_refused_by_the_python_api_too(tmp_path):
    import dqnlab

    target = tmp_path / "elsewhere"
    target.mkdir()
    run = tmp_path / "runs" / "x" / "huber_relu" / "CartPole-v1" / "seed_0"
    run.parent.mkdir(parents=True)
    run.symlink_to(target)
    cfg = load_preset("huber_relu")
    for resume in (False, True):
        with pytest.raises(ConfigError, match="is a symbolic link"):
            dqnlab.train(cfg, steps=50, logdir=tmp_path / "runs", name="x", resume=resume, checkpoint_every=0)
    assert not any(target.iterdir())


def test_a_symlinked_checkpoints_directory_is_refused_on_resume(finished_run, tmp_path):
    run = copy_of(finished_run, tmp_path)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (run / "checkpoints").symlink_to(target)
    out, imported_tensorflow = cli_without_tensorflow(
        "train", "huber_relu", *SHORT, "--logdir", str(tmp_path), "--name", "x", "--resume"
    )
    refused(out, f"{run / 'checkpoints'} is a symbolic link")
    assert not imported_tensorflow  # refused with the rest of the input, not when the checkpoint is read
    assert not any(target.iterdir())


def test_two_ab_with_one_name_at_once_the_second_is_refused_and_the_first_finishes(tmp_path):
    """Both used to fail, each calling the other's runs failed: the experiment directory is now claimed."""
    args = ["ab", "huber_relu", "squared_relu", "--seeds", "1", "--workers", "2", *SHORT]
    args += ["--logdir", str(tmp_path), "--name", "same"]
    procs = [
        subprocess.Popen([sys.executable, "-m", "dqnlab.cli", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    results = [(p.returncode, out, err) for p in procs for out, err in [p.communicate(timeout=600)]]
    (winner, loser) = sorted(results, key=lambda r: r[0])
    assert winner[0] == 0, winner[2]
    refused(subprocess.CompletedProcess(args, *loser), f"experiment {tmp_path / 'same'} already exists")
    for arm in ("huber_relu", "squared_relu"):
        info = json.loads((tmp_path / "same" / arm / "CartPole-v1" / "seed_0" / "run.json").read_text())
        assert info["status"] == "done" and info["env_steps"] == 300 and info["error"] is None
    experiment = json.loads((tmp_path / "same" / "experiment.json").read_text())
    assert experiment["presets"] == ["huber_relu", "squared_relu"]
