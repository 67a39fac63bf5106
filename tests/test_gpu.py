"""`--device`: the learner on a GPU where there is one, a clear error where there is none.

Tests marked `gpu` need a GPU that TensorFlow sees: they are skipped without one, unless
DQNLAB_REQUIRE_GPU=1 (set by scripts/gpu_check.sh, so a GPU machine that lost its GPU fails loudly).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from dqnlab._tf import tf

HAS_GPU = bool(tf.config.list_physical_devices("GPU"))


def need_gpu():
    if not HAS_GPU:
        if os.environ.get("DQNLAB_REQUIRE_GPU") == "1":
            pytest.fail("DQNLAB_REQUIRE_GPU=1 but TensorFlow sees no GPU")
        pytest.skip("no GPU visible to TensorFlow")


@pytest.mark.skipif(HAS_GPU, reason="checks the machine without a GPU")
def test_device_gpu_without_a_gpu_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dqnlab.cli", "train", "huber_relu", "--device", "gpu", "--steps", "100"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("dqnlab: error:") and "sees no GPU" in lines[-1], proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("run.json"))


@pytest.mark.gpu
def test_learner_variables_live_on_the_gpu_and_updates_are_finite():
    need_gpu()
    from dqnlab.config import load_preset
    from dqnlab.kinds import make_learner
    from dqnlab.replay import ReplayBuffer

    learner = make_learner(load_preset("huber_relu"), (4,), 2, seed=0)
    assert all("GPU" in v.value.device for v in learner.variables), [
        v.value.device for v in learner.variables
    ]
    replay = ReplayBuffer(1_000, (4,), seed=0)
    rng = np.random.default_rng(0)
    for _ in range(500):
        replay.add(
            rng.normal(size=4), int(rng.integers(2)), 1.0, rng.normal(size=4), bool(rng.random() < 0.05)
        )
    out = learner.update(replay.sample_many(8, 64), with_diagnostics=True)
    assert bool(out.finite)
    assert all(np.isfinite(v) for v in out.metrics.values())


@pytest.mark.gpu
def test_a_short_gpu_run_logs_the_panel_like_a_cpu_run(tmp_path):
    need_gpu()
    import dqnlab

    cfg = dqnlab.load_preset("huber_relu")
    res = dqnlab.train(cfg, steps=3_000, logdir=tmp_path, name="gpu", device="gpu")
    assert res.status == "done"
    values = np.array([value for _, value in res.scalars("grad_norm/hidden_0/kernel")])  # (step, value) pairs
    assert len(values) > 0 and np.all(np.isfinite(values)) and np.all(values > 0)
