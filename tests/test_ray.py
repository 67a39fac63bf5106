"""The Ray backend on a two-node local Ray cluster, inside its own network namespace (Ray probes cloud
metadata addresses at start-up; in a namespace with only loopback up, nothing leaves the machine).

Marked `ray` and deselected by default: `.ci/run` installs the `ray` extra and runs `pytest -m ray` with
DQNLAB_REQUIRE_RAY=1, which turns a missing Ray or `unshare` into a failure instead of a skip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from dqnlab.events import read_series
from dqnlab.runner import plan_experiment, run_experiment

ARMS, SEEDS, STEPS = ["huber_relu", "squared_relu"], [0, 1], 4000
OVERRIDES = ["diagnostics.probe_every=256"]
OPTIONS = {"deterministic": True, "checkpoint_every": 1000, "checkpoint_replay": True}

IN_NAMESPACE = textwrap.dedent(
    """
    import json, os, secrets, signal, sys, threading, time
    from pathlib import Path
    os.environ["RAY_AUTH_MODE"] = "token"  # Ray 2.60: a second node joins only with a token
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(16)
    import ray
    from ray.cluster_utils import Cluster

    logdir = Path(sys.argv[1])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    killed = []

    # SIGKILL the process of the first run that has written its second checkpoint (a batch's members all
    # have its first by then: a member's older checkpoint goes only once every member has the newer one)
    def kill_one_worker():
        while not killed:
            for manifest in logdir.glob("ray/*/*/seed_*/checkpoints/step-000000002000/MANIFEST.json"):
                run = manifest.parents[2]
                pid = json.loads((run / "run.json").read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.append(str(run))
                return
            time.sleep(0.05)

    threading.Thread(target=kill_one_worker, daemon=True).start()
    from dqnlab.cli import main
    code = main(["ab", *sys.argv[2:], "--backend", "ray", "--ray-address", cluster.address])
    print(json.dumps({"code": code, "killed": killed}))
    ray.shutdown()
    cluster.shutdown()
    """
)


def namespace_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0


@pytest.fixture
def ray_or_skip():
    try:
        import ray  # noqa: F401
    except ImportError:
        missing = 'Ray (pip install -e ".[ray]")'
    else:
        missing = None if namespace_available() else "`unshare -rn` (a network namespace)"
    if missing:
        if os.environ.get("DQNLAB_REQUIRE_RAY") == "1":
            pytest.fail(f"DQNLAB_REQUIRE_RAY=1 but {missing} is not available")
        pytest.skip(f"needs {missing}")


def scalars(run_dir) -> dict:
    return {t: v.tolist() for t, (_, v) in read_series(run_dir).items() if not t.startswith("perf/")}


@pytest.mark.ray
@pytest.mark.parametrize("batch_runs", [None, 2], ids=["one-run-a-task", "batches-of-2"])
def test_ray_backend_survives_a_killed_worker_and_matches_the_local_backend(
    tmp_path, ray_or_skip, batch_runs
):
    """With `batch_runs` 2, each task is a batch of two (the arm's two seeds): the killed one is a whole
    batch, retried from the newest checkpoint both members have."""
    args = [*ARMS, "--seeds", "2", "--steps", str(STEPS), "--deterministic", "--checkpoint-every", "1000"]
    args += ["--batch-runs", str(batch_runs)] if batch_runs else []
    args += [
        "--checkpoint-replay",
        "--set",
        OVERRIDES[0],
        "--logdir",
        str(tmp_path),
        "--name",
        "ray",
        "--quiet",
    ]
    script = tmp_path / "in_namespace.py"
    script.write_text(IN_NAMESPACE)
    inner = f"ip link set lo up && exec {sys.executable} {script} {tmp_path} " + " ".join(args)
    out = subprocess.run(["unshare", "-rn", "sh", "-c", inner], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["code"] == 0 and len(report["killed"]) == 1, (report, out.stdout[-2000:])
    # The same runs on the local backend, for the same seeds.
    specs, _ = plan_experiment(ARMS, None, SEEDS, STEPS, tmp_path, "local", OVERRIDES, **OPTIONS)
    run_experiment(specs, workers=2, quiet=True, batch_runs=batch_runs)
    for arm in ARMS:
        for seed in SEEDS:
            ray_run = tmp_path / "ray" / arm / "CartPole-v1" / f"seed_{seed}"
            info = json.loads((ray_run / "run.json").read_text())
            assert info["status"] == "done" and info["env_steps"] == STEPS
            local_run = tmp_path / "local" / arm / "CartPole-v1" / f"seed_{seed}"
            assert scalars(ray_run) == scalars(local_run), (arm, seed)
    killed = json.loads((tmp_path / report["killed"][0] / "run.json").read_text())
    assert killed["resumed_from"], "the killed run was retried from its checkpoint"
    experiment = json.loads((tmp_path / "ray" / "experiment.json").read_text())
    if batch_runs:
        assert len(experiment["batches"]) == 2 and killed["batched"]["runs"] == 2, experiment
    else:
        assert "batches" not in experiment and "batched" not in killed
