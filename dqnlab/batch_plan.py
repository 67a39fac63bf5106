"""Which planned runs train together in one process (`dqnlab ab` / `sweep` `--batch-runs`), decided in the
parent process without TensorFlow.

A run is batched when `batched_learner.check_batchable` would take it (a plain MLP, one of dqnlab's own
losses, Adam, an activation with a batched twin) and it is an ordinary run: not resumed, not under
successive halving's rungs, not stopped on fatal findings. Runs are grouped by what a batch must share
(`SHARED_FIELDS`, and env, steps, device, determinism), in the order planned, into batches of at most
`size`; a group of one, and every other run, trains in its own process as before. The lists here mirror
`dqnlab.batched_learner`'s (which imports TensorFlow); tests/test_batched_runs.py checks they agree.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from dqnlab.config import Config
from dqnlab.runspec import RunSpec

SHARED_FIELDS = {
    "network": ("kind", "activation", "hidden", "dueling"),
    "train": (
        "batch_size",
        "gradient_steps",
        "train_every",
        "learning_starts",
        "target_update_every",
        "double_dqn",
        "steps",
    ),  # fmt: skip
    "optimizer": ("kind",),
    "diagnostics": ("enabled", "every"),
}
BATCHED_LOSSES = ("squared", "clipped_delta_squared", "clipped_gradient_squared", "huber")
BATCHED_ACTIVATIONS = ("relu", "tanh", "sigmoid")
AUTO = "auto"  # `--batch-runs auto`: each group split evenly over the workers, at most AUTO_CAP runs a batch
AUTO_CAP = 32


def parse_batch_runs(text: str) -> int | str | None:
    """An argparse type for `--batch-runs`: 'off' (None), 'auto' (AUTO), or N >= 1 (1 is off)."""
    if text == "off":
        return None
    if text == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected auto, off or a number of runs >= 1, got {text!r}"
        ) from None
    if value < 1 or value > 10_000:
        raise argparse.ArgumentTypeError(f"expected auto, off or a number of runs in 1..10000, got {value}")
    return None if value == 1 else value


def batchable(spec: RunSpec, cfg: Config) -> bool:
    """Whether this run may join a batch (`check_batchable`'s per-run rules, and an ordinary run)."""
    if spec.resume or spec.pause_at or spec.stop_on_fatal:
        return False
    net = cfg.network
    return (
        net.kind == "mlp"
        and not net.dueling
        and net.activation in BATCHED_ACTIVATIONS
        and cfg.loss.kind in BATCHED_LOSSES
        and cfg.optimizer.kind == "adam"
    )


def batch_key(spec: RunSpec, cfg: Config) -> tuple:
    """What the runs of one batch share."""
    shared = []
    for section, names in SHARED_FIELDS.items():
        for name in names:
            value = getattr(getattr(cfg, section), name)
            shared.append(tuple(value) if isinstance(value, list) else value)
    return (spec.env, spec.steps, spec.device, spec.deterministic, *shared)


def plan_batches(specs: Sequence[RunSpec], size: int | str | None, workers: int = 1) -> list[list[int]]:
    """The jobs: lists of spec indices, each one process; batches of 2..`size` runs, every other run alone.
    With `size` AUTO, each group of runs that may share a batch is split into `workers` batches as even as
    they come (at most AUTO_CAP runs each), so that no worker is left idle. Jobs are in the order of their
    first run; without `size`, every run is its own job."""
    if not size or (size != AUTO and size < 2):
        return [[i] for i in range(len(specs))]
    groups: dict[tuple, list[int]] = {}
    slots: list[int | tuple] = []  # in planned order: a run alone (its index), or a group (its key)
    for i, spec in enumerate(specs):
        cfg = spec.config()
        if not batchable(spec, cfg):
            slots.append(i)
            continue
        key = batch_key(spec, cfg)
        if key not in groups:
            groups[key] = []
            slots.append(key)
        groups[key].append(i)
    jobs: list[list[int]] = []
    for slot in slots:
        if isinstance(slot, int):
            jobs.append([slot])
            continue
        group = groups[slot]
        limit = min(AUTO_CAP, -(-len(group) // max(1, workers))) if size == AUTO else int(size)
        jobs += [group[k : k + limit] for k in range(0, len(group), limit)]
    return jobs


def member_ended(info: dict) -> bool:
    """A batch member (its run.json) that `--resume` leaves as it is: done, diverged, or failed on its own
    (its env raised: `batched.ended_alone`), not with the whole batch."""
    alone = bool((info.get("batched") or {}).get("ended_alone"))
    return info.get("status") in ("done", "diverged") or (info.get("status") == "failed" and alone)
