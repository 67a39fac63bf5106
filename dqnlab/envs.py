"""dqnlab's own gymnasium environments, registered under the `dqnlab/` namespace.

After `import dqnlab.envs` (which calls `register_envs()`), `gymnasium.make("dqnlab/...")` works for users
too:

- `dqnlab/CartPole-reward10-v1`, `dqnlab/CartPole-reward100-v1`: CartPole-v1 with every reward multiplied
  by 10 or 100; the task, the dynamics and the 500-step limit are unchanged. Why they exist: with rewards
  of 10 or 100 the TD errors sit far beyond a clip bound of 1 for most of training, and that is exactly
  where the clipped-delta loss (`square(clip_by_value(delta, -1, 1))`) has a gradient of exactly zero. On
  plain CartPole (reward 1) the bug hides; here the A/B against a Huber loss shows it.
- `dqnlab/CartPole-masked-v1`: CartPole-v1 without the two velocities (cart velocity and pole angular
  velocity, observation indices 1 and 3): a partially observable task that needs memory, the small
  stand-in for DRQN's flickering Atari (Hausknecht & Stone 2015).

`make_env` is what dqnlab itself uses: it registers these ids, builds the env, and turns gymnasium's
"not found" errors (and a continuous action space, or observations the learners cannot read) into one-line
`ValueError`s; discrete and composite observations (FrozenLake's `Discrete`, Blackjack's `Tuple`) reach the
network one-hot encoded and joined, as gymnasium's `FlattenObservation` makes them (`needs_flattening`).
Atari ids (`ALE/...-v5`, the optional `atari` extra) get the standard preprocessing of `make_atari_env`
(docs/atari.md). This module does not import TensorFlow.
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np

from dqnlab.components import import_module
from dqnlab.config import AtariConfig, is_atari_env

NAMESPACE = "dqnlab"
_BASE_ID = "CartPole-v1"
_BASE_SPEC = gym.spec(_BASE_ID)

# env id -> (entry point, kwargs, reward threshold). The one list of dqnlab's ids.
_ENVS: dict[str, tuple[str, dict, float]] = {
    f"{NAMESPACE}/CartPole-reward10-v1": (
        "dqnlab.envs:make_scaled_cartpole",
        {"scale": 10.0},
        10.0 * _BASE_SPEC.reward_threshold,
    ),
    f"{NAMESPACE}/CartPole-reward100-v1": (
        "dqnlab.envs:make_scaled_cartpole",
        {"scale": 100.0},
        100.0 * _BASE_SPEC.reward_threshold,
    ),
    f"{NAMESPACE}/CartPole-masked-v1": ("dqnlab.envs:make_masked_cartpole", {}, _BASE_SPEC.reward_threshold),
}
ENV_IDS: tuple[str, ...] = tuple(_ENVS)


class RewardScale(gym.RewardWrapper):
    """Multiplies every reward by `scale` (observations, terminations and time limit unchanged)."""

    def __init__(self, env: gym.Env, scale: float):
        super().__init__(env)
        self.scale = float(scale)

    def reward(self, reward):
        return self.scale * reward


class MaskVelocity(gym.ObservationWrapper):
    """Keeps CartPole's positions (cart x, pole angle: indices 0 and 2) and drops the velocities (1 and 3).

    The observation space becomes a Box of shape (2,) with the bounds of the kept components.
    """

    KEEP = np.array([0, 2])

    def __init__(self, env: gym.Env):
        super().__init__(env)
        box = env.observation_space
        self.observation_space = gym.spaces.Box(box.low[self.KEEP], box.high[self.KEEP], dtype=box.dtype)

    def observation(self, observation):
        return observation[self.KEEP]  # [2]


def _base_cartpole(**kwargs) -> gym.Env:
    # No inner time limit or env checker: the outer `gymnasium.make` adds both from dqnlab's own spec
    # (registered with CartPole-v1's max_episode_steps), so `env.spec.max_episode_steps` reads 500 and a
    # user's `max_episode_steps=` override works as for any other id.
    return gym.make(_BASE_ID, max_episode_steps=-1, disable_env_checker=True, **kwargs)


def make_scaled_cartpole(scale: float, **kwargs) -> gym.Env:
    """Entry point: CartPole-v1 with rewards times `scale`; kwargs (e.g. render_mode) go to CartPole."""
    return RewardScale(_base_cartpole(**kwargs), scale)


def make_masked_cartpole(**kwargs) -> gym.Env:
    """Entry point: CartPole-v1 observing positions only; kwargs (e.g. render_mode) go to CartPole."""
    return MaskVelocity(_base_cartpole(**kwargs))


def register_envs() -> None:
    """Register the `dqnlab/` ids with gymnasium. Idempotent: ids already registered are left alone."""
    for env_id, (entry_point, kwargs, reward_threshold) in _ENVS.items():
        if env_id not in gym.registry:
            gym.register(
                env_id,
                entry_point=entry_point,
                kwargs=kwargs,
                max_episode_steps=_BASE_SPEC.max_episode_steps,
                reward_threshold=reward_threshold,
            )


def make_env(
    env_id: str,
    seed: int | None = None,
    *,
    atari: AtariConfig | None = None,
    evaluation: bool = False,
    **kwargs,
) -> gym.Env:
    """`gymnasium.make(env_id, **kwargs)` with dqnlab's ids registered and one-line errors.

    An Atari id (`ALE/...`) is built by `make_atari_env` with the `[atari]` settings (its defaults when
    `atari` is None); `evaluation=True` turns reward clipping and life-loss terminals off, so an evaluation
    scores the real game, and gives an env without a time limit one of `EVAL_MAX_EPISODE_STEPS` steps, so
    a greedy policy that never reaches a terminal state cannot hang the run. Raises ValueError if the id
    is unknown to gymnasium, if it needs a package that is not installed, if its action space is not
    `Discrete`, or if its observations are not what the learners read (`observations_readable`) once
    discrete and composite spaces are flattened (`needs_flattening`). If `seed` is given, the env is reset
    once with it and its action space is seeded with it.
    """
    register_envs()
    try:
        if is_atari_env(env_id):
            options = dataclasses.asdict(atari) if atari is not None else {}
            if evaluation:
                options.update(clip_rewards=False, terminal_on_life_loss=False)
            env = make_atari_env(env_id, **options, **kwargs)
        else:
            if ":" in env_id:  # gymnasium's "module:id": the module registers the id when imported
                import_module(env_id.split(":")[0])
            env = gym.make(env_id, **kwargs)
    except (gym.error.DependencyNotInstalled, ImportError) as exc:
        if is_atari_env(env_id):
            raise ValueError(f"environment {env_id!r} needs ale-py and opencv: {ATARI_EXTRA}") from None
        if "box2d" in str(exc).lower():  # gymnasium's hint names its own extra, which needs swig to build
            raise ValueError(f"environment {env_id!r} needs Box2D: {BOX2D_EXTRA}") from None
        raise ValueError(
            f"environment {env_id!r} needs a package that is not installed: {_line(exc)}"
        ) from None
    except gym.error.Error as exc:  # NameNotFound, NamespaceNotFound, VersionNotFound, malformed id, ...
        raise ValueError(
            f"unknown environment id {env_id!r}: {_line(exc)} (dqnlab's own ids: {', '.join(ENV_IDS)})"
        ) from None
    if not isinstance(env.action_space, gym.spaces.Discrete):
        space = env.action_space
        env.close()
        raise ValueError(f"dqnlab needs a discrete action space; {env_id} has {space}")
    if evaluation and not is_atari_env(env_id) and (env.spec is None or env.spec.max_episode_steps is None):
        # A greedy policy in a deterministic env can walk in a circle for ever (CliffWalking has no limit).
        env = gym.wrappers.TimeLimit(env, EVAL_MAX_EPISODE_STEPS)
    if not is_atari_env(env_id) and needs_flattening(env.observation_space):
        env = gym.wrappers.DtypeObservation(gym.wrappers.FlattenObservation(env), np.float32)
    if not observations_readable(env.observation_space, atari=is_atari_env(env_id)):
        space = env.observation_space
        env.close()
        raise ValueError(
            "dqnlab needs observations that are a vector of numbers, or a discrete or composite space it "
            f"one-hot encodes and joins (Atari ids: stacked uint8 frames); {env_id} has {_line(space)}"
        )
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def needs_flattening(space: gym.Space) -> bool:
    """Whether `make_env` gives the env's observations to the network as gymnasium's `FlattenObservation`
    makes them, as float32: a `Discrete` state (FrozenLake, Taxi, CliffWalking) as its one-hot vector; a
    `MultiDiscrete`, `MultiBinary`, `Tuple` (Blackjack) or `Dict` as its parts' one-hots and values joined
    in gymnasium's order; a 1-D `Box` of ints or bools cast. What SB3's DQN feeds its MLP for the same
    spaces. A `Box` of two or more axes is left alone (frames want a CNN, not a flattened MLP input), and so
    is any other space (`Text`, whose flat form is character codes, `Graph`, `Sequence`)."""
    if isinstance(space, gym.spaces.Box):
        return len(space.shape) == 1 and not np.issubdtype(space.dtype, np.floating)
    return _one_hot_leaves(space)


def _one_hot_leaves(space: gym.Space) -> bool:
    """Whether every part of `space` is a discrete space or a 1-D `Box`, inside `Tuple`s and `Dict`s."""
    if isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)):
        return True
    if isinstance(space, gym.spaces.Box):
        return len(space.shape) == 1
    if isinstance(space, gym.spaces.Dict):
        return all(_one_hot_leaves(part) for part in space.spaces.values())
    if isinstance(space, gym.spaces.Tuple):
        return all(_one_hot_leaves(part) for part in space.spaces)
    return False


def observations_readable(space: gym.Space, atari: bool) -> bool:
    """What the learners read: the MLP and the RNN a vector of floats ([obs_dim]), the CNN stacked uint8
    frames ([stack, H, W]). A Discrete (FrozenLake), Tuple (Blackjack) or Dict space has no such shape until
    `make_env` flattens it (`needs_flattening`)."""
    if not isinstance(space, gym.spaces.Box):
        return False
    if atari:
        return space.dtype == np.uint8 and len(space.shape) == 3
    return np.issubdtype(space.dtype, np.floating) and len(space.shape) == 1


# Where an env has no time limit of its own, a greedy evaluation episode is cut (truncated) after this many
# steps; its value check then treats it as a time limit (`loop.greedy_episodes`).
EVAL_MAX_EPISODE_STEPS = 10_000

ATARI_EXTRA = "install the atari extra: pip install 'dqnlab[atari]'"
BOX2D_EXTRA = "install the box2d extra (prebuilt wheels, no swig): pip install 'dqnlab[box2d]'"


class ClipReward(gym.RewardWrapper):
    """sign(reward): -1, 0 or +1 (Mnih et al. 2015), so one learning rate fits every game's score scale."""

    def reward(self, reward):
        return float(np.sign(reward))


class LifeLossTerminal(gym.Wrapper):
    """`terminated` when a life is lost, but the next `reset` continues the game (one no-op step) unless
    it is really over: DQN's episodic-life trick (Mnih et al. 2015; SB3's EpisodicLifeEnv). gymnasium's
    own `AtariPreprocessing(terminal_on_life_loss=True)` resets the whole game at each lost life instead,
    so the agent would never see a game past its first life."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._lives = 0
        self._game_over = True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._game_over = terminated or truncated
        lives = self.env.unwrapped.ale.lives()
        if 0 < lives < self._lives:
            terminated = True
        self._lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs):
        if self._game_over:
            obs, info = self.env.reset(**kwargs)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)  # NOOP: the game goes on
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        self._game_over = False
        self._lives = self.env.unwrapped.ale.lives()
        return obs, info


class FireToServe(gym.Wrapper):
    """Press FIRE at the start of a game and after each lost life, in games that need it to serve the ball
    (Breakout): a greedy agent that has not learnt to press FIRE would otherwise stand still until ALE's
    27,000-step limit, in every evaluation episode. SB3's FireResetEnv does the first half. Outside
    `LifeLossTerminal`, a lost life is an episode end and the next `reset` serves."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._fire = env.unwrapped.get_action_meanings().index("FIRE")
        self._lives = 0

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        obs, _, terminated, truncated, info = self.env.step(self._fire)
        if terminated or truncated:
            obs, info = self.env.reset(**kwargs)
        self._lives = self.env.unwrapped.ale.lives()
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.env.unwrapped.ale.lives() < self._lives and not (terminated or truncated):
            obs, serve_reward, terminated, truncated, info = self.env.step(self._fire)
            reward += serve_reward
        self._lives = self.env.unwrapped.ale.lives()
        return obs, reward, terminated, truncated, info


class StickyActions(gym.Wrapper):
    """Sticky actions (Machado et al. 2018), per emulator frame: with probability `p` the frame repeats the
    previous frame's action instead of the one asked for. ALE can do this itself, but the action it repeats
    is not part of `ALEState.serialize()`, so an env restored from a checkpoint would repeat NOOP where the
    original repeated its last action (one frame in four differs, and the game with it). Here the last
    action and the generator are plain attributes that a checkpoint stores (dqnlab.envstate). The
    generator is reseeded by `reset(seed=...)`; the last action is NOOP after every reset, as in ALE."""

    def __init__(self, env: gym.Env, p: float):
        super().__init__(env)
        self.p = float(p)
        self.last_action = 0
        self.sticky_rng = np.random.default_rng(0)

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.sticky_rng = np.random.default_rng((seed, 2))
        self.last_action = 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        if self.p > 0 and self.sticky_rng.random() < self.p:
            action = self.last_action
        self.last_action = action
        return self.env.step(action)


def make_atari_env(
    env_id: str,
    *,
    repeat_action_probability: float = 0.25,
    terminal_on_life_loss: bool = False,
    clip_rewards: bool = True,
    frame_stack: int = 4,
    noop_max: int = 30,
    screen_size: int = 84,
    **kwargs,
) -> gym.Env:
    """An ALE v5 id with the standard DQN preprocessing; observations uint8 [frame_stack, size, size].

    The emulator runs every frame (`frameskip=1`), with sticky actions as asked (`StickyActions`; ALE's own
    are set to 0, so that a checkpoint restores them exactly); gymnasium's AtariPreprocessing repeats each
    action 4 frames, max-pools the last two (flicker), converts to grayscale, resizes to `screen_size` and
    starts each game with up to `noop_max` no-ops; then optional life-loss terminals, FIRE to serve where
    the game has it (`FireToServe`), and optional sign reward clipping; FrameStackObservation stacks the
    last `frame_stack` frames channels-first. Defaults are the `[atari]`
    section's (docs/atari.md).
    """
    try:
        import ale_py
    except ImportError:
        raise gym.error.DependencyNotInstalled(ATARI_EXTRA) from None
    gym.register_envs(ale_py)
    env = StickyActions(
        gym.make(env_id, frameskip=1, repeat_action_probability=0.0, **kwargs), repeat_action_probability
    )
    try:
        env = gym.wrappers.AtariPreprocessing(
            env, noop_max=noop_max, frame_skip=4, screen_size=screen_size, grayscale_obs=True
        )
    except gym.error.DependencyNotInstalled:  # opencv, the other half of the extra
        env.close()
        raise gym.error.DependencyNotInstalled(ATARI_EXTRA) from None
    if terminal_on_life_loss:
        env = LifeLossTerminal(env)
    if "FIRE" in env.unwrapped.get_action_meanings():
        env = FireToServe(env)
    if clip_rewards:
        env = ClipReward(env)
    return gym.wrappers.FrameStackObservation(env, stack_size=frame_stack)


def env_dirname(env_id: str) -> str:
    """The run-directory name of an env id: '/' and ':' replaced by '-' (`dqnlab/X-v1` -> `dqnlab-X-v1`,
    `mypkg.envs:X-v0` -> `mypkg.envs-X-v0`)."""
    return env_id.replace("/", "-").replace(":", "-")


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # one line, whatever gymnasium's message looks like
    return text or type(exc).__name__


register_envs()
