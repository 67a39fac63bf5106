"""dqnlab.Panel on a hand-written TF2 step: the same tags and values as dqnlab's learner, run.json as
`dqnlab train` writes it, missing inputs said, divergence recorded, bad arguments one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import dqnlab
from dqnlab._tf import keras
from dqnlab.config import load_preset
from dqnlab.doctor import examine
from dqnlab.kinds import make_learner
from dqnlab.losses import get_loss, td_target
from dqnlab.panel import Diverged, Panel, PanelError
from dqnlab.replay import Batch
from tests.metrics_doc import undocumented

OBS_DIM, ACTIONS, B = 4, 2, 64


def _batch(seed: int = 0, scale: float = 3.0) -> Batch:
    rng = np.random.default_rng(seed)
    return Batch(
        obs=rng.normal(size=(B, OBS_DIM)).astype(np.float32),
        actions=rng.integers(0, ACTIONS, size=B).astype(np.int32),
        rewards=(scale * rng.normal(size=B)).astype(np.float32),
        next_obs=rng.normal(size=(B, OBS_DIM)).astype(np.float32),
        discounts=(rng.random(B) > 0.1).astype(np.float32),  # some terminals
    )


def _user_step(panel, online, target, optimizer, batch, cfg, step, **given):
    """A user's own DQN step (TD target as dqnlab computes it), with the panel's one call in it."""
    y = td_target(batch.rewards, batch.discounts * np.float32(cfg.train.gamma), target(batch.next_obs))
    with tf.GradientTape() as tape:
        q = online(batch.obs)
        qa = tf.gather(q, batch.actions, batch_dims=1)
        loss = tf.reduce_mean(get_loss(cfg.loss.kind)(y - qa, cfg.loss.bound))
    inputs = {"qa": qa, "target": y, "q": q, "obs": batch.obs}
    inputs = {k: v for k, v in inputs.items() if k not in given or given[k] is not None}
    grads = panel.gradients(tape, loss, online.trainable_variables, step=step, **inputs)
    optimizer.apply(grads, online.trainable_variables)
    return loss


@pytest.mark.parametrize(
    "preset, overrides",
    [
        ("clipped_delta_relu", {}),  # blocks the gradient beyond the bound; clipping on
        ("huber_relu", {"train.grad_clip_norm": 0.0}),  # no clipping
        ("sigmoid_glorot", {}),  # saturating activation probes
    ],
)
def test_panel_logs_what_the_learner_logs_for_the_same_weights_and_batch(tmp_path, preset, overrides):
    cfg = load_preset(preset, {"network.hidden": [64, 64], "train.gradient_steps": 1, **overrides})
    learner = make_learner(cfg, (OBS_DIM,), ACTIONS, seed=0)
    user = make_learner(cfg, (OBS_DIM,), ACTIONS, seed=0)  # the same initial weights: the user's copy
    for a, b in zip(learner.online.get_weights(), user.online.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    batch = _batch()
    probed = learner.probe(batch.obs, batch)  # before the update, as the panel probes the call's weights
    burst = Batch(*(x[None] for x in batch))  # K = 1: the burst's stats are the update's
    out = learner.update(burst, with_diagnostics=True)
    want = dict(out.metrics.items())

    panel = Panel(user.online, env="CartPole-v1", arm="user", experiment="eq", logdir=tmp_path,
                  gamma=cfg.train.gamma, bound=cfg.loss.bound, loss=cfg.loss.kind,
                  clip_norm=cfg.train.grad_clip_norm, every=1, probe_every=1, probe_size=B)  # fmt: skip
    _user_step(panel, user.online, user.target, user.optimizer, batch, cfg, step=100)
    panel.close()
    got = {tag: series[-1][1] for tag, series in dqnlab.read_run(panel.run_dir).all_scalars().items()}

    for a, b in zip(learner.online.get_weights(), user.online.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert set(want) <= set(got), sorted(set(want) - set(got))
    for tag, value in want.items():
        assert got[tag] == pytest.approx(value, rel=2e-6, abs=1e-7), tag
    scalars = {t: float(v) for t, v in probed.items() if np.ndim(v) == 0}
    assert set(scalars) <= set(got), sorted(set(scalars) - set(got))
    for tag, value in scalars.items():
        assert got[tag] == pytest.approx(value, rel=2e-6, abs=1e-7), tag
    if preset == "clipped_delta_relu":
        assert want["td/grad_blocked_frac"] > 0.1  # the batch's rewards reach past the bound
    assert not undocumented(got)


def test_run_json_and_missing_inputs(tmp_path):
    cfg = load_preset("huber_relu", {"network.hidden": [16, 16]})
    user = make_learner(cfg, (OBS_DIM,), ACTIONS, seed=0)
    said = []
    panel = Panel(user.online, env="CartPole-v1", arm="no_td", experiment="miss", logdir=tmp_path,
                  every=2, probe_every=0, warn=said.append, config={"mine": {"lr": 1e-3}})  # fmt: skip
    for step in range(1, 9):
        _user_step(panel, user.online, user.target, user.optimizer, _batch(step), cfg, step, qa=None, q=None)
        panel.episode(step, 10.0 * step, 10, 0.5)
    panel.evaluate(8, [20.0, 30.0])
    panel.close()
    info = json.loads((panel.run_dir / "run.json").read_text())
    assert info["status"] == "done" and info["source"] == "panel" and info["updates"] == 8
    assert info["preset"] == "no_td" and info["env_steps"] == 8 and info["config"]["mine"] == {"lr": 1e-3}
    assert info["final"]["eval_return"] == 25.0 and info["final"]["episodes"] == 8
    missing = {m["what"]: m for m in info["panel"]["missing"]}
    assert set(missing) == {"td", "q"} and "td/grad_blocked_frac" in missing["td"]["tags"]
    assert any("td/grad_blocked_frac" in line and "no qa" in line for line in said)
    run = dqnlab.read_run(panel.run_dir)
    assert "loss/td" in run.tags() and "q/target_mean" in run.tags()
    assert not any(t.startswith("td/") or t.startswith("q/max") for t in run.tags())  # no silent zeros
    report = examine(panel.run_dir)
    assert report.verdict == "not enough evidence"
    assert any("blocked_td_gradient" in gap and "no qa" in gap for gap in report.runs[0].gaps)


def test_divergence_is_recorded_and_stops_the_loop(tmp_path):
    cfg = load_preset("huber_relu", {"network.hidden": [16, 16]})
    user = make_learner(cfg, (OBS_DIM,), ACTIONS, seed=0)
    panel = Panel(user.online, env="CartPole-v1", arm="nan", experiment="div", logdir=tmp_path, every=4,
                  probe_every=0, warn=lambda _: None)  # fmt: skip
    batch = _batch()
    _user_step(panel, user.online, user.target, user.optimizer, batch, cfg, step=1)
    bad = batch._replace(rewards=np.full(B, np.nan, np.float32))
    with pytest.raises(Diverged, match="step 2"):
        _user_step(panel, user.online, user.target, user.optimizer, bad, cfg, step=2)  # an unmeasured call
    panel.close()
    run = dqnlab.read_run(panel.run_dir)
    assert run.status == "diverged" and run.info["divergence"]["step"] == 2
    assert run.info["divergence"]["origin"]["variable"] == "hidden_0/kernel"
    with pytest.raises(AssertionError, match="diverged"):
        dqnlab.testing.assert_all_finite(run)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"env": ""}, "env: expected"),
        ({"every": 0}, "every: expected an integer >= 1"),
        ({"gamma": 1.5}, "gamma: expected a number in"),
        ({"bound": -1}, "bound: expected a number > 0"),
        ({"arm": "a/b"}, "arm: expected a name"),
        ({"config": [1]}, "config: expected a dict"),
    ],
)
def test_bad_arguments_are_one_clear_error(tmp_path, kwargs, message):
    model = tf.keras.Sequential([tf.keras.Input((OBS_DIM,)), tf.keras.layers.Dense(ACTIONS)])
    args = {"env": "CartPole-v1", "logdir": tmp_path, "experiment": "bad", **kwargs}
    with pytest.raises(PanelError, match=message):
        Panel(model, **args)
    assert not (tmp_path / "bad").exists()  # nothing written


def test_qa_not_on_the_loss_path_is_one_clear_error(tmp_path):
    model = tf.keras.Sequential([tf.keras.Input((OBS_DIM,)), tf.keras.layers.Dense(ACTIONS)])
    panel = Panel(model, env="CartPole-v1", logdir=tmp_path, experiment="qa", every=1, probe_every=0)
    obs = _batch().obs
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(obs))
    qa = tf.reduce_max(model(obs), axis=1)  # computed outside the tape
    with pytest.raises(PanelError, match="qa: not on the path"):
        panel.gradients(tape, loss, model.trainable_variables, qa=qa, target=qa, step=1)
    with pytest.raises(PanelError, match="variables: expected the model's"):
        panel.gradients(tape, loss, model.trainable_variables[:1], step=1)
    panel.close()


def _short_panel_run(tmp_path, **panel_kwargs):
    """A few hundred user steps on random CartPole-shaped batches, with probes: a panel run to assert on."""
    cfg = load_preset("huber_relu", {"network.hidden": [32, 32]})
    user = make_learner(cfg, (OBS_DIM,), ACTIONS, seed=0)
    kwargs = {"every": 10, "probe_every": 50, "probe_size": 128, "warn": lambda _: None, **panel_kwargs}
    with Panel(
        user.online, env="CartPole-v1", arm="short", logdir=tmp_path, experiment="plugin", **kwargs
    ) as panel:
        for step in range(1, 301):
            _user_step(panel, user.online, user.target, user.optimizer, _batch(step, scale=0.3), cfg, step)
            if step % 100 == 0:
                panel.episode(step, 20.0, 20, 0.1)
                panel.evaluate(step, [float(step)])
    return dqnlab.read_run(panel.run_dir)


def test_a_loop_that_evaluates_early_or_never_is_not_taken_for_a_truncated_run(tmp_path):
    """`events_end_early` expects dqnlab's final evaluation at a done run's last step; your own loop
    evaluates when it likes, if at all (here never): the doctor finds no cut events and compare counts the
    run as finished."""
    from dqnlab.compare import compare

    cfg = load_preset("huber_relu", {"network.hidden": [16, 16]})
    user = make_learner(cfg, (OBS_DIM,), ACTIONS, seed=0)
    with Panel(user.online, env="CartPole-v1", arm="no_eval", logdir=tmp_path, experiment="noeval",
               every=4, probe_every=0, warn=lambda _: None) as panel:  # fmt: skip
        for step in range(1, 41):
            _user_step(panel, user.online, user.target, user.optimizer, _batch(step), cfg, step)
            if step % 10 == 0:
                panel.episode(step, 10.0, 10, 0.5)
    run = dqnlab.read_run(panel.run_dir)
    assert run.status == "done" and run.env_steps == 40 and "eval/return" not in run.tags()
    assert not [f for f in examine(panel.run_dir).runs[0].findings if f.rule == "events_end_early"]
    assert compare(tmp_path / "noeval").problems == []


def test_the_pytest_plugins_assertions_work_on_a_panel_run(tmp_path):
    from dqnlab import testing

    run = _short_panel_run(tmp_path)
    assert run.status == "done" and run.info["source"] == "panel"
    testing.assert_all_finite(run)
    testing.assert_gradients_flow(run)
    testing.assert_no_dead_units(run)
    testing.assert_td_gradients_not_blocked(run)
    testing.assert_learns(run, min_return=200, by_step=300)
    with pytest.raises(AssertionError, match="does not learn"):
        testing.assert_learns(run, min_return=1000)
    golden = tmp_path / "golden.json"
    testing.golden_trace(run, ["loss/td", "grad_norm/global"], golden, points=5)  # records
    testing.golden_trace(run, ["loss/td", "grad_norm/global"], golden, points=5)  # compares
    assert not undocumented(run.tags())


def _load_example(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cartpole_experiment(tmp_path_factory):
    """examples/tf2_dqn_panel.py, clipped and Huber, 5k CartPole steps each, beside `dqnlab train huber_relu`
    in one experiment."""
    import logging

    logdir = tmp_path_factory.mktemp("user_loop")
    example = _load_example("tf2_dqn_panel")
    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("dqnlab").addHandler(handler)
    try:
        clipped = example.main(["--steps", "5000", "--logdir", str(logdir), "--name", "exp"])
        huber = example.main(["--steps", "5000", "--logdir", str(logdir), "--name", "exp", "--huber"])
    finally:
        logging.getLogger("dqnlab").removeHandler(handler)
    cfg = load_preset("huber_relu", {"diagnostics.probe_every": 256})
    dqnlab.train(cfg, steps=5000, logdir=logdir, name="exp")
    return logdir / "exp", clipped, huber, warnings


@pytest.mark.slow
def test_the_doctor_flags_the_clipped_user_loop_and_clears_its_huber_twin(cartpole_experiment):
    exp, clipped, huber, warnings = cartpole_experiment
    report = {r.preset: r for r in examine(exp).runs}
    assert [f.rule for f in report["tf2_dqn_clipped"].findings] == ["blocked_td_gradient"]
    assert report["tf2_dqn_huber"].findings == [] and report["tf2_dqn_huber"].gaps == []
    assert any("blocked_td_gradient" in line for line in warnings)  # the live doctor, during the run
    from dqnlab import testing

    with pytest.raises(AssertionError, match="blocks the TD gradient"):
        testing.assert_td_gradients_not_blocked(dqnlab.read_run(clipped))
    run = dqnlab.read_run(huber)
    testing.assert_td_gradients_not_blocked(run)
    testing.assert_gradients_flow(run)
    testing.assert_no_dead_units(run)
    testing.assert_all_finite(run)


@pytest.mark.slow
def test_compare_reads_user_loops_beside_a_preset(cartpole_experiment):
    import subprocess
    import sys

    exp = cartpole_experiment[0]
    out = subprocess.run(
        [sys.executable, "-m", "dqnlab.cli", "compare", str(exp)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    for arm in ("tf2_dqn_clipped", "tf2_dqn_huber", "huber_relu"):
        assert arm in out.stdout


@pytest.mark.parametrize(
    "raised, status", [(RuntimeError("boom"), "failed"), (KeyboardInterrupt(), "interrupted")]
)
def test_the_context_manager_records_how_the_loop_ended(tmp_path, raised, status):
    model = tf.keras.Sequential([tf.keras.Input((OBS_DIM,)), tf.keras.layers.Dense(ACTIONS)])
    panel = Panel(model, env="CartPole-v1", logdir=tmp_path, experiment="end", probe_every=0)
    with pytest.raises(type(raised)), panel:
        raise raised
    info = json.loads((panel.run_dir / "run.json").read_text())
    assert info["status"] == status and info["error"].startswith(type(raised).__name__)


def test_inside_tf_function_it_logs_what_it_logs_eagerly(tmp_path):
    cfg = load_preset("clipped_delta_relu", {"network.hidden": [32, 32]})
    runs = {}
    for mode in ("eager", "graph"):
        user = make_learner(cfg, (OBS_DIM,), ACTIONS, seed=0)
        panel = Panel(user.online, env="CartPole-v1", arm=mode, experiment="modes", logdir=tmp_path, every=2,
                      probe_every=3, probe_size=B, clip_norm=10.0, warn=lambda _: None)  # fmt: skip

        def step_fn(obs, actions, rewards, next_obs, discounts, step, user=user, panel=panel):
            y = td_target(rewards, discounts * np.float32(cfg.train.gamma), user.target(next_obs))
            with tf.GradientTape() as tape:
                q = user.online(obs)
                qa = tf.gather(q, actions, batch_dims=1)
                loss = tf.reduce_mean(get_loss(cfg.loss.kind)(y - qa, cfg.loss.bound))
            variables = user.online.trainable_variables
            grads = panel.gradients(tape, loss, variables, qa=qa, target=y, q=q, obs=obs, step=step)
            user.optimizer.apply(grads, variables)
            return loss

        fn = tf.function(step_fn) if mode == "graph" else step_fn
        for i in range(1, 8):
            batch = _batch(i)
            fn(*batch, tf.constant(100 * i, tf.int64) if mode == "graph" else 100 * i)
        panel.close()
        runs[mode] = dqnlab.read_run(panel.run_dir).all_scalars()
    eager, graph = runs["eager"], runs["graph"]
    assert set(eager) == set(graph) and "td/grad_blocked_frac" in eager and "act_dead_frac/hidden_0" in eager
    for tag, series in eager.items():
        if tag.startswith("perf/"):
            continue
        assert [s for s, _ in graph[tag]] == [s for s, _ in series], tag
        np.testing.assert_allclose([v for _, v in graph[tag]], [v for _, v in series], rtol=1e-5, atol=1e-7)


def test_float64_targets_and_column_shaped_q_values_are_measured(tmp_path):
    """An external loop's shapes and dtypes: qa [B, 1], a float64 target from numpy rewards."""
    cfg = load_preset("clipped_delta_relu", {"network.hidden": [16, 16]})
    user = make_learner(cfg, (OBS_DIM,), ACTIONS, seed=0)
    panel = Panel(
        user.online, env="CartPole-v1", logdir=tmp_path, experiment="shapes", every=1, probe_every=0
    )
    batch = _batch()
    target = (
        batch.rewards.astype(np.float64)[:, None]
        + 0.99 * np.max(user.target(batch.next_obs), axis=1)[:, None]
    )
    with tf.GradientTape() as tape:
        q = user.online(batch.obs)
        qa = tf.reduce_sum(q * tf.one_hot(batch.actions, ACTIONS), axis=1, keepdims=True)  # [B, 1]
        loss = tf.reduce_mean(tf.square(tf.clip_by_value(tf.cast(target, tf.float32) - qa, -1.0, 1.0)))
    grads = panel.gradients(
        tape, loss, user.online.trainable_variables, qa=qa, target=tf.constant(target), q=q, step=5
    )
    user.optimizer.apply(grads, user.online.trainable_variables)
    panel.close()
    run = dqnlab.read_run(panel.run_dir)
    blocked = run.scalars("td/grad_blocked_frac")[-1][1]
    beyond = run.scalars("td/beyond_bound_frac")[-1][1]
    assert blocked == beyond > 0  # the forward clip blocks exactly the samples beyond the bound


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_a_float64_model_is_measured_as_its_float32_twin(tmp_path, mode):
    """Weights, gradients and activations in float64 (a model built with dtype="float64"): the panel
    measures them in float32 as the learner does, and reads what the same model in float32 reads."""
    logged, weights = {}, None
    for dtype in ("float32", "float64"):
        hidden = keras.layers.Dense(16, activation="relu", dtype=dtype, name="hidden")
        layers = [hidden, keras.layers.Dense(ACTIONS, dtype=dtype, name="head")]
        model = keras.Sequential([keras.Input((OBS_DIM,), dtype=dtype), *layers])
        weights = weights or model.get_weights()  # the float32 model's, cast to float64 for its twin
        model.set_weights([w.astype(dtype) for w in weights])
        panel = Panel(model, env="CartPole-v1", arm=dtype, experiment=mode, logdir=tmp_path, every=1,
                      probe_every=2, probe_size=B, clip_norm=10.0, warn=lambda _: None)  # fmt: skip

        def step_fn(obs, actions, rewards, step, model=model, panel=panel, dtype=dtype):
            with tf.GradientTape() as tape:
                q = model(tf.cast(obs, dtype))
                qa = tf.gather(q, actions, batch_dims=1)
                target = tf.cast(rewards, dtype) + 1.0
                loss = tf.reduce_mean(tf.square(target - qa))
            grads = panel.gradients(tape, loss, model.trainable_variables, qa=qa, target=target, q=q,
                                    obs=tf.cast(obs, dtype), step=step)  # fmt: skip
            return grads

        fn = tf.function(step_fn) if mode == "graph" else step_fn
        for i in range(1, 5):
            batch = _batch(i)
            fn(batch.obs, batch.actions, batch.rewards, tf.constant(i, tf.int64) if mode == "graph" else i)
        panel.close()
        logged[dtype] = dqnlab.read_run(panel.run_dir).all_scalars()
    assert logged["float64"].keys() == logged["float32"].keys()
    for tag in ("loss/td", "grad_norm/global", "td/abs_max", "act_dead_frac/hidden", "features/srank"):
        assert tag in logged["float64"], tag
        twin = [v for _, v in logged["float32"][tag]]
        np.testing.assert_allclose([v for _, v in logged["float64"][tag]], twin, rtol=1e-5, atol=1e-6)


GRAPH_LOOP_ONE_THREAD = """
import sys, tempfile
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
from dqnlab.panel import Panel
layers = [tf.keras.Input((4,)), tf.keras.layers.Dense(8, activation="relu"), tf.keras.layers.Dense(2)]
model = tf.keras.Sequential(layers)
optimizer = tf.keras.optimizers.Adam()
panel = Panel(model, env="CartPole-v1", logdir=sys.argv[1], every=2, probe_every=3, warn=lambda _: None)

@tf.function
def step(obs, rewards, env_step):
    with tf.GradientTape() as tape:
        q = model(obs)
        qa = q[:, 0]
        loss = tf.reduce_mean(tf.square(rewards - qa))
    variables = model.trainable_variables
    grads = panel.gradients(tape, loss, variables, qa=qa, target=rewards, q=q, obs=obs, step=env_step)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))

obs = np.random.normal(size=(64, 4)).astype(np.float32)
for i in range(1, 8):
    step(obs, np.ones(64, np.float32), tf.constant(i, tf.int64))
try:
    step(obs, np.full(64, np.nan, np.float32), tf.constant(8, tf.int64))
except Exception as exc:
    print("raised", type(exc).__name__, "Diverged" in str(exc) or "non-finite" in str(exc))
print(panel.run_dir)
"""


def test_a_graph_loop_with_one_inter_op_thread_runs_and_records_its_divergence(tmp_path):
    """The host callback of a graph-mode call must not wait for the inter-op thread its caller holds."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent), "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-c", GRAPH_LOOP_ONE_THREAD, str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-2].startswith("raised") and lines[-2].endswith("True"), lines
    run = dqnlab.read_run(lines[-1])
    assert run.status == "diverged" and run.info["divergence"]["step"] == 8
    assert "act_dead_frac/dense" in " ".join(run.tags()) and "update_ratio/dense/kernel" in run.tags()
