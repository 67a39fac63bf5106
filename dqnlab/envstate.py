"""The training env's state as data (dqnlab.plainstate), for checkpoints, and its way back into a fresh env.

An env is a chain of wrappers around a core env. Each layer's state is its plain instance attributes
(numbers, arrays, RNGs, lists and deques of them); what is not plain is the chain itself, the spaces, the
spec and configuration callables, which the fresh env built from the same id already has. Two kinds of core
keep state elsewhere:

- ALE (Atari) keeps the game in its emulator: saved as `ALEState.serialize()` with the emulator's RNG
  (`cloneState(include_rng=True)`), so a resumed game goes on frame for frame.
- Any other attribute that is not plain (Box2D's `world` in LunarLander, a physics engine's handle) makes
  the env *not exactly resumable*: `capture` returns None, and the run resumes with a fresh episode.

So classic control, dqnlab's own ids and Atari resume exactly; Box2D and envs like it start a fresh episode
at the step of the checkpoint (docs/resume.md).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec

from dqnlab.plainstate import is_plain, restore_attributes

# Construction arguments some cores and wrappers keep for pickling (gymnasium's RecordConstructorArgs:
# `_saved_kwargs`, DtypeObservation's dtype among them): the fresh env was built from the same ones.
_CONSTRUCTION = frozenset({"_ezpickle_args", "_ezpickle_kwargs", "_action_set", "metadata", "_saved_kwargs"})


def layers(env: gym.Env) -> list[gym.Env]:
    """The env and every env it wraps, outermost first."""
    chain = [env]
    while isinstance(chain[-1], gym.Wrapper):
        chain.append(chain[-1].env)
    return chain


def _emulator(layer: Any):
    """ALE's interface, when `layer` is an ALE core."""
    ale = getattr(layer, "ale", None)
    return ale if ale is not None and hasattr(ale, "cloneState") else None


def _is_configuration(name: str, value: Any, layer: Any) -> bool:
    """Parts of a layer that the fresh env has already: the chain, spaces, construction arguments,
    callables (a TransformReward's function), the ALE interface (saved through its emulator state)."""
    return (
        name == "env"
        or name in _CONSTRUCTION
        or isinstance(value, gym.Env | gym.spaces.Space | EnvSpec)
        or callable(value)
        or (name == "ale" and _emulator(layer) is not None)
    )


def capture(env: gym.Env) -> dict | None:
    """The env's state as plain data: {"layers": [attributes per layer], "emulator": bytes as uint8 or
    None}; None when some layer keeps state that cannot be stored as data."""
    saved, emulator = [], None
    for layer in layers(env):
        attributes = {}
        for name, value in vars(layer).items():
            if _is_configuration(name, value, layer):
                continue
            if not is_plain(value):
                return None
            attributes[name] = value
        saved.append(attributes)
        ale = _emulator(layer)
        if ale is not None:
            state = ale.cloneState(include_rng=True).serialize()
            emulator = np.frombuffer(state, np.uint8).copy()
    return {"layers": saved, "emulator": emulator}


def restore(env: gym.Env, state: dict) -> None:
    """Put a captured state into `env`, a fresh env of the same id and options; a ValueError names what
    does not fit (another wrapper chain, another shape), and the env is then unusable."""
    chain = layers(env)
    saved = state.get("layers")
    if not isinstance(saved, list) or len(saved) != len(chain):
        raise ValueError("the stored env state has another wrapper chain than this env")
    for depth, (layer, attributes) in enumerate(zip(chain, saved, strict=True)):
        if not isinstance(attributes, dict):
            raise ValueError("the stored env state is not a mapping of attributes")
        restore_attributes(layer, attributes, f"env layer {depth} ({type(layer).__name__})", allow_new=True)
    emulators = [ale for ale in map(_emulator, chain) if ale is not None]
    stored = state.get("emulator")
    if bool(emulators) != (stored is not None):
        raise ValueError("the stored env state and this env disagree on having an emulator")
    if emulators:
        import ale_py

        emulators[0].restoreState(ale_py.ALEState(np.asarray(stored, np.uint8).tobytes()))
