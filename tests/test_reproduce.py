"""The post reproduced at a tiny budget: the report's structure, its numbers against the event files (read
here with TensorBoard's own EventAccumulator, not dqnlab's reader), and the doctor's verdicts."""

from __future__ import annotations

import re

import numpy as np
import pytest
from reproduce import STUDIES, collect, run_studies, write_report
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("post")
    # A quarter of the short budgets, one seed, probes every ~250 env steps so short runs still have enough.
    run_studies(
        out, seeds=1, full=False, workers=3, quiet=True, scale=0.25, extra=("diagnostics.probe_every=128",)
    )
    results = collect(out)
    md, page = write_report(out, results, "test")
    return out, results, md.read_text(), page.read_text()


def tb_scalar(run_dir, tag) -> np.ndarray:
    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return np.array([float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)])


def seed_dir(out, study, arm):
    return next((out / study / arm).glob("*/seed_0"))


def test_report_has_every_study_with_claim_evidence_doctor_and_figures(report):
    out, results, md, page = report
    for study in STUDIES:
        assert f"## {study.title}" in md
        section = md.split(f"## {study.title}")[1].split("\n## ")[0]
        assert "**Claim.**" in section and "**Measured.**" in section and "**Doctor.**" in section
        assert (
            f"{study.key}_curves.png" in section and (out / f"{study.key}_curves.png").stat().st_size > 10_000
        )
        assert f"dqnlab ab {' '.join(study.arms)}" in section  # how to reproduce it alone
    assert page.count("data:image/png;base64,") == len(STUDIES) + 1  # + the BPTT curves
    assert "(rnn_bptt.png)" in md


def test_report_numbers_match_the_event_files(report):
    out, results, md, _ = report
    blocked = tb_scalar(seed_dir(out, "clipped_delta", "clipped_delta_relu"), "td/grad_blocked_frac")
    assert f"clipped-delta **{blocked.mean():.3f}**" in md
    dead = tb_scalar(seed_dir(out, "dead_relu", "relu_dead"), "act_dead_frac/hidden_1")
    assert f"hidden_1: killed {dead[0]:.2f} -> **{dead[-1]:.2f}**" in md
    ratio = tb_scalar(seed_dir(out, "sigmoid", "sigmoid_saturated"), "grad/depth_ratio")
    assert f"saturated **{np.median(ratio[len(ratio) // 2 :]):.1e}**" in md
    rnn = seed_dir(out, "rnn", "rnn_exploding")
    curve = [np.median(tb_scalar(rnn, f"bptt/grad_norm/t-{k}")) for k in range(16)]
    growth = np.exp(np.polyfit(np.arange(16), np.log(curve), 1)[0])
    assert f"vanilla **{growth:.2f}**" in md
    assert growth > 1.3  # the claim itself: geometric growth with the distance back
    radius = float(re.search(r"spectral radius ([0-9.]+), window", md).group(1))
    assert radius == pytest.approx(np.median(tb_scalar(rnn, "rnn/spectral_radius")), abs=0.006)


def test_the_doctor_flags_every_pathological_arm_and_no_fix(report):
    _, results, md, _ = report
    for r in results:
        assert r.doctor_agrees, (r.study.key, r.found)
    assert "EXPECTED" not in md
