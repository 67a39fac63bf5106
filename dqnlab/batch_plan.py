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
    "diagnostics": ("enabled", "every", "min_measured"),
}
BATCHED_LOSSES = ("squared", "clipped_delta_squared", "clipped_gradient_squared", "huber")
BATCHED_ACTIVATIONS = ("relu", "tanh", "sigmoid")
AUTO = (
    "auto"  # `--batch-runs auto`: each group split evenly over the workers, at most `auto_cap` runs a batch
)
AUTO_CAP = 32
# `auto`'s cap by network size: at most this many weights in a stacked variable (N x a run's hidden weights).
# Past it a batch's variables, Adam's state and gradients (each N x that) outgrow the caches: on the 2-core
# machine of docs/batched.md, 3 arms x 10 seeds of the 256-256 headline took 131-144 s in 4 batches of <= 8
# against 159-210 s in 2 batches of 15 (2 workers). A 256-256 MLP's cap is 9, a 120-84 one's 32.
AUTO_WEIGHTS = 600_000


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
    With `size` AUTO, each group of runs that may share a batch is split into `workers` batches (more when
    that would exceed `auto_cap` runs a batch), as even as they come, so that no worker is left idle. Jobs
    are in the order of their first run; without `size`, every run is its own job."""
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
        if size != AUTO:
            jobs += [group[k : k + int(size)] for k in range(0, len(group), int(size))]
            continue
        limit = min(auto_cap(specs[group[0]].config()), -(-len(group) // max(1, workers)))
        count = -(-len(group) // limit)  # batches of this group, as even as they come
        bounds = [len(group) * j // count for j in range(count + 1)]
        jobs += [group[bounds[j] : bounds[j + 1]] for j in range(count)]
    return jobs


def member_ended(info: dict) -> bool:
    """A batch member (its run.json) that `--resume` leaves as it is: done, diverged, or failed on its own
    (its env raised: `batched.ended_alone`), not with the whole batch."""
    alone = bool((info.get("batched") or {}).get("ended_alone"))
    return info.get("status") in ("done", "diverged") or (info.get("status") == "failed" and alone)


def auto_cap(cfg: Config) -> int:
    """`auto`'s most runs a batch for this network: AUTO_CAP, or fewer for wide MLPs (`AUTO_WEIGHTS`). The
    weights counted are the hidden layers' (input and output widths are the env's, unknown here)."""
    hidden = list(cfg.network.hidden)
    weights = sum(a * b for a, b in zip(hidden, hidden[1:], strict=False)) + sum(hidden)
    return max(2, min(AUTO_CAP, AUTO_WEIGHTS // max(1, weights)))
