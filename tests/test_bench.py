"""The benchmark settings configure dqnlab and Stable-Baselines3 identically, field by field.

A peer comparison is only as fair as its settings: each test here reads the dqnlab config a setting
produces and the keyword arguments SB3's DQN gets, and checks they say the same thing. SB3 itself is not
needed (the kwargs are plain data).
"""

import bench
import pytest

from dqnlab.config import is_atari_env, load_preset

STEPS = 20_000


SB3_SETTINGS = sorted(n for n, s in bench.SETTINGS.items() if s.reference == "sb3")


@pytest.mark.parametrize("name", SB3_SETTINGS)
def test_dqnlab_and_sb3_get_the_same_hyperparameters(name):
    setting = bench.SETTINGS[name]
    cfg = load_preset(setting.preset, bench.dqnlab_overrides(setting, diagnostics=True, steps=STEPS))
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
    # torch.optim.Adam's eps, which SB3 keeps unless optimizer_kwargs say otherwise (they say it explicitly).
    assert cfg.optimizer.epsilon == sb3["policy_kwargs"]["optimizer_kwargs"]["eps"] == 1e-8
    # SB3's DQN policies keep nn.Linear / nn.Conv2d's default init (no orthogonal init, unlike its A2C/PPO).
    assert (cfg.network.kernel_init, cfg.network.bias_init_kind) == ("torch_default", "torch_default")
    assert sb3["seed"] == 3 and sb3["device"] == "cpu"


@pytest.mark.parametrize("name", SB3_SETTINGS)
def test_the_network_is_the_same_shape_on_both_sides(name):
    setting = bench.SETTINGS[name]
    cfg = load_preset(setting.preset, bench.dqnlab_overrides(setting, diagnostics=False, steps=STEPS))
    sb3 = bench.sb3_kwargs(setting, STEPS, seed=0)
    assert tuple(cfg.network.hidden) == setting.hidden
    if is_atari_env(setting.env):
        # SB3's CnnPolicy is NatureCNN (3 convs, then a 512-unit ReLU layer) and a linear Q head: a net_arch
        # would add layers after the 512. dqnlab's cnn network is the same stack (docs/atari.md).
        assert cfg.network.kind == "cnn" and setting.hidden == (512,)
        assert "net_arch" not in sb3["policy_kwargs"]
    else:
        assert cfg.network.kind == "mlp" and cfg.network.activation == "relu"
        assert sb3["policy_kwargs"]["net_arch"] == list(setting.hidden)


def test_diagnostics_flag_is_the_only_difference_between_the_two_dqnlab_arms():
    for setting in bench.SETTINGS.values():
        on = bench.dqnlab_overrides(setting, diagnostics=True, steps=STEPS)
        off = bench.dqnlab_overrides(setting, diagnostics=False, steps=STEPS)
        assert {k for k in on if on[k] != off[k]} == {"diagnostics.enabled"}


# -- `cleanrl` is CleanRL's cleanrl/dqn.py at its published defaults (vwxyzjn/cleanrl @ 020cf0e5), one test
# per field; each comment quotes the line of dqn.py the value comes from. CLEANRL_RUN is CleanRL's own
# --total-timesteps default, `parser.add_argument("--total-timesteps", type=int, default=500000,`.
CLEANRL_RUN = 500_000


@pytest.fixture(scope="module")
def cleanrl_cfg():
    setting = bench.SETTINGS["cleanrl"]
    return load_preset(setting.preset, bench.dqnlab_overrides(setting, diagnostics=True, steps=CLEANRL_RUN))


def test_cleanrl_env(cleanrl_cfg):
    # `parser.add_argument("--env-id", type=str, default="CartPole-v1",`
    assert bench.SETTINGS["cleanrl"].env == "CartPole-v1" and cleanrl_cfg.env == "CartPole-v1"


def test_cleanrl_network_120_84_relu(cleanrl_cfg):
    # `nn.Linear(np.array(env.single_observation_space.shape).prod(), 120), nn.ReLU(), nn.Linear(120, 84),
    # nn.ReLU(), nn.Linear(84, env.single_action_space.n)`
    net = cleanrl_cfg.network
    assert (net.kind, net.activation, tuple(net.hidden), net.dueling) == ("mlp", "relu", (120, 84), False)


def test_cleanrl_init_is_torch_default(cleanrl_cfg):
    # The QNetwork's nn.Linear layers are never re-initialised: W and b ~ U(+-1/sqrt(fan_in)).
    net = cleanrl_cfg.network
    assert (net.kernel_init, net.bias_init_kind, net.init_scale) == ("torch_default", "torch_default", 1.0)


def test_cleanrl_loss_is_mse(cleanrl_cfg):
    # `loss = F.mse_loss(td_target, old_val)` (dqnlab's squared is 0.5 delta^2: Adam is blind to the factor)
    assert cleanrl_cfg.loss.kind == "squared"


def test_cleanrl_has_no_gradient_clipping(cleanrl_cfg):
    # `optimizer.zero_grad(); loss.backward(); optimizer.step()`: no clip_grad_norm_ in dqn.py
    assert cleanrl_cfg.train.grad_clip_norm == 0.0


def test_cleanrl_optimizer_is_adam_at_torch_defaults(cleanrl_cfg):
    # `optimizer = optim.Adam(q_network.parameters(), lr=args.learning_rate)`: eps 1e-8, betas (0.9, 0.999)
    # `parser.add_argument("--learning-rate", type=float, default=2.5e-4,`
    opt = cleanrl_cfg.optimizer
    assert (opt.kind, opt.learning_rate, opt.epsilon, opt.schedule) == ("adam", 2.5e-4, 1e-8, "constant")


def test_cleanrl_buffer_size(cleanrl_cfg):
    # `parser.add_argument("--buffer-size", type=int, default=10000,`
    assert cleanrl_cfg.replay.capacity == 10_000


def test_cleanrl_gamma(cleanrl_cfg):
    # `parser.add_argument("--gamma", type=float, default=0.99,`
    assert cleanrl_cfg.train.gamma == 0.99


def test_cleanrl_hard_target_copies_without_double_dqn(cleanrl_cfg):
    # `parser.add_argument("--tau", type=float, default=1.,`; `target_max, _ = target_network(...).max(dim=1)`
    assert cleanrl_cfg.train.target_tau == 1.0 and not cleanrl_cfg.train.double_dqn


def test_cleanrl_target_network_frequency(cleanrl_cfg):
    # `parser.add_argument("--target-network-frequency", type=int, default=500,`
    assert cleanrl_cfg.train.target_update_every == 500


def test_cleanrl_batch_size(cleanrl_cfg):
    # `parser.add_argument("--batch-size", type=int, default=128,`
    assert cleanrl_cfg.train.batch_size == 128


def test_cleanrl_epsilon_start_and_end(cleanrl_cfg):
    # `parser.add_argument("--start-e", type=float, default=1,`
    # `parser.add_argument("--end-e", type=float, default=0.05,`
    assert (cleanrl_cfg.train.epsilon_start, cleanrl_cfg.train.epsilon_end) == (1.0, 0.05)


def test_cleanrl_epsilon_decays_over_half_the_run(cleanrl_cfg):
    # `parser.add_argument("--exploration-fraction", type=float, default=0.5,`, used as
    # `linear_schedule(args.start_e, args.end_e, args.exploration_fraction * args.total_timesteps, ...)`
    train = cleanrl_cfg.train
    assert train.epsilon_decay_steps == CLEANRL_RUN // 2 and train.epsilon_decay_start == 0
    setting = bench.SETTINGS["cleanrl"]
    assert bench.dqnlab_overrides(setting, True, steps=50_000)["train.epsilon_decay_steps"] == 25_000


def test_cleanrl_learning_starts(cleanrl_cfg):
    # `parser.add_argument("--learning-starts", type=int, default=10000,`
    assert cleanrl_cfg.train.learning_starts == 10_000


def test_cleanrl_one_update_every_10_env_steps(cleanrl_cfg):
    # `parser.add_argument("--train-frequency", type=int, default=10,`; one optimizer.step() each time
    assert (cleanrl_cfg.train.train_every, cleanrl_cfg.train.gradient_steps) == (10, 1)


def test_cleanrl_has_no_sb3_peer_and_the_peer_script_refuses_it(capsys):
    import bench_peers

    with pytest.raises(ValueError, match="no SB3 equivalent"):
        bench.sb3_kwargs(bench.SETTINGS["cleanrl"], STEPS, seed=0)
    with pytest.raises(SystemExit) as exit_info:
        bench_peers.main(["--settings", "cleanrl"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "its reference is cleanrl, not SB3" in err[0]


def test_sb3_cleanrl_like_is_sb3_with_cleanrls_network_and_cadence_only():
    """The renamed former `cleanrl`: CleanRL's network and cadence, SB3's loss, clipping and start."""
    like, real = bench.SETTINGS["sb3_cleanrl_like"], bench.SETTINGS["cleanrl"]
    same = ("hidden", "batch_size", "train_every", "gradient_steps", "target_update_every", "learning_rate")
    assert all(getattr(like, f) == getattr(real, f) for f in same + ("buffer_size", "gamma", "epsilon_end"))
    assert (like.reference, like.loss, like.grad_clip_norm) == ("sb3", "huber", 10.0)
    assert like.learning_starts == 1_000


def test_unknown_setting_is_refused_before_a_process_starts():
    with pytest.raises(ValueError, match="unknown setting 'pong'"):
        bench.measure_in_subprocess("dqnlab", "pong", 100)


def test_summaries_script_times_both_writers_and_finds_their_files_identical(capsys, monkeypatch):
    """scripts/bench_summaries.py end to end (what it times is not checked here): both writers' events read
    back the same, and the table shows both arms and the measured burst's scalar count."""
    import bench_summaries as script

    monkeypatch.setattr(bench, "limit_tf_to_one_thread", lambda: None)  # TF already runs in this process
    assert script.main(["--events", "3", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "the two files' summaries read back: identical" in out
    rows = [line for line in out.splitlines() if line.startswith(("per-tag bytes", "protobuf messages"))]
    assert len(rows) == 2 and all(" 59 " in row or " 60 " in row for row in rows), out


def test_first_calls_script_times_both_option_sets_and_finds_the_same_bits(capsys, monkeypatch):
    """scripts/bench_first_calls.py end to end, its processes run here (what it times is not checked): every
    timing row for both option sets, and the values computed under TF's defaults and Compiled's options
    digest alike."""
    import bench_first_calls as script

    from dqnlab import compiled

    monkeypatch.setattr(bench, "limit_tf_to_one_thread", lambda: None)  # TF already runs in this process
    # A process under TF's defaults replaces Compiled's options for good: put them back after the test.
    monkeypatch.setattr(compiled, "lean_call_options", compiled.lean_call_options)
    monkeypatch.setattr(
        bench, "run_child", lambda script_path, flag, spec, marker, what: script._measure(spec)
    )
    assert script.main(["--repeats", "1", "--calls", "1"]) == 0
    out = capsys.readouterr().out
    assert "every value computed: the same bits under both option sets" in out
    timed = [line for line in out.splitlines() if line.startswith(("plain ", "measured "))]
    assert len(timed) == 3 + 5 and all(line.count(" ms") == 2 for line in timed), out


def test_loop_parts_script_times_each_part_of_both_arms(capsys, monkeypatch):
    """scripts/bench_loop_parts.py end to end, its runs made here and short (what they take is not checked):
    a row for every part, the burst's trace apart from its first call, and the whole run last."""
    import bench_loop_parts as script

    from dqnlab import doctor, learner, summaries

    monkeypatch.setattr(bench, "limit_tf_to_one_thread", lambda: None)  # TF already runs in this process
    for cls, name in [(learner.Learner, "_compile"), (learner.Learner, "update"), (learner.Learner, "probe")]:
        monkeypatch.setattr(cls, name, getattr(cls, name))  # the script wraps them: unwrapped after the test
    monkeypatch.setattr(summaries.Summaries, "metrics", summaries.Summaries.metrics)
    monkeypatch.setattr(doctor.LiveDoctor, "maybe_check", doctor.LiveDoctor.maybe_check)
    monkeypatch.setattr(
        bench, "run_child", lambda script_path, flag, spec, marker, what: script._measure(spec)
    )
    assert script.main(["--pairs", "1", "--steps", "1500"]) == 0
    lines = capsys.readouterr().out.splitlines()
    parts = [line.split("  ")[0] for line in lines if line.endswith(" s")]
    assert parts[-1] == "whole run" and {
        "burst: trace",
        "burst: calls (first)",
        "probe: calls (first)",
    } <= set(parts)


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
