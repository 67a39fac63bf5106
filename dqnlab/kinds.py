"""Network kinds: the one table from `network.kind` to the parts a run of that kind is made of.

A kind is a network builder, the learner class that trains it, the replay it learns from and the sampler
that draws that replay's bursts and probe batches. `make_learner`, `make_replay` and `make_sampler` are the
only places that read the table; nothing else branches on the kind. Adding a kind is one entry here and the
module that builds its network (docs/architecture.md walks through it; tests/test_kinds.py adds a linear
Q-function this way).

The table itself imports nothing heavy: `dqnlab.config` validates `network.kind` against its keys without
loading TensorFlow, and each entry imports its modules only when a run of that kind is built.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dqnlab.config import Config


@dataclass(frozen=True)
class KindParts:
    """What a network kind is built from.

    build_network(cfg, obs_shape, num_actions, name) -> a Keras model whose trainable variables are the ones
    trained and logged (named layers: the per-layer tags come from them).
    learner: a `dqnlab.learner.Learner` (sub)class, constructed as learner(cfg, online, target, optimizer,
    obs_shape).
    make_replay(cfg, obs_shape, seed) -> the replay the loop adds every transition to.
    make_sampler(cfg, replay) -> how a burst, one batch and the probe's states are drawn from it
    (`dqnlab.sampling`).
    """

    build_network: Callable[..., Any]
    learner: type
    make_replay: Callable[..., Any]
    make_sampler: Callable[..., Any]


def _mlp() -> KindParts:
    from dqnlab.learner import Learner
    from dqnlab.networks import build_q_network
    from dqnlab.replay import ReplayBuffer
    from dqnlab.sampling import TransitionSampler

    return KindParts(
        build_network=lambda cfg, obs_shape, num_actions, name: build_q_network(
            cfg.network, int(obs_shape[0]), num_actions, name=name
        ),
        learner=Learner,
        make_replay=lambda cfg, obs_shape, seed: ReplayBuffer(cfg.replay.capacity, obs_shape, seed=seed),
        make_sampler=lambda cfg, replay: TransitionSampler(replay),
    )


def _rnn() -> KindParts:
    from dqnlab.recurrent_learner import RecurrentLearner
    from dqnlab.recurrent_net import RecurrentQNetwork, state_size
    from dqnlab.sampling import SequenceSampler
    from dqnlab.sequence_replay import SequenceReplay

    def replay(cfg: Config, obs_shape, seed: int) -> SequenceReplay:
        stored = state_size(cfg.recurrent) if cfg.recurrent.initial_state == "stored" else 0
        return SequenceReplay(cfg.replay.capacity, int(obs_shape[0]), state_dim=stored, seed=seed)

    def sampler(cfg: Config, replay: SequenceReplay) -> SequenceSampler:
        rec = cfg.recurrent
        return SequenceSampler(replay, rec.sequence_length, rec.burn_in, rec.initial_state)

    return KindParts(
        build_network=lambda cfg, obs_shape, num_actions, name: RecurrentQNetwork(
            cfg.network, cfg.recurrent, int(obs_shape[0]), num_actions, name
        ),
        learner=RecurrentLearner,
        make_replay=replay,
        make_sampler=sampler,
    )


def _cnn() -> KindParts:
    from dqnlab.cnn_learner import CNNLearner
    from dqnlab.cnn_net import build_cnn_q_network
    from dqnlab.frame_replay import FrameReplay
    from dqnlab.sampling import FrameSampler

    return KindParts(
        build_network=lambda cfg, obs_shape, num_actions, name: build_cnn_q_network(
            cfg.network, obs_shape, num_actions, name=name
        ),
        learner=CNNLearner,
        make_replay=lambda cfg, obs_shape, seed: FrameReplay(cfg.replay.capacity, obs_shape, seed=seed),
        make_sampler=lambda cfg, replay: FrameSampler(replay),
    )


# network.kind -> its parts, loaded when first used. The keys are the kinds a config may name.
KINDS: dict[str, Callable[[], KindParts]] = {"mlp": _mlp, "rnn": _rnn, "cnn": _cnn}


def _user_network(path: str) -> KindParts:
    """A network given by import path (dqnlab.components): the user's builder, learned from transitions."""
    from dqnlab.components import resolve
    from dqnlab.custom_learner import CustomLearner

    build = resolve("network.kind", path)
    mlp = _mlp()
    return KindParts(
        build_network=lambda cfg, obs_shape, num_actions, name: build(
            cfg.network, obs_shape, num_actions, name
        ),
        learner=CustomLearner,
        make_replay=mlp.make_replay,
        make_sampler=mlp.make_sampler,
    )


def parts(kind: str) -> KindParts:
    """The parts of a kind in the table, or of a network given by import path (`package.module:build`)."""
    if ":" in kind:
        return _user_network(kind)
    try:
        load = KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown network kind {kind!r}; valid: {', '.join(KINDS)}") from None
    return load()


def make_learner(cfg: Config, obs_shape: tuple[int, ...], num_actions: int, seed: int, learner_class=None):
    """The config's learner, with freshly initialised networks: the same seed gives the same initial
    weights, so the arms of an A/B start from identical networks. `learner_class` replaces the kind's own
    (a subclass that measures something else: the benchmarks' variants)."""
    from dqnlab._tf import keras
    from dqnlab.optimizers import make_optimizer

    kind = parts(cfg.network.kind)
    obs_shape = tuple(int(d) for d in obs_shape)
    keras.utils.set_random_seed(seed)
    online = kind.build_network(cfg, obs_shape, num_actions, "q_network")
    target = kind.build_network(cfg, obs_shape, num_actions, "target_network")
    target.set_weights(online.get_weights())
    optimizer = make_optimizer(cfg.optimizer)
    optimizer.build(online.trainable_variables)
    return (learner_class or kind.learner)(cfg, online, target, optimizer, obs_shape)


def make_replay(cfg: Config, obs_shape: tuple[int, ...], seed: int):
    """The config's replay. One that cannot be allocated, or would outgrow this machine's memory once full
    (numpy zeroes arrays lazily: the run would die hours in), is a ConfigError."""
    import numpy as np

    from dqnlab.config import ConfigError

    try:
        replay = parts(cfg.network.kind).make_replay(cfg, tuple(obs_shape), seed)
    except MemoryError as exc:  # numpy could not even reserve the arrays
        raise ConfigError(f"replay.capacity {cfg.replay.capacity:,}: {exc}") from None
    need = sum(a.nbytes for a in vars(replay).values() if isinstance(a, np.ndarray))
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise ConfigError(
            f"replay.capacity {cfg.replay.capacity:,}: the replay's arrays need {need / 2**30:.1f} GiB, "
            f"more than this machine's {have / 2**30:.1f} GiB of memory"
        )
    return replay


def make_sampler(cfg: Config, replay):
    """How the loop draws the config's bursts and probe batches from `replay`."""
    return parts(cfg.network.kind).make_sampler(cfg, replay)


def learner_and_replay(cfg: Config, env, seed: int):
    """The learner and replay of `cfg` for a gymnasium `env` (its observation shape and action count)."""
    shape = env.observation_space.shape
    return make_learner(cfg, shape, int(env.action_space.n), seed), make_replay(cfg, shape, seed)
