"""`dqnlab compare` and the aggregates, on synthetic run directories whose numbers are known.

Expected values are worked out here independently of dqnlab.stats: t quantiles from printed tables, the
paired-test p-value from the closed form of Student's t with 2 degrees of freedom."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.scalar.summary_v2 import scalar_pb
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from dqnlab.aggregate import AGGREGATE_DIR, EPISODE_BINS, refresh_aggregates, update_aggregates
from dqnlab.compare import compare, format_comparison, to_json
from dqnlab.events import iter_events, read_series, read_series_checked
from dqnlab.layout import BAND_CATEGORY, build_layout
from dqnlab.rundir import write_json_atomic
from dqnlab.stats import area_under_curve, first_step_reaching, mean_ci, paired_difference

T975 = {2: 4.302652729911275, 3: 3.182446305284263}  # Student t 97.5% quantiles (printed tables)


def t_cdf_df2(t: float) -> float:
    return 0.5 + t / (2 * math.sqrt(2 + t * t))  # closed form for 2 degrees of freedom


# ---- stats ----------------------------------------------------------------------------------------------


def test_mean_ci_is_the_t_interval():
    est = mean_ci([1.0, 2.0, 3.0, 4.0])
    half = T975[3] * math.sqrt(5 / 3) / 2  # sd = sqrt(5/3), n = 4
    assert est.n == 4 and est.mean == 2.5
    assert est.ci_low == pytest.approx(2.5 - half, rel=1e-9) and est.ci_high == pytest.approx(
        2.5 + half, rel=1e-9
    )
    one = mean_ci([7.0])
    assert one.mean == 7.0 and math.isnan(one.ci_low) and mean_ci([]).n == 0


def test_paired_difference_and_its_p_value():
    d = paired_difference([3.0, 5.0, 4.0], [1.0, 2.0, 2.0])  # differences 2, 3, 2
    sd = math.sqrt(1 / 3)
    t = (7 / 3) / (sd / math.sqrt(3))  # = 7
    assert d.mean == pytest.approx(7 / 3) and t == pytest.approx(7.0)
    assert d.p_value == pytest.approx(2 * (1 - t_cdf_df2(t)), rel=1e-9)  # 0.0198
    assert d.ci_low == pytest.approx(7 / 3 - T975[2] * sd / math.sqrt(3), rel=1e-9)
    assert paired_difference([2.0, 3.0], [1.0, 2.0]).p_value == 0.0  # every seed +1 exactly
    assert paired_difference([1.0, 2.0], [1.0, 2.0]).p_value == 1.0
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 2.0])


def test_area_under_curve_and_first_step_reaching():
    assert area_under_curve([0, 10, 20], [0.0, 10.0, 10.0]) == pytest.approx(7.5)  # (50 + 100) / 20
    assert area_under_curve([5], [3.0]) == 3.0 and math.isnan(area_under_curve([], []))
    assert first_step_reaching([10, 20, 30], [1.0, 5.0, 9.0], 5.0) == 20
    assert first_step_reaching([10, 20], [1.0, 2.0], 5.0) is None


# ---- synthetic experiments -------------------------------------------------------------------------------


def write_run(run_dir, preset, seed, series: dict, status="done", env="CartPole-v1", **extra):
    """A run directory as dqnlab writes it: run.json plus one event file of scalars."""
    run_dir.mkdir(parents=True)
    writer = EventFileWriter(str(run_dir))
    for tag, points in series.items():
        for step, value in points:
            writer.add_event(event_pb2.Event(step=step, wall_time=time.time(), summary=scalar_pb(tag, value)))
    writer.close()
    info = {"preset": preset, "env": env, "seed": seed, "status": status, "env_steps": 100, "final": {}}
    write_json_atomic(run_dir / "run.json", {**info, **extra})


EVAL_STEPS = [25, 50, 75, 100]
# eval curves: arm A flat, arm B rising; per seed offsets make the paired differences known
CURVES = {
    "arm_a": {0: [10, 10, 10, 10], 1: [20, 20, 20, 20], 2: [30, 30, 30, 30]},
    "arm_b": {0: [10, 50, 100, 120], 1: [20, 60, 110, 150], 2: [30, 70, 120, 130]},
}
BLOCKED = {"arm_a": 0.8, "arm_b": 0.0}


@pytest.fixture
def experiment(tmp_path):
    exp = tmp_path / "exp"
    for preset, seeds in CURVES.items():
        for seed, values in seeds.items():
            series = {
                "eval/return": list(zip(EVAL_STEPS, values, strict=True)),
                "td/grad_blocked_frac": [(s, BLOCKED[preset] + 0.01 * seed) for s in (10, 20, 30)],
                "act_dead_frac/hidden_0": [(40, 0.1 * seed), (80, 0.2 * seed)],
                "act_dead_frac/hidden_1": [(40, 0.5), (80, 0.05)],
                "grad_norm/global": [(10, 1.0 + seed), (20, 3.0)],
                "episode/return": [(7 + seed, 9.0 + seed), (60 + seed, 30.0 + seed)],
            }
            write_run(exp / preset / "CartPole-v1" / f"seed_{seed}", preset, seed, series)
    write_json_atomic(exp / "experiment.json", {"presets": ["arm_a", "arm_b"]})
    return exp


def test_compare_numbers_match_an_independent_computation(experiment):
    result = compare(experiment, threshold=100)
    (env,) = result.envs
    a, b = env.arms
    assert [a.preset, b.preset] == ["arm_a", "arm_b"] and result.problems == []
    finals_b = np.array([120.0, 150.0, 130.0])
    assert b.final.mean == pytest.approx(finals_b.mean())
    assert b.final.half_width == pytest.approx(T975[2] * finals_b.std(ddof=1) / math.sqrt(3))
    # AUC of seed 0 of arm_b by hand: trapezoids (30 + 75 + 110) * 25 / 75
    assert b.per_seed[0]["auc"] == pytest.approx((30 + 75 + 110) * 25 / 75)
    assert b.reached == 3 and b.steps_to_threshold == [75, 75, 75] and a.reached == 0
    assert a.diagnostics["blocked_frac_mean"] == pytest.approx(0.81)  # 0.8 + mean(0, .01, .02)
    assert a.diagnostics["dead_frac_max"] == pytest.approx(np.mean([0.5, 0.5, 0.5]))  # hidden_1 at step 40
    assert a.diagnostics["grad_norm_max"] == pytest.approx(np.mean([3.0, 3.0, 3.0]))
    diff = env.paired["arm_b"]["final_return"]
    d = finals_b - np.array([10.0, 20.0, 30.0])  # 110, 130, 100
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    assert diff.mean == pytest.approx(d.mean()) and diff.p_value == pytest.approx(2 * (1 - t_cdf_df2(t)))
    text = format_comparison(result)
    assert "arm_b" in text and "paired differences vs arm_a" in text and "3/3 @ 75" in text
    data = to_json(result)
    assert data["envs"][0]["paired"]["arm_b"]["final_return"]["n"] == 3
    json.dumps(data, allow_nan=False)  # NaN never reaches the JSON


def test_broken_and_partial_runs_are_reported_not_fatal(experiment):
    write_run(
        experiment / "arm_a" / "CartPole-v1" / "seed_3",
        "arm_a",
        3,
        {"eval/return": [(25, 5.0)]},
        "failed",
        error="RuntimeError: boom",
    )
    write_run(
        experiment / "arm_b" / "CartPole-v1" / "seed_3", "arm_b", 3, {"eval/return": [(25, 5.0)]}, "running"
    )
    (experiment / "arm_b" / "CartPole-v1" / "seed_4").mkdir()  # crashed before run.json
    (experiment / "arm_a" / "CartPole-v1" / "seed_5").mkdir()
    (experiment / "arm_a" / "CartPole-v1" / "seed_5" / "run.json").write_text("{not json")
    result = compare(experiment)
    a, b = result.envs[0].arms
    assert a.final.n == 3 and b.final.n == 3  # only done seeds count
    assert a.statuses == {"done": 3, "failed": 1} and b.statuses == {"done": 3, "running": 1}
    problems = "\n".join(result.problems)
    assert "RuntimeError: boom" in problems and "still running" in problems
    assert "seed_4: no run.json" in problems and "seed_5: unreadable run.json" in problems
    assert result.envs[0].paired["arm_b"]["final_return"].n == 3
    assert "3/4 done (1 failed)" in format_comparison(result)


def test_a_running_run_whose_process_is_gone_is_reported_killed(experiment):
    import socket

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its pid names no process now
    for seed, pid in ((3, gone.pid), (4, os.getpid())):
        run = experiment / "arm_b" / "CartPole-v1" / f"seed_{seed}"
        host = socket.gethostname()
        write_run(run, "arm_b", seed, {"eval/return": [(25, 5.0)]}, "running", host=host, pid=pid)
    problems = "\n".join(compare(experiment).problems)
    assert "seed_3: killed without a word at 100 env steps or later" in problems
    assert "seed_4: still running (100 env steps so far)" in problems  # this very process: alive


def flip_a_byte_of_record(path, index: int) -> None:
    """Change one byte inside the data of record `index` of a TFRecord file, as a bad disk would."""
    data = bytearray(path.read_bytes())
    pos = 0
    for _ in range(index):
        pos += 12 + int.from_bytes(data[pos : pos + 8], "little") + 4
    data[pos + 12 + 3] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_event_file_is_read_up_to_the_damage_and_listed_not_counted(experiment):
    damaged = experiment / "arm_a" / "CartPole-v1" / "seed_3"
    write_run(damaged, "arm_a", 3, {"eval/return": [(25, 5.0), (50, 6.0), (75, 7.0)]})
    (events,) = damaged.glob("events.out.tfevents.*")
    assert read_series(damaged)["eval/return"][1].tolist() == [5.0, 6.0, 7.0]  # whole before the flip
    flip_a_byte_of_record(events, 2)  # record 0 is the file_version, 1 the point at step 25
    series, (damage,) = read_series_checked(damaged)
    assert series["eval/return"][1].tolist() == [5.0]  # the records before the damage, none after
    assert "(its data fails its CRC)" in str(damage) and "read the 2 records before it" in str(damage)
    result = compare(experiment)
    arm_a = result.envs[0].arms[0]
    assert arm_a.final.n == 3 and arm_a.statuses == {"done": 3, "damaged": 1}  # listed, not counted
    assert any(
        p.startswith(f"{damaged}: damaged: {events.name}: damaged event record at byte ")
        for p in result.problems
    )
    for command, status, says in (
        ("compare", 0, "0/1 done (1 damaged)"),
        ("doctor", 1, "ERROR damaged_event_file"),
    ):
        alone = subprocess.run(
            [sys.executable, "-m", "dqnlab.cli", command, str(damaged)], capture_output=True, text=True
        )
        assert alone.returncode == status and says in alone.stdout, (command, alone.stdout, alone.stderr)
        assert alone.stderr == "", alone.stderr


def test_a_directory_of_broken_runs_says_why_in_one_line(tmp_path):
    run = tmp_path / "exp" / "arm" / "CartPole-v1" / "seed_0"
    run.mkdir(parents=True)
    (run / "run.json").write_text("{not json")
    out = subprocess.run(
        [sys.executable, "-m", "dqnlab.cli", "compare", str(tmp_path / "exp")], capture_output=True, text=True
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "holds no readable dqnlab run" in out.stderr and "seed_0: unreadable run.json" in out.stderr


def test_a_run_json_that_is_a_directory_is_a_problem_line_not_a_crash(experiment):
    from dqnlab.doctor import examine

    odd = experiment / "arm_a" / "CartPole-v1" / "seed_3"
    (odd / "run.json").mkdir(parents=True)
    line = f"{odd}: unreadable run.json (IsADirectoryError: Is a directory)"
    result = compare(experiment)
    assert line in result.problems and result.envs[0].arms[0].final.n == 3  # the other seeds are compared
    assert line in examine(experiment).problems
    for command in ("compare", "doctor"):
        alone = subprocess.run(
            [sys.executable, "-m", "dqnlab.cli", command, str(odd)], capture_output=True, text=True
        )
        assert alone.returncode == 2 and alone.stderr.count("\n") == 1, (command, alone.stderr)
        assert "Traceback" not in alone.stderr and line in alone.stderr, alone.stderr


def test_a_run_json_that_cannot_be_read_is_a_problem_line(experiment, monkeypatch):
    """Any OSError reading run.json (no permission, an I/O error): tested by patching, as root reads all."""
    from pathlib import Path

    locked = experiment / "arm_b" / "CartPole-v1" / "seed_1" / "run.json"
    read_text = Path.read_text

    def refuse(self, *args, **kwargs):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)
    result = compare(experiment)
    assert f"{locked.parent}: unreadable run.json (PermissionError: Permission denied)" in result.problems
    assert [arm.final.n for arm in result.envs[0].arms] == [3, 2]


def test_aggregate_runs_match_the_per_seed_data(experiment):
    written = update_aggregates(experiment)
    assert sorted(p.relative_to(experiment).as_posix() for p in written) == [
        f"{AGGREGATE_DIR}/arm_a/CartPole-v1",
        f"{AGGREGATE_DIR}/arm_b/CartPole-v1",
    ]
    agg = read_series(experiment / AGGREGATE_DIR / "arm_b" / "CartPole-v1")
    matrix = np.array(list(CURVES["arm_b"].values()), np.float64)
    steps, mean = agg["eval/return"]
    assert steps.tolist() == EVAL_STEPS and np.allclose(mean, matrix.mean(axis=0))
    assert np.allclose(agg["eval/return/min"][1], matrix.min(axis=0))
    assert np.allclose(agg["eval/return/max"][1], matrix.max(axis=0))
    # Episodes end at different steps per seed: each seed is averaged within equal-width, right-closed bins
    # of [0, last step], then the seeds present in a bin are averaged.
    edges = sorted({math.ceil(62 * i / EPISODE_BINS) for i in range(EPISODE_BINS + 1)})  # integer edges
    expected = {}
    for seed in range(3):
        for step, value in [(7 + seed, 9.0 + seed), (60 + seed, 30.0 + seed)]:
            i = next(k for k in range(EPISODE_BINS) if edges[k] < step <= edges[k + 1])
            expected.setdefault(math.ceil(edges[i + 1]), []).append(value)
    steps, mean = agg["episode/return"]
    assert steps.tolist() == sorted(expected)
    assert mean.tolist() == pytest.approx([np.mean(expected[s]) for s in sorted(expected)])
    assert not any(t.startswith("perf/") for t in agg)


def test_aggregate_holds_the_custom_scalars_layout(experiment):
    update_aggregates(experiment)
    (path,) = (experiment / AGGREGATE_DIR / "arm_a" / "CartPole-v1").glob("events.out.tfevents.*")
    layouts = [
        v
        for e in iter_events(path)
        for v in e.summary.value
        if v.metadata.plugin_data.plugin_name == "custom_scalars"
    ]
    assert len(layouts) == 1
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = layout_pb2.Layout.FromString(layouts[0].tensor.string_val[0])
    titles = [c.title for c in layout.category]
    assert titles[:2] == ["Learning", BAND_CATEGORY]
    charts = {chart.title for c in layout.category for chart in c.chart}
    assert {"eval/return", "td/grad_blocked_frac", "act_dead_frac/hidden_0", "eval/return (band)"} <= charts


def test_layout_charts_each_tag_once_and_only_tags_that_exist():
    tags = [
        "grad_norm/global",
        "grad_norm/hidden_0/kernel",
        "grad_norm/preclip_global",
        "eval/return",
        "eval/return/min",
    ]
    layout = build_layout(tags)
    charts = [chart.title for c in layout.category for chart in c.chart]
    plain = [t for t in charts if not t.endswith("(band)")]
    assert (
        sorted(plain)
        == sorted(set(plain))
        == sorted(
            ["grad_norm/global", "grad_norm/hidden_0/kernel", "grad_norm/preclip_global", "eval/return"]
        )
    )
    by_title = {chart.title: chart for c in layout.category for chart in c.chart}
    assert list(by_title["eval/return"].multiline.tag) == ["^eval/return$"]
    band = by_title["eval/return (band)"].margin.series[0]
    assert (band.value, band.lower, band.upper) == ("eval/return", "eval/return/min", "eval/return/max")


def test_refresh_rewrites_only_stale_aggregates(experiment):
    assert refresh_aggregates(experiment)  # none yet
    assert refresh_aggregates(experiment) == []  # fresh
    time.sleep(0.01)
    write_run(experiment / "arm_a" / "CartPole-v1" / "seed_9", "arm_a", 9, {"eval/return": [(25, 1.0)]})
    assert refresh_aggregates(experiment)


def test_compare_command_json_plot_and_bad_input(experiment, tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "dqnlab.cli", "compare", *args], capture_output=True, text=True
        )

    out = run(str(experiment), "--json", "--threshold", "100")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["envs"][0]["arms"][1]["reached_threshold"] == 3
    html = tmp_path / "report.html"
    out = run(str(experiment), "--plot", str(html))
    assert out.returncode == 0, out.stderr
    assert "data:image/png;base64," in html.read_text() and "paired differences" in html.read_text()
    assert (experiment / AGGREGATE_DIR / "arm_b" / "CartPole-v1").is_dir()
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, message in [
        ((str(tmp_path / "missing"),), "no such directory"),
        ((str(html),), "report.html is a file, not a directory"),
        ((str(empty),), "holds no dqnlab runs"),
        ((str(experiment), "--plot", "x.pdf"), "--plot wants a .png or .html"),
        ((str(experiment), "--plot", str(html)), "exists; pass --force to overwrite it"),
    ]:
        out = run(*args)
        assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    html.write_text("stale")
    assert run(str(experiment), "--plot", str(html), "--force").returncode == 0
    assert "data:image/png;base64," in html.read_text()


def saturation_experiment(tmp_path, activations: dict[str, dict]):
    """One seed per arm; every arm logs act_saturated_frac (a ReLU layer logs 0, as the probes do)."""
    exp = tmp_path / "sat"
    for preset, config in activations.items():
        series = {
            "eval/return": [(50, 10.0), (100, 20.0)],
            "act_saturated_frac/hidden_0": [(40, 0.0 if "relu" in preset else 0.9), (80, 0.0)],
            "act_dead_frac/hidden_0": [(40, 0.1), (80, 0.2)],
        }
        write_run(exp / preset / "CartPole-v1" / "seed_0", preset, 0, series, config=config)
    return exp


RELU = {"network": {"kind": "mlp", "activation": "relu"}, "recurrent": None}
SIGMOID = {"network": {"kind": "mlp", "activation": "sigmoid"}, "recurrent": None}
LSTM = {"network": {"kind": "rnn", "activation": "relu"}, "recurrent": {"cell": "lstm", "activation": "tanh"}}
RELU_RNN = {
    "network": {"kind": "rnn", "activation": "relu"},
    "recurrent": {"cell": "simple", "activation": "relu"},
}


def panel_titles(experiment) -> list[str]:
    from dqnlab.plots import env_panels

    (env,) = compare(experiment).envs
    return [title for title, _, _ in env_panels(env)]


def test_the_saturated_panel_only_where_an_arm_can_saturate(tmp_path):
    from dqnlab.plots import can_saturate, figure_png

    relu_only = saturation_experiment(tmp_path / "a", {"huber_relu": RELU, "relu_dead": RELU})
    assert panel_titles(relu_only) == ["eval return", "max dead fraction (hidden layers)"]
    with_sigmoid = saturation_experiment(tmp_path / "b", {"huber_relu": RELU, "sigmoid_saturated": SIGMOID})
    assert "max saturated fraction (hidden layers)" in panel_titles(with_sigmoid)
    assert figure_png(compare(with_sigmoid)).startswith(b"\x89PNG")
    # An RNN cell's tanh counts; a simple cell on ReLU in a ReLU network does not.
    assert can_saturate(LSTM) and not can_saturate(RELU_RNN) and not can_saturate(RELU)


def test_a_plot_of_runs_that_logged_no_eval_return_has_no_legend_warning(tmp_path):
    """Runs that never evaluated (a divergence before the first evaluation) draw no eval curve: the plot
    is written without matplotlib's 'No artists with labels' warning on stderr."""
    import warnings

    from dqnlab.plots import figure_png

    exp = tmp_path / "exp"
    write_run(
        exp / "huber_relu" / "CartPole-v1" / "seed_0", "huber_relu", 0, {"loss/td": [(10, 1.0), (20, 0.5)]}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        assert figure_png(compare(exp)).startswith(b"\x89PNG")
