"""`dqnlab doctor` on short real trainings: recall on every pathological preset, precision on healthy ones.

The presets train as shipped, shortened (8k env steps) and probed more often so the late half of a short run
holds enough probes for the rules' sustained criteria. The rules themselves are unit-tested on synthetic
series in test_doctor_rules.py."""

from __future__ import annotations

import json
import logging

import pytest
from test_cli import dqnlab_cmd

import dqnlab
from dqnlab.doctor import examine, format_report

SHORT = ["--steps", "8000", "--set", "diagnostics.probe_every=256", "--quiet"]
# preset -> the rules doctor must name on it, and nothing else
EXPECTED = {
    "clipped_delta_relu": {"blocked_td_gradient"},
    "relu_dead": {"dead_relu"},
    "sigmoid_saturated": {"saturated_activation", "vanishing_gradient"},
    "huber_relu": set(),
}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("doctor")
    out = dqnlab_cmd("ab", *EXPECTED, "--seeds", "3", "--logdir", str(logdir), "--name", "x", *SHORT)
    assert out.returncode == 0, out.stderr
    return logdir / "x"


def test_doctor_names_each_pathology_and_only_it(experiment):
    report = examine(experiment)
    assert len(report.runs) == 12 and not report.problems
    for run in report.runs:
        found = {f.rule for f in run.findings}
        assert found == EXPECTED[run.preset], (run.preset, run.seed, format_report(report))


def test_doctor_command_exit_status_and_json(experiment):
    sick = dqnlab_cmd("doctor", str(experiment))
    assert sick.returncode == 1, sick.stderr
    assert "ERROR blocked_td_gradient: seeds 0, 1, 2 of 3" in sick.stdout
    assert "huber_relu on CartPole-v1 (3 seeds): healthy, no finding" in sick.stdout
    healthy = dqnlab_cmd("doctor", str(experiment / "huber_relu"), "--json")
    assert healthy.returncode == 0, healthy.stdout
    data = json.loads(healthy.stdout)
    assert data["healthy"] and len(data["runs"]) == 3
    missing = dqnlab_cmd("doctor", str(experiment / "nope"))
    assert missing.returncode == 2 and "no such directory" in missing.stderr


def test_findings_carry_numbers_from_the_run(experiment):
    report = examine(experiment / "relu_dead")
    finding = next(f for r in report.runs for f in r.findings)
    assert finding.subject.startswith("hidden_") and finding.evidence
    assert any(ch.isdigit() for ch in finding.summary) and len(finding.why) < 400 and finding.fix


def test_live_doctor_warns_during_training_once_per_finding(tmp_path, caplog):
    cfg = dqnlab.load_preset("clipped_delta_relu", {"diagnostics.probe_every": 256})
    lines: list[str] = []
    with caplog.at_level(logging.WARNING, logger="dqnlab"):
        res = dqnlab.train(cfg, steps=8000, logdir=tmp_path, name="live", warn=lines.append)
    assert len(lines) == 1 and "blocked_td_gradient" in lines[0], lines
    assert [f["rule"] for f in res.final["doctor"]] == ["blocked_td_gradient"]
    first_step = res.final["doctor"][0]["last_step"]
    assert first_step <= 5_500  # seen at the first live check after 5k steps, not at the end
    from dqnlab.events import event_files, iter_events

    texts = [
        v
        for p in event_files(res.run_dir)
        for e in iter_events(p)
        for v in e.summary.value
        if v.tag == "doctor/findings"
    ]
    assert len(texts) == 1 and b"blocked_td_gradient" in texts[0].tensor.string_val[0]


def test_a_directory_of_experiments_keeps_each_experiments_arms_apart(experiment, tmp_path):
    import shutil

    for study in ("loss", "relu"):  # scripts/reproduce_post.py's layout: one experiment per study
        shutil.copytree(experiment / "huber_relu", tmp_path / "post" / study / "huber_relu")
    text = format_report(examine(tmp_path / "post"))
    assert "huber_relu on CartPole-v1 in loss (3 seeds): healthy, no finding" in text
    assert "huber_relu on CartPole-v1 in relu (3 seeds): healthy, no finding" in text
    one_run = format_report(examine(experiment / "huber_relu" / "CartPole-v1" / "seed_0"))
    assert one_run.startswith("huber_relu on CartPole-v1 (1 seed): healthy")
