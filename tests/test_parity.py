"""scripts/parity.py: its statistics on hand-made numbers, its table, its bad input, and its dqnlab side."""

import json

import bench
import numpy as np
import parity
import pytest

from dqnlab.config import load_preset


def test_two_sample_on_hand_made_numbers():
    # a = 1..5, b = 3..7: means 3 and 5, both variances 2.5.
    t = parity.two_sample([1, 2, 3, 4, 5], [3, 4, 5, 6, 7])
    assert t["mean_diff"] == -2.0
    # Welch: (3 - 5) / sqrt(2.5/5 + 2.5/5) = -2, df = 8: two-sided p = 0.0805 (t table).
    assert t["welch_t"] == pytest.approx(-2.0) and t["welch_p"] == pytest.approx(0.08052, abs=1e-4)
    # U counts the pairs with a > b (4>3, 5>3, 5>4) plus half the ties (3, 4, 5): 3 + 1.5.
    assert t["mwu_u"] == 4.5 and t["cles"] == pytest.approx(4.5 / 25)
    assert 0.1 < t["mwu_p"] < 0.3  # tied ranks: scipy's normal approximation with continuity correction
    # Hedges' g: d = -2 / sqrt(2.5) = -1.2649, times 1 - 3 / (4 * 10 - 9) = 0.90323.
    assert t["hedges_g"] == pytest.approx(-2 / np.sqrt(2.5) * (1 - 3 / 31), rel=1e-9)


def test_two_sample_of_constant_samples():
    same = parity.two_sample([500, 500, 500], [500, 500])
    assert (same["welch_p"], same["mwu_p"], same["hedges_g"], same["cles"]) == (1.0, 1.0, 0.0, 0.5)
    differ = parity.two_sample([500, 500], [9, 9])
    assert differ["welch_p"] == differ["mwu_p"] == 0.0 and differ["cles"] == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        parity.two_sample([1.0], [2.0, 3.0])


def test_curve_metrics_and_the_bar():
    m = parity.curve_metrics([5000, 10000, 15000], [100.0, 480.0, 300.0], 475.0)
    # AUC: trapezoids (100 + 480) / 2 and (480 + 300) / 2 over two equal steps
    assert m == {"final": 300.0, "auc": pytest.approx((290 + 390) / 2), "steps_to_threshold": 10000}
    assert parity.curve_metrics([5000], [474.9], 475.0)["steps_to_threshold"] is None
    loose = {"final": {"welch_p": 0.5, "mwu_p": 0.2}, "auc": {"welch_p": 0.11, "mwu_p": 0.9}}
    assert parity.indistinguishable(loose, (8, 10)) and not parity.indistinguishable(loose, (7, 10))
    assert not parity.indistinguishable({**loose, "auc": {"welch_p": 0.09, "mwu_p": 0.9}}, (9, 9))


def test_report_prints_every_seed_and_both_tests():
    task = parity.RL_ZOO["cartpole"]
    per_seed = {
        "dqnlab": {k: parity.curve_metrics([5000, 10000], [100.0, 500.0 - k], 475.0) for k in range(4)},
        "sb3": {k: parity.curve_metrics([5000, 10000], [120.0, 500.0 - 30 * k], 475.0) for k in range(4)},
    }
    lines, summary = parity.report(task, per_seed, ["dqnlab", "sb3"])
    assert len([line for line in lines if line[:4].strip().isdigit()]) == 4
    assert summary["reached"] == {"dqnlab": 4, "sb3": 1}
    assert not summary["indistinguishable"]  # 4 vs 1 reached
    assert any(line.startswith("final") and "Welch t" in line and "Mann-Whitney U" in line for line in lines)


def test_the_presets_map_rl_zoo_field_by_field():
    """The preset as it ships says what SB3 is given, and does what SB3 does where rl-zoo is silent.
    CartPole's target: rl-zoo syncs every 10 env steps while collecting and trains every 256, so the target
    is the weights of the previous burst at each burst; dqnlab's 256 syncs right after each burst: the same
    target."""
    for task in parity.RL_ZOO.values():
        cfg, zoo = load_preset(task.preset, task.mirror), task.zoo
        t = cfg.train
        assert cfg.optimizer.learning_rate == zoo["learning_rate"] and cfg.optimizer.epsilon == 1e-8
        assert (t.batch_size, t.learning_starts, t.gamma) == (
            zoo["batch_size"],
            zoo["learning_starts"],
            zoo["gamma"],
        )
        assert cfg.replay.capacity == zoo["buffer_size"] and t.train_every == zoo["train_freq"]
        gradient_steps = zoo["train_freq"] if zoo["gradient_steps"] == -1 else zoo["gradient_steps"]
        assert t.gradient_steps == gradient_steps
        assert t.epsilon_end == zoo["exploration_final_eps"]
        assert t.epsilon_decay_steps == pytest.approx(zoo["exploration_fraction"] * task.steps)
        assert list(cfg.network.hidden) == zoo["policy_kwargs"]["net_arch"] and t.steps == task.steps
        assert (cfg.network.kernel_init, cfg.network.bias_init_kind) == ("torch_default", "torch_default")
        assert (cfg.loss.kind, cfg.loss.bound, t.grad_clip_norm) == ("huber", 1.0, 10.0)  # SB3's DQN
        if zoo["target_update_interval"] < zoo["train_freq"]:
            assert t.target_update_every == t.train_every
        else:
            assert t.target_update_every == zoo["target_update_interval"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["pong"], "invalid choice"),
        (["cartpole", "--seeds", "1"], "must be >= 2"),
        (["cartpole", "--eval-episodes", "0"], "must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parity.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and message in err[0]


def test_a_missing_reference_is_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.setattr(bench, "sb3_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        parity.main(["cartpole"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "stable-baselines3 is not installed" in err[0]


def test_the_dqnlab_side_runs_without_sb3(tmp_path, capsys, monkeypatch):
    def in_process(spec):
        task = parity.RL_ZOO[spec["task"]]
        args = (spec["seed"], spec["steps"], spec["eval_every"], spec["episodes"])
        return parity.run_dqnlab(task, *args)

    monkeypatch.setattr(parity, "run_in_subprocess", in_process)
    out = tmp_path / "p.json"
    argv = ["cartpole", "--reference", "none", "--seeds", "2", "--steps", "600", "--eval-every", "300"]
    assert parity.main([*argv, "--eval-episodes", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "no reference" in text and "dqnlab: reached 475 on" in text
    saved = json.loads(out.read_text())
    assert [c["steps"] for c in saved["curves"]["dqnlab"].values()] == [[300, 600], [300, 600]]


def test_seed_curves_prints_a_row_per_seed_with_its_greedy_curve(tmp_path, capsys):
    import seed_curves

    import dqnlab

    overrides = {"train.eval_every": 300, "train.eval_episodes": 1, "diagnostics.probe_every": 64}
    cfg = load_preset("huber_relu", overrides)
    for seed in (0, 1):
        dqnlab.train(cfg, seed=seed, steps=1_300, logdir=tmp_path, name="tiny", checkpoint_every=0)
    assert seed_curves.main([str(tmp_path / "tiny"), "--threshold", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "== huber_relu on CartPole-v1 (threshold 5)" and lines[1] == seed_curves.COLUMNS
    rows = [line.split(" | ") for line in lines[2:4]]
    assert [r[0] for r in rows] == ["0", "1"]
    for r in rows:
        assert len(r[1].split()) == 5 and r[2] == "300"  # evals at 300..1,200 and the end; any episode >= 5
        assert r[6] != "-" and r[8] != "-"  # probes ran: dead fractions and srank
    assert lines[4].startswith("reached 2/2; final mean ")
