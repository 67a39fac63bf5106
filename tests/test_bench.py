"""The benchmark settings configure dqnlab and Stable-Baselines3 identically, field by field.

A peer comparison is only as fair as its settings: each test here reads the dqnlab config a setting
produces and the keyword arguments SB3's DQN gets, and checks they say the same thing. SB3 itself is not
needed (the kwargs are plain data).
"""

import bench
import pytest

from dqnlab.config import is_atari_env, load_preset

STEPS = 20_000


@pytest.mark.parametrize("name", sorted(bench.SETTINGS))
def test_dqnlab_and_sb3_get_the_same_hyperparameters(name):
    setting = bench.SETTINGS[name]
    cfg = load_preset(setting.preset, bench.dqnlab_overrides(setting, diagnostics=True))
    sb3 = bench.sb3_kwargs(setting, STEPS, seed=3)
    t = cfg.train
    assert cfg.optimizer.learning_rate == sb3["learning_rate"]
    assert cfg.replay.capacity == sb3["buffer_size"]
    assert t.learning_starts == sb3["learning_starts"]
    assert t.batch_size == sb3["batch_size"]
    assert t.gamma == sb3["gamma"]
    assert t.train_every == sb3["train_freq"]
    assert t.gradient_steps == sb3["gradient_steps"]
    assert t.target_update_every == sb3["target_update_interval"]
    assert t.epsilon_start == sb3["exploration_initial_eps"]
    assert t.epsilon_end == sb3["exploration_final_eps"]
    assert t.epsilon_decay_steps == pytest.approx(sb3["exploration_fraction"] * STEPS)
    assert t.grad_clip_norm == sb3["max_grad_norm"]
    # What SB3's DQN always does: Huber (smooth L1, kappa 1), hard target copies, no Double DQN, Adam.
    assert (cfg.loss.kind, cfg.loss.bound) == ("huber", 1.0)
    assert t.target_tau == 1.0 and not t.double_dqn
    assert cfg.optimizer.kind == "adam"
    assert sb3["seed"] == 3 and sb3["device"] == "cpu"


@pytest.mark.parametrize("name", sorted(bench.SETTINGS))
def test_the_network_is_the_same_shape_on_both_sides(name):
    setting = bench.SETTINGS[name]
    cfg = load_preset(setting.preset, bench.dqnlab_overrides(setting, diagnostics=False))
    sb3 = bench.sb3_kwargs(setting, STEPS, seed=0)
    assert tuple(cfg.network.hidden) == setting.hidden
    if is_atari_env(setting.env):
        # SB3's CnnPolicy is NatureCNN (3 convs, then a 512-unit ReLU layer) and a linear Q head: a net_arch
        # would add layers after the 512. dqnlab's cnn network is the same stack (docs/atari.md).
        assert cfg.network.kind == "cnn" and setting.hidden == (512,)
        assert sb3["policy_kwargs"] == {}
    else:
        assert cfg.network.kind == "mlp" and cfg.network.activation == "relu"
        assert sb3["policy_kwargs"] == {"net_arch": list(setting.hidden)}


def test_diagnostics_flag_is_the_only_difference_between_the_two_dqnlab_arms():
    for setting in bench.SETTINGS.values():
        on = bench.dqnlab_overrides(setting, diagnostics=True)
        off = bench.dqnlab_overrides(setting, diagnostics=False)
        assert {k for k in on if on[k] != off[k]} == {"diagnostics.enabled"}


def test_unknown_setting_is_refused_before_a_process_starts():
    with pytest.raises(ValueError, match="unknown setting 'pong'"):
        bench.measure_in_subprocess("dqnlab", "pong", 100)


def test_panel_parts_script_times_every_variant_against_one_bare_call(capsys, monkeypatch):
    """scripts/bench_panel_parts.py runs end to end (a few calls; what they take is not checked here, but
    the table must show what was measured) and its partial panels compute the shipped values for what they
    keep."""
    import bench_panel_parts as script
    import numpy as np

    monkeypatch.setattr(bench, "limit_tf_to_one_thread", lambda: None)  # TF already runs in this process
    measured, measure = [], bench.interleaved_call_costs

    def measure_and_keep(*args, **kwargs):
        measured.append(measure(*args, **kwargs))
        return measured[-1]

    monkeypatch.setattr(bench, "interleaved_call_costs", measure_and_keep)
    assert script.main(["--hidden", "8,8", "--calls", "2", "--rounds", "1"]) == 0
    (costs,) = measured
    lines = capsys.readouterr().out.splitlines()
    bare = costs.seconds["bare (no diagnostics)"]
    assert list(costs.seconds) == ["bare (no diagnostics)", *script.VARIANTS]  # every arm, bare first
    for label, seconds in costs.seconds.items():
        # One round: each ratio is that round's own, the arm's time over the bare call's; the bare row's is 1.
        assert costs.ratio[label] == pytest.approx(seconds / bare, rel=1e-12)
        row = next(line for line in lines if line.startswith(label))
        per_call, vs_bare, ratio = row[len(label) :].replace(" ms", "").replace(" us", "").split()
        assert per_call == f"{seconds * 1e3:.3f}" and vs_bare == f"{(seconds - bare) * 1e6:+.0f}"
        assert ratio == f"{costs.ratio[label]:.3f}"
    assert next(line for line in lines if line.startswith("bare")).split()[-3:] == ["+0", "us", "1.000"]

    # Same seed, same batch: the counts variant's gradient columns equal the shipped learner's.
    burst = script.probe_burst(16)
    shipped = bench.bench_learner(script.Learner, (8, 8), 16).update(burst, True).metrics
    partial = bench.bench_learner(script.TDNormsAndCounts, (8, 8), 16).update(burst, True).metrics
    for family in ("grad_norm", "grad_zero_frac", "grad_nonfinite"):
        keys = [k for k in shipped if k.startswith(family + "/")]
        assert keys and np.allclose([partial[k] for k in keys], [shipped[k] for k in keys], rtol=1e-6)
    assert all(partial[k] == 0.0 for k in partial if k.startswith("weight_norm/"))
