"""Regression tests on short runs, in your repository: a pytest plugin (auto-loaded once dqnlab is installed).

    def test_my_agent_backprops(short_run):
        run = short_run("huber_relu", steps=3000)             # cached, deterministic, in a child process
        assert_gradients_flow(run)                             # every variable gets gradient
        assert_no_dead_units(run, max_dead_frac=0.9)
        assert_td_gradients_not_blocked(run)
        assert_all_finite(run)

See docs/testing.md. A run is trained once per (preset file contents, overrides, env, seed, steps, dqnlab
version) and kept under pytest's cache folder (`.pytest_cache/d/dqnlab-runs`), so a suite of assertions on the
same run trains it once, and later sessions not at all (`pytest --cache-clear` forgets them). Training runs
in a spawned process with one thread, so the same key always gives bit-identical scalars on CPU. Every
assertion failure names the layer or tag, the number, and the bound.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from dqnlab.components import describe
from dqnlab.config import load_preset, resolve_preset_path
from dqnlab.doctor_rules import pooled_blocked
from dqnlab.rundir import RunResult, read_run

CACHE_DIR = "dqnlab-runs"
GOLDEN_OPTION = "--dqnlab-update-golden"


# ---- the fixture ---------------------------------------------------------------------------------------


def _run_key(preset: str, overrides: dict, env: str, seed: int, steps: int, components: dict) -> str:
    """The cache key: everything the run depends on, the source of your own components included (a changed
    loss or network must not reuse the run of the old one)."""
    from dqnlab import __version__

    text = resolve_preset_path(preset).read_text()
    blob = json.dumps(
        [text, sorted(overrides.items()), env, seed, steps, __version__, components], default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_cached(
    cache: Path, preset: str, *, env: str | None = None, steps: int = 3000, seed: int = 0, overrides=None
) -> RunResult:
    """Train `preset` (name or path) once for this key and return its RunResult; reuse it afterwards."""
    from dqnlab.runner import plan_experiment, run_experiment

    overrides = dict(overrides or {})
    cfg = load_preset(preset, overrides)  # bad input fails here, before any process starts
    env = env or cfg.env
    key = _run_key(preset, overrides, env, seed, steps, describe(cfg, env))
    found = [p for p in (cache / key).glob("*/*/seed_*") if (p / "run.json").is_file()]
    if found and read_run(found[0]).status in ("done", "diverged"):
        return read_run(found[0])
    if (cache / key).exists():  # an interrupted earlier attempt: start clean
        import shutil

        shutil.rmtree(cache / key)
    as_text = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    specs, _ = plan_experiment([preset], [env], [seed], steps, cache, key, as_text)
    (outcome,) = run_experiment(specs, workers=1, quiet=True)
    return read_run(outcome.run_dir)


@pytest.fixture
def short_run(request):
    """`short_run(preset, env=None, steps=3000, seed=0, overrides=None) -> RunResult`, cached (see module)."""
    if getattr(request.config, "cache", None) is not None:
        cache = Path(request.config.cache.mkdir(CACHE_DIR))
    else:  # pytest -p no:cacheprovider: cache for this session only
        cache = request.getfixturevalue("tmp_path_factory").getbasetemp() / CACHE_DIR

    def run(preset: str, *, env: str | None = None, steps: int = 3000, seed: int = 0, overrides=None):
        return train_cached(cache, preset, env=env, steps=steps, seed=seed, overrides=overrides)

    return run


def pytest_addoption(parser):
    parser.addoption(
        GOLDEN_OPTION, action="store_true", help="dqnlab: rewrite golden traces instead of comparing"
    )


# ---- assertions ----------------------------------------------------------------------------------------


def _series(run: RunResult, prefix: str) -> dict[str, np.ndarray]:
    return {
        tag: np.array([v for _, v in s]) for tag, s in run.all_scalars().items() if tag.startswith(prefix)
    }


def _late_median(values: np.ndarray) -> float:
    return float(np.median(values[len(values) // 2 :]))


def _where(run: RunResult) -> str:
    return f"({run.preset} on {run.env}, seed {run.seed}, {run.env_steps} env steps; {run.run_dir})"


def assert_gradients_flow(run: RunResult, max_zero_frac: float = 0.99) -> None:
    """Every variable gets gradient: its share of exactly-zero gradient entries (median over the second half
    of the measured updates) is at most `max_zero_frac`."""
    series = _series(run, "grad_zero_frac/")
    if not series:
        raise AssertionError(f"no grad_zero_frac/ tags logged (diagnostics off?) {_where(run)}")
    bad = {
        tag.split("/", 1)[1]: _late_median(v) for tag, v in series.items() if _late_median(v) > max_zero_frac
    }
    if bad:
        worst = ", ".join(f"{var} {frac:.1%}" for var, frac in sorted(bad.items()))
        raise AssertionError(
            f"gradient does not flow to {len(bad)} variable(s): exactly-zero gradient entries {worst} "
            f"(median, second half of the run; bound {max_zero_frac:.1%}) {_where(run)}"
        )


def assert_no_dead_units(run: RunResult, max_dead_frac: float = 0.9) -> None:
    """No layer ends with more than `max_dead_frac` of its units dead (zero on every probe state)."""
    series = _series(run, "act_dead_frac/")
    if not series:
        raise AssertionError(f"no act_dead_frac/ tags logged (probes off, or no probe yet?) {_where(run)}")
    bad = {tag.split("/", 1)[1]: float(v[-1]) for tag, v in series.items() if v[-1] > max_dead_frac}
    if bad:
        layers = ", ".join(f"{layer} {frac:.1%} dead" for layer, frac in sorted(bad.items()))
        raise AssertionError(
            f"dead ReLUs: {layers} at the last probe (bound {max_dead_frac:.1%}) {_where(run)}"
        )


def assert_td_gradients_not_blocked(run: RunResult, max_blocked_frac: float = 0.01) -> None:
    """The loss passes gradient for the TD errors: the share of nonzero TD errors sent exactly zero
    gradient, pooled over the second half of the run as the doctor pools it (every update's counts,
    `td/grad_blocked_count/burst_sum` over `td/nonzero_delta_count/burst_sum`; the measured updates'
    fractions for a run that logs no counts), is at most `max_blocked_frac` (exactly 0 for Huber, squared
    and gradient-clipped losses). Every update of every burst counts, not a median of the one measured
    update per burst: the updates right after a target sync block the most, and a per-update fraction
    moves in steps of 1/batch size."""
    pooled = pooled_blocked(_timed_series(run))
    if pooled is None:
        raise AssertionError(f"td/grad_blocked_frac not logged {_where(run)}")
    steps, blocked, samples = pooled
    if not len(steps):
        raise AssertionError(f"no measured update in the second half of the run {_where(run)}")
    if blocked > max_blocked_frac:
        over = f"{samples:,.0f} TD errors" if math.isfinite(samples) else f"{len(steps)} measured updates"
        raise AssertionError(
            f"the loss blocks the TD gradient of {blocked:.1%} of the nonzero TD errors (pooled over the "
            f"second half: {over}; bound {max_blocked_frac:.1%}): a forward clip of the TD error? "
            f"{_where(run)}"
        )


def _timed_series(run: RunResult) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar series as the doctor's rules read them: tag -> (steps, values)."""
    return {
        tag: (np.array([s for s, _ in points]), np.array([v for _, v in points]))
        for tag, points in run.all_scalars().items()
    }


def assert_all_finite(run: RunResult) -> None:
    """The run did not diverge and no gradient entry was ever NaN or inf."""
    if run.status == "diverged":
        raise AssertionError(f"the run diverged: {run.error} {_where(run)}")
    nonfinite = _series(run, "grad/nonfinite").get("grad/nonfinite", np.zeros(1))
    if nonfinite.max() > 0:
        raise AssertionError(
            f"{int(nonfinite.max())} non-finite gradient entries in one update {_where(run)}"
        )


def assert_learns(run: RunResult, min_return: float, by_step: int | None = None) -> None:
    """Some greedy evaluation at or before `by_step` (default: the end) returned at least `min_return`."""
    evals = [(s, v) for s, v in run.final.get("eval_history", []) if by_step is None or s <= by_step]
    best = max(evals, key=lambda sv: sv[1], default=None)
    if best is None or best[1] < min_return:
        shown = "no evaluation" if best is None else f"best {best[1]:.1f} at step {best[0]}"
        limit = "" if by_step is None else f" by step {by_step}"
        raise AssertionError(
            f"does not learn: greedy return >= {min_return:g}{limit} expected, {shown} {_where(run)}"
        )


def golden_trace(
    run: RunResult, tags: Iterable[str], path: str | Path, points: int = 20, rtol: float = 1e-4, update=None
) -> None:
    """Compare the first `points` values of each tag with those recorded in `path` (a JSON file).

    The first time (or with `pytest --dqnlab-update-golden`, passed as `update`), record them instead. For
    refactors: a change that alters the numbers fails here, naming the tag, the step and both values."""
    path = Path(path)
    trace = {tag: [[s, v] for s, v in run.scalars(tag)[:points]] for tag in tags}
    if update or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(trace, indent=1) + "\n")
        return
    golden = json.loads(path.read_text())
    for tag, expected in golden.items():
        got = trace.get(tag) or [[s, v] for s, v in run.scalars(tag)[:points]]
        for (step, want), (got_step, value) in zip(expected, got, strict=False):
            if step != got_step or not math.isclose(value, want, rel_tol=rtol, abs_tol=1e-12):
                raise AssertionError(
                    f"golden trace {path.name}: {tag} at step {step} was {want!r}, now {value!r} at step "
                    f"{got_step} (rtol {rtol:g}) {_where(run)}"
                )
        if len(got) < len(expected):
            raise AssertionError(
                f"golden trace {path.name}: {tag} has {len(got)} points, expected {len(expected)}"
            )


@pytest.fixture
def update_golden(request) -> bool:
    """True when pytest runs with --dqnlab-update-golden (pass it to `golden_trace(update=...)`)."""
    return bool(request.config.getoption(GOLDEN_OPTION))
