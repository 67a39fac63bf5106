"""Atari (the `atari` extra): preprocessing, the Nature CNN against a numpy reference on NHWC input, the
per-channel probes against hand-computed values, [atari] validation, a short Pong run that must log
every diagnostic for every conv layer (read back from the event files), and bit-exact resume."""

from __future__ import annotations

import json
import math
import sys

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("ale_py")
pytest.importorskip("cv2")

from metrics_doc import undocumented

import dqnlab  # noqa: E402
from dqnlab import envstate, plainstate, probes  # noqa: E402
from dqnlab._tf import tf  # noqa: E402
from dqnlab.cli import main  # noqa: E402
from dqnlab.cnn_learner import pack_frames, unpack_frames  # noqa: E402
from dqnlab.cnn_net import build_cnn_q_network, forward  # noqa: E402
from dqnlab.config import ConfigError, load_preset  # noqa: E402
from dqnlab.envs import ClipReward, LifeLossTerminal, StickyActions, make_env  # noqa: E402
from dqnlab.frame_replay import FrameReplay  # noqa: E402
from dqnlab.kinds import make_learner  # noqa: E402
from dqnlab.learner import PER_VARIABLE, PROBE_PER_VARIABLE  # noqa: E402
from dqnlab.networks import variable_tag  # noqa: E402
from dqnlab.sampling import FrameSampler  # noqa: E402

CONVS = ("conv_0", "conv_1", "conv_2")
PROBE_FAMILIES = ("act_dead_frac", "act_dormant_frac", "act_saturated_frac", "act_zero_deriv_frac")


def wrappers(env) -> list[type]:
    out = []
    while hasattr(env, "env"):
        out.append(type(env))
        env = env.env
    return out


# ---- preprocessing -------------------------------------------------------------------------------------


def test_pong_observations_are_stacked_uint8_frames():
    cfg = load_preset("pong_huber")
    env = make_env("ALE/Pong-v5", seed=0, atari=cfg.atari)
    assert env.observation_space.shape == (4, 84, 84) and env.observation_space.dtype == np.uint8
    assert env.unwrapped._frameskip == 1  # AtariPreprocessing does the frame skipping
    # Sticky actions in dqnlab's wrapper (restorable), ALE's own off.
    assert env.unwrapped.spec.kwargs["repeat_action_probability"] == 0.0
    assert [layer.p for layer in envstate.layers(env) if isinstance(layer, StickyActions)] == [0.25]
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    rewards = set()
    for t in range(300):
        nxt, reward, terminated, truncated, _ = env.step(t % 6)
        assert nxt.dtype == np.uint8 and np.array_equal(nxt[:-1], obs[1:])  # a stack shifted by one frame
        rewards.add(reward)
        obs = nxt
    assert rewards <= {-1.0, 0.0, 1.0} and -1.0 in rewards  # clipped; random play concedes points
    assert ClipReward in wrappers(env)
    # Evaluation scores the real game: no clipping, no life-loss terminals.
    on = load_preset("pong_huber", {"atari.terminal_on_life_loss": True})
    assert LifeLossTerminal in wrappers(make_env("ALE/Pong-v5", atari=on.atari))
    evaluation = wrappers(make_env("ALE/Pong-v5", atari=on.atari, evaluation=True))
    assert ClipReward not in evaluation and LifeLossTerminal not in evaluation


def test_life_loss_ends_the_episode_but_not_the_game():
    cfg = load_preset("breakout_huber", {"atari.terminal_on_life_loss": True})
    env = make_env("ALE/Breakout-v5", seed=0, atari=cfg.atari)
    env.reset(seed=0)
    ale = env.unwrapped.ale
    lives, ends = [ale.lives()], 0
    while ends < 2:
        _, _, terminated, truncated, _ = env.step(1)  # FIRE, then wait for the ball to drop
        if terminated or truncated:
            ends += 1
            env.reset()
            lives.append(ale.lives())
    assert lives == [5, 4, 3]  # each lost life ended an episode; the game went on from there


def test_breakout_serves_by_itself_so_a_noop_agent_ends_its_game():
    # Without FIRE the ball never comes into play and the game runs to ALE's 27,000-step limit; served at
    # the start and after each lost life, an agent that only ever does NOOP loses its 5 lives quickly.
    cfg = load_preset("breakout_huber")
    env = make_env("ALE/Breakout-v5", seed=0, atari=cfg.atari, evaluation=True)
    env.reset(seed=0)
    steps = 0
    while steps < 5_000:
        _, _, terminated, truncated, _ = env.step(0)
        steps += 1
        if terminated or truncated:
            break
    assert terminated and not truncated and env.unwrapped.ale.lives() == 0, steps


def play(env, actions) -> list[tuple]:
    """Observations, rewards and episode ends of `actions`, resetting (unseeded) at each episode end."""
    out = []
    for a in actions:
        obs, reward, terminated, truncated, _ = env.step(a)
        out.append((obs.copy(), reward, terminated, truncated))
        if terminated or truncated:
            out.append((env.reset()[0].copy(), "reset"))
    return out


def same(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x[0], y[0]) and x[1:] == y[1:] for x, y in zip(a, b, strict=True)
    )


def test_a_restored_env_continues_exactly_like_the_original():
    """A checkpoint stores the training env as data (dqnlab.envstate: each wrapper's plain attributes and
    ALE's serialized emulator state with its RNG) and puts it into a fresh env. Breakout with life-loss
    terminals resets often: the game goes on after each lost life, and a new game starts with a random
    number of no-ops, so the no-op RNG, the sticky-action RNG and the emulator's state all have to come
    back."""
    cfg = load_preset("breakout_huber", {"atari.terminal_on_life_loss": True})
    env = make_env("ALE/Breakout-v5", atari=cfg.atari)
    env.reset(seed=7)
    rng = np.random.default_rng(0)
    play(env, rng.integers(4, size=100).tolist())
    arrays = {}
    tree = json.loads(json.dumps(plainstate.encode(envstate.capture(env), arrays)))
    actions = rng.integers(4, size=1_500).tolist()
    original = play(env, actions)
    assert sum(x[1] == "reset" for x in original) >= 6  # past a game over: a seeded no-op start
    restored = make_env("ALE/Breakout-v5", atari=cfg.atari)
    restored.reset(seed=8)
    envstate.restore(restored, plainstate.decode(tree, arrays))
    assert same(play(restored, actions), original)
    # The wrappers' attributes alone are not enough: without the emulator's state it is another game.
    layers_only = make_env("ALE/Breakout-v5", atari=cfg.atari)
    layers_only.reset(seed=8)
    stored = plainstate.decode(tree, arrays)["layers"]
    for layer, attributes in zip(envstate.layers(layers_only), stored, strict=True):
        plainstate.restore_attributes(layer, attributes, type(layer).__name__, allow_new=True)
    assert not same(play(layers_only, actions), original)


def test_restored_envs_continue_exactly_wherever_they_were_captured():
    """ALE's serialized state does not hold the action its sticky actions repeat; with ALE's own sticky
    actions one capture in twelve here went another way on its first step. dqnlab's StickyActions keeps
    it as a plain attribute: every capture continues exactly."""
    cfg = load_preset("pong_huber")
    for trial in range(12):
        env = make_env("ALE/Pong-v5", seed=trial, atari=cfg.atari)
        rng = np.random.default_rng(trial)
        play(env, rng.integers(6, size=int(rng.integers(5, 200))).tolist())
        arrays = {}
        tree = json.loads(json.dumps(plainstate.encode(envstate.capture(env), arrays)))
        restored = make_env("ALE/Pong-v5", seed=99, atari=cfg.atari)
        envstate.restore(restored, plainstate.decode(tree, arrays))
        actions = rng.integers(6, size=100).tolist()
        assert same(play(restored, actions), play(env, actions)), trial


class ActionTape(gym.Env):
    """Records the actions that reach it."""

    observation_space = gym.spaces.Box(0, 1, (1,))
    action_space = gym.spaces.Discrete(6)

    def __init__(self):
        self.seen = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.seen.append(int(action))
        return np.zeros(1, np.float32), 0.0, False, False, {}


def test_sticky_actions_repeat_the_previous_frames_action_with_probability_p():
    for p, expected in ((0.0, 0.0), (1.0, 1.0), (0.25, 0.25)):
        env = StickyActions(ActionTape(), p)
        env.reset(seed=3)
        asked = [1 + (i % 5) for i in range(4000)]  # never the same action twice in a row
        for a in asked:
            env.step(a)
        seen = env.unwrapped.seen
        repeated = np.mean([s != a for s, a in zip(seen, asked, strict=True)])
        assert abs(repeated - expected) < 0.03, (p, repeated)
    always = StickyActions(ActionTape(), 1.0)
    always.reset(seed=0)
    always.step(4)
    assert always.unwrapped.seen == [0]  # after a reset the repeated action is NOOP, as in ALE


# ---- the network ---------------------------------------------------------------------------------------


def numpy_nature_cnn(frames: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    """The Nature CNN written independently in numpy on NHWC input: convs as sums over sliding windows."""
    x = np.transpose(frames.astype(np.float64) / 255.0, (0, 2, 3, 1))  # [B, H, W, C]
    w = [np.asarray(a, np.float64) for a in weights]
    for (kernel, bias), stride in zip([(w[0], w[1]), (w[2], w[3]), (w[4], w[5])], (4, 2, 1), strict=True):
        k = kernel.shape[0]
        windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride]
        x = np.maximum(np.einsum("bhwcij,ijco->bhwo", windows, kernel) + bias, 0.0)
    h = np.maximum(x.reshape(len(x), -1) @ w[6] + w[7], 0.0)  # flattened in H, W, C order
    return h @ w[8] + w[9]


def test_cnn_on_channels_first_frames_equals_a_reference_on_nhwc():
    cfg = load_preset("pong_huber", {"network.bias_init": 0.05})
    model = build_cnn_q_network(cfg.network, (4, 84, 84), 6)
    tags = [variable_tag(v) for v in model.trainable_variables]
    assert tags == [f"{n}/{p}" for n in (*CONVS, "hidden_0", "q_head") for p in ("kernel", "bias")]
    assert model.get_layer("conv_0").kernel.shape == (8, 8, 4, 32)
    frames = np.random.default_rng(0).integers(0, 256, (3, 4, 84, 84), dtype=np.uint8)
    frames[1, 0] = 0  # the channel axis matters: one stacked frame blank
    expected = numpy_nature_cnn(frames, [v.numpy() for v in model.trainable_variables])
    np.testing.assert_allclose(model(frames).numpy(), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(forward(model, tf.constant(frames)).numpy(), expected, rtol=1e-4, atol=1e-4)
    # The same pixels read as channels-last (no transpose) give another answer: the transpose is needed.
    wrong = numpy_nature_cnn(
        np.transpose(frames.reshape(3, 84, 84, 4), (0, 3, 1, 2)),
        [v.numpy() for v in model.trainable_variables],
    )
    assert not np.allclose(wrong, expected, atol=1e-3)


def test_acting_policy_and_frame_split_match_the_network():
    cfg = load_preset("pong_huber")
    learner = make_learner(cfg, (4, 84, 84), 6, seed=0)
    obs = np.random.default_rng(1).integers(0, 256, (4, 84, 84), dtype=np.uint8)
    policy = learner.policy()
    np.testing.assert_allclose(policy(obs), learner.online(obs[None]).numpy()[0], rtol=1e-5, atol=1e-5)
    assert policy.initial_state() is None
    # Frames cross to TF uint8, stack + 1 per transition; obs / next_obs are sliced in the graph.
    replay = FrameReplay(100, (4, 84, 84), seed=0)
    rng = np.random.default_rng(2)
    for t in range(30):
        nxt = np.concatenate([obs[1:], rng.integers(0, 256, (1, 84, 84), dtype=np.uint8)])
        replay.add(obs, t % 6, 1.0, nxt, t == 20)
        obs = nxt if t != 20 else rng.integers(0, 256, (4, 84, 84), dtype=np.uint8)
    burst = FrameSampler(replay).burst(2, 8)
    frames, scalars = pack_frames(burst)
    assert frames.dtype == np.uint8 and frames.shape == (2, 8, 5, 84, 84)
    unpacked = unpack_frames(tf.constant(frames), tf.constant(scalars))
    split = replay.split(burst)
    for got, want in zip(unpacked, split, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    assert learner.update(burst, with_diagnostics=False).weights == []  # the policy reads the variables


# ---- per-channel probes, by hand -----------------------------------------------------------------------


class Diag:
    dormant_tau = 0.025
    saturation_margin = 0.03


def test_per_channel_dead_and_dormant_match_hand_values():
    # z [N=2 states, H=2, W=2, C=4]: channel 0 zeroed on purpose (dead); channel 1 fires once, weakly;
    # channel 2 is 1 everywhere; channel 3 is 2 on state 0 and 0 on state 1 (not dead: it fires somewhere).
    z = np.zeros((2, 2, 2, 4), np.float32)
    z[1, 0, 1, 1] = 0.08
    z[..., 2] = 1.0
    z[0, ..., 3] = 2.0
    x = np.where(z > 0, z, -0.5).astype(np.float32)  # ReLU pre-activations: negative where z is 0
    m = {k: float(v) for k, v in probes.conv_layer_stats("conv_0", x, z, "relu", Diag).items()}
    # Per-channel mean |z| over states and positions: 0, 0.01, 1, 1; layer mean 0.5025.
    scores = np.array([0.0, 0.01, 1.0, 1.0]) / 0.5025  # 0, 0.0199 (<= tau 0.025: dormant), 1.99, 1.99
    assert m["act_dead_frac/conv_0"] == 0.25  # channel 0
    assert m["act_dormant_frac/conv_0"] == pytest.approx(np.mean(scores <= 0.025)) == 0.5  # channels 0, 1
    assert m["act_zero_deriv_frac/conv_0"] == pytest.approx((8 + 7 + 0 + 4) / 32)  # entries with x <= 0
    assert m["act_deriv_mean/conv_0"] == pytest.approx((0 + 1 + 8 + 4) / 32)
    assert m["act_saturated_frac/conv_0"] == 0.0  # ReLU never saturates
    # Per channel, not per entry: every channel has zero entries, yet only channel 0 is dead.
    assert float(probes.dead_frac(tf.reshape(z, [2, -1]))) == pytest.approx(7 / 16)  # 4 + 3 of 16 entries


# ---- [atari] validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"atari.stack": 4}, r"\[atari\]: unknown key 'stack' \(did you mean 'frame_stack'\?\)"),
        ({"atari.repeat_action_probability": 1.5}, r"repeat_action_probability: must be <= 1"),
        ({"atari.repeat_action_probability": -0.1}, r"repeat_action_probability: must be >= 0"),
        ({"atari.frame_stack": 0}, r"atari.frame_stack: must be >= 1"),
        ({"atari.clip_rewards": 1}, r"atari.clip_rewards: expected true or false"),
        ({"atari.screen_size": 32}, r"atari.screen_size: must be >= 36, got 32"),
        ({"env": "CartPole-v1"}, r"network.kind = 'cnn' needs an Atari id"),
    ],
)
def test_atari_section_is_validated(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_preset("pong_huber", overrides)
    assert "\n" not in str(info.value)


def test_atari_presets_differ_only_in_loss_within_a_game_and_in_env_across():
    def differing(a, b):
        da, db = load_preset(a).to_dict(), load_preset(b).to_dict()
        return {k for k in da if da[k] != db[k]} - {"name", "description"}

    for game in ("pong", "breakout"):
        assert differing(f"{game}_huber", f"{game}_clipped_delta") == {"loss"}
        assert load_preset(f"{game}_clipped_delta").loss.kind == "clipped_delta_squared"
    for loss in ("huber", "clipped_delta"):
        assert differing(f"pong_{loss}", f"breakout_{loss}") == {"env"}


def test_atari_section_belongs_to_the_cnn():
    with pytest.raises(ConfigError, match=r"no \[atari\] section \(network.kind is not cnn\)"):
        load_preset("huber_relu", {"atari.frame_stack": 4})
    with pytest.raises(ConfigError, match=r"needs an \[atari\] section"):
        load_preset("huber_relu", {"network.kind": "cnn"})
    with pytest.raises(ConfigError, match="use a cnn preset"):
        load_preset("huber_relu", {"env": "ALE/Pong-v5"})
    with pytest.raises(ConfigError, match="use a cnn preset"):
        dqnlab.train(load_preset("huber_relu"), env="ALE/Pong-v5", steps=10, logdir="/nonexistent")


def test_missing_extra_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ale_py", None)  # `import ale_py` now raises ImportError
    with pytest.raises(ValueError, match=r"install the atari extra: pip install 'dqnlab\[atari\]'$"):
        make_env("ALE/Pong-v5")
    assert main(["train", "pong_huber", "--steps", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith("pip install 'dqnlab[atari]'")


# ---- a short Pong run: every diagnostic on every conv layer ---------------------------------------------


@pytest.fixture(scope="module")
def pong_run(tmp_path_factory):
    cfg = load_preset(
        "pong_huber",
        {
            "train.learning_starts": 1_000,
            "replay.capacity": 3_000,
            "train.epsilon_decay_steps": 3_000,
            "train.eval_every": 0,
            "train.eval_episodes": 1,
            "diagnostics.every": 25,
            "diagnostics.probe_every": 100,
            "diagnostics.min_probes": 0,  # probe_every's schedule alone (and the end probe)
            "diagnostics.min_measured": 0,  # every's schedule alone
            "diagnostics.probe_size": 32,
        },
    )
    return dqnlab.train(cfg, steps=3_000, logdir=tmp_path_factory.mktemp("atari"), name="pong")


def test_short_pong_run_logs_every_diagnostic_for_conv_layers(pong_run):
    res = pong_run
    assert res.status == "done", res.error
    updates = (3_000 - 1_000) // 4 + 1
    assert res.info["updates"] == updates
    probes = updates // 100 + 1  # every 100 updates, and at the run's last burst
    for layer in (*CONVS, "hidden_0", "q_head"):
        for part in ("kernel", "bias"):
            for family in PER_VARIABLE:
                series = res.scalars(f"{family}/{layer}/{part}")
                assert len(series) == updates // 25, family
                assert all(math.isfinite(v) for _, v in series)
            assert all(v > 0 for _, v in res.scalars(f"grad_norm/{layer}/{part}"))
            assert all(v > 0 for _, v in res.scalars(f"update_ratio/{layer}/{part}"))
            assert all(0 <= v <= 1 for _, v in res.scalars(f"grad_zero_frac/{layer}/{part}"))
            for family in PROBE_PER_VARIABLE:
                series = res.scalars(f"{family}/{layer}/{part}")
                assert len(series) == probes and all(v >= 0 for _, v in series), family
    for layer in (*CONVS, "hidden_0"):
        for family in (*PROBE_FAMILIES, "act_deriv_mean"):
            series = res.scalars(f"{family}/{layer}")
            assert len(series) == probes and all(0.0 <= v <= 1.0 for _, v in series), family
    assert 1 <= res.scalars("features/srank")[-1][1] <= 32  # at most the probe size
    assert {v for _, v in res.scalars("td/grad_blocked_frac")} == {0.0}  # Huber blocks nothing
    assert "grad/depth_ratio" in res.tags()  # conv_0/kernel over hidden_0/kernel
    assert -21 <= res.scalars("eval/return")[-1][1] <= 21  # the game's own score


def test_short_pong_run_writes_conv_histograms_and_documents_every_tag(pong_run):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(
        str(pong_run.run_dir), size_guidance={event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    histograms = [t for t in acc.Tags()["tensors"] if t.startswith("hist/")]
    for layer in CONVS:
        wanted = {f"hist/activation/{layer}", f"hist/weight/{layer}/kernel", f"hist/grad/{layer}/kernel"}
        assert wanted <= set(histograms)
    assert undocumented(pong_run.tags() + histograms) == [], "not defined in docs/metrics.md"


# ---- resume -----------------------------------------------------------------------------------------------


@pytest.mark.slow  # ~30 s: the longest test of the default run; CI runs it with `-m slow`
def test_sigkilled_pong_run_resumes_exactly_like_an_uninterrupted_one(tmp_path):
    """tests/test_resume.py's check on Atari: the emulator, its RNGs, the frame replay and the CNN's state
    all come back from the checkpoint, so the resumed run logs the same numbers and ends with the same
    weights as one that was never killed."""
    import json

    from helpers import assert_same_run, dqnlab_cmd, kill_after_first_checkpoint, start

    args = ["train", "pong_huber", "--steps", "2000", "--deterministic", "--checkpoint-every", "1000"]
    args += ["--checkpoint-replay", "--quiet", "--logdir", str(tmp_path)]
    for override in ("train.learning_starts=500", "replay.capacity=2000", "train.eval_every=0",
                     "train.eval_episodes=1", "diagnostics.every=25", "diagnostics.probe_every=100",
                     "diagnostics.probe_size=32"):  # fmt: skip
        args += ["--set", override]
    assert dqnlab_cmd(*args, "--name", "whole").returncode == 0
    whole = next((tmp_path / "whole").rglob("seed_0"))
    proc = start([*args, "--name", "cut"])
    cut = tmp_path / "cut" / "pong_huber" / "ALE-Pong-v5" / "seed_0"
    at = kill_after_first_checkpoint(cut, proc)
    assert json.loads((cut / "run.json").read_text())["status"] == "running" and at == 1000
    out = dqnlab_cmd(*args, "--name", "cut", "--resume")
    assert out.returncode == 0, out.stderr
    assert json.loads((cut / "run.json").read_text())["resumed_from"] == [1000]
    series = assert_same_run(whole, cut)
    assert "episode/return" in series and "loss/td" in series  # games were played and learnt from
