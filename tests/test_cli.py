"""The `dqnlab` command as a user runs it: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import FAST, dqnlab_cmd

from dqnlab.config import preset_names
from dqnlab.runner import ArmReturns, RunSpec


def test_presets_lists_every_preset_with_its_description():
    out = dqnlab_cmd("presets")
    assert out.returncode == 0
    lines = out.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == preset_names()
    assert all(len(line.split(None, 1)) == 2 for line in lines)


def test_python_dash_m_dqnlab_is_the_dqnlab_command():
    out = subprocess.run([sys.executable, "-m", "dqnlab", "presets"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == dqnlab_cmd("presets").stdout
    bad = subprocess.run(
        [sys.executable, "-m", "dqnlab", "doctor", "/no/such/dir"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no such directory" in bad.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "no_such_preset"], "unknown preset 'no_such_preset'"),
        (["train", "huber_relu", "--env", "NoSuchEnv-v0"], "unknown environment id 'NoSuchEnv-v0'"),
        (["train", "huber_relu", "--env", "Pendulum-v1"], "discrete action space"),
        (["train", "huber_relu", "--set", "train.gama=0.9"], "unknown key 'gama'"),
        (["train", "huber_relu", "--set", "train.target_tau=0"], "0 never updates the target network"),
        (["train", "huber_relu", "--set", "train.steps=lots"], "expected an integer"),
        (["train", "huber_relu", "--set", "nonsense"], "expected section.key=value"),
        (["train", "huber_relu", "--steps", "-5"], "must be >= 1"),
        (["train", "huber_relu", "--device", "tpu"], "invalid choice"),
        (["train", "huber_relu", "--seed", "4294967296"], "must be < 2147483648"),
        (["train", "huber_relu", "--name", "nope", "--resume"], "there is no experiment"),
        (["train", "huber_relu", "--checkpoint-every", "0", "--checkpoint-replay"], "checkpoint-every is 0"),
        (["ab", "huber_relu", "squared_relu", "--ray-address", "head:6379"], "needs --backend ray"),
        (["compare", "runs", "--threshold", "nan"], "expected a finite number, got 'nan'"),
        (["compare", "runs", "--plot", ""], "expected a file name, got an empty argument"),
        (["train", "huber_relu", "--set", "train.gamma=nan"], "expected a finite number, got nan"),
        (["train", "huber_relu", "--name", "../escape"], "expected a plain name inside --logdir"),
        (["ab", "huber_relu", "squared_relu", "--name", "/tmp/abs"], "expected a plain name inside --logdir"),
        (["ab", "huber_relu"], "two or more presets"),
        (["ab", "huber_relu", "huber_relu"], "given twice"),
        (["ab", "huber_relu", "squared_relu", "--seeds", "0"], "must be >= 1"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, list) else None,
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    out = (
        dqnlab_cmd(*args, "--logdir", str(tmp_path)) if args[:1] in (["train"], ["ab"]) else dqnlab_cmd(*args)
    )
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_a_file_where_a_directory_must_go_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    for args in (["--logdir", str(tmp_path / "afile")], ["--logdir", str(tmp_path), "--name", "afile"]):
        out = dqnlab_cmd("train", "huber_relu", "--quiet", *args)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "is a file, not a directory" in out.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]


def test_a_replay_larger_than_this_machine_is_refused_at_the_start(tmp_path):
    """numpy zeroes arrays lazily: without the check the run would die hours in, when the buffer fills."""
    import os

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    capacity = int(1.3 * memory / 44)  # CartPole: 2 x 4 float32 observations + action, reward, discount
    out = dqnlab_cmd(
        "train", "huber_relu", "--set", f"replay.capacity={capacity}", "--steps", "100", "--quiet",
        "--logdir", str(tmp_path),
    )  # fmt: skip
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert f"replay.capacity {capacity:,}: the replay's arrays need" in out.stderr
    assert "more than this machine's" in out.stderr
    assert not any(tmp_path.iterdir())  # refused before the run directory was made


def test_train_then_refuse_to_overwrite(tmp_path):
    args = [
        "train",
        "huber_relu",
        "--steps",
        "200",
        "--logdir",
        str(tmp_path),
        "--name",
        "cli",
        "--quiet",
        *FAST,
    ]
    first = dqnlab_cmd(*args)
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "cli" / "huber_relu" / "CartPole-v1" / "seed_0"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "done"
    assert f"dqnlab board {run_dir}" in first.stdout
    again = dqnlab_cmd(*args)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_ab_runs_arms_x_seeds_in_parallel_and_prints_the_table(tmp_path):
    out = dqnlab_cmd(
        "ab",
        "clipped_delta_relu",
        "huber_relu",
        "--env",
        "dqnlab/CartPole-reward100-v1",
        "--seeds",
        "2",
        "--steps",
        "300",
        "--workers",
        "2",
        "--logdir",
        str(tmp_path),
        "--name",
        "ab",
        "--quiet",
        *FAST,
    )
    assert out.returncode == 0, out.stderr
    exp = tmp_path / "ab"
    runs = sorted(p.parent.relative_to(exp).as_posix() for p in exp.rglob("run.json"))
    assert runs == [
        f"{arm}/dqnlab-CartPole-reward100-v1/seed_{s}"
        for arm in ("clipped_delta_relu", "huber_relu")
        for s in (0, 1)
    ]
    experiment = json.loads((exp / "experiment.json").read_text())
    assert experiment["presets"] == ["clipped_delta_relu", "huber_relu"] and experiment["seeds"] == [0, 1]
    # The compare table: one row per arm under the env's header line, then the board command.
    lines = out.stdout.splitlines()
    assert lines[0].startswith("dqnlab/CartPole-reward100-v1")
    rows = {line.split()[0]: line.split() for line in lines[2:4]}
    assert set(rows) == {"clipped_delta_relu", "huber_relu"}
    assert rows["huber_relu"][1] == "2/2"
    header = lines[1].split()
    blocked = header.index("blocked") + 2  # "final return" and "2/2 done" are two words each
    assert (
        float(rows["huber_relu"][blocked + 2]) == 0.0 and float(rows["clipped_delta_relu"][blocked + 2]) > 0.5
    )
    assert f"dqnlab board {exp}" in out.stdout
    assert (exp / "_aggregate" / "huber_relu" / "dqnlab-CartPole-reward100-v1").is_dir()


def test_ab_progress_bar_shows_each_arms_mean_of_its_runs_last_returns():
    def spec(preset, env, seed):
        return RunSpec(preset, (), env, seed, 100, "runs", "x")

    specs = [spec(p, "CartPole-v1", s) for p in ("clipped", "huber") for s in (0, 1)]
    returns = ArmReturns(specs)
    assert returns.postfix(0) == "0/4 runs finished"
    returns.record(("huber", "CartPole-v1", 0), 20.0)
    returns.record(("clipped", "CartPole-v1", 1), 9.0)
    returns.record(("huber", "CartPole-v1", 1), 30.0)
    returns.record(("huber", "CartPole-v1", 0), 40.0)  # a later episode replaces the earlier one
    assert returns.postfix(1) == "return clipped 9.0, huber 35.0 | 1/4 runs finished"
    two_envs = ArmReturns([spec("huber", "CartPole-v1", 0), spec("huber", "Acrobot-v1", 0)])
    two_envs.record(("huber", "Acrobot-v1", 0), -500.0)
    assert two_envs.postfix(0) == "return huber@Acrobot-v1 -500.0 | 0/2 runs finished"


def test_ctrl_c_stops_cleanly_and_keeps_what_was_logged(tmp_path):
    import signal
    import time

    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from dqnlab.cli import main; "
        f"sys.exit(main(['train', 'huber_relu', '--logdir', {str(tmp_path)!r}, '--name', 'c', '--quiet']))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    run_json = tmp_path / "c" / "huber_relu" / "CartPole-v1" / "seed_0" / "run.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(run_json.parent.glob("events.out.tfevents.*")):
        time.sleep(0.2)
    time.sleep(3)  # let it train a little
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    info = json.loads(run_json.read_text())
    assert info["status"] == "interrupted" and 0 < info["env_steps"] < 50_000
    from dqnlab.rundir import read_run

    assert read_run(run_json.parent).scalars("episode/return")  # flushed on the way out


def test_ctrl_c_on_ab_stops_every_run_and_marks_it_interrupted(tmp_path):
    """Ctrl-C in a terminal sends SIGINT to the whole process group: the parent and every run's process."""
    import os
    import signal
    import time

    args = ["ab", "huber_relu", "squared_relu", "--seeds", "2", "--steps", "50000", "--workers", "2"]
    args += ["--logdir", str(tmp_path), "--name", "c", "--quiet"]
    # As a terminal would have it: SIGINT handled (a shell running this suite in the background ignores it,
    # and an ignored SIGINT is inherited; a handled one is reset to the default in the spawned runs).
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        f"from dqnlab.cli import main; sys.exit(main({args!r}))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((tmp_path / "c").rglob("events.out.tfevents.*"))) < 2:
        time.sleep(0.2)
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    statuses = {p.parent.parent.parent.name + "/" + p.parent.name: json.loads(p.read_text())["status"]
                for p in (tmp_path / "c").rglob("run.json")}  # fmt: skip
    assert len(statuses) == 2 and set(statuses.values()) == {"interrupted"}, (
        statuses
    )  # queued runs never start


def start_ab(tmp_path, name: str, steps: int) -> subprocess.Popen:
    """`dqnlab ab huber_relu squared_relu`, one seed each, on two workers, in the background."""
    args = ["ab", "huber_relu", "squared_relu", "--seeds", "1", "--steps", str(steps), "--workers", "2"]
    args += ["--logdir", str(tmp_path), "--name", name, "--quiet"]
    return subprocess.Popen(
        [sys.executable, "-m", "dqnlab.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_events(run_dirs, seconds: float = 120, settle: float = 2.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not all(list(d.glob("events.out.tfevents.*")) for d in run_dirs):
        assert time.monotonic() < deadline, "the runs logged nothing"
        time.sleep(0.2)
    time.sleep(settle)  # let them train a little


def test_sigterm_stops_train_like_ctrl_c(tmp_path):
    """`kill`, `docker stop` and job schedulers send SIGTERM: the run is flushed and says so."""
    import signal

    args = ["train", "huber_relu", "--logdir", str(tmp_path), "--name", "t", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "dqnlab.cli", *args], stderr=subprocess.PIPE, text=True)
    run = tmp_path / "t" / "huber_relu" / "CartPole-v1" / "seed_0"
    wait_for_events([run])
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "stopped by SIGTERM" in err, err
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and info["error"] == "stopped by SIGTERM"
    from dqnlab.rundir import read_run

    assert read_run(run).scalars("episode/return")  # flushed on the way out


def test_runs_stop_cleanly_when_their_ab_parent_is_killed(tmp_path):
    """SIGKILL of `dqnlab ab` itself: no run trains on as an orphan; each records 'interrupted'."""
    import os
    import time

    proc = start_ab(tmp_path, "o", steps=200_000)
    runs = [tmp_path / "o" / arm / "CartPole-v1" / "seed_0" for arm in ("huber_relu", "squared_relu")]
    wait_for_events(runs)
    pids = [json.loads((run / "run.json").read_text())["pid"] for run in runs]
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 90
    while any(json.loads((run / "run.json").read_text())["status"] == "running" for run in runs):
        assert time.monotonic() < deadline, "a run went on training without its parent"
        time.sleep(0.2)
    for run, pid in zip(runs, pids, strict=True):
        info = json.loads((run / "run.json").read_text())
        assert info["status"] == "interrupted" and info["error"] == "stopped by SIGTERM", info
        while time.monotonic() < deadline:  # and the process is gone
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"run process {pid} still alive")


def test_a_killed_run_is_recorded_failed_and_the_others_finish(tmp_path):
    """SIGKILL (what the out-of-memory killer sends) one run's process in the middle of an A/B."""
    import os
    import signal

    proc = start_ab(tmp_path, "k", steps=10_000)
    victim = tmp_path / "k" / "squared_relu" / "CartPole-v1" / "seed_0"
    wait_for_events([victim], settle=0.5)  # a 10k-step run lasts a few seconds: kill it well before its end
    os.kill(json.loads((victim / "run.json").read_text())["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err  # not every run is done
    killed = json.loads((victim / "run.json").read_text())
    assert killed["status"] == "failed" and "SIGKILL" in killed["error"]
    survivor = json.loads((tmp_path / "k" / "huber_relu" / "CartPole-v1" / "seed_0" / "run.json").read_text())
    assert survivor["status"] == "done" and survivor["env_steps"] == 10_000
    assert "squared_relu" in out and "failed: the run's process was killed by SIGKILL" in out  # the summary
    from dqnlab.rundir import read_run

    assert read_run(victim).scalars("episode/return")  # what it logged before it died is kept


def test_deterministic_reruns_log_identical_scalars(tmp_path):
    from dqnlab.events import read_series

    args = ["train", "huber_relu", "--steps", "1500", "--deterministic", "--logdir", str(tmp_path)]
    args += ["--quiet", "--set", "diagnostics.probe_every=64"]
    # The two reruns side by side (one thread each in deterministic mode): each on its own core.
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "dqnlab.cli", *args, "--name", name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    }
    logged = []
    try:
        for name, proc in procs.items():
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err
            run = next((tmp_path / name).rglob("seed_0"))
            assert json.loads((run / "run.json").read_text())["deterministic"] is True
            series = read_series(run).items()
            logged.append({t: v.tolist() for t, (_, v) in series if not t.startswith("perf/")})
    finally:
        for proc in procs.values():
            proc.kill()
            proc.communicate(timeout=60)
    assert len(logged[0]) > 50 and logged[0] == logged[1]  # every tag, every value, bit for bit


def test_board_serves_the_runs_on_localhost_and_stops_on_ctrl_c(tmp_path):
    import signal
    import socket
    import time
    import urllib.request

    import dqnlab

    cfg = dqnlab.load_preset(
        "huber_relu",
        {
            "train.learning_starts": 50,
            "train.train_every": 50,
            "train.gradient_steps": 2,
            "diagnostics.every": 2,
        },
    )
    for seed in (0, 1):
        dqnlab.train(cfg, seed=seed, steps=120, logdir=tmp_path, name="b")
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        f"from dqnlab.cli import main; sys.exit(main(['board', {str(tmp_path / 'b')!r}, '--port', '{port}']))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        runs, deadline = [], time.monotonic() + 90
        while time.monotonic() < deadline and len(runs) < 2:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2) as r:
                    runs = json.loads(r.read())
            except OSError:
                time.sleep(0.5)
        assert sorted(runs) == ["huber_relu/CartPole-v1/seed_0", "huber_relu/CartPole-v1/seed_1"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugins_listing", timeout=5) as r:
            plugins = json.loads(r.read())
        assert plugins["scalars"]["enabled"] and plugins["hparams"]["enabled"]
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/" in out


def test_board_refuses_a_directory_without_runs(tmp_path):
    out = dqnlab_cmd("board", str(tmp_path))
    assert out.returncode == 2 and "no TensorBoard event files" in out.stderr
    out = dqnlab_cmd("board", str(tmp_path / "missing"))
    assert out.returncode == 2 and "no such directory" in out.stderr


@pytest.fixture(scope="module")
def board_run(tmp_path_factory):
    """A tiny finished run for `dqnlab board` to be pointed at."""
    import dqnlab

    cfg = dqnlab.load_preset(
        "huber_relu", {"train.learning_starts": 50, "train.train_every": 50, "diagnostics.every": 2}
    )
    logdir = tmp_path_factory.mktemp("board")
    dqnlab.train(cfg, seed=0, steps=120, logdir=logdir, name="b")
    return logdir / "b"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "host, port, message",
    [
        ("not..a..host", None, "cannot serve on host 'not..a..host': not a valid host name"),
        ("nosuchhost.invalid", None, "cannot serve on host 'nosuchhost.invalid': it does not resolve"),
        ("192.0.2.1", None, "cannot serve on host '192.0.2.1': not an address of this machine"),  # TEST-NET-1
        ("", None, "empty host"),
        ("127.0.0.1", "99999", "port 99999 is out of range"),
        ("127.0.0.1", "busy", "the port is already in use"),
    ],
    ids=["malformed-host", "unresolvable-host", "foreign-address", "empty-host", "port-range", "port-in-use"],
)
def test_board_refuses_a_host_or_port_it_cannot_serve_on_before_starting(board_run, host, port, message):
    """One line and exit 2, before TensorBoard starts (none of its start-up lines); nothing left running."""
    import os
    import socket

    with socket.socket() as busy:
        if port == "busy":
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = str(busy.getsockname()[1])
        port = port or str(_free_port())
        proc = subprocess.Popen(
            [sys.executable, "-m", "dqnlab.cli", "board", str(board_run), "--host", host, "--port", port],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 2, err
        assert err.startswith("dqnlab: error: ") and err.count("\n") == 1 and message in err, err
        assert out == "" and "Traceback" not in err
        with pytest.raises(ProcessLookupError):  # no TensorBoard (nor anything else) left in its group
            os.killpg(proc.pid, 0)
    if int(port) <= 65535:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(port))) != 0  # nobody serving on it now


def test_a_run_that_raises_is_reported_with_where_it_raised(tmp_path, monkeypatch, capsys):
    """Your env (or network) raising mid-run: `dqnlab train` reports the failed run as `ab` does, says where
    the error was raised, and keeps the whole traceback in run.json, no traceback printed. An error before
    the run exists (here `train` itself raising) still propagates."""
    import dqnlab.trainer
    from dqnlab.cli import main

    def sensor(*args, **kwargs):
        raise RuntimeError("sensor disconnected")

    monkeypatch.setattr(dqnlab.trainer, "run_loop", sensor)
    argv = ["train", "huber_relu", "--steps", "50", "--quiet", "--checkpoint-every", "0"]
    argv += ["--logdir", str(tmp_path)]
    assert main([*argv, "--name", "x", *FAST]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("failed: ") and lines[1] == "  RuntimeError: sensor disconnected", out
    assert lines[2].startswith(f"  raised at {__file__}:") and " in sensor;" in lines[2], out
    assert "Traceback" not in out + err
    info = json.loads(next(tmp_path.rglob("run.json")).read_text())
    assert info["status"] == "failed" and "raise RuntimeError" in info["traceback"]

    monkeypatch.setattr(dqnlab.trainer, "train", sensor)
    with pytest.raises(RuntimeError, match="sensor disconnected"):
        main([*argv, "--name", "y", *FAST])
