"""The devsisters_* presets: every key against devsisters/DQN-tensorflow's own values (docs/devsisters.md),
the pairs differing only where they should, and short Breakout runs of the bug and its fix (the full panel,
the dueling streams' tags, the schedule, the blocked TD gradient, the doctor's verdict)."""

import numpy as np
import pytest

from dqnlab.config import SECTIONS, load_preset

ARMS = [
    f"devsisters_{arm}{variant}" for arm in ("clipped", "huber") for variant in ("", "_dueling", "_double")
]

# The shipped configuration, from config.py (scale = 10000), dqn/agent.py, dqn/environment.py and main.py.
SHIPPED = {
    "env": "ALE/Breakout-v5",  # env_name = 'Breakout-v0'
    "loss.kind": "clipped_delta_squared",  # tf.square(tf.clip_by_value(delta, min_delta, max_delta))
    "loss.bound": 1.0,  # min_delta = -1, max_delta = 1
    "network.kind": "cnn",
    "network.activation": "relu",
    "network.hidden": (512,),
    "network.kernel_init": "truncated_normal_0.02",
    "network.bias_init": 0.0,
    "network.init_scale": 1.0,
    "network.dueling": False,  # dueling = False
    "atari.repeat_action_probability": 0.0,
    "atari.terminal_on_life_loss": True,  # env_type 'detail' (M1, main.py's default model)
    "atari.clip_rewards": True,  # max_reward = 1., min_reward = -1.
    "atari.frame_stack": 4,  # history_length = 4
    "atari.noop_max": 30,  # random_start = 30
    "atari.screen_size": 84,
    "optimizer.kind": "rmsprop_tf1",  # tf.train.RMSPropOptimizer(..., momentum=0.95, epsilon=0.01)
    "optimizer.learning_rate": 0.0025,
    "optimizer.epsilon": 0.01,
    "optimizer.momentum": 0.95,
    "optimizer.schedule": "staircase",
    "optimizer.decay_steps": 50_000,  # learning_rate_decay_step = 5 * scale
    "optimizer.decay_rate": 0.96,
    "optimizer.learning_rate_end": 0.00025,  # learning_rate_minimum
    "replay.capacity": 1_000_000,  # memory_size = 100 * scale
    "train.steps": 50_000_000,  # max_step = 5000 * scale
    "train.learning_starts": 50_000,  # learn_start = 5. * scale
    "train.train_every": 4,  # train_frequency = 4
    "train.gradient_steps": 1,
    "train.batch_size": 32,
    "train.gamma": 0.99,  # discount
    "train.target_update_every": 10_000,  # target_q_update_step = 1 * scale
    "train.target_tau": 1.0,
    "train.double_dqn": False,  # double_q = False
    "train.epsilon_start": 1.0,  # ep_start
    "train.epsilon_end": 0.1,  # ep_end
    "train.epsilon_decay_steps": 1_000_000,  # ep_end_t = memory_size
    "train.epsilon_decay_start": 50_000,  # predict(): max(0., self.step - self.learn_start)
    "train.grad_clip_norm": 0.0,
}


def flat(name: str) -> dict:
    cfg = load_preset(name)
    out = {"env": cfg.env}
    for section in [*SECTIONS, "atari"]:
        for key, value in cfg.to_dict()[section].items():
            out[f"{section}.{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def test_the_shipped_configuration_has_every_value_of_the_source():
    got = flat("devsisters_clipped")
    assert {k: got[k] for k in SHIPPED} == SHIPPED


@pytest.mark.parametrize(
    "a, b, keys",
    [
        ("devsisters_clipped", "devsisters_huber", {"loss.kind"}),
        ("devsisters_clipped_dueling", "devsisters_huber_dueling", {"loss.kind"}),
        ("devsisters_clipped_double", "devsisters_huber_double", {"loss.kind"}),
        ("devsisters_clipped", "devsisters_clipped_dueling", {"network.dueling"}),
        ("devsisters_huber", "devsisters_huber_dueling", {"network.dueling"}),
        ("devsisters_clipped", "devsisters_clipped_double", {"train.double_dqn"}),
        ("devsisters_huber", "devsisters_huber_double", {"train.double_dqn"}),
    ],
)
def test_pairs_differ_only_in_the_intended_keys(a, b, keys):
    fa, fb = flat(a), flat(b)
    assert {k for k in fa if fa[k] != fb[k]} == keys
    if keys == {"loss.kind"}:
        assert (fa["loss.kind"], fb["loss.kind"]) == ("clipped_delta_squared", "huber")  # commit 6d11105


@pytest.mark.parametrize("name", ARMS)
def test_every_key_is_written_out_with_its_source(name):
    """Complete (no key left to its default) and every key outside [diagnostics] commented with its source."""
    from dqnlab.config import AGENTS_DIR

    text = (AGENTS_DIR / f"{name}.toml").read_text()
    body = text.split("[diagnostics]")[0]
    keys = [line for line in body.splitlines() if "=" in line and not line.startswith(("#", " ", "["))]
    assert (
        len(keys) == 2 + len(SHIPPED) - 1 + 2
    )  # description, env; the table above; eval_every, eval_episodes
    for line in keys[1:]:
        assert "#" in line, line


# ---------------------------------------------------------------------------------------------------------
# Short Breakout runs: learning from env step 200 (the source's 50,000 is far beyond a test), 1,200 env steps.

STEPS, START = 1_200, 200
SHORT = {
    "train.learning_starts": START,
    "train.epsilon_decay_start": START,
    "replay.capacity": STEPS,
    "train.eval_every": 0,
    "train.eval_episodes": 1,
    "diagnostics.every": 25,
    "diagnostics.probe_every": 50,
    "diagnostics.min_probes": 0,
    "diagnostics.probe_size": 32,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    import dqnlab

    logdir = tmp_path_factory.mktemp("devsisters")
    return {
        name: dqnlab.train(load_preset(name, SHORT), steps=STEPS, logdir=logdir, name="ab")
        for name in ("devsisters_clipped", "devsisters_huber_dueling")
    }


def test_short_runs_log_the_panel_the_streams_and_the_schedule(runs):
    from metrics_doc import undocumented

    for name, res in runs.items():
        assert res.status == "done", res.error
        tags = set(res.tags())
        assert undocumented(tags) == []
        heads = (
            ("value_hidden", "value", "advantage_hidden", "advantage")
            if "dueling" in name
            else ("hidden_0", "q_head")
        )
        for layer in ("conv_0", "conv_1", "conv_2", *heads):
            for family in ("grad_norm", "grad_zero_frac", "grad_nonfinite", "weight_norm", "update_ratio"):
                assert f"{family}/{layer}/kernel" in tags, (name, family, layer)
        for layer in ("conv_0", "conv_2", heads[0], *(("advantage_hidden",) if "dueling" in name else ())):
            assert f"act_dead_frac/{layer}" in tags and f"act_dormant_frac/{layer}" in tags, (name, layer)
        for tag in ("td/grad_blocked_frac", "loss/td", "q/mean", "grad/depth_ratio", "features/srank"):
            assert res.scalars(tag), (name, tag)
        rates = res.scalars("charts/learning_rate")
        # float32, as TensorBoard stores it; before the first step down, at 50k
        assert rates and all(rate == np.float32(0.0025) for _, rate in rates)


def test_the_clipped_arm_blocks_td_gradients_and_the_huber_arm_blocks_none(runs):
    clipped = [v for _, v in runs["devsisters_clipped"].scalars("td/grad_blocked_count/burst_sum")]
    huber = [v for _, v in runs["devsisters_huber_dueling"].scalars("td/grad_blocked_frac")]
    assert sum(clipped) > 0
    assert max(v for _, v in runs["devsisters_clipped"].scalars("td/grad_blocked_frac")) > 0
    assert huber and all(v == 0.0 for v in huber)


def test_the_doctor_names_the_blocked_gradient_on_the_clipped_run_and_nothing_on_the_huber_run(runs):
    from dqnlab.doctor import examine

    clipped = examine(runs["devsisters_clipped"].run_dir)
    rules = [f.rule for run in clipped.runs for f in run.findings]
    assert "blocked_td_gradient" in rules
    huber = examine(runs["devsisters_huber_dueling"].run_dir)
    assert [f for run in huber.runs for f in run.findings] == []
    assert huber.verdict == "healthy"
