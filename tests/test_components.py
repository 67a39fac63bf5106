"""Your own loss and network by import path (dqnlab.components): a package outside the repository, trained
through `dqnlab ab` against a built-in preset, then compared, diagnosed, laid out for the board, resumed and
asserted on like any run; a component that breaks its contract is one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dqnlab import testing
from dqnlab.config import ConfigError, load_preset
from dqnlab.events import read_series
from dqnlab.layout import build_layout
from dqnlab.rundir import read_run

# A user's package: a pseudo-Huber loss (smooth, gradient bounded by `bound`: never blocked) and a
# functional Q-network with a gated trunk and its own layer names.
MY_LOSSES = '''
import tensorflow as tf


def pseudo_huber(delta, bound):
    """bound^2 (sqrt(1 + (delta / bound)^2) - 1): quadratic near 0, linear far out, gradient below bound."""
    return bound**2 * (tf.sqrt(1.0 + tf.square(delta / bound)) - 1.0)


def mean_loss(delta, bound):  # breaks the contract: one number, not one per sample
    return tf.reduce_mean(tf.square(delta))
'''
MY_NETS = """
import keras


def gated(cfg, obs_shape, num_actions, name):
    obs = keras.Input(shape=obs_shape, name="obs")
    trunk = keras.layers.Dense(64, activation="relu", name="trunk")(obs)
    gate = keras.layers.Dense(64, activation="sigmoid", name="gate")(obs)
    features = keras.layers.Multiply(name="gated")([trunk, gate])
    q = keras.layers.Dense(num_actions, name="q")(features)
    return keras.Model(obs, q, name=name)


def wrong_head(cfg, obs_shape, num_actions, name):  # breaks the contract: one output, not one per action
    obs = keras.Input(shape=obs_shape)
    return keras.Model(obs, keras.layers.Dense(1, name="q")(obs), name=name)
"""

SHORT = ["--steps", "3000", "--set", "train.learning_starts=500", "--set", "diagnostics.probe_every=128"]


def dqnlab_in(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The `dqnlab` console script run in `cwd` (where the user's package is: not on sys.path by itself)."""
    script = Path(sys.executable).with_name("dqnlab")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "dqnlab.cli"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in sys.path if p and "site-packages" not in p and p != str(cwd)
    )
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def user_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("user_repo")
    (repo / "mypkg").mkdir()
    (repo / "mypkg" / "__init__.py").write_text("")
    (repo / "mypkg" / "losses.py").write_text(textwrap.dedent(MY_LOSSES))
    (repo / "mypkg" / "nets.py").write_text(textwrap.dedent(MY_NETS))
    preset = (Path(__file__).parents[1] / "agents" / "huber_relu.toml").read_text()
    preset = preset.replace('kind = "huber"', 'kind = "mypkg.losses:pseudo_huber"', 1)
    preset = preset.replace('kind = "mlp"', 'kind = "mypkg.nets:gated"', 1)
    assert "mypkg.losses" in preset and "mypkg.nets" in preset
    (repo / "my_dqn.toml").write_text(preset)
    return repo


@pytest.fixture(scope="module")
def ab(user_repo) -> Path:
    out = dqnlab_in(user_repo, "ab", "my_dqn.toml", "huber_relu", "--name", "mine", "--quiet", *SHORT)
    assert out.returncode == 0, out.stderr[-3000:]
    return user_repo / "runs" / "mine"


def test_config_checks_the_form_of_an_import_path_only():
    cfg = load_preset("huber_relu", {"loss.kind": "nowhere.at_all:fn"})  # not imported here
    assert cfg.loss.kind == "nowhere.at_all:fn"
    with pytest.raises(ConfigError, match="not an import path of the form package.module:name"):
        load_preset("huber_relu", {"network.kind": "mypkg.nets:"})


def test_user_components_train_against_a_builtin_preset(ab, user_repo):
    run_dir = ab / "my_dqn" / "CartPole-v1" / "seed_0"
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "done"
    # run.json traces the result to its code: the import paths and the SHA-256 of each module's source.
    import hashlib

    for role, module in (("loss", "losses"), ("network", "nets")):
        source = (user_repo / "mypkg" / f"{module}.py").read_bytes()
        assert info["components"][role]["sha256"] == hashlib.sha256(source).hexdigest()
    assert info["components"]["loss"]["path"] == "mypkg.losses:pseudo_huber"
    series = read_series(run_dir)
    # The panel of the user's own layers, probes included (relu trunk, sigmoid gate), and the HParams.
    for tag in ("grad_norm/trunk/kernel", "grad_zero_frac/gate/bias", "grad_norm/q/kernel"):
        assert tag in series, tag
    for tag in ("act_dead_frac/trunk", "act_saturated_frac/gate", "features/srank"):
        assert tag in series, tag
    # Pseudo-Huber's gradient is bound * delta / sqrt(bound^2 + delta^2): never exactly 0 for delta != 0.
    assert (series["td/grad_blocked_frac/burst_mean"][1] == 0).all()
    run = read_run(run_dir)
    testing.assert_all_finite(run)
    testing.assert_td_gradients_not_blocked(run, max_blocked_frac=0.0)
    testing.assert_gradients_flow(run)
    # The board's layout has a chart for each of the user's layers, beside the built-in arm's.
    charts = {c.title for cat in build_layout(series).category for c in cat.chart}
    assert "grad_norm/trunk/kernel" in charts and "act_dead_frac/trunk" in charts


def test_compare_and_doctor_read_the_user_arm_beside_the_builtin_one(ab, user_repo):
    out = dqnlab_in(user_repo, "compare", str(ab), "--json")
    assert out.returncode == 0, out.stderr
    (env,) = json.loads(out.stdout)["envs"]
    assert {a["preset"] for a in env["arms"]} == {"my_dqn", "huber_relu"}
    assert env["paired"]["my_dqn"]["final_return"]["n"] == 3  # three seeds, paired with the built-in arm
    doctor = dqnlab_in(user_repo, "doctor", str(ab / "my_dqn"), "--json")
    assert doctor.returncode in (0, 1, 3), doctor.stderr
    runs = json.loads(doctor.stdout)["runs"]
    assert len(runs) == 3 and all(r["preset"] == "my_dqn" for r in runs)
    # Pseudo-Huber never blocks a TD gradient: the doctor must not say it does.
    assert not any(f["rule"] == "blocked_td_gradient" for r in runs for f in r["findings"])


def test_a_user_run_resumes_with_its_components(ab, user_repo):
    out = dqnlab_in(user_repo, "train", "my_dqn.toml", "--name", "resumable", "--quiet", "--checkpoint-every",
                    "1000", *SHORT)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    # As if its process had been killed after its last checkpoint: --resume rebuilds the user's network
    # from its import path and puts the checkpoint's weights into it.
    run_json = user_repo / "runs/resumable/my_dqn/CartPole-v1/seed_0/run.json"
    info = json.loads(run_json.read_text())
    run_json.write_text(json.dumps({**info, "status": "interrupted", "pid": 2**22 + 1}))
    again = dqnlab_in(user_repo, "train", "my_dqn.toml", "--name", "resumable", "--resume", "--quiet",
                      *SHORT[:1], "4000", *SHORT[2:])  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    info = json.loads(run_json.read_text())
    assert info["status"] == "done" and info["env_steps"] == 4000 and info["resumed_from"] == [3000]


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.kind=mypkg.losses:mean_loss", "must return one loss per sample (shape [5] for delta [5])"),
        ("loss.kind=mypkg.losses:nothing", "module 'mypkg.losses' has no attribute 'nothing'"),
        ("loss.kind=notapkg.losses:fn", "cannot import 'notapkg.losses'"),
        (
            "network.kind=mypkg.nets:wrong_head",
            "must map obs [B, 4] to Q-values [B, 2]; returned shape [2, 1]",
        ),
    ],
)
def test_a_broken_component_is_one_line_and_exit_2(user_repo, override, message):
    out = dqnlab_in(user_repo, "train", "huber_relu", "--steps", "100", "--name", "broken", "--set", override)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert not (user_repo / "runs" / "broken").exists()  # refused before anything was written


def test_numbers_of_a_user_loss_are_its_own():
    """The loss dqnlab trains with is the user's function itself (checked against its formula)."""
    from dqnlab.losses import get_loss

    sys.path.insert(0, str(Path(__file__).parent))
    try:
        fn = get_loss("test_components:_reference_pseudo_huber")
    finally:
        sys.path.remove(str(Path(__file__).parent))
    delta = np.array([-3.0, 0.0, 0.5], np.float32)
    np.testing.assert_allclose(fn(delta, 1.0), np.sqrt(1 + delta**2) - 1, rtol=1e-6)


def _reference_pseudo_huber(delta, bound):
    return bound**2 * (np.sqrt(1.0 + (np.asarray(delta) / bound) ** 2) - 1.0)


def test_the_pytest_plugin_retrains_when_a_component_changes(user_repo, tmp_path, monkeypatch):
    """`short_run`'s cache is keyed on the components' source too: an edited loss is never judged by the run
    of the code before the edit."""
    monkeypatch.chdir(user_repo)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the import fallback may add the working directory
    small = {"train.learning_starts": 200, "diagnostics.probe_every": 64}
    first = testing.train_cached(tmp_path, "my_dqn.toml", steps=400, overrides=small)
    again = testing.train_cached(tmp_path, "my_dqn.toml", steps=400, overrides=small)
    assert again.run_dir == first.run_dir  # unchanged code: the cached run
    losses = user_repo / "mypkg" / "losses.py"
    original = losses.read_text()
    try:
        losses.write_text(original + "\n# an edit\n")
        edited = testing.train_cached(tmp_path, "my_dqn.toml", steps=400, overrides=small)
    finally:
        losses.write_text(original)
    assert edited.run_dir != first.run_dir
    import hashlib

    recorded = json.loads((Path(edited.run_dir) / "run.json").read_text())["components"]["loss"]["sha256"]
    assert recorded == hashlib.sha256((original + "\n# an edit\n").encode()).hexdigest()
