"""What a checkpoint holds of a run in progress, and how a resume puts it back.

`capture` turns the loop's state, the training env, the replay (when asked) and the run's counters into
plain data for `dqnlab.checkpoint.save`. `restore` puts a loaded checkpoint into a freshly built learner,
env and replay, checking every array and attribute against what those fresh objects hold, so a checkpoint
of another network, env or replay is refused rather than half applied. Nothing here writes a file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import gymnasium as gym

from dqnlab import envstate
from dqnlab.checkpoint import Checkpoint, CheckpointError, check_arrays_fit
from dqnlab.loop import LoopState
from dqnlab.plainstate import restore_attributes


def capture(loop_state: LoopState, env: gym.Env, replay, run: dict, doctor: dict) -> dict:
    """The plain state of a run between two env steps; `replay` None leaves the replay out."""
    loop = {f.name: getattr(loop_state, f.name) for f in dataclasses.fields(loop_state)}
    return {
        "loop": loop,
        "env": envstate.capture(env),  # None: the env cannot be stored (a resume starts a fresh episode)
        "replay": None if replay is None else dict(vars(replay)),
        "run": run,
        "doctor": doctor,
    }


@dataclass
class Restored:
    loop_state: LoopState
    exact_env: bool  # False: the env could not be stored, and a fresh episode starts
    with_replay: bool  # False: replay starts empty and refills before learning resumes


def restore(ckpt: Checkpoint, learner, env: gym.Env, replay, seed: int, learning_starts: int) -> Restored:
    """Load `ckpt` into a fresh learner, env and replay of the same config; CheckpointError when it does
    not fit them (the objects are then unusable, but nothing on disk has changed)."""
    state = ckpt.state
    try:
        check_arrays_fit(ckpt.arrays, learner.state_arrays(), ckpt.path)
        loop_state = LoopState.start(env, learner, seed)  # a fresh state, to check the stored one against
        restore_attributes(loop_state, state["loop"], "loop state")
        if state["replay"] is not None:
            restore_attributes(replay, state["replay"], "replay")
        else:  # not saved: refill it before learning again
            loop_state.refill_until = ckpt.step + learning_starts
        if state["env"] is not None:
            envstate.restore(env, state["env"])
        else:  # the env kept state that cannot be stored: a fresh episode, seeded from the step
            loop_state.obs, _ = env.reset(seed=seed + ckpt.step)
            loop_state.state = learner.policy().initial_state()
            loop_state.episode_return, loop_state.episode_length = 0.0, 0
            replay.end_episode()
        learner.load_state_arrays(ckpt.arrays)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{ckpt.path} does not fit this run ({type(exc).__name__}: {exc})") from None
    return Restored(loop_state, state["env"] is not None, state["replay"] is not None)
