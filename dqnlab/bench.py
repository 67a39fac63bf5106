"""Shared pieces of the throughput benchmarks (scripts/bench_*.py stay thin).

Two public CartPole-v1 DQN settings, written once in neutral terms so dqnlab and a peer library are
configured identically:
- `cleanrl`: CleanRL dqn.py's network and cadence (120-84 ReLU MLP, batch 128, one update every 10 env
  steps, target sync every 500).
- `sb3_zoo`: SB3 rl-zoo's tuned CartPole DQN (256-256, batch 64, 128 gradient steps every 256 env steps,
  target every 10 env steps).
Both start learning after 1,000 steps (CleanRL uses 10,000), so that a short benchmark measures the
learning phase; both peers get the same value.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    hidden: tuple[int, ...]
    batch_size: int
    train_every: int  # env steps between bursts
    gradient_steps: int  # updates per burst
    target_update_every: int  # env steps
    learning_rate: float
    buffer_size: int
    learning_starts: int
    gamma: float = 0.99
    epsilon_end: float = 0.05
    epsilon_decay_steps: int = 5_000


SETTINGS = {
    "cleanrl": Setting(
        hidden=(120, 84),
        batch_size=128,
        train_every=10,
        gradient_steps=1,
        target_update_every=500,
        learning_rate=2.5e-4,
        buffer_size=10_000,
        learning_starts=1_000,
    ),
    "sb3_zoo": Setting(
        hidden=(256, 256),
        batch_size=64,
        train_every=256,
        gradient_steps=128,
        target_update_every=10,
        learning_rate=2.3e-3,
        buffer_size=100_000,
        learning_starts=1_000,
        epsilon_end=0.04,
        epsilon_decay_steps=8_000,
    ),
}


def dqnlab_overrides(setting: Setting, diagnostics: bool) -> dict[str, object]:
    """huber_relu with the setting's network and cadence."""
    return {
        "network.hidden": list(setting.hidden),
        "train.batch_size": setting.batch_size,
        "train.train_every": setting.train_every,
        "train.gradient_steps": setting.gradient_steps,
        "train.target_update_every": setting.target_update_every,
        "train.learning_starts": setting.learning_starts,
        "train.gamma": setting.gamma,
        "train.epsilon_end": setting.epsilon_end,
        "train.epsilon_decay_steps": setting.epsilon_decay_steps,
        "train.eval_every": 0,
        "train.eval_episodes": 1,
        "optimizer.learning_rate": setting.learning_rate,
        "replay.capacity": setting.buffer_size,
        "diagnostics.enabled": diagnostics,
    }


def dqnlab_steps_per_s(setting_name: str, steps: int, diagnostics: bool, logdir: str, seed: int = 0) -> float:
    """Env steps per second of a whole dqnlab training run (acting, replay, updates, logging)."""
    import dqnlab
    from dqnlab.config import load_preset

    cfg = load_preset("huber_relu", dqnlab_overrides(SETTINGS[setting_name], diagnostics))
    start = time.perf_counter()
    res = dqnlab.train(
        cfg,
        env="CartPole-v1",
        seed=seed,
        steps=steps,
        logdir=logdir,
        name=f"bench-{setting_name}-{'diag' if diagnostics else 'nodiag'}-{seed}",
    )
    elapsed = time.perf_counter() - start
    if res.status != "done":
        raise RuntimeError(f"benchmark run ended {res.status}: {res.error}")
    return steps / elapsed
