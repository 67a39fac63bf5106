"""Batched runs written as runs (`dqnlab.batched_trainer`) and planned by `dqnlab ab` / `sweep`
(`--batch-runs`, `dqnlab.batch_plan`): each member's run directory, event file and run.json are those of
the unbatched run of its config (same tags, first measured burst equal to float32 rounding), run.json says
it was batched, a diverging or env-raising member ends as its unbatched run would and the others go on,
and `dqnlab compare` / `doctor` read a batched experiment unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import BATCH_SMALL, dqnlab_cmd, run_info

import dqnlab.batched_loop as batched_loop
from dqnlab import batch_plan
from dqnlab.batched_learner import ACTIVATIONS
from dqnlab.batched_trainer import train_batch
from dqnlab.envs import make_env
from dqnlab.events import read_series
from dqnlab.losses import LOSSES
from dqnlab.runner import dispatch_order
from dqnlab.runspec import RunSpec
from dqnlab.trainer import train_run

ENV = "CartPole-v1"
SMALL = BATCH_SMALL
CLI_SMALL = [arg for o in SMALL for arg in ("--set", o)]


def spec(preset: str, seed: int, logdir, name: str, *extra: str, steps: int = 3_000) -> RunSpec:
    return RunSpec(preset, (*SMALL, *extra), ENV, seed, steps, str(logdir), name, checkpoint_every=0)


info = run_info


def test_the_plan_mirrors_the_batched_learner_and_groups_what_may_share_a_batch(tmp_path):
    assert set(batch_plan.BATCHED_LOSSES) == set(LOSSES)
    assert set(batch_plan.BATCHED_ACTIVATIONS) == set(ACTIVATIONS)
    specs = [spec(p, s, tmp_path, "x") for p in ("huber_relu", "squared_relu") for s in (0, 1, 2)]
    specs.append(spec("huber_relu", 3, tmp_path, "x", "network.hidden=[16]"))  # another shape
    specs.append(spec("huber_relu", 4, tmp_path, "x", "network.dueling=true"))  # not batched
    specs.append(spec("lstm", 0, tmp_path, "x"))  # not an MLP
    assert batch_plan.plan_batches(specs, None) == [[i] for i in range(9)]
    assert batch_plan.plan_batches(specs, 32) == [[0, 1, 2, 3, 4, 5], [6], [7], [8]]
    assert batch_plan.plan_batches(specs, 4) == [[0, 1, 2, 3], [4, 5], [6], [7], [8]]
    # auto: each group split over the workers, as evenly as it comes, at most AUTO_CAP runs a batch
    assert batch_plan.plan_batches(specs, "auto", workers=1) == [[0, 1, 2, 3, 4, 5], [6], [7], [8]]
    assert batch_plan.plan_batches(specs, "auto", workers=2) == [[0, 1, 2], [3, 4, 5], [6], [7], [8]]
    assert batch_plan.plan_batches(specs, "auto", workers=4) == [[0, 1], [2, 3], [4, 5], [6], [7], [8]]
    many = [spec("huber_relu", s, tmp_path, "x") for s in range(40)]
    assert [len(job) for job in batch_plan.plan_batches(many, "auto", workers=1)] == [20, 20]
    # a wide MLP's batches stay small (`auto_cap`): the headline's 3 arms x 10 seeds of 256-256 on 2 workers
    wide = [
        spec(p, s, tmp_path, "x", "network.hidden=[256,256]") for p in ("huber_relu",) * 3 for s in range(10)
    ]
    assert batch_plan.auto_cap(wide[0].config()) == 9
    jobs = batch_plan.plan_batches(wide, "auto", workers=2)
    assert [len(job) for job in jobs] == [7, 8, 7, 8]
    # ... started largest first, so that two workers taking the next job as they free up end 15 runs each
    assert [len(jobs[n]) for n in dispatch_order(jobs, wide)] == [8, 8, 7, 7]
    assert dispatch_order([[i] for i in range(6)], specs[:6]) == list(range(6))  # equal work: as planned
    longer = [spec("huber_relu", 0, tmp_path, "x"), spec("huber_relu", 1, tmp_path, "x", steps=9_000)]
    assert dispatch_order([[0], [1]], longer) == [1, 0]
    assert [batch_plan.parse_batch_runs(t) for t in ("off", "auto", "1", "8")] == [None, "auto", None, 8]


def test_a_member_writes_what_the_unbatched_run_writes(tmp_path):
    members = [spec(p, s, tmp_path, "b") for p in ("huber_relu", "squared_relu") for s in (0, 1)]
    results = train_batch(members)
    assert [r.status for r in results] == ["done"] * 4
    alone = train_run(spec("squared_relu", 1, tmp_path, "u"))
    batched = results[3].run_dir
    assert batched == tmp_path / "b" / "squared_relu" / ENV / "seed_1"
    got, want = read_series(batched), read_series(alone.run_dir)
    assert set(got) == set(want) and any(t.startswith("probe/") or "srank" in t for t in got)
    for tag in ("loss/td", "q/mean", "grad_norm/global", "weight_norm/q_head/kernel", "episode/return"):
        np.testing.assert_array_equal(got[tag][0][:1], want[tag][0][:1])
        np.testing.assert_allclose(got[tag][1][:1], want[tag][1][:1], rtol=1e-4)
    np.testing.assert_array_equal(got["eval/return"][0], want["eval/return"][0])
    b, u = info(batched), info(alone.run_dir)
    assert set(b) - set(u) == {"batched"} and set(b["final"]) == set(u["final"])
    assert b["batched"]["runs"] == 4 and b["batched"]["index"] == 3
    assert b["batched"]["members"][3] == f"squared_relu/{ENV}/seed_1"


class RaisingEnv:
    def __init__(self, env, at: int):
        self._env, self._at, self._steps = env, at, 0
        self.observation_space, self.action_space = env.observation_space, env.action_space

    def reset(self, **kwargs):
        return self._env.reset(**kwargs)

    def step(self, action):
        self._steps += 1
        if self._steps >= self._at:
            raise RuntimeError("the simulator crashed")
        return self._env.step(action)

    def close(self):
        self._env.close()


def wrap_the_second_env(monkeypatch, wrap) -> None:
    """The second env the batch makes (its second member's) is `wrap(env)`; the others are as made."""
    made = []

    def make(env_id, seed=None, **kwargs):
        env = make_env(env_id, seed=seed, **kwargs)
        made.append(env)
        return wrap(env) if len(made) == 2 else env

    monkeypatch.setattr(batched_loop, "make_env", make)


def test_a_member_whose_env_raises_fails_and_the_others_finish(tmp_path, monkeypatch):
    wrap_the_second_env(monkeypatch, lambda env: RaisingEnv(env, 700))
    results = train_batch([spec("huber_relu", s, tmp_path, "f", steps=1_500) for s in (0, 1, 2)])
    assert [r.status for r in results] == ["done", "failed", "done"]
    failed = info(results[1].run_dir)
    assert failed["error"] == "RuntimeError: the simulator crashed" and "Traceback" in failed["traceback"]


class NaNRewardEnv(RaisingEnv):
    """Its `at`-th step gives a NaN reward."""

    def step(self, action):
        self._steps += 1
        obs, reward, terminated, truncated, info = self._env.step(action)
        return obs, float("nan") if self._steps == self._at else reward, terminated, truncated, info


def test_a_member_whose_env_gives_a_nan_reward_diverges_and_names_the_env(tmp_path, monkeypatch):
    wrap_the_second_env(monkeypatch, lambda env: NaNRewardEnv(env, 700))
    results = train_batch([spec("huber_relu", s, tmp_path, "n", steps=3_000) for s in (0, 1, 2)])
    assert [r.status for r in results] == ["done", "diverged", "done"]
    diverged = info(results[1].run_dir)
    assert diverged["divergence"]["nonfinite_env_data"] == {"rewards": 1}
    assert "(1 in rewards): the env's, not the network's" in diverged["error"]


def test_batched_ab_makes_runs_that_compare_and_doctor_read(tmp_path):
    args = ["ab", "huber_relu", "squared_relu", "--seeds", "2", "--steps", "2000", "--workers", "1"]
    out = dqnlab_cmd(
        *args, "--batch-runs", "auto", "--logdir", str(tmp_path), "--name", "ab", "--quiet", *CLI_SMALL
    )
    assert out.returncode == 0, out.stderr
    exp = tmp_path / "ab"
    runs = sorted(p.parent.relative_to(exp).as_posix() for p in exp.rglob("run.json"))
    assert runs == [f"{arm}/{ENV}/seed_{s}" for arm in ("huber_relu", "squared_relu") for s in (0, 1)]
    assert json.loads((exp / "experiment.json").read_text())["batches"] == [[0, 1, 2, 3]]
    assert all(info(exp / r)["batched"]["runs"] == 4 for r in runs)
    assert "2/2 done" in out.stdout
    compared = dqnlab_cmd("compare", str(exp), "--json")
    assert compared.returncode == 0, compared.stderr
    doctor = dqnlab_cmd("doctor", str(exp))
    assert doctor.returncode in (0, 1, 3) and "4 runs examined" in doctor.stdout, doctor.stderr


def test_a_diverging_cell_is_diverged_and_the_others_done(tmp_path):
    args = ["sweep", "huber_relu", "--grid", "optimizer.learning_rate=1e-3,1e12", "--seeds", "2"]
    out = dqnlab_cmd(
        *args,
        "--steps",
        "1500",
        "--batch-runs",
        "4",
        "--logdir",
        str(tmp_path),
        "--name",
        "s",
        "--quiet",
        *CLI_SMALL,
    )
    assert out.returncode == 1, out.stderr  # a diverged run is not counted as finished
    exp = tmp_path / "s"
    status = {p.parent.relative_to(exp).as_posix(): info(p.parent)["status"] for p in exp.rglob("run.json")}
    assert status == {
        f"huber_relu@learning_rate=1e-3/{ENV}/seed_0": "done",
        f"huber_relu@learning_rate=1e-3/{ENV}/seed_1": "done",
        f"huber_relu@learning_rate=1e12/{ENV}/seed_0": "diverged",
        f"huber_relu@learning_rate=1e12/{ENV}/seed_1": "diverged",
    }
    for seed in (0, 1):  # where it began, as an unbatched run's run.json says it; no weight non-finite
        divergence = info(exp / f"huber_relu@learning_rate=1e12/{ENV}/seed_{seed}")["divergence"]
        origin = divergence["origin"]
        assert set(origin) == {"variable", "update_in_burst", "variables"}, divergence
        assert 0 <= origin["update_in_burst"] < 4 and divergence["nonfinite_weights"] == []
        assert origin["variable"] == (origin["variables"] or [None])[0]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch-runs", "0"], "expected auto, off or a number of runs in 1..10000"),
        (["--batch-runs", "some"], "expected auto, off or a number of runs >= 1, got 'some'"),
    ],
)
def test_bad_batch_runs_is_one_line_and_exit_2(tmp_path, extra, message):
    (tmp_path / "old").mkdir()
    out = dqnlab_cmd("ab", "huber_relu", "squared_relu", "--logdir", str(tmp_path), *extra)
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, (
        out.stderr
    )
