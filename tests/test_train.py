"""Short runs through the public API, read back from the event files with TensorBoard's own reader."""

from __future__ import annotations

import json
import math

import gymnasium
import numpy as np
import pytest
from metrics_doc import undocumented

import dqnlab
from dqnlab.config import ConfigError, preset_names
from dqnlab.rundir import RunDirExists

SHORT = {
    "train.learning_starts": 100,
    "train.train_every": 50,
    "train.gradient_steps": 4,
    "train.eval_every": 0,
    "train.eval_episodes": 1,
    "diagnostics.every": 4,
}


def short_cfg(name: str, **extra):
    return dqnlab.load_preset(name, {**SHORT, **extra})


# The Atari (cnn) presets need their own env and the atari extra: tests/test_atari.py trains them.
@pytest.mark.parametrize("name", [n for n in preset_names() if dqnlab.load_preset(n).network.kind != "cnn"])
def test_every_preset_trains_a_few_steps_and_logs_its_core_tags(tmp_path, name):
    res = dqnlab.train(short_cfg(name), env="CartPole-v1", seed=0, steps=300, logdir=tmp_path, name="t")
    assert res.status == "done" and res.env_steps == 300
    assert res.run_dir == tmp_path / "t" / name / "CartPole-v1" / "seed_0"
    tags = set(res.tags())
    core = {
        "loss/td",
        "q/mean",
        "q/max",
        "q/target_mean",
        "td/abs_mean",
        "td/abs_max",
        "td/grad_blocked_frac",
        "td/beyond_bound_frac",
        "grad_norm/global",
        "grad/nonfinite",
        "episode/return",
        "episode/length",
        "eval/return",
        "perf/env_steps_per_s",
        "perf/updates_per_s",
        "charts/epsilon",
    }
    per_var = {
        f"{fam}/{layer}/{p}"
        for fam in ("grad_norm", "grad_zero_frac", "grad_nonfinite", "weight_norm", "update_ratio")
        for layer in [f"hidden_{i}" for i in range(len(res.config["network"]["hidden"]))] + ["q_head"]
        for p in ("kernel", "bias")
    }
    assert core | per_var <= tags, sorted((core | per_var) - tags)
    for tag in tags:
        assert all(math.isfinite(v) for _, v in res.scalars(tag)), tag
    # (300 - 100) // 50 + 1 = 5 bursts of 4 updates; every burst is measured (every = 4).
    assert [s for s, _ in res.scalars("loss/td")] == [100, 150, 200, 250, 300]
    # perf/* spans two measured bursts, so the first measured burst writes none.
    assert [s for s, _ in res.scalars("perf/updates_per_s")] == [150, 200, 250, 300]


@pytest.mark.parametrize(
    "name, env_id, width", [("huber_relu", "FrozenLake-v1", 16), ("lstm", "Blackjack-v1", 45)]
)
def test_discrete_and_composite_observations_train_one_hot(tmp_path, name, env_id, width):
    """FrozenLake's Discrete(16) and Blackjack's Tuple reach the MLP and the LSTM one-hot encoded
    (dqnlab.envs.needs_flattening): the first layer reads that many inputs, and the panel and probes log."""
    res = dqnlab.train(short_cfg(name), env=env_id, seed=0, steps=300, logdir=tmp_path, name="t")
    assert res.status == "done" and res.env_steps == 300
    assert res.run_dir.parts[-2] == env_id
    from dqnlab import checkpoint

    assert checkpoint.load(res.run_dir).arrays["online/0"].shape[0] == width  # the first layer's inputs
    assert all(math.isfinite(v) for _, v in res.scalars("loss/td"))
    assert res.scalars("eval/return")


def test_run_json_records_the_run(tmp_path):
    res = dqnlab.train(short_cfg("huber_relu"), seed=1, steps=200, logdir=tmp_path, name="exp")
    info = json.loads((res.run_dir / "run.json").read_text())
    assert info["status"] == "done" and info["seed"] == 1 and info["env"] == "CartPole-v1"
    assert info["env_steps"] == 200 and info["updates"] == 3 * 4
    assert info["config"]["loss"]["kind"] == "huber"
    assert info["versions"]["tensorflow"].startswith("2.21")
    assert "eval_return" in info["final"] and "td/grad_blocked_frac" in info["final"]["diagnostics"]
    assert json.loads((tmp_path / "exp" / "experiment.json").read_text())["presets"] == ["huber_relu"]
    assert dqnlab.read_run(res.run_dir).final == res.final


def test_headline_arms_show_the_bug_on_reward_scaled_cartpole(tmp_path):
    """Rewards x100 put almost every |delta| beyond 1: the forward clip blocks, Huber never does."""
    results = {
        name: dqnlab.train(
            short_cfg(name), env="dqnlab/CartPole-reward100-v1", seed=0, steps=400, logdir=tmp_path, name="ab"
        )
        for name in ("clipped_delta_relu", "huber_relu")
    }
    clipped = [v for _, v in results["clipped_delta_relu"].scalars("td/grad_blocked_frac")]
    beyond = [v for _, v in results["clipped_delta_relu"].scalars("td/beyond_bound_frac")]
    huber = [v for _, v in results["huber_relu"].scalars("td/grad_blocked_frac")]
    assert min(clipped) > 0.5
    # Every sample beyond the bound is blocked (no delta sits exactly on it).
    assert clipped == pytest.approx(beyond)
    assert huber == [0.0] * len(huber)


def test_existing_run_dir_is_never_overwritten(tmp_path):
    dqnlab.train(short_cfg("huber_relu"), steps=50, logdir=tmp_path, name="same")
    with pytest.raises(RunDirExists, match="already exists"):
        dqnlab.train(short_cfg("huber_relu"), steps=50, logdir=tmp_path, name="same")


def test_bad_env_fails_before_writing_anything(tmp_path):
    with pytest.raises(ValueError, match="unknown environment id"):
        dqnlab.train(short_cfg("huber_relu"), env="NoSuchEnv-v0", steps=50, logdir=tmp_path, name="x")
    assert not any(tmp_path.iterdir())


def test_divergence_ends_as_diverged_with_the_logged_data_kept(tmp_path):
    # A learning rate of 1e30 with plain SGD blows the weights up to inf within a few updates.
    cfg = short_cfg(
        "squared_relu",
        **{"optimizer.kind": "sgd", "optimizer.learning_rate": 1e30, "train.grad_clip_norm": 0.0},
    )
    res = dqnlab.train(cfg, steps=2_000, logdir=tmp_path, name="nan")
    assert res.status == "diverged"
    assert "non-finite" in res.error
    assert res.info["divergence"]["step"] == res.env_steps
    assert res.info["divergence"]["nonfinite_weights"]  # names the variables that blew up
    assert res.env_steps < 2_000
    assert res.scalars("episode/return")  # what was logged before is still there


def test_a_diverged_run_names_where_the_divergence_began(tmp_path):
    """With global-norm clipping on, the NaN spreads to every variable's applied gradient and weights, so
    run.json's nonfinite_weights lists them all; `divergence.origin` names the first update of the burst
    whose raw gradient went non-finite and the variables it went non-finite in, in model order."""
    cfg = short_cfg("squared_relu", **{"optimizer.learning_rate": 1e12, "train.grad_clip_norm": 10.0})
    res = dqnlab.train(cfg, steps=2_000, logdir=tmp_path, name="nan")
    assert res.status == "diverged"
    origin = res.info["divergence"]["origin"]
    tags = [
        "hidden_0/kernel",
        "hidden_0/bias",
        "hidden_1/kernel",
        "hidden_1/bias",
        "q_head/kernel",
        "q_head/bias",
    ]
    assert origin["variables"] and set(origin["variables"]) <= set(tags)
    assert origin["variables"] == sorted(origin["variables"], key=tags.index)  # model order
    assert origin["variable"] == origin["variables"][0] and isinstance(origin["update_in_burst"], int)
    assert f"began in the raw gradient of {origin['variable']}" in res.error


def test_failure_is_recorded_then_raised(tmp_path, monkeypatch):
    import dqnlab.trainer

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(dqnlab.trainer, "run_loop", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        dqnlab.train(short_cfg("huber_relu"), steps=50, logdir=tmp_path, name="crash")
    info = json.loads(next(tmp_path.rglob("run.json")).read_text())
    assert (
        info["status"] == "failed" and "simulated crash" in info["error"] and "Traceback" in info["traceback"]
    )


def test_bad_steps_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        dqnlab.train(short_cfg("huber_relu"), steps=0, logdir=tmp_path)


def test_every_logged_tag_is_documented(tmp_path):
    cfg = short_cfg("huber_relu", **{"train.grad_clip_norm": 1.0, "diagnostics.probe_every": 4})
    res = dqnlab.train(cfg, steps=200, logdir=tmp_path, name="doc")
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(res.run_dir), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    histograms = [t for t in acc.Tags()["tensors"] if t.startswith("hist/")]
    assert {
        "hist/grad/hidden_0/kernel",
        "hist/log10_abs_grad/q_head/kernel",
        "hist/activation/hidden_1",
    } <= set(histograms)
    assert undocumented(res.tags() + histograms) == [], "not defined in docs/metrics.md"
    assert {"grad_norm/preclip_global", "grad/clipped"} <= set(res.tags())


def probe_run(tmp_path, name: str):
    cfg = short_cfg(name, **{"diagnostics.probe_every": 4, "train.gradient_steps": 4})
    return dqnlab.train(cfg, steps=1_500, logdir=tmp_path, name="panel")


def values(res, tag: str) -> list[float]:
    return [v for _, v in res.scalars(tag)]


def test_killed_relus_are_counted_dead_and_the_healthy_preset_is_not(tmp_path):
    killed, healthy = probe_run(tmp_path, "relu_dead"), probe_run(tmp_path, "huber_relu")
    # PyTorch's init (the presets') leaves ~70% of the healthy hidden_1 silent on CartPole's 4 inputs from
    # the start (docs/doctor.md, dead_relu); biases at -3 silence every unit of both layers.
    for layer, healthy_at_most in (("hidden_0", 0.3), ("hidden_1", 0.8)):
        assert min(values(killed, f"act_dead_frac/{layer}")) >= 0.99
        assert max(values(healthy, f"act_dead_frac/{layer}")) <= healthy_at_most
    # A dead unit's kernel column and bias get exactly zero gradient.
    assert min(values(killed, "grad_zero_frac/hidden_1/bias")) >= 0.9


def test_saturated_sigmoids_vanish_the_first_layers_gradient(tmp_path):
    saturated, control = probe_run(tmp_path, "sigmoid_saturated"), probe_run(tmp_path, "sigmoid_glorot")
    for layer in ("hidden_0", "hidden_1"):
        assert min(values(saturated, f"act_saturated_frac/{layer}")) >= 0.9
        assert values(control, f"act_saturated_frac/{layer}")[0] <= 0.2
        assert (
            max(values(saturated, f"act_deriv_mean/{layer}"))
            < 0.01
            < values(control, f"act_deriv_mean/{layer}")[0]
        )
    # First-over-last hidden kernel gradient: orders of magnitude below 1 (measured ~1e-5), and 100x below
    # the control's (whose sigmoids shrink the signal too, at most 0.25 per layer: measured ~1e-2).
    ratio, control_ratio = (
        np.median(values(saturated, "grad/depth_ratio")),
        np.median(values(control, "grad/depth_ratio")),
    )
    assert max(values(saturated, "grad/depth_ratio")) < 1e-3
    assert ratio < control_ratio / 100


def test_probes_never_change_what_training_does(tmp_path):
    """The probes draw their batches from replay with their own generator: a run probed every 64 updates
    trains exactly like one never probed (the same measured losses and returns, the same final weights)."""
    from dqnlab import checkpoint

    base = {"train.learning_starts": 500, "train.eval_every": 1000, "diagnostics.every": 32}
    runs = {}
    for probe_every in (0, 64):
        cfg = dqnlab.load_preset("huber_relu", {**base, "diagnostics.probe_every": probe_every})
        runs[probe_every] = dqnlab.train(cfg, steps=3000, logdir=tmp_path, name=f"p{probe_every}")
    quiet, probed = runs[0], runs[64]
    assert not any(t.startswith("act_") for t in quiet.tags()) and "act_dead_frac/hidden_0" in probed.tags()
    for tag in ("loss/td", "grad_norm/global", "q/mean", "eval/return", "episode/return"):
        assert quiet.scalars(tag) == probed.scalars(tag), tag
    with (
        np.load(checkpoint.latest(quiet.run_dir) / "arrays.npz") as a,
        np.load(checkpoint.latest(probed.run_dir) / "arrays.npz") as b,
    ):
        assert all(np.array_equal(a[k], b[k]) for k in a.files if k.startswith("online/"))


def test_every_run_of_10k_steps_gets_the_probes_the_doctor_needs(tmp_path):
    """relu_dead as the README runs it, shortened: probe_every (2,560 updates, ~5k env steps) probes a
    10k-step run once; the floor of min_probes = 8 probes every (10,000 - 1,000) / 8 = 1,125 env steps, at
    the first burst past each interval, plus the run's last burst: enough for the doctor to see the dead
    layer."""
    from dqnlab.doctor import examine

    cfg = dqnlab.load_preset("relu_dead", {"train.eval_every": 0})
    res = dqnlab.train(cfg, steps=10_000, logdir=tmp_path, name="floor")
    probes = [step for step, _ in res.scalars("act_dead_frac/hidden_0")]
    assert len(probes) >= 8 and probes[-1] == 9984  # the last burst: 39 x 256 env steps
    gaps = np.diff(probes)
    assert gaps.max() <= 1125 + cfg.train.train_every, probes
    report = examine(res.run_dir)
    assert report.verdict == "findings" and {f.rule for f in report.runs[0].findings} == {"dead_relu"}
    assert res.final["doctor_not_enough_evidence"] == []
    sparse = dqnlab.load_preset("relu_dead", {"train.eval_every": 0, "diagnostics.min_probes": 0})
    res = dqnlab.train(sparse, steps=10_000, logdir=tmp_path, name="sparse")
    assert [s for s, _ in res.scalars("act_dead_frac/hidden_0")] == [5888, 9984]  # probe_every's, the end


def test_a_sparse_update_cadence_still_gets_the_measured_bursts_the_doctor_needs(tmp_path):
    """The forward clip with one update every 100 env steps: `every` = 128 updates measures one burst in a
    12k-step run (110 updates), too few for any gradient rule. min_measured = 8 measures the first burst past
    each (12,000 - 1,000) / 8 = 1,375 env steps, and the doctor sees the blocked TD gradient; with 0, the
    doctor says it has not enough evidence."""
    from dqnlab.doctor import examine

    sparse = {"train.train_every": 100, "train.gradient_steps": 1, "train.target_update_every": 100}
    cfg = dqnlab.load_preset("clipped_delta_relu", {**sparse, "train.eval_every": 0})
    assert cfg.diagnostics.min_measured == 8
    res = dqnlab.train(cfg, steps=12_000, logdir=tmp_path, name="floor")
    measured = [step for step, _ in res.scalars("td/grad_blocked_frac")]
    # each the first burst (a multiple of 100) at or past a multiple of 1,375
    assert measured == [1400, 2800, 4200, 5500, 6900, 8300, 9700, 11000]
    assert {f.rule for f in examine(res.run_dir).runs[0].findings} == {"blocked_td_gradient"}
    off = dqnlab.load_preset(
        "clipped_delta_relu", {**sparse, "train.eval_every": 0, "diagnostics.min_measured": 0}
    )
    res = dqnlab.train(off, steps=12_000, logdir=tmp_path, name="every")
    with pytest.raises(KeyError, match="not logged"):  # the 128th update would come at env step 13,700
        res.scalars("td/grad_blocked_frac")
    assert examine(res.run_dir).verdict == "not enough evidence"


class NaNRewardCartPole(gymnasium.Wrapper):
    """CartPole whose env step 1,500 (counted over the env's life) gives a NaN reward."""

    def __init__(self):
        super().__init__(gymnasium.make("CartPole-v1"))
        self.steps = 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        return obs, float("nan") if self.steps == 1_500 else reward, terminated, truncated, info


def test_a_divergence_the_env_caused_is_blamed_on_the_env_not_the_network(tmp_path):
    """A NaN reward reaches the loss through replay: run.json's divergence counts the env's non-finite data
    (1 in rewards), its error line and the doctor's finding name the env and its fix; a divergence of the
    learning's own (a learning rate of 1e12) counts none and keeps the usual fix."""
    from dqnlab.doctor import examine

    gymnasium.register("dqnlab-test/NaNRewardCartPole-v0", entry_point=NaNRewardCartPole)
    small = {"train.eval_every": 0, "train.learning_starts": 1_000, "network.hidden": [32, 32]}
    cfg = dqnlab.load_preset("huber_relu", small)
    res = dqnlab.train(cfg, env="dqnlab-test/NaNRewardCartPole-v0", steps=4_000, logdir=tmp_path, name="nan")
    info = json.loads((res.run_dir / "run.json").read_text())
    assert info["status"] == "diverged"
    assert info["divergence"]["nonfinite_env_data"] == {"rewards": 1}
    assert (
        "the env put non-finite values in replay (1 in rewards): the env's, not the network's"
        in info["error"]
    )
    (finding,) = [f for f in examine(res.run_dir).runs[0].findings if f.rule == "divergence"]
    assert "(1 in rewards): the env's, not the network's" in finding.summary and "Fix the env" in finding.fix
    assert finding.evidence["nonfinite_env_entries"] == 1
    lr = dqnlab.load_preset("huber_relu", {**small, "optimizer.learning_rate": 1e12})
    res = dqnlab.train(lr, steps=2_000, logdir=tmp_path, name="lr")
    info = json.loads((res.run_dir / "run.json").read_text())
    assert info["status"] == "diverged" and info["divergence"]["nonfinite_env_data"] == {}
    (finding,) = [f for f in examine(res.run_dir).runs[0].findings if f.rule == "divergence"]
    assert "env" not in finding.summary and finding.fix.startswith("Lower the learning rate")
