"""Statistics for comparing arms over a handful of seeds.

RL experiments have 3-10 seeds, so intervals and tests use Student's t (not a normal approximation or a
bootstrap, both of which are too narrow at n = 3-5; Colas et al. 2018, "How many random seeds?"). Arms of
one experiment share their seeds, so arm B is compared with arm A seed by seed: the paired difference
d_i = B_i - A_i removes the seed-to-seed variation both arms share, and a paired t-test on d asks whether
its mean is 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as scipy_stats


@dataclass(frozen=True)
class Estimate:
    """Mean of n values with a two-sided t confidence interval (NaN bounds when n < 2)."""

    n: int
    mean: float
    ci_low: float
    ci_high: float

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairedDifference:
    """Mean of paired differences (arm - baseline) with its t interval and a paired t-test p-value."""

    n: int
    mean: float
    ci_low: float
    ci_high: float
    p_value: float

    def to_dict(self) -> dict:
        return asdict(self)


def mean_ci(values, confidence: float = 0.95) -> Estimate:
    x = np.asarray(values, np.float64)
    n = x.size
    if n == 0:
        return Estimate(0, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Estimate(1, mean, math.nan, math.nan)
    half = _t_quantile(confidence, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return Estimate(n, mean, mean - half, mean + half)


def paired_difference(arm, baseline, confidence: float = 0.95) -> PairedDifference:
    """Paired t analysis of `arm - baseline` (equal-length sequences, element i = seed i of each arm)."""
    a, b = np.asarray(arm, np.float64), np.asarray(baseline, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {a.size} and {b.size}")
    diff = a - b
    est = mean_ci(diff, confidence)
    return PairedDifference(est.n, est.mean, est.ci_low, est.ci_high, _paired_p_value(diff))


def _paired_p_value(diff: np.ndarray) -> float:
    n = diff.size
    if n < 2:
        return math.nan
    sd = float(diff.std(ddof=1))
    mean = float(diff.mean())
    if sd == 0.0:  # every seed moved by exactly the same amount: certain unless that amount is 0
        return 1.0 if mean == 0.0 else 0.0
    t = mean / (sd / math.sqrt(n))
    return float(2 * scipy_stats.t.sf(abs(t), df=n - 1))


def _t_quantile(confidence: float, df: int) -> float:
    return float(scipy_stats.t.ppf(0.5 + confidence / 2, df))


def area_under_curve(steps, values) -> float:
    """Mean height of a learning curve: the trapezoid area over its logged steps divided by their span.

    In the units of the curve (a return), so arms with different step budgets stay comparable. One point:
    that value."""
    x, y = np.asarray(steps, np.float64), np.asarray(values, np.float64)
    if x.size == 0:
        return math.nan
    if x.size == 1 or x[-1] == x[0]:
        return float(y.mean())
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def first_step_reaching(steps, values, threshold: float) -> int | None:
    """The first logged step whose value is >= threshold, or None when the curve never gets there."""
    hits = np.flatnonzero(np.asarray(values, np.float64) >= threshold)
    return int(np.asarray(steps)[hits[0]]) if hits.size else None
