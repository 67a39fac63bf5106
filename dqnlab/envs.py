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
"not found" errors (and a continuous action space) into one-line `ValueError`s.
This module does not import TensorFlow.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

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


def make_env(env_id: str, seed: int | None = None, **kwargs) -> gym.Env:
    """`gymnasium.make(env_id, **kwargs)` with dqnlab's ids registered and one-line errors.

    Raises ValueError if the id is unknown to gymnasium, if it needs a package that is not installed, or
    if its action space is not `Discrete`. If `seed` is given, the env is reset once with it and its
    action space is seeded with it.
    """
    register_envs()
    try:
        env = gym.make(env_id, **kwargs)
    except (gym.error.DependencyNotInstalled, ImportError) as exc:
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
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def env_dirname(env_id: str) -> str:
    """The run-directory name of an env id: '/' replaced by '-' (`dqnlab/X-v1` -> `dqnlab-X-v1`)."""
    return env_id.replace("/", "-")


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # one line, whatever gymnasium's message looks like
    return text or type(exc).__name__


register_envs()
