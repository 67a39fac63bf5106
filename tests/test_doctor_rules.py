"""The doctor's rules on hand-built series: each fires where it must, not on a near miss, not on one spike.

Series are numpy arrays built here, modelled on real 50k-step CartPole runs of the shipped presets (192
measured updates, one per burst, every 256 env steps from step 1024; 9 activation probes, every 20th burst).
No test reads a real run; docs/doctor.md and scripts/eval_doctor.py judge the rules on real runs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from dqnlab.doctor_rules import (
    RULES,
    THRESHOLDS,
    Finding,
    diagnose,
    evidence_gaps,
    rule_blocked_td_gradient,
    rule_dead_relu,
    rule_divergence,
    rule_dormant_growth,
    rule_exploding_gradient,
    rule_learning_never_starts,
    rule_q_overestimation,
    rule_saturated_activation,
    rule_update_ratio,
    rule_vanishing_gradient,
)

N, PROBES = 192, 9  # measured updates and probes of a 50k-step CartPole run
VARS = [f"{layer}/{kind}" for layer in ("hidden_0", "hidden_1", "q_head") for kind in ("kernel", "bias")]


def measured(values) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, np.float64)
    return 1024 + 256 * np.arange(len(values), dtype=np.int64), values


def probed(values) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, np.float64)
    return 5888 + 5120 * np.arange(len(values), dtype=np.int64), values


def run_json(activation="relu", loss="huber", status="done", **extra) -> dict:
    config = {
        "network": {"kind": "mlp", "activation": activation, "hidden": [256, 256]},
        "loss": {"kind": loss, "bound": 1.0},
        "train": {"gamma": 0.99, "grad_clip_norm": 10.0},
        "diagnostics": {"dormant_tau": 0.025},
    }
    return {"status": status, "error": None, "env_steps": 50000, "config": config, **extra}


def healthy_series(seed: int = 0) -> dict:
    """Modelled on a 50k-step huber_relu run (seed 0): learns, hidden_1 ~50% dead from the start."""
    rng = np.random.default_rng(seed)
    noise = rng.lognormal(0.0, 0.5, N)
    t = np.linspace(0.0, 1.0, N)
    q_max = 110 * (1 - np.exp(-4 * t)) + 2 + rng.normal(0, 2, N)
    s = {
        "td/grad_blocked_frac": measured(np.zeros(N)),
        "loss/td": measured(0.3 * noise),
        "q/max": measured(q_max),
        "q/target_mean": measured(0.85 * q_max),
        "grad_norm/preclip_global": measured(5 * noise),
        "grad_norm/global": measured(np.minimum(5 * noise, 10.0)),
        "grad/depth_ratio": measured(2.0 * rng.lognormal(0.0, 0.3, N)),
        "grad/nonfinite": measured(np.zeros(N)),
        "act_dead_frac/hidden_0": probed(np.linspace(0.0, 0.03, PROBES)),
        "act_dead_frac/hidden_1": probed(np.linspace(0.47, 0.50, PROBES)),
        "act_dormant_frac/hidden_0": probed(np.linspace(0.004, 0.1, PROBES)),
        "act_dormant_frac/hidden_1": probed(np.linspace(0.52, 0.53, PROBES)),
        "act_saturated_frac/hidden_0": probed(np.zeros(PROBES)),
        "act_saturated_frac/hidden_1": probed(np.zeros(PROBES)),
        "act_deriv_mean/hidden_0": probed(np.linspace(0.43, 0.35, PROBES)),
        "act_deriv_mean/hidden_1": probed(np.linspace(0.31, 0.29, PROBES)),
        "episode/return": (np.arange(1, 101) * 400, np.linspace(10, 200, 100)),
        "episode/length": (np.arange(1, 101) * 400, np.linspace(10, 200, 100)),
    }
    for var in VARS:
        s[f"grad_norm/{var}"] = measured(noise)
        s[f"grad_zero_frac/{var}"] = measured(np.full(N, 0.05))
        s[f"update_ratio/{var}"] = measured(5e-4 * rng.lognormal(0.0, 0.4, N))
    return s


def clipped_series() -> dict:
    """Modelled on clipped_delta_relu seed 1: learns briefly, then every TD error is beyond the clip."""
    s = healthy_series()
    k = 12  # measured updates before the clip swallows everything (step ~4000)
    blocked = np.r_[np.linspace(0.0, 0.4, k), np.ones(N - k)]
    blocked[100] = 0.97  # as in the real run: the odd update still has a few errors inside the clip
    grad = np.where(blocked < 1, 1.0, 0.0)
    s["td/grad_blocked_frac"] = measured(blocked)
    s["loss/td"] = measured(np.where(blocked < 1, 0.5, 1.0))
    s["grad_norm/global"] = s["grad_norm/preclip_global"] = measured(grad)
    s["grad/depth_ratio"] = measured(np.where(grad > 0, 1.5, 0.0))
    s["q/max"] = measured(np.geomspace(2.4, 3000, N))  # the real seed 1 drifts to ~3000
    s["q/target_mean"] = measured(np.geomspace(1.2, 1400, N))
    s["act_dead_frac/hidden_1"] = probed(np.linspace(0.63, 0.73, PROBES))
    s["act_dormant_frac/hidden_0"] = probed([0.008, 0.12, 0.21, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25])
    for var in VARS:
        s[f"grad_norm/{var}"] = measured(grad)
        s[f"grad_zero_frac/{var}"] = measured(np.where(grad > 0, 0.05, 1.0))
        s[f"update_ratio/{var}"] = measured(np.where(grad > 0, 5e-4, 1e-9))  # Adam momentum after 0 grads
    return s


def ids(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.rule, f.subject) for f in findings]


# ---------------------------------------------------------------------------------------------------------
# Whole-run expectations


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_healthy_run_reports_nothing(seed):
    assert diagnose(healthy_series(seed), run_json()) == []


def test_clipped_delta_run_reports_blocked_td_gradient_only():
    s, run = clipped_series(), run_json(loss="clipped_delta_squared")
    assert ids(diagnose(s, run)) == [("blocked_td_gradient", "")]
    # The consequences are found by their own rules, then folded into the one cause:
    raw = {f.rule for rule in RULES for f in rule(s, run)}
    assert {"learning_never_starts", "q_overestimation"} <= raw


def test_missing_tags_and_empty_series_are_silent():
    assert diagnose({}, {}) == []
    empty = (np.zeros(0, np.int64), np.zeros(0))
    assert diagnose({tag: empty for tag in healthy_series()}, run_json()) == []


def test_finding_to_dict_and_sorting():
    s = healthy_series()
    s["act_dead_frac/hidden_1"] = probed(np.ones(PROBES))
    s["grad/nonfinite"] = measured(np.r_[np.zeros(N - 1), 3.0])
    s["update_ratio/q_head/bias"] = measured(np.full(N, 0.5))
    found = diagnose(s, run_json())
    assert ids(found) == [("divergence", ""), ("dead_relu", "hidden_1"), ("update_ratio", "q_head/bias")]
    d = found[0].to_dict()
    assert set(d) == {
        "rule",
        "severity",
        "subject",
        "first_step",
        "last_step",
        "evidence",
        "summary",
        "why",
        "fix",
    }
    assert json.loads(json.dumps(d)) == d


# ---------------------------------------------------------------------------------------------------------
# blocked_td_gradient


def test_blocked_pools_the_late_half_of_the_measured_fractions():
    s = {"td/grad_blocked_frac": measured([0.0, 0.0, 0.0, 0.0, 0.8, 0.9, 0.86, 1.0])}
    (f,) = rule_blocked_td_gradient(s, run_json(loss="clipped_delta_squared"))
    assert (f.rule, f.severity, f.subject) == ("blocked_td_gradient", "error", "")
    assert f.evidence["late_pooled_share"] == pytest.approx(0.89)  # (0.8 + 0.9 + 0.86 + 1.0) / 4
    assert (f.first_step, f.last_step) == (1024 + 4 * 256, 1024 + 7 * 256)
    assert (
        "89.00%" in f.summary and "4 measured updates" in f.summary and "clipped_delta_squared" in f.summary
    )


def bursts(blocked, nonzero) -> dict:
    return {
        "td/grad_blocked_count/burst_sum": measured(blocked),
        "td/nonzero_delta_count/burst_sum": measured(nonzero),
    }


def test_blocked_share_does_not_depend_on_the_batch_size():
    """Acrobot's clipped run: one goal transition in 128 sampled errors is blocked. At batch 128 each
    measured update's fraction is 1/128 = 0.0078; at batch 32 it is 1/32 on one update in four and 0 on the
    others. A median of fractions reads 0.0078 and 0: the pooled share reads 1/128 for both."""
    big = {"td/grad_blocked_frac": measured(np.full(40, 1 / 128))}
    small = {"td/grad_blocked_frac": measured(np.tile([1 / 32, 0, 0, 0], 10))}
    counted = bursts(np.full(40, 64.0), np.full(40, 8192.0))  # bursts of 64 x 128 samples: 64 blocked each
    shares = [
        rule_blocked_td_gradient(x, run_json())[0].evidence["late_pooled_share"]
        for x in (big, small, counted)
    ]
    assert shares == pytest.approx([1 / 128] * 3)


def test_blocked_counts_are_pooled_and_name_the_samples():
    # Late half: blocked 1 + 0 + 2 + 1 = 4 of 4 x 1000 nonzero errors = 0.1% (the threshold): a warning.
    (f,) = rule_blocked_td_gradient(bursts([0, 0, 0, 0, 1, 0, 2, 1], [1000] * 8), run_json())
    assert f.severity == "warning" and f.evidence["late_pooled_share"] == pytest.approx(4 / 4000)
    assert "4,000 sampled TD errors" in f.summary
    assert rule_blocked_td_gradient(bursts([0, 0, 0, 0, 1, 0, 2, 0], [1000] * 8), run_json()) == []  # 0.075%


def test_blocked_near_miss_and_one_blocked_update():
    near = {"td/grad_blocked_frac": measured(np.full(20, 0.0009))}
    assert rule_blocked_td_gradient(near, run_json()) == []
    # A healthy loss blocks exactly nothing, so one update in the late half with every error blocked is the
    # forward clip, not noise: 1/96 = 1.04% of the late half's errors, a warning.
    spike = np.zeros(N)
    spike[-5] = 1.0
    (f,) = rule_blocked_td_gradient({"td/grad_blocked_frac": measured(spike)}, run_json())
    assert f.severity == "warning" and f.evidence["late_pooled_share"] == pytest.approx(1 / 96)


def test_blocked_is_an_error_from_5_percent_or_when_the_largest_errors_are_far_beyond_the_bound():
    (moderate,) = rule_blocked_td_gradient({"td/grad_blocked_frac": measured(np.full(10, 0.3))}, run_json())
    assert moderate.severity == "error"
    rare = {"td/grad_blocked_frac": measured(np.full(10, 0.008))}
    assert rule_blocked_td_gradient(rare, run_json())[0].severity == "warning"
    # The same share, but the errors it blocks are 25x the bound of 1: Acrobot's goal transitions.
    (far,) = rule_blocked_td_gradient({**rare, "td/abs_max": measured(np.full(10, 25.0))}, run_json())
    assert far.severity == "error" and "25x the bound" in far.summary


# ---------------------------------------------------------------------------------------------------------
# dead_relu


def test_dead_relu_fires_when_almost_all_dead():
    s = {"act_dead_frac/hidden_1": probed([1.0] * 9), "act_dead_frac/hidden_0": probed([0.867] * 9)}
    (f,) = rule_dead_relu(s, run_json())
    assert (f.rule, f.subject, f.severity) == ("dead_relu", "hidden_1", "error")
    assert f.evidence["late_median"] == 1.0 and f.evidence["rise"] == 0.0


def test_dead_relu_fires_when_high_and_rising():
    s = {"act_dead_frac/hidden_1": probed([0.3, 0.4, 0.5, 0.6, 0.7, 0.72, 0.75, 0.78, 0.8])}
    (f,) = rule_dead_relu(s, run_json())
    assert f.evidence["late_median"] == pytest.approx(0.75)  # median of the last 5
    assert f.evidence["rise"] == pytest.approx(0.45)
    assert f.first_step == 5888 + 4 * 5120  # first probe at >= 0.7


def test_dead_relu_near_misses_and_spike():
    # healthy huber_relu: ~50% dead from the start; clipped_delta_relu: ~0.7 but no rise since probe 1
    for values in ([0.47] * 9, np.linspace(0.63, 0.73, 9), [0.5] * 8 + [1.0]):
        assert rule_dead_relu({"act_dead_frac/hidden_1": probed(values)}, run_json()) == []


def evaluated(values) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, np.float64)
    return 5000 * np.arange(1, len(values) + 1, dtype=np.int64), values


@pytest.mark.parametrize("rule", [rule_dead_relu, rule_dormant_growth])
def test_the_capacity_rules_are_silent_while_the_run_solves_its_task(rule):
    """FrozenLake-v1 (threshold 0.7), huber_relu, 30k steps: hidden_1 91% dead (82% at the first probe),
    hidden_0's dormant share rising by 0.4, and the greedy success rate 0.70-0.77 over the last evaluations:
    the live units suffice. Below the threshold, or with no threshold or too few evaluations, the rules
    judge as before."""
    s = {
        "act_dead_frac/hidden_1": probed([0.82, 0.86, 0.88, 0.9, 0.91, 0.91, 0.92, 0.91, 0.91]),
        "act_dormant_frac/hidden_0": probed([0.2, 0.25, 0.4, 0.5, 0.6, 0.62, 0.64, 0.65, 0.66]),
    }
    solved = {**s, "eval/return": evaluated([0.49, 0.70, 0.75, 0.73, 0.76, 0.77])}
    assert rule(solved, run_json(reward_threshold=0.7)) == []
    assert len(rule(solved, run_json(reward_threshold=0.8))) == 1  # late median 0.75: not solved
    assert len(rule(solved, run_json())) == 1  # no threshold known: no exemption
    assert len(rule(solved, run_json(reward_threshold=None))) == 1
    short = {**s, "eval/return": evaluated([0.75, 0.77])}  # one late evaluation: not enough to say
    assert len(rule(short, run_json(reward_threshold=0.7))) == 1


# ---------------------------------------------------------------------------------------------------------
# saturated_activation and vanishing_gradient


def saturated_series(sat=1.0, deriv=1.5e-7, depth=3e-4) -> dict:
    return {
        "act_saturated_frac/hidden_1": probed(np.full(PROBES, sat)),
        "act_deriv_mean/hidden_1": probed(np.full(PROBES, deriv)),
        "grad/depth_ratio": measured(np.full(N, depth)),
    }


def test_saturation_fires_on_saturated_sigmoid():
    (f,) = rule_saturated_activation(saturated_series(), run_json("sigmoid"))
    assert (f.rule, f.subject) == ("saturated_activation", "hidden_1")
    assert f.evidence["deriv_over_ceiling"] == pytest.approx(1.5e-7 / 0.25)
    assert f.evidence["depth_ratio"] == pytest.approx(3e-4)


def test_saturation_near_miss_like_sigmoid_glorot():
    # sigmoid_glorot's hidden_1: 94% saturated, derivative 0.007 (1/36 of the ceiling), depth ratio ~1
    assert rule_saturated_activation(saturated_series(0.94, 0.007, 1.0), run_json("sigmoid")) == []
    assert rule_saturated_activation(saturated_series(0.85, 1e-7, 3e-4), run_json("sigmoid")) == []
    assert rule_saturated_activation(saturated_series(), run_json("relu")) == []


def test_saturation_single_spike():
    s = saturated_series(0.5, 0.1, 1.0)
    s["act_saturated_frac/hidden_1"][1][-1] = 1.0
    s["act_deriv_mean/hidden_1"][1][-1] = 0.0
    assert rule_saturated_activation(s, run_json("sigmoid")) == []


def test_vanishing_fires_with_hand_computed_median():
    ratio = np.r_[np.full(10, 1.0), [1e-3, 2e-3, 5e-3, 4e-4, 3e-4, 2e-2, 1e-4, 1e-3, 6e-4, 2e-4]]
    (f,) = rule_vanishing_gradient({"grad/depth_ratio": measured(ratio)}, run_json())
    assert (f.rule, f.subject, f.severity) == ("vanishing_gradient", "hidden_0", "error")
    assert f.evidence["late_median_depth_ratio"] == pytest.approx(8e-4)  # mean of 6e-4 and 1e-3
    assert f.evidence["late_frac_below"] == pytest.approx(0.9)


def test_vanishing_from_layer_norms_when_depth_ratio_is_missing():
    s = {
        "grad_norm/hidden_0/kernel": measured(np.full(20, 1e-6)),
        "grad_norm/hidden_1/kernel": measured(np.ones(20)),
    }
    (f,) = rule_vanishing_gradient(s, run_json())
    assert f.evidence["late_median_depth_ratio"] == pytest.approx(1e-6)


def test_vanishing_near_miss_zero_gradients_and_spike():
    assert rule_vanishing_gradient({"grad/depth_ratio": measured(np.full(N, 0.011))}, run_json()) == []
    zeros = np.r_[np.ones(10), np.zeros(N - 10)]  # exactly zero: blocked / no-learning, not vanishing
    assert rule_vanishing_gradient({"grad/depth_ratio": measured(zeros)}, run_json()) == []
    spike = np.full(N, 2.0)
    spike[150] = 1e-9
    assert rule_vanishing_gradient({"grad/depth_ratio": measured(spike)}, run_json()) == []


def test_saturated_sigmoid_run_reports_saturation_and_vanishing_not_update_ratio():
    s = saturated_series()
    s["update_ratio/hidden_1/kernel"] = measured(np.full(N, 5e-7))  # a consequence of the saturation
    s["grad_norm/hidden_1/kernel"] = measured(np.full(N, 1e-10))
    found = ids(diagnose(s, run_json("sigmoid")))
    assert found == [("saturated_activation", "hidden_1"), ("vanishing_gradient", "hidden_0")]


# ---------------------------------------------------------------------------------------------------------
# exploding_gradient


def test_exploding_fires_on_repeated_spikes():
    norm = np.full(60, 5.0)
    norm[[20, 35, 50]] = [600.0, 2000.0, 501.0]
    (f,) = rule_exploding_gradient({"grad_norm/preclip_global": measured(norm)}, run_json())
    assert (f.rule, f.severity) == ("exploding_gradient", "error")
    assert f.evidence["spikes"] == 3
    assert (f.first_step, f.last_step) == (1024 + 20 * 256, 1024 + 50 * 256)
    assert "peak 2e+03" in f.summary


def test_exploding_why_and_fix_name_w_hh_only_for_a_recurrent_net():
    norm = np.full(60, 5.0)
    norm[[20, 35, 50]] = 600.0
    series = {"grad_norm/preclip_global": measured(norm)}
    (mlp,) = rule_exploding_gradient(series, run_json())
    assert "W_hh" not in mlp.why + mlp.fix and "TD error" in mlp.why and "grad_clip_norm" in mlp.fix
    rnn = run_json()
    rnn["config"]["network"]["kind"] = "rnn"
    rnn["config"]["recurrent"] = {"cell": "simple"}
    (recurrent,) = rule_exploding_gradient(series, rnn)
    assert "W_hh" in recurrent.why and "LSTM/GRU" in recurrent.fix


def test_exploding_near_miss_and_single_spike():
    norm = np.full(60, 5.0)
    norm[[20, 35, 50]] = 499.0  # 99.8x the running median
    assert rule_exploding_gradient({"grad_norm/global": measured(norm)}, run_json()) == []
    norm[[20, 35]] = 5.0
    norm[50] = 1e6
    assert rule_exploding_gradient({"grad_norm/global": measured(norm)}, run_json()) == []


def test_spikes_the_clip_absorbs_are_not_explosions():
    """MountainCar: a global norm of ~0.05 that jumps to 2-9 at the rare goal transitions, 100x its running
    median, but under the clip of 10: each of those steps was bounded."""
    norm = np.full(60, 0.05)
    norm[[20, 35, 50]] = [5.4, 9.25, 8.5]
    series = {"grad_norm/preclip_global": measured(norm)}
    assert rule_exploding_gradient(series, run_json()) == []  # grad_clip_norm 10
    unclipped = run_json()
    unclipped["config"]["train"]["grad_clip_norm"] = 0.0
    assert rule_exploding_gradient(series, unclipped)[0].evidence["spikes"] == 3
    norm[[20, 35, 50]] = [50.0, 92.5, 85.0]  # past the clip: the clip fired, the spikes count
    assert (
        rule_exploding_gradient({"grad_norm/preclip_global": measured(norm)}, run_json())[0].evidence[
            "spikes"
        ]
        == 3
    )


def bptt(growth_per_step: float, ks=(1, 2, 4, 8)) -> dict:
    return {f"bptt/grad_norm/t-{k}": measured(np.full(20, growth_per_step**k)) for k in ks}


def test_exploding_fires_on_bptt_growth():
    (f,) = rule_exploding_gradient(bptt(1.5), run_json())
    assert f.evidence["bptt_growth_log10"] == pytest.approx(7 * np.log10(1.5))  # t-8 over t-1
    assert f.severity == "error"
    assert rule_exploding_gradient(bptt(1.3), run_json()) == []  # 1.3^7 = 6.3x: near miss
    s = bptt(1.0)
    s["bptt/grad_norm/t-8"][1][-1] = 1e6
    assert rule_exploding_gradient(s, run_json()) == []


def test_spectral_radius_above_one_warns_for_a_vanilla_cell_only():
    s = {
        "rnn/spectral_radius": measured(np.full(20, 1.4)),
        "rnn/max_singular_value": measured(np.full(20, 2.0)),
    }
    vanilla = run_json()
    vanilla["config"]["network"]["kind"] = "rnn"
    vanilla["config"]["recurrent"] = {"cell": "simple"}
    (f,) = rule_exploding_gradient(s, vanilla)
    assert (f.severity, f.evidence["spectral_radius"], f.evidence["max_singular_value"]) == (
        "warning",
        1.4,
        2.0,
    )
    lstm = run_json()
    lstm["config"]["network"]["kind"] = "rnn"
    lstm["config"]["recurrent"] = {"cell": "lstm"}
    assert rule_exploding_gradient(s, lstm) == []
    assert rule_exploding_gradient({"rnn/spectral_radius": measured(np.full(20, 0.99))}, vanilla) == []
    spike = np.full(20, 0.9)
    spike[-1] = 3.0
    assert rule_exploding_gradient({"rnn/spectral_radius": measured(spike)}, vanilla) == []


# ---------------------------------------------------------------------------------------------------------
# divergence


def test_divergence_fires_on_diverged_status():
    run = run_json(status="diverged", divergence={"step": 30000, "nonfinite_weights": ["hidden_0/kernel"]})
    (f,) = rule_divergence({}, run)
    assert (f.rule, f.severity, f.first_step, f.last_step) == ("divergence", "error", 30000, 30000)
    assert "hidden_0/kernel" in f.summary
    # no measured update saw it (the divergence came between them): said so, not "0 measured updates had ..."
    assert "no measured update had a non-finite gradient (it came in an update between them)" in f.summary
    vals = np.zeros(N)
    vals[[3, 7]] = [np.nan, 12.0]
    (f,) = rule_divergence({"grad/nonfinite": measured(vals)}, run)
    assert "2 measured updates had non-finite gradients" in f.summary


def test_divergence_fires_on_one_nonfinite_gradient_and_not_on_clean_runs():
    vals = np.zeros(N)
    vals[100] = np.nan
    (f,) = rule_divergence({"grad/nonfinite": measured(vals)}, run_json())
    assert f.evidence["nonfinite_grad_updates"] == 1 and f.first_step == 1024 + 100 * 256
    assert "1 measured update had non-finite gradients" in f.summary
    # near miss: a clean run, and a huge-but-finite loss spike (that is not divergence)
    s = {"grad/nonfinite": measured(np.zeros(N)), "loss/td": measured(np.r_[np.ones(N - 1), 1e30])}
    assert rule_divergence(s, run_json()) == []


# ---------------------------------------------------------------------------------------------------------
# update_ratio


def test_update_ratio_fires_high_and_low():
    s = {
        "update_ratio/hidden_0/kernel": measured(np.r_[np.full(10, 0.2), np.full(5, 0.5)]),
        "update_ratio/q_head/bias": measured(np.full(15, 3e-7)),
        "update_ratio/hidden_1/kernel": measured(np.full(15, 1e-3)),
    }
    high, low = rule_update_ratio(s, run_json())
    assert (high.subject, high.evidence["median"]) == ("hidden_0/kernel", pytest.approx(0.2))
    assert (low.subject, low.evidence["median"]) == ("q_head/bias", pytest.approx(3e-7))
    assert high.severity == low.severity == "warning"


def test_update_ratio_ignores_zero_gradients_near_misses_and_spikes():
    zero_grad = {
        "update_ratio/hidden_0/kernel": measured(np.r_[np.full(10, 5e-4), np.zeros(50)]),
        "grad_norm/hidden_0/kernel": measured(np.r_[np.ones(10), np.zeros(50)]),
    }
    assert rule_update_ratio(zero_grad, run_json()) == []
    assert rule_update_ratio({"update_ratio/a/kernel": measured(np.full(20, 0.099))}, run_json()) == []
    assert rule_update_ratio({"update_ratio/a/kernel": measured(np.full(20, 1.1e-6))}, run_json()) == []
    spike = np.full(N, 5e-4)
    spike[50] = 10.0
    assert rule_update_ratio({"update_ratio/a/kernel": measured(spike)}, run_json()) == []


# ---------------------------------------------------------------------------------------------------------
# dormant_growth


def test_dormant_growth_fires():
    s = {"act_dormant_frac/hidden_0": probed([0.0, 0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6])}
    (f,) = rule_dormant_growth(s, run_json())
    assert (f.rule, f.subject, f.severity) == ("dormant_growth", "hidden_0", "warning")
    # Early level: the median of the first quarter (9 // 4 = 2 probes: 0.0, 0.1) = 0.05; late half: the last
    # 5 probes, median 0.5; rise 0.45 >= 0.3.
    assert f.evidence["rise"] == pytest.approx(0.45) and f.evidence["early_median"] == pytest.approx(0.05)
    assert f.first_step == 5888 + 4 * 5120  # first probe >= 0.05 + 0.3


def test_dormant_growth_ignores_a_first_probe_taken_before_training():
    """An LSTM's dense layer over 4k steps: 12% dormant at the probe right after learning starts, 41-53% at
    every probe after it. The first quarter's median (0.45) is the early level: no growth."""
    lstm = [0.12, 0.45, 0.48, 0.52, 0.53, 0.5, 0.52, 0.5, 0.5, 0.52, 0.52, 0.45, 0.41]
    assert rule_dormant_growth({"act_dormant_frac/hidden_0": probed(lstm)}, run_json()) == []


def test_dormant_growth_near_misses_spike_and_dead_layer():
    assert (
        rule_dormant_growth({"act_dormant_frac/hidden_0": probed(np.linspace(0.0, 0.28, 9))}, run_json())
        == []
    )
    assert rule_dormant_growth({"act_dormant_frac/hidden_1": probed([0.52] * 9)}, run_json()) == []
    assert rule_dormant_growth({"act_dormant_frac/hidden_0": probed([0.05] * 8 + [0.9])}, run_json()) == []
    # a layer that dies during training: one finding (dead_relu), not two
    dying = np.linspace(0.1, 1.0, 9)
    s = {"act_dormant_frac/hidden_1": probed(dying), "act_dead_frac/hidden_1": probed(dying)}
    assert ids(diagnose(s, run_json())) == [("dead_relu", "hidden_1")]


# ---------------------------------------------------------------------------------------------------------
# learning_never_starts


def no_learning_series(zero_frac: float = 1.0, loss=None) -> dict:
    grad = np.where(np.arange(100) < 100 * zero_frac, 0.0, 1.0)
    return {
        "grad_norm/global": measured(grad),
        "loss/td": measured(np.full(100, 0.5) if loss is None else loss),
    }


def test_learning_never_starts_fires():
    (f,) = rule_learning_never_starts(no_learning_series(0.95), run_json())
    assert (f.rule, f.severity, f.subject) == ("learning_never_starts", "error", "")
    assert f.evidence["zero_grad_frac"] == pytest.approx(0.95)
    assert f.evidence["loss_rel_change"] == 0.0


def test_learning_never_starts_from_zero_fracs_when_global_norm_is_missing():
    s = {f"grad_zero_frac/{v}": measured(np.ones(40)) for v in VARS}
    s["loss/td"] = measured(np.full(40, 1.0))
    (f,) = rule_learning_never_starts(s, run_json())
    assert f.evidence["zero_grad_frac"] == 1.0


def test_learning_never_starts_near_misses_and_spike():
    assert rule_learning_never_starts(no_learning_series(0.85), run_json()) == []
    falling = np.linspace(1.0, 0.1, 100)  # zero gradient but the loss moves: not "flat"
    assert rule_learning_never_starts(no_learning_series(1.0, falling), run_json()) == []
    one_zero = np.ones(100)
    one_zero[50] = 0.0
    s = {"grad_norm/global": measured(one_zero), "loss/td": measured(np.full(100, 0.5))}
    assert rule_learning_never_starts(s, run_json()) == []


# ---------------------------------------------------------------------------------------------------------
# q_overestimation


def q_series(q_max) -> dict:
    steps = np.arange(1, 101) * 400  # CartPole: reward 1 per step -> bound 1 / (1 - 0.99) = 100
    return {
        "q/max": measured(q_max),
        "episode/return": (steps, np.full(100, 50.0)),
        "episode/length": (steps, np.full(100, 50.0)),
    }


def test_q_overestimation_fires_on_unbounded_growth():
    q = np.geomspace(1.0, 4000.0, 40)
    (f,) = rule_q_overestimation(q_series(q), run_json())
    assert (f.rule, f.severity) == ("q_overestimation", "warning")
    assert f.evidence["bound"] == pytest.approx(100.0)
    assert f.evidence["q_max_last_quarter"] == pytest.approx(np.median(q[-10:]))
    assert f.evidence["q_max_third_quarter"] == pytest.approx(np.median(q[-20:-10]))


def test_q_overestimation_near_misses_and_spike():
    healthy = 110 * (1 - np.exp(-4 * np.linspace(0, 1, N))) + 2  # squared_relu ends at ~117 > 100
    assert rule_q_overestimation(q_series(healthy), run_json()) == []
    flat_high = np.r_[np.linspace(1, 300, 20), np.full(N - 20, 300.0)]  # high but no longer growing
    assert rule_q_overestimation(q_series(flat_high), run_json()) == []
    spike = healthy.copy()
    spike[-1] = 1e5
    assert rule_q_overestimation(q_series(spike), run_json()) == []


def evals(q_estimate, discounted_return) -> dict:
    """Greedy evaluations every 5k steps: eval/q_estimate, eval/discounted_return and their difference."""
    q, g = np.asarray(q_estimate, np.float64), np.asarray(discounted_return, np.float64)
    steps = 5000 * np.arange(1, len(q) + 1, dtype=np.int64)
    return {
        "eval/q_estimate": (steps, q),
        "eval/discounted_return": (steps, g),
        "eval/q_overestimation": (steps, q - g),
    }


def test_q_overestimation_measured_in_evaluations_beats_the_bound_heuristic():
    """eval/q_estimate against r_max/(1-gamma) = 100 (CartPole's reward 1, gamma 0.99): no policy can get
    more, so Q-values above it are overestimation by definition."""
    # The clipped-delta headline arm: its greedy actions valued 200-455 where the policy gets ~5.
    s = {**q_series(np.full(N, 50.0)), **evals([40, 90, 106, 200, 455, 300], [5.2, 5.1, 5.2, 5.2, 5.2, 5.1])}
    (f,) = rule_q_overestimation(s, run_json())
    # Late half: the last 3 evaluations, 200, 455, 300 -> median 300 = 3x the bound (>= 1.3x).
    assert f.evidence["late_median_q_estimate"] == 300.0 and f.evidence["discounted_return"] == 5.2
    assert (f.first_step, f.last_step) == (20_000, 30_000) and "3.0x" in f.summary
    # Huber on CartPole: a mean of noisy estimates a little over 100 while the policy wobbles.
    huber = {**q_series(np.full(N, 50.0)), **evals([81, 96, 103, 107, 102, 108], [49, 37, 35, 30, 36, 100])}
    assert rule_q_overestimation(huber, run_json()) == []  # median 107 < 130 (1.3x); 108 below 130 too
    # Huber on CartPole with rewards of 100 (bound 10,000): the values climb past what any policy can get.
    scaled = q_series(np.full(N, 50.0))
    scaled["episode/return"] = (scaled["episode/return"][0], np.full(100, 5000.0))  # 50 steps x 100
    climbing = {**scaled}
    climbing |= evals([1546, 3140, 4524, 6041, 9192, 14047], [480, 560, 1802, 897, 515, 516])
    (f,) = rule_q_overestimation(climbing, run_json())
    assert f.evidence["bound"] == pytest.approx(10_000)
    assert f.evidence["last_q_estimate"] == 14047  # 2.3x its 6,041 at the late half's start: climbing
    # The measurement takes precedence: q/max growing without bound does not fire when evaluations agree.
    calibrated = {**q_series(np.geomspace(1.0, 4000.0, 40)), **evals([60] * 6, [58] * 6)}
    assert rule_q_overestimation(calibrated, run_json()) == []


# ---------------------------------------------------------------------------------------------------------
# Thresholds and the rule list


def test_rules_and_thresholds_are_in_one_place():
    assert len(RULES) == 10 and len({r.__name__ for r in RULES}) == 10
    assert all(r.__doc__ for r in RULES)
    with pytest.raises(AttributeError):
        THRESHOLDS.depth_ratio = 1.0  # frozen


# ---------------------------------------------------------------------------------------------------------
# not enough evidence


def test_too_few_points_is_not_enough_evidence_not_health():
    from dqnlab.doctor_rules import evidence_gaps

    run = run_json()
    run["config"]["diagnostics"].update(enabled=True, probe_every=2560)
    few = {"loss/td": measured(np.ones(5)), "act_dead_frac/hidden_0": probed([0.1, 0.2, 0.3])}
    gaps = evidence_gaps(few, run)  # late halves: 5 - int(2.5) = 3 measured updates, 3 - int(1.5) = 2 probes
    assert len(gaps) == 1 and gaps[0].startswith("the activation rules") and "2 probes" in gaps[0]
    enough = {**few, "act_dead_frac/hidden_0": probed([0.1, 0.2, 0.3, 0.3, 0.3, 0.3])}
    assert evidence_gaps(enough, run) == []
    assert "0 measured updates" in evidence_gaps({}, run)[0]
    run["config"]["diagnostics"]["probe_every"] = 0  # probes off by choice: only the gradient rules count
    assert evidence_gaps(few, run) == []
    run["config"]["diagnostics"]["enabled"] = False
    assert evidence_gaps(few, run) == [
        "diagnostics were off (diagnostics.enabled = false): no rule could judge the backward pass"
    ]
    assert evidence_gaps(few, {"status": "done"}) == []  # not a dqnlab run.json: nothing to expect


# ---------------------------------------------------------------------------------------------------------
# a hand-edited run.json


@pytest.mark.parametrize("wrong", ["x", [1], {"a": 1}, True])
def test_config_values_of_the_wrong_type_in_run_json_are_ignored_not_a_crash(wrong):
    """`dqnlab doctor` on a run.json whose config was edited by hand: every value a rule reads, of a wrong
    type, is read as missing (its default) -- it was a TypeError or AttributeError traceback."""
    spikes = np.full(60, 5.0)
    spikes[[20, 35, 50]] = 600.0
    series = {
        **saturated_series(),
        **bptt(1.5),
        "grad_norm/preclip_global": measured(spikes),
        "rnn/spectral_radius": measured(np.full(20, 1.4)),
        "act_dormant_frac/hidden_0": probed([0.0, 0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6]),
    }
    paths = [
        ("network", "activation"),
        ("network", "kind"),
        ("recurrent",),
        ("loss", "bound"),
        ("train", "grad_clip_norm"),
        ("train", "gamma"),
        ("diagnostics", "dormant_tau"),
        ("diagnostics", "probe_every"),
    ]
    for path in paths:
        divergence = {"step": 30000, "nonfinite_weights": ["hidden_0/kernel"]}
        run = run_json(status="diverged", divergence=divergence)
        run["config"]["network"]["kind"] = "rnn"
        run["config"]["recurrent"] = {"cell": "simple"}
        *sections, key = path
        node = run["config"]
        for section in sections:
            node = node[section]
        node[key] = wrong
        diagnose(series, run)
        evidence_gaps(series, run)
    for divergence in ({"step": wrong, "nonfinite_weights": wrong}, wrong):
        (f,) = rule_divergence({}, run_json(status="diverged", divergence=divergence))
        assert f.rule == "divergence"
