"""dqnlab's gymnasium ids: scaled rewards, masked velocities, the 500-step limit, make_env errors."""

from __future__ import annotations

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest

from dqnlab import envs
from dqnlab.envs import ENV_IDS, MaskVelocity, RewardScale, env_dirname, make_env, register_envs

ACTIONS = [0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 0]


def rollout(env: gym.Env, seed: int = 7):
    """Observations, rewards and flags for a fixed action sequence, stopping at the episode's end."""
    obs, _ = env.reset(seed=seed)
    observations, rewards, flags = [obs], [], []
    for a in ACTIONS:
        obs, r, terminated, truncated, _ = env.step(a)
        observations.append(obs)
        rewards.append(r)
        flags.append((terminated, truncated))
        if terminated or truncated:
            break
    env.close()
    return np.array(observations), np.array(rewards), flags


def test_ids_listed():
    assert ENV_IDS == (
        "dqnlab/CartPole-reward10-v1",
        "dqnlab/CartPole-reward100-v1",
        "dqnlab/CartPole-masked-v1",
    )


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_ids_make_with_gymnasium_and_make_env(env_id):
    env = gym.make(env_id)
    assert env.spec.id == env_id
    assert env.spec.max_episode_steps == 500  # CartPole-v1's limit kept
    assert env.action_space == gym.spaces.Discrete(2)
    env.close()
    env = make_env(env_id, seed=0)
    assert env.spec.id == env_id
    env.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_kwargs_pass_through_to_cartpole(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    assert env.render_mode == "rgb_array" and env.unwrapped.render_mode == "rgb_array"
    env.close()
    env = gym.make(env_id, max_episode_steps=20)
    assert env.spec.max_episode_steps == 20
    env.close()


@pytest.mark.parametrize(("env_id", "scale"), [(ENV_IDS[0], 10.0), (ENV_IDS[1], 100.0)])
def test_rewards_scaled_exactly(env_id, scale):
    obs, rewards, flags = rollout(gym.make(env_id))
    ref_obs, ref_rewards, ref_flags = rollout(gym.make("CartPole-v1"))
    assert len(rewards) >= 5
    np.testing.assert_array_equal(rewards, scale * ref_rewards)  # exact: 1.0 * 10.0 == 10.0
    np.testing.assert_array_equal(obs, ref_obs)
    assert flags == ref_flags
    env = gym.make(env_id)
    assert [w.scale for w in _wrappers(env) if isinstance(w, RewardScale)] == [scale]
    env.close()


def test_masked_obs_is_full_obs_at_positions():
    obs, rewards, flags = rollout(gym.make(ENV_IDS[2]))
    ref_obs, ref_rewards, ref_flags = rollout(gym.make("CartPole-v1"))
    assert obs.shape == (len(ref_obs), 2)
    np.testing.assert_array_equal(obs, ref_obs[:, [0, 2]])
    np.testing.assert_array_equal(rewards, ref_rewards)
    assert flags == ref_flags


def test_masked_observation_space():
    env = gym.make(ENV_IDS[2])
    full = gym.make("CartPole-v1").observation_space
    space = env.observation_space
    assert isinstance(space, gym.spaces.Box) and space.shape == (2,) and space.dtype == np.float32
    np.testing.assert_array_equal(space.low, full.low[[0, 2]])
    np.testing.assert_array_equal(space.high, full.high[[0, 2]])
    assert np.all(np.isfinite(space.high))  # both velocities (the infinite bounds) are gone
    obs, _ = env.reset(seed=1)
    assert space.contains(obs)
    assert any(isinstance(w, MaskVelocity) for w in _wrappers(env))
    env.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_episode_truncates_at_500_steps(env_id):
    env = gym.make(env_id)
    env.reset(seed=0)
    steps, terminated, truncated = 0, False, False
    while not (terminated or truncated):
        env.unwrapped.state = np.zeros(4)  # hold the pole upright so only the time limit can end it
        _, _, terminated, truncated, _ = env.step(steps % 2)
        steps += 1
    assert (steps, terminated, truncated) == (500, False, True)
    env.close()


def test_make_env_seed_is_reproducible():
    a, b = make_env(ENV_IDS[0], seed=5), make_env(ENV_IDS[0], seed=5)
    assert [a.action_space.sample() for _ in range(20)] == [b.action_space.sample() for _ in range(20)]
    np.testing.assert_array_equal(a.reset(seed=5)[0], gym.make("CartPole-v1").reset(seed=5)[0])


@pytest.mark.parametrize(
    "env_id", ["Cartpole-v1", "CartPole-v9", "nope/CartPole-v1", "dqnlab/Nope-v1", "a b"]
)
def test_unknown_id_is_one_line_value_error(env_id):
    with pytest.raises(ValueError, match="^unknown environment id") as info:
        make_env(env_id)
    message = str(info.value)
    assert repr(env_id) in message and "\n" not in message
    assert "dqnlab/CartPole-reward10-v1" in message  # lists dqnlab's own ids
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_continuous_action_space_is_one_line_value_error():
    with pytest.raises(ValueError, match=r"discrete action space; Pendulum-v1 has Box\(") as info:
        make_env("Pendulum-v1")
    assert "\n" not in str(info.value)


def test_a_discrete_state_reaches_the_network_one_hot():
    env = make_env("FrozenLake-v1", seed=0)
    assert env.observation_space == gym.spaces.Box(0.0, 1.0, (16,), np.float32)
    obs, _ = env.reset(seed=0)
    expected = np.zeros(16, np.float32)
    expected[env.unwrapped.s] = 1.0
    assert obs.dtype == np.float32 and np.array_equal(obs, expected)
    for action in [2, 2, 1, 1]:  # a few steps: every observation is the one-hot of the state the env is in
        obs, *_, terminated, truncated, _ = env.step(action)
        assert obs.sum() == 1.0 and obs[env.unwrapped.s] == 1.0
        if terminated or truncated:
            break
    env.close()


def test_a_tuple_of_discretes_is_its_one_hots_joined():
    """Blackjack's (player sum, dealer card, usable ace): Discrete(32), Discrete(11), Discrete(2)."""
    env = make_env("Blackjack-v1")
    assert env.observation_space.shape == (32 + 11 + 2,)
    obs, _ = env.reset(seed=3)
    raw = env.unwrapped._get_obs()
    expected = np.zeros(45, np.float32)
    expected[[raw[0], 32 + raw[1], 43 + int(raw[2])]] = 1.0
    assert np.array_equal(obs, expected)
    env.close()


class _Counter(gym.Env):
    """Observations of a chosen space; never terminates; no time limit of its own."""

    action_space = gym.spaces.Discrete(2)

    def __init__(self, observation_space=None):
        self.observation_space = observation_space or gym.spaces.Box(0, 100, (3,), np.int64)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), 1.0, False, False, {}


def _registered(name: str, **kwargs) -> str:
    env_id = f"dqnlab-test/{name}-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=_Counter, kwargs=kwargs)
    return env_id


def test_a_vector_of_ints_is_cast_to_float32():
    env = make_env(_registered("IntCounter"))
    assert env.observation_space.dtype == np.float32 and env.observation_space.shape == (3,)
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32
    env.close()


@pytest.mark.parametrize(
    "space, shown",
    [
        (gym.spaces.Text(5), "Text("),
        (gym.spaces.Box(0.0, 1.0, (4, 4), np.float32), "Box(0.0, 1.0, (4, 4)"),
        (gym.spaces.Tuple([gym.spaces.Discrete(3), gym.spaces.Text(4)]), "Tuple(Discrete(3), Text("),
    ],
)
def test_observations_no_network_reads_are_one_line_value_errors(space, shown):
    env_id = _registered(f"Unreadable{type(space).__name__}{len(str(space))}", observation_space=space)
    with pytest.raises(ValueError, match="needs observations that are a vector of numbers") as info:
        make_env(env_id)
    assert f"{env_id} has {shown}" in str(info.value) and "\n" not in str(info.value)


def test_an_evaluation_episode_without_a_time_limit_is_cut(monkeypatch):
    """A greedy policy in an env that never terminates would evaluate for ever: the eval env gets a time
    limit (the training env keeps the env's own: none)."""
    from dqnlab.loop import greedy_episodes

    monkeypatch.setattr(envs, "EVAL_MAX_EPISODE_STEPS", 40)
    env_id = _registered("Endless")

    class Constant:
        def initial_state(self):
            return None

        def step(self, obs, state):
            return np.array([1.0, 0.0]), state

    episodes = greedy_episodes(make_env(env_id, evaluation=True), Constant(), 2, seed=0, gamma=0.5)
    assert episodes.returns == (40.0, 40.0)
    # Truncated, not terminated: each return completed with the tail gamma^(T - t) * max Q = 0.5^(40 - t).
    assert episodes.q_taken.size == 2 * 36  # the steps whose tail weighs at most 5%: 0.5^5 = 0.031
    training = make_env(env_id)
    training.reset(seed=0)
    assert not any(training.step(0)[3] for _ in range(100))  # no limit added to the training env


@pytest.mark.parametrize("env_id", ["FrozenLake-v1", "Taxi-v4", "CliffWalking-v1", "Blackjack-v1"])
def test_toy_text_envs_are_stored_as_data_and_go_on_exactly(env_id):
    """A checkpoint's env state (dqnlab.envstate): the one-hot wrappers' construction arguments are the
    fresh env's, the transition table `P` an int-keyed dict of plain data; restored into an env built with
    another seed, the same actions give the same observations, rewards and ends, across resets."""
    import json

    from dqnlab import envstate, plainstate

    def play(env, steps=60):
        out = []
        for t in range(steps):
            obs, reward, terminated, truncated, _ = env.step(t % env.action_space.n)
            out.append((obs.tolist(), reward, terminated, truncated))
            if terminated or truncated:
                env.reset()  # unseeded: the env's own (restored) generator decides
        return out

    env = make_env(env_id, seed=0)
    play(env, 7)
    state = envstate.capture(env)
    assert state is not None
    arrays: dict = {}
    tree = json.loads(json.dumps(plainstate.encode(state, arrays)))
    fresh = make_env(env_id, seed=123)
    envstate.restore(fresh, plainstate.decode(tree, arrays))
    assert play(fresh) == play(env)


def test_env_dirname():
    assert env_dirname("dqnlab/CartPole-reward10-v1") == "dqnlab-CartPole-reward10-v1"
    assert env_dirname("CartPole-v1") == "CartPole-v1"


def test_register_envs_is_idempotent():
    before = {k: v for k, v in gym.registry.items() if k.startswith("dqnlab/")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gymnasium warns when an id is registered twice
        register_envs()
        register_envs()
    after = {k: v for k, v in gym.registry.items() if k.startswith("dqnlab/")}
    assert after == before and set(after) == set(ENV_IDS)


def test_module_does_not_import_tensorflow():
    code = "import sys, dqnlab.envs; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def _wrappers(env: gym.Env):
    while isinstance(env, gym.Wrapper):
        yield env
        env = env.env


def test_missing_box2d_names_dqnlabs_extra_not_gymnasiums(monkeypatch):
    # gymnasium's own hint (`pip install "gymnasium[box2d]"`) builds box2d-py with swig; ours is wheels only.
    def no_box2d(*args, **kwargs):
        raise gym.error.DependencyNotInstalled('Box2D is not installed, run `pip install "gymnasium[box2d]"`')

    monkeypatch.setattr(gym, "make", no_box2d)
    with pytest.raises(ValueError) as info:
        make_env("LunarLander-v3")
    message = str(info.value)
    assert "dqnlab[box2d]" in message and "gymnasium[box2d]" not in message and "\n" not in message
