"""The network-kind table (dqnlab.kinds): every kind is built from it, and a new kind is one entry there plus
the module that builds its network (docs/architecture.md, "Adding a network kind")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dqnlab import kinds
from dqnlab.config import ConfigError, load_preset
from dqnlab.events import read_series

# A linear Q-function Q(s) = s W + b: the smallest kind there is. It reuses the MLP's learner, replay and
# sampler; its one layer is named `q_head`, so its tags are `grad_norm/q_head/kernel` and so on.
TOY_MODULE = """
from dqnlab._tf import keras


def build(cfg, obs_shape, num_actions, name):
    return keras.Sequential(
        [keras.Input(shape=obs_shape, name="obs"), keras.layers.Dense(num_actions, name="q_head")], name=name
    )
"""

# The one entry a developer adds to dqnlab.kinds.KINDS, here from outside (a subprocess runs `dqnlab train`).
REGISTER_AND_TRAIN = """
import sys

from dqnlab import kinds
from dqnlab.cli import main


def linear():
    import toy_linear

    mlp = kinds.parts("mlp")
    return kinds.KindParts(toy_linear.build, mlp.learner, mlp.make_replay, mlp.make_sampler)


kinds.KINDS["linear"] = linear
sys.exit(main(sys.argv[1:]))
"""


def test_every_config_kind_has_an_entry_and_an_unknown_one_is_refused():
    assert set(kinds.KINDS) == {"mlp", "rnn", "cnn"}
    with pytest.raises(ConfigError, match="'linear' is not one of mlp, rnn, cnn"):
        load_preset("huber_relu", {"network.kind": "linear"})
    with pytest.raises(ValueError, match="unknown network kind 'linear'"):
        kinds.parts("linear")


def test_the_table_builds_the_same_initial_weights_for_the_same_seed():
    cfg = load_preset("huber_relu")
    a, b = (kinds.make_learner(cfg, (4,), 2, seed=5) for _ in range(2))
    c = kinds.make_learner(cfg, (4,), 2, seed=6)
    for x, y, z in zip(a.online_weights(), b.online_weights(), c.online_weights(), strict=True):
        np.testing.assert_array_equal(x, y)
        assert not np.array_equal(x, z) or not x.any()  # biases start at 0 whatever the seed
    # The target starts as a copy of the online network.
    for o, t in zip(a.online.get_weights(), a.target.get_weights(), strict=True):
        np.testing.assert_array_equal(o, t)


def test_a_new_kind_is_one_table_entry_and_its_module(tmp_path):
    (tmp_path / "toy_linear.py").write_text(textwrap.dedent(TOY_MODULE))
    script = tmp_path / "train_linear.py"
    script.write_text(textwrap.dedent(REGISTER_AND_TRAIN))
    args = ["train", "huber_relu", "--set", "network.kind=linear", "--steps", "1500", "--quiet"]
    args += ["--set", "train.learning_starts=500", "--set", "diagnostics.probe_every=64"]
    args += ["--logdir", str(tmp_path / "runs"), "--name", "toy", "--deterministic"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = tmp_path / "runs" / "toy" / "huber_relu" / "CartPole-v1" / "seed_0"
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "done" and info["config"]["network"]["kind"] == "linear"
    series = read_series(run_dir)
    # The panel of a network with one layer: its two variables, and nothing of the MLP's hidden layers.
    for tag in ("grad_norm/q_head/kernel", "grad_zero_frac/q_head/bias", "weight_dist_init/q_head/kernel"):
        assert tag in series, tag
    assert not any("hidden_" in tag for tag in series)
    # A linear Q-function's kernel gradient is dense: no entry of dL/dW is exactly 0 unless its input is.
    steps, zero_frac = series["grad_zero_frac/q_head/kernel"]
    assert len(steps) > 0 and (zero_frac < 0.5).all()
    # It learned something: the TD loss is finite all along and the weights moved from their start.
    assert np.isfinite(series["loss/td/burst_mean"][1]).all()
    assert series["weight_dist_init/q_head/kernel"][1][-1] > 0
