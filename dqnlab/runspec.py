"""A run described as data: what `dqnlab train`, `ab`, `sweep`, the local runner and the Ray backend hand
around, and what `dqnlab.trainer.train_run` starts. Plain and picklable (it crosses process and Ray task
boundaries); its config is built where the run starts. This module does not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dqnlab.config import Config, load_preset, resolve_preset_path


@dataclass(frozen=True)
class RunSpec:
    """One run of an experiment: a preset (name or path) with overrides, on one env, one seed.

    A sweep's cell (`dqnlab.sweep`) adds its own overrides (`cell`, applied after `overrides`) and its name
    (`name`: the arm's directory, run.json's `preset` and HParams' `preset`, instead of the preset's own)."""

    preset: str
    overrides: tuple[str, ...]
    env: str
    seed: int
    steps: int
    logdir: str
    experiment: str
    device: str = "auto"
    deterministic: bool = False
    resume: bool = False
    checkpoint_every: int = 10_000
    checkpoint_replay: bool = False
    name: str = ""
    cell: tuple[str, ...] = ()
    stop_on_fatal: bool = False
    pause_at: int = 0  # successive halving's rung: pause at the first episode end past it (0: never)

    @property
    def arm(self) -> str:
        """The arm's directory name below the experiment: the cell's name, or the preset's."""
        return self.name or resolve_preset_path(self.preset).stem

    def config(self) -> Config:
        """The run's config: the preset with its overrides (and the cell's), named after its arm."""
        return arm_config(self.preset, [*self.overrides, *self.cell], self.name)


def arm_config(preset: str, overrides: list[str], name: str = "") -> Config:
    """The preset with `overrides`, renamed to `name` when one is given (a sweep's cell)."""
    cfg = load_preset(preset, overrides)
    return dataclasses.replace(cfg, name=name) if name else cfg
