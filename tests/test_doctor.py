"""`dqnlab doctor` on short real trainings: recall on every pathological preset, precision on healthy ones.

The presets train as shipped, shortened (8k env steps) and probed more often so the late half of a short run
holds enough probes for the rules' sustained criteria. The rules themselves are unit-tested on synthetic
series in test_doctor_rules.py."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from helpers import dqnlab_cmd

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
    assert "ERROR blocked_td_gradient: 3 of 3 seeds (seeds 0, 1, 2)" in sick.stdout
    assert "huber_relu on CartPole-v1 (3 seeds): healthy, no finding" in sick.stdout
    healthy = dqnlab_cmd("doctor", str(experiment / "huber_relu"), "--json")
    assert healthy.returncode == 0, healthy.stdout
    data = json.loads(healthy.stdout)
    assert data["healthy"] and len(data["runs"]) == 3
    missing = dqnlab_cmd("doctor", str(experiment / "nope"))
    assert missing.returncode == 2 and "no such directory" in missing.stderr


def test_findings_carry_numbers_from_the_run(experiment):
    """Each dead_relu finding's numbers are the run's own, recomputed here from its event files: the median
    of the late half of the layer's dead fraction, and its first probe."""
    from dqnlab.doctor_rules import THRESHOLDS
    from dqnlab.events import read_series

    report = examine(experiment / "relu_dead")
    assert report.runs and all(run.findings for run in report.runs)
    for run_dir, finding in ((run.run_dir, f) for run in report.runs for f in run.findings):
        steps, dead = read_series(run_dir)[f"act_dead_frac/{finding.subject}"]
        late = dead[int(len(dead) * (1 - THRESHOLDS.late_frac)) :]
        assert finding.evidence["late_median"] == float(np.median(late))
        assert finding.evidence["first_probe"] == float(dead[0])
        assert finding.summary.startswith(
            f"{finding.subject}: {100 * np.median(late):.0f}% of units output exactly 0 on every probe state"
        )
        assert f"{100 * dead[0]:.0f}% at the first probe, step {int(steps[0])})" in finding.summary
        assert len(finding.why) < 400 and finding.fix


def texts(run_dir, tag: str) -> list[str]:
    from dqnlab.events import event_files, iter_events

    return [
        v.tensor.string_val[0].decode()
        for p in event_files(run_dir)
        for e in iter_events(p)
        for v in e.summary.value
        if v.tag == tag
    ]


def test_live_doctor_warns_early_upgrades_and_ends_with_the_doctors_own_verdict(tmp_path, caplog):
    """One verdict everywhere: the live doctor names the bug at its first check, reports it again only when
    it grows (a warning that became an error, or evidence half again as large), and at the end run.json,
    the Text dashboard and `dqnlab doctor` say the same thing."""
    cfg = dqnlab.load_preset("clipped_delta_relu", {"diagnostics.probe_every": 256})
    lines: list[str] = []
    with caplog.at_level(logging.WARNING, logger="dqnlab"):
        res = dqnlab.train(cfg, steps=12_000, logdir=tmp_path, name="live", warn=lines.append)
    assert lines and all("blocked_td_gradient" in line for line in lines), lines
    assert not lines[0].startswith("doctor: now") and all(x.startswith("doctor: now") for x in lines[1:])
    notes = texts(res.run_dir, "doctor/findings")
    assert len(notes) == len(lines) and notes[0].startswith("**blocked_td_gradient**")
    first_seen = int(lines[0].split("at env step ")[1].split(":")[0].replace(",", ""))
    assert first_seen <= 5_500  # seen at the first live check after 5k steps, not at the end
    on_disk = examine(res.run_dir).runs[0].findings
    assert res.final["doctor"] == [f.to_dict() for f in on_disk]
    assert json.loads((res.run_dir / "run.json").read_text())["final"]["doctor"] == res.final["doctor"]
    (verdict,) = texts(res.run_dir, "doctor/verdict")
    assert verdict.startswith(f"**{len(on_disk)} findings**") and all(f.summary in verdict for f in on_disk)


def test_a_grown_finding_is_reported_again_and_a_steady_one_is_not():
    from dqnlab.doctor import LiveDoctor, grew
    from dqnlab.doctor_rules import Finding

    def blocked(severity: str, share: float, last: int) -> Finding:
        return Finding("blocked_td_gradient", severity, "", 1024, last, {"share": share}, "s", "w", "f")

    warned = blocked("warning", 0.06, 5120)
    assert grew(warned, blocked("error", 0.06, 9000))  # more severe
    assert grew(warned, blocked("warning", 0.09, 9000))  # half again as large
    assert not grew(warned, blocked("warning", 0.08, 9000))
    assert not grew(blocked("error", 0.9, 5120), blocked("warning", 0.9, 9000))  # less severe: no news
    reports = []
    live = LiveDoctor({}, lambda f, grew: reports.append((f.severity, grew)))
    live._reported[("blocked_td_gradient", "")] = warned
    live.restore(live.state())  # what a checkpoint keeps comes back
    assert live._reported == {("blocked_td_gradient", ""): warned}


def test_a_live_finding_the_end_no_longer_holds_is_retracted():
    """FrozenLake's mostly dead net: dead_relu is reported while its evaluations are below the task's
    threshold (0.7), and retracted at the end, when the late evaluations reach it and the verdict drops it."""
    from dqnlab.doctor import LiveDoctor, retraction_line

    probes = [5888 + 5120 * i for i in range(9)]
    history = {"act_dead_frac/hidden_1": (probes, [0.82, 0.86, 0.88, 0.9, 0.91, 0.91, 0.92, 0.91, 0.91])}
    evals = [5000 * (i + 1) for i in range(6)]
    reports, retracted = [], []
    live = LiveDoctor({"env": "FrozenLake-v1"}, lambda f, grew: reports.append(f), retract=retracted.append)
    live.check({**history, "eval/return": (evals, [0.1, 0.2, 0.3, 0.3, 0.4, 0.4])})
    assert [(f.rule, f.subject) for f in reports] == [("dead_relu", "hidden_1")] and not retracted
    verdict, _ = live.verdict({**history, "eval/return": (evals, [0.49, 0.70, 0.75, 0.73, 0.76, 0.77])})
    assert verdict == [] and retracted == reports
    assert retraction_line(retracted[0]) == (
        "doctor: dead_relu [hidden_1], reported at env step 46,848, no longer holds on the whole run"
    )
    assert live.state()["reported"] == []


def test_a_directory_of_experiments_keeps_each_experiments_arms_apart(experiment, tmp_path):
    import shutil

    for study in ("loss", "relu"):  # scripts/reproduce_post.py's layout: one experiment per study
        shutil.copytree(experiment / "huber_relu", tmp_path / "post" / study / "huber_relu")
    text = format_report(examine(tmp_path / "post"))
    assert "huber_relu on CartPole-v1 in loss (3 seeds): healthy, no finding" in text
    assert "huber_relu on CartPole-v1 in relu (3 seeds): healthy, no finding" in text
    one_run = format_report(examine(experiment / "huber_relu" / "CartPole-v1" / "seed_0"))
    assert one_run.startswith("huber_relu on CartPole-v1 (1 seed): healthy")


def test_a_run_too_short_to_judge_is_not_enough_evidence_not_healthy(tmp_path):
    """1,500 steps of huber_relu: 2 measured bursts, one probe. No rule can judge it, so the doctor says so
    (exit 3) instead of calling it healthy; run.json's verdict says the same."""
    args = ["train", "huber_relu", "--steps", "1500", "--quiet", "--logdir", str(tmp_path), "--name", "x"]
    assert dqnlab_cmd(*args).returncode == 0
    run = tmp_path / "x" / "huber_relu" / "CartPole-v1" / "seed_0"
    out = dqnlab_cmd("doctor", str(run))
    assert out.returncode == 3, out.stdout + out.stderr
    assert "no finding, but not enough evidence to call it healthy" in out.stdout
    assert "not enough evidence (seed 0): the gradient rules" in out.stdout
    data = json.loads(dqnlab_cmd("doctor", str(run), "--json").stdout)
    assert data["verdict"] == "not enough evidence" and not data["healthy"]
    gaps = json.loads((run / "run.json").read_text())["final"]["doctor_not_enough_evidence"]
    assert gaps == data["runs"][0]["not_enough_evidence"] and len(gaps) == 2
