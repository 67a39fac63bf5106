"""`dqnlab sweep` and `dqnlab compare --map`: grids parsed and type-checked (bad input one line, exit 2),
cells named readably, a real sweep whose verdict map flags dead ReLUs exactly where the logged
`act_dead_frac` says so, a killed sweep resumed to the same maps, and `--stop-on-fatal`."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import dqnlab_cmd

from dqnlab import checkpoint, cli, halving
from dqnlab.config import ConfigError
from dqnlab.doctor import warning_line
from dqnlab.doctor_rules import rule_dead_relu
from dqnlab.early_stop import fatal_finding
from dqnlab.events import read_series
from dqnlab.halving import rung_steps, survivors
from dqnlab.sweep import Axis, cells, parse_grid, plan_sweep

# huber_relu draws its biases as PyTorch does; a bias axis needs them constant
CONSTANT_BIASES = "network.bias_init_kind=constant"
# huber_relu with every hidden bias at 0 (healthy) and at -3 (hidden_1 dead from the start); probes every
# 512 env steps, so a 3000-step run has the doctor's evidence.
SWEEP = [
    "sweep",
    "huber_relu",
    "--set",
    CONSTANT_BIASES,
    "--grid",
    "network.bias_init=0,-3",
    "--seeds",
    "1",
    "--steps",
    "3000",
]
SWEEP += ["--set", "diagnostics.probe_every=256", "--deterministic", "--quiet"]
SWEEP += ["--checkpoint-every", "500", "--checkpoint-replay"]  # the first long before a run ends
CELLS = ("huber_relu@bias_init=0", "huber_relu@bias_init=-3")


def test_grid_values_lists_and_ranges():
    assert parse_grid("optimizer.learning_rate=1e-4, 1e-3,1e-2").values == ("1e-4", "1e-3", "1e-2")
    assert parse_grid("network.hidden=[64,64],[256]").values == ("[64,64]", "[256]")
    log = parse_grid("optimizer.learning_rate=log:1e-4:1e-1:7").values
    assert log == ("0.0001", "0.000316", "0.001", "0.00316", "0.01", "0.0316", "0.1")
    assert parse_grid("network.bias_init=lin:0:-3:4").values == ("0", "-1", "-2", "-3")  # integers
    assert parse_grid("loss.bound=lin:0.5:2.0:4").values == ("0.5", "1.0", "1.5", "2.0")
    assert parse_grid("replay.capacity=log:100:10000:3").values == ("100", "1000", "10000")
    assert parse_grid("network.bias_init=-1").values == ("-1",)  # one value: an axis all the same
    assert parse_grid("env=CartPole-v1,dqnlab/CartPole-reward10-v1").key == "env"


def run_cli(*args: str) -> tuple[int, str]:
    """`dqnlab ARGS` in this process: (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(list(args))
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


@pytest.mark.parametrize(
    "grid, says",
    [
        (["--grid", "optimizer.learning_rate"], "expected section.key=v1,v2"),
        (["--grid", "optimizer.learning_rate="], "no values after '='"),
        (["--grid", "optimizer.learning_rate=1e-3,,1e-2"], "an empty value"),
        (["--grid", "optimizer.learning_rate=1e-3,1e-3"], "a value is given twice"),
        (["--grid", "optimizer.nope=1,2"], "unknown key 'nope'"),
        (["--grid", "network.bias_init=0,abc"], "network.bias_init=abc (huber_relu): network.bias_init"),
        (["--grid", "optimizer.learning_rate=-1,1"], "must be >= 0.0"),
        (["--grid", "network.hidden=[64,64"], "unbalanced brackets"),
        (["--grid", "optimizer.learning_rate=log:0:1:3"], "a log range needs START and STOP > 0"),
        (["--grid", "optimizer.learning_rate=log:1e-4:1e-1:x"], "N must be an integer"),
        (["--grid", "train.gamma=0.9", "--grid", "train.gamma=0.8"], "the same key is given twice"),
        (["--grid", "train.gamma=0.9,0.99", "--set", "train.gamma=0.8"], "also given to --set"),
        (
            ["--grid", "train.batch_size=64,512", "--grid", "replay.capacity=100,1000"],
            "exceeds replay.capacity",
        ),
        (["--grid", "env=CartPole-v1", "--env", "CartPole-v1"], "give one of them"),
        ([], "a sweep needs --grid"),
        (["--grid", "network.bias_init=0", "--steps", "0"], "must be >= 1"),
        (
            ["--grid", "network.bias_init=0", "--halving", "3", "--rungs", "5", "--steps", "10"],
            "leaves no step",
        ),
        (
            ["--grid", "network.bias_init=0", "--halving", "2", "--checkpoint-every", "0"],
            "--checkpoint-every 0",
        ),
        (["--grid", "network.bias_init=0", "--rungs", "4"], "it needs --halving"),
        (["--grid", "network.bias_init=0", "--halving", "1"], "must be >= 2"),
    ],
)
def test_bad_grids_get_one_line_and_exit_2_before_anything_is_written(tmp_path, grid, says):
    code, err = run_cli("sweep", "huber_relu", *grid, "--logdir", str(tmp_path / "runs"), "--name", "x")
    assert code == 2 and says in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_map_flags_need_map(tmp_path):
    code, err = run_cli("compare", str(tmp_path), "--x", "network.bias_init")
    assert code == 2 and "need --map" in err and err.count("\n") == 1


def test_cells_are_named_readably_uniquely_and_safely_for_a_file_system():
    grid = [parse_grid("optimizer.learning_rate=1e-3,1e-2"), parse_grid("network.bias_init=0,-1")]
    names = [c.name for c in cells(["huber_relu"], grid)]
    assert names == [
        "huber_relu@learning_rate=1e-3,bias_init=0",
        "huber_relu@learning_rate=1e-3,bias_init=-1",
        "huber_relu@learning_rate=1e-2,bias_init=0",
        "huber_relu@learning_rate=1e-2,bias_init=-1",
    ]
    odd = [Axis("network.hidden", ("[64, 64]",)), Axis("env", ("dqnlab/CartPole-reward10-v1",))]
    (cell,) = cells(["agents/huber_relu.toml"], odd)
    assert cell.name == "huber_relu@hidden=64x64,env=dqnlab-CartPole-reward10-v1"
    assert cell.overrides == ("network.hidden=[64, 64]", "env=dqnlab/CartPole-reward10-v1")
    same_short = [Axis("loss.kind", ("huber",)), Axis("network.kind", ("mlp",))]  # both end in .kind
    assert cells(["huber_relu"], same_short)[0].name == "huber_relu@loss.kind=huber,network.kind=mlp"
    two = cells(["huber_relu", "squared_relu"], [Axis("network.bias_init", ("0",))])
    assert [c.coords for c in two] == [
        (("network.bias_init", "0"), ("preset", "huber_relu")),
        (("network.bias_init", "0"), ("preset", "squared_relu")),
    ]
    with pytest.raises(ConfigError, match="would share the directory"):
        cells(["huber_relu"], [Axis("network.hidden", ("[64,64]", "[64, 64]"))])
    with pytest.raises(ConfigError, match="more than a directory name holds"):
        cells(["huber_relu"], [Axis("loss.kind", ("x" * 300,))])


def test_a_one_value_axis_plans_one_cell_per_preset(tmp_path):
    specs, grid = plan_sweep(["huber_relu"], [parse_grid("network.bias_init=-1")], None, [0, 1], 100,
                             tmp_path, "one", overrides=[CONSTANT_BIASES])  # fmt: skip
    assert [c.name for c in grid] == ["huber_relu@bias_init=-1"]
    assert [(s.name, s.cell, s.seed) for s in specs] == [
        ("huber_relu@bias_init=-1", ("network.bias_init=-1",), seed) for seed in (0, 1)
    ]
    assert specs[0].config().network.bias_init == -1.0 and specs[0].config().name == grid[0].name


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    logdir = tmp_path_factory.mktemp("sweep")
    out = dqnlab_cmd(*SWEEP, "--logdir", str(logdir), "--name", "whole")
    assert out.returncode == 0, out.stderr
    assert "dead_relu" in out.stdout  # the text verdict map
    return logdir / "whole"


def map_json(exp: Path) -> dict:
    out = dqnlab_cmd("compare", str(exp), "--map", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def dead_by_the_numbers(run_dir: Path) -> bool:
    """docs/doctor.md's dead_relu, from the logged series: some layer's late-half median of act_dead_frac
    >= 0.9, or >= 0.7 having risen >= 0.2 over its first probe (at least 3 probes in the late half)."""
    for tag, (_, values) in read_series(run_dir).items():
        if not tag.startswith("act_dead_frac/"):
            continue
        late = values[len(values) // 2 :]
        median = float(np.median(late))
        if len(late) >= 3 and (median >= 0.9 or (median >= 0.7 and median - values[0] >= 0.2)):
            return True
    return False


def test_the_verdict_map_flags_dead_relus_where_act_dead_frac_says_so_and_nowhere_else(whole):
    data = map_json(whole)
    assert data["axes"] == [{"key": "network.bias_init", "values": ["-3", "0"]}]  # numbers ascending
    (group,) = data["groups"]
    assert sorted(c["name"] for c in group["cells"]) == sorted(CELLS)
    flagged = {}
    for cell in group["cells"]:
        for seed, result in cell["per_seed"].items():
            run_dir = whole / cell["name"] / "CartPole-v1" / f"seed_{seed}"
            rules = {f["rule"] for f in result["findings"]}
            assert ("dead_relu" in rules) == dead_by_the_numbers(run_dir), (cell["name"], rules)
            flagged[cell["name"]] = "dead_relu" in rules
        assert cell["verdict"]["pathological"] == flagged[cell["name"]]
    assert flagged == {"huber_relu@bias_init=-3": True, "huber_relu@bias_init=0": False}  # both seen
    info = json.loads((whole / CELLS[1] / "CartPole-v1" / "seed_0" / "run.json").read_text())
    assert info["preset"] == CELLS[1] and info["config"]["network"]["bias_init"] == -3.0


def test_the_map_is_drawn_as_png_and_as_self_contained_html(whole, tmp_path):
    for name in ("map.png", "map.html"):
        out = dqnlab_cmd("compare", str(whole), "--map", "--plot", str(tmp_path / name))
        assert out.returncode == 0, out.stderr
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "map.html").read_text()
    assert "data:image/png;base64," in page and all(c in page for c in CELLS) and "dead_relu" in page
    code, err = run_cli("compare", str(whole), "--map", "--x", "learning_rate")
    assert code == 2 and "'learning_rate' is not an axis" in err and err.count("\n") == 1


def comparable(data: dict) -> list[dict]:
    """The map's cells: everything but the paths, which name the experiment."""
    return [cell for group in data["groups"] for cell in group["cells"]]


def test_a_killed_sweep_resumes_to_the_same_maps(whole):
    logdir = whole.parent
    cmd = [sys.executable, "-m", "dqnlab.cli", *SWEEP, "--logdir", str(logdir), "--name", "cut"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = [logdir / "cut" / cell / "CartPole-v1" / "seed_0" for cell in CELLS]
    deadline = time.monotonic() + 120
    while not any(checkpoint.latest(run) is not None for run in runs):
        assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint was written"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # the sweep itself: its runs stop with it (SIGTERM from the kernel)
    proc.communicate(timeout=60)
    wait_for_runs_to_stop(runs)
    assert any(json.loads((r / "run.json").read_text())["status"] != "done" for r in runs if r.is_dir())
    out = dqnlab_cmd(*SWEEP, "--logdir", str(logdir), "--name", "cut", "--resume")
    assert out.returncode == 0, out.stderr
    assert comparable(map_json(logdir / "cut")) == comparable(map_json(whole))


def wait_for_runs_to_stop(runs: list[Path]) -> None:
    deadline = time.monotonic() + 60
    for run in runs:
        while (run / "run.json").is_file() and time.monotonic() < deadline:
            info = json.loads((run / "run.json").read_text() or "{}")
            if info.get("status") != "running" or not pid_alive(info.get("pid")):
                break
            time.sleep(0.1)


def pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    return True


def test_stop_on_fatal_reads_the_live_doctors_lines():
    probes = np.arange(1, 7) * 512
    dead = {
        "act_dead_frac/hidden_1": (probes, np.ones(6)),
        "act_dead_frac/hidden_0": (probes, np.full(6, 0.96)),
    }
    findings = {f.subject: f for f in rule_dead_relu(dead, {})}
    stop = fatal_finding(warning_line(findings["hidden_1"]))
    assert stop is not None and (stop.rule, stop.subject, stop.step) == ("dead_relu", "hidden_1", 3072)
    assert fatal_finding(warning_line(findings["hidden_0"])) is None  # 96% dead: not every unit
    assert fatal_finding(warning_line(findings["hidden_1"], grew=True)) is not None
    assert fatal_finding("doctor: error blocked_td_gradient at env step 5,000: 86% blocked") is None


def test_stop_on_fatal_stops_a_dead_cell_records_why_and_resume_leaves_it(tmp_path):
    args = ["sweep", "huber_relu", "--grid", "network.bias_init=-3", "--seeds", "1", "--steps", "8000"]
    args += ["--set", CONSTANT_BIASES]
    args += ["--set", "diagnostics.probe_every=256", "--stop-on-fatal", "--quiet"]
    args += ["--logdir", str(tmp_path), "--name", "stop"]
    out = dqnlab_cmd(*args)
    assert out.returncode == 0, out.stderr  # stopped early is a result, not a failure
    run = tmp_path / "stop" / "huber_relu@bias_init=-3" / "CartPole-v1" / "seed_0"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and info["env_steps"] < 8000
    # with PyTorch-width kernels and biases at -3 the first layer is the first all dead (He-width: hidden_1)
    assert info["stopped_early"] == {"by": "--stop-on-fatal", "rule": "dead_relu", "subject": "hidden_0",
                                     "step": info["stopped_early"]["step"]}  # fmt: skip
    assert "stopped by --stop-on-fatal: dead_relu [hidden_0]" in info["error"]
    (cell,) = map_json(tmp_path / "stop")["groups"][0]["cells"]
    assert cell["verdict"]["stopped_early"] == 1 and cell["verdict"]["category"] == "dead_relu"
    assert cell["statuses"] == {"stopped early": 1}
    again = dqnlab_cmd(*args, "--resume")
    assert again.returncode == 0, again.stderr
    assert json.loads((run / "run.json").read_text()) == info  # a result: left as it is


def test_halving_rungs_and_survivors():
    assert rung_steps(10_000, 3, 3) == [1111, 3333, 10_000]
    assert rung_steps(4000, 2, 2) == [2000, 4000]
    with pytest.raises(ConfigError, match="leaves no step"):
        rung_steps(5, 3, 3)
    scores = {"a": 10.0, "b": float("nan"), "c": 30.0, "d": 20.0, "e": 5.0}
    assert survivors(scores, 2) == ["c", "d", "a"]  # ceil(5 / 2), best first, NaN last


@pytest.mark.slow  # ~11 s end to end (`survivors` is tested above); CI runs it with `-m slow`
def test_halving_cuts_the_worse_cells_at_the_rung_and_trains_the_best_to_the_end(tmp_path):
    args = ["sweep", "huber_relu", "--grid", "network.bias_init=0,-3", "--seeds", "1", "--steps", "2000"]
    args += ["--set", CONSTANT_BIASES]
    args += ["--halving", "2", "--rungs", "2", "--quiet", "--logdir", str(tmp_path), "--name", "sh"]
    args += ["--set", "train.learning_starts=200", "--set", "train.epsilon_decay_steps=1000"]
    out = dqnlab_cmd(*args)
    assert out.returncode == 0, out.stderr
    infos = {
        cell: json.loads((tmp_path / "sh" / cell / "CartPole-v1" / "seed_0" / "run.json").read_text())
        for cell in CELLS
    }
    (kept,) = [c for c, info in infos.items() if info["status"] == "done"]
    (cut,) = [c for c, info in infos.items() if info["status"] == "interrupted"]
    assert infos[kept]["env_steps"] == 2000 and infos[kept]["resumed_from"] == [1000]
    stopped = infos[cut]["stopped_early"]
    assert stopped["by"] == "--halving" and stopped["rung"] == 0 and stopped["step"] == 1000
    assert 1000 < infos[cut]["env_steps"] <= 1500  # paused at the first episode end past the rung
    mean_return = {c: halving.score(tmp_path / "sh" / c / "CartPole-v1" / "seed_0", 1000) for c in CELLS}
    assert mean_return[kept] >= mean_return[cut] and stopped["score"] == round(mean_return[cut], 3)
    cells_ = {c["name"]: c for c in map_json(tmp_path / "sh")["groups"][0]["cells"]}
    assert cells_[cut]["verdict"]["stops"] == {"cut at 1,000 steps": 1}
    assert cells_[kept]["statuses"] == {"done": 1}
    again = dqnlab_cmd(*args, "--resume")  # nothing left to do: no run changes
    assert again.returncode == 0, again.stderr
    assert {c: json.loads((tmp_path / "sh" / c / "CartPole-v1" / "seed_0" / "run.json").read_text())
            for c in CELLS} == infos  # fmt: skip


@pytest.mark.parametrize(
    "script, args",
    [
        ("sweep_dead_relu", ["--map", "exists.png"]),
        ("sweep_clipped_delta", ["--map", "map.txt"]),
        ("sweep_rnn", ["--seeds", "0"]),
    ],
)
def test_the_map_scripts_refuse_bad_input_in_one_line_before_anything_runs(tmp_path, script, args):
    (tmp_path / "exists.png").write_bytes(b"kept")
    script_path = Path(__file__).parents[1] / "scripts" / f"{script}.py"
    done = subprocess.run([sys.executable, str(script_path), *args, "--logdir", "runs"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.png"]
    assert (tmp_path / "exists.png").read_bytes() == b"kept"
