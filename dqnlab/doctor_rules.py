"""The rules of `dqnlab doctor`: pure functions over the logged series of one run.

Each rule reads the series (tag -> (env steps, values), the tags of docs/metrics.md) and the parsed run.json,
and returns zero or more `Finding`s. Rules are numpy only (no TensorFlow), so the CLI and the live training
warnings run the very same code. Every threshold lives in `THRESHOLDS`; docs/doctor.md explains each one.

Robustness conventions shared by all rules:
- A missing tag means the rule does not apply (no finding, no error); empty series are fine.
- "Sustained" means a median (or a fraction of points) over the *late half* of a series, with at least
  `min_points` points there, so one noisy measured update can never fire a rule on its own.
- Non-finite values are dropped before medians; only the divergence rule looks at them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

Series = Mapping[str, tuple[np.ndarray, np.ndarray]]

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Finding:
    rule: str  # rule id, e.g. "blocked_td_gradient"
    severity: str  # "error" | "warning"
    subject: str  # layer ("hidden_1") or variable ("hidden_0/kernel"); "" for the whole run
    first_step: int  # env-step range of the evidence
    last_step: int
    evidence: dict[str, float]
    summary: str  # one line, with numbers from the run
    why: str  # one or two sentences, in the language of the backward pass
    fix: str  # what to change

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Thresholds:
    """Every threshold of every rule. docs/doctor.md gives the reasoning at length."""

    # Fewest points in the late-half window before any sustained criterion is evaluated: a 50k-step
    # CartPole run has 9 activation probes (5 in the late half) and ~190 measured updates.
    min_points: int = 3
    # Share of the run (by point index) that is "late": the last half.
    late_frac: float = 0.5

    # blocked_td_gradient: healthy losses (Huber, squared, backward clip) block exactly 0 samples
    # (metrics.md), so any sustained share is the forward-clip bug. The share is pooled over the late half
    # (blocked samples over samples with delta != 0), so it does not depend on the batch size: one blocked
    # sample in 128 is 0.0078 at every batch size. The 2016 bug measures ~0.86-1.0 on CartPole at 50k steps,
    # ~0.01 on Acrobot (its goal transitions, |delta| 20-27). 1e-3 ignores only a clip that almost never
    # bites; an error from 5%, or when the largest errors sit 10x beyond the bound (a forward clip blocks
    # every sample beyond it, so those are blocked).
    blocked_warn: float = 1e-3
    blocked_error: float = 0.05
    blocked_far: float = 10.0

    # dead_relu: healthy huber_relu/squared_relu have hidden_1 40-50% dead on CartPole at 50k steps,
    # clipped_delta_relu ~0.70-0.74 from its first probe on; relu_dead (bias -3) 100%.
    dead_abs: float = 0.9  # "almost all units dead" on its own
    dead_rising: float = 0.7  # ... or this much dead, if it also rose since the first probe by
    dead_rise: float = 0.2  # at least this (healthy rise: <= 0.1)

    # saturated_activation: a layer with most outputs within 0.03 of the bounds (saturation_margin) AND
    # the backward signal actually collapsing. sigmoid_glorot's hidden_1 sits at 0.87-0.97 saturated with
    # a mean derivative of 0.016-0.05 of its ceiling and still learns; sigmoid_saturated: 1.0 and < 1e-5.
    saturated_frac: float = 0.9
    deriv_collapse: float = 1e-3  # act_deriv_mean / ceiling (0.25 sigmoid, 1 tanh)

    # vanishing_gradient: first-layer gradient norm two orders of magnitude below the last hidden layer's
    # (metrics.md: "orders of magnitude below 1"); healthy runs sit at 0.1-4, sigmoid_saturated at ~3e-4.
    depth_ratio: float = 1e-2

    # exploding_gradient: a spike is a global norm 100x (two orders of magnitude) above the median of the
    # `spike_window` points before it; healthy squared_relu peaks at ~8x. Need `min_spikes` of them.
    spike_factor: float = 100.0
    spike_window: int = 10
    min_spikes: int = 3
    # BPTT: log10(norm at the oldest step / norm at the newest) >= 1: the backward signal grows 10x across
    # the unrolled window (Pascanu et al. 2013: explosion is exponential in k).
    bptt_growth_log10: float = 1.0
    # Whole-window Jacobian norm ||dh_T/dh_{T-K}||: >= 10 amplifies the backward signal an order of magnitude.
    jacobian_norm: float = 10.0
    # Spectral radius of W_hh above 1 is necessary for explosion (Pascanu et al. 2013), for a vanilla cell.
    spectral_radius: float = 1.0

    # update_ratio: CS231n's ~1e-3 rule of thumb; two orders of magnitude above, three below (metrics.md).
    update_high: float = 1e-1
    update_low: float = 1e-6

    # dormant_growth: tau-dormant share (Sokar et al. 2023, tau = diagnostics.dormant_tau) rising by this
    # much since the first probe; healthy layers rise <= 0.13 on CartPole.
    dormant_rise: float = 0.3
    dormant_level: float = 0.3

    # learning_never_starts: "zero" gradient = below diagnostics.near_zero_tol (1e-8); on >= 90% of all
    # measured updates; and the loss trend flat (last-quarter median within 50% of the first quarter's).
    zero_grad: float = 1e-8
    zero_grad_frac: float = 0.9
    flat_loss_rel: float = 0.5

    # q_overestimation: returns bound |Q| by r_max / (1 - gamma) (100 on CartPole); flag q/max above twice
    # that in the last quarter AND still growing (last-quarter median >= 1.2x the third quarter's).
    q_bound_factor: float = 2.0
    q_growth: float = 1.2
    # ... measured instead, where greedy evaluations logged it: eval/q_estimate, the Q-value of the actions
    # the greedy policy took, against r_max / (1 - gamma), the largest discounted return any policy can get.
    # Values above it are overestimation by definition; 30% above it is past any noise of the estimate.
    # Flag a late-half median that far above it, or a last evaluation that far above it and still climbing
    # (1.5x across the late half). Huber and squared on CartPole end at 90-129 (means a little over 100
    # while the policy wobbles); Huber with rewards of 100 climbs to 14,000-36,000 against 10,000; the
    # clipped-delta arm sits at 260-2,900 against 100 (scripts/eval_doctor.py).
    q_over_factor: float = 1.3
    q_over_growth: float = 1.5

    activation_ceiling: Mapping[str, float] = field(
        default_factory=lambda: {"sigmoid": 0.25, "tanh": 1.0}  # max of sigmoid' and tanh'
    )


THRESHOLDS = Thresholds()
T = THRESHOLDS


# ---------------------------------------------------------------------------------------------------------
# Helpers


def _get(series: Series, tag: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, values) with non-finite values dropped; None when the tag is missing or empty."""
    if tag not in series:
        return None
    steps, values = (np.asarray(a) for a in series[tag])
    keep = np.isfinite(values)
    if not keep.any():
        return None
    return steps[keep].astype(np.int64), values[keep].astype(np.float64)


def _late(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The last half of a series, by point index."""
    start = int(len(values) * (1.0 - T.late_frac))
    return steps[start:], values[start:]


def _span(steps: np.ndarray, mask: np.ndarray | None = None) -> tuple[int, int]:
    """First and last step where mask holds (all steps when mask is None or empty)."""
    chosen = steps[mask] if mask is not None and mask.any() else steps
    return int(chosen[0]), int(chosen[-1])


def _suffixes(series: Series, prefix: str) -> list[str]:
    """Sorted names after `prefix` of the tags that start with it, e.g. layers of act_dead_frac/."""
    return sorted(tag[len(prefix) :] for tag in series if tag.startswith(prefix))


def _cfg(run: Mapping, *keys: str, default=None, types: type | tuple[type, ...] | None = None):
    """run.json's value at `keys`, or `default` when it is missing or not of `types` (by default the type of
    `default`, any number for a number): a hand-edited run.json must not crash a rule with a TypeError."""
    node = run
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    if types is None and default is not None:
        types = (int, float) if isinstance(default, (int, float)) else type(default)
    if types is not None and (not isinstance(node, types) or (isinstance(node, bool) and types is not bool)):
        return default
    return node


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _make(rule, severity, subject, span, evidence, summary, why, fix) -> Finding:
    # Numbers a run did not log are left out: a NaN would make two equal findings compare unequal.
    ev = {k: float(v) for k, v in evidence.items() if np.isfinite(v)}
    return Finding(rule, severity, subject, span[0], span[1], ev, summary, why, fix)


# ---------------------------------------------------------------------------------------------------------
# Rules


BLOCKED_COUNT, NONZERO_COUNT = "td/grad_blocked_count/burst_sum", "td/nonzero_delta_count/burst_sum"


def pooled_blocked(series: Series) -> tuple[np.ndarray, float, float] | None:
    """(steps of the late half, blocked share pooled over it, samples it pooled). Pooled from the bursts'
    counts when logged, else from the measured updates' fractions (their mean: each is over one batch)."""
    blocked, nonzero = _get(series, BLOCKED_COUNT), _get(series, NONZERO_COUNT)
    if blocked is not None and nonzero is not None and len(blocked[1]) == len(nonzero[1]):
        steps, late_blocked = _late(*blocked)
        late_nonzero = _late(*nonzero)[1]
        total = float(late_nonzero.sum())
        return steps, (float(late_blocked.sum()) / total if total > 0 else 0.0), total
    s = _get(series, "td/grad_blocked_frac")
    if s is None:
        return None
    steps, late = _late(*s)
    return steps, float(np.mean(late)) if len(late) else 0.0, float("nan")


def rule_blocked_td_gradient(series: Series, run: Mapping) -> list[Finding]:
    """The forward-clip bug: a share of TD errors with dL/dQ exactly 0, pooled over the late half."""
    pooled = pooled_blocked(series)
    if pooled is None or len(pooled[0]) < T.min_points or pooled[1] < T.blocked_warn:
        return []
    steps, share, samples = pooled
    kind = _cfg(run, "config", "loss", "kind", default="?")
    bound = _cfg(run, "config", "loss", "bound", default=1.0)
    bound = bound if isinstance(bound, (int, float)) and bound > 0 else 1.0
    largest = _late_median(series, "td/abs_max")
    far = bool(largest >= T.blocked_far * bound)  # NaN compares False
    severity = ERROR if share >= T.blocked_error or far else WARNING
    frac = _get(series, "td/grad_blocked_frac")
    span = _span(frac[0], frac[1] > 0) if frac is not None else _span(steps)
    pooled_over = (
        f"{samples:,.0f} sampled TD errors" if np.isfinite(samples) else f"{len(steps)} measured updates"
    )
    beyond = f"; the largest |delta| is {largest:.3g}, {largest / bound:.0f}x the bound" if far else ""
    return [
        _make(
            "blocked_td_gradient",
            severity,
            "",
            span,
            {
                "late_pooled_share": share,
                "late_abs_max": largest,
                "samples": samples,
                "threshold": T.blocked_warn,
            },
            f"{share:.2%} of nonzero TD errors sent exactly zero gradient (pooled over the last half: "
            f"{pooled_over}; loss {kind!r}){beyond}; blocked from step {span[0]} to {span[1]}.",
            f"The loss clips the TD error in the forward pass: clip_by_value has local gradient 0 outside "
            f"[-{bound:g}, {bound:g}], so every sample with |delta| > {bound:g} -- the ones with most to "
            f"teach -- contributes nothing to dL/dQ.",
            "Use Huber (loss.kind = 'huber'), or clip the gradient, not the error "
            "(loss.kind = 'clipped_gradient_squared').",
        )
    ]


def solves_its_task(series: Series, run: Mapping) -> bool:
    """Whether the greedy evaluations' late-half median reaches the env's registered reward threshold
    (run.json `reward_threshold`, gymnasium's `spec.reward_threshold`: CartPole-v1 475, FrozenLake-v1 0.7).
    The capacity rules (dead_relu, dormant_growth) then stay silent: the units left are enough for the task.
    False without a threshold or with fewer than `min_points` late evaluations."""
    threshold = run.get("reward_threshold")
    evals = _get(series, "eval/return")
    if not isinstance(threshold, (int, float)) or not math.isfinite(threshold) or evals is None:
        return False
    _, late = _late(*evals)
    return len(late) >= T.min_points and float(np.median(late)) >= threshold


def rule_dead_relu(series: Series, run: Mapping) -> list[Finding]:
    """Dead ReLUs: act_dead_frac/<layer> almost 1, or high and risen well above its first probe; not while
    the run solves its task (`solves_its_task`: FrozenLake's one-hot states leave a 256-256 net 92-93% dead
    in hidden_1 while it solves the lake)."""
    out = []  # act_dead_frac is ~0 for bounded activations, so no activation check is needed
    if solves_its_task(series, run):
        return out
    for layer in _suffixes(series, "act_dead_frac/"):
        s = _get(series, f"act_dead_frac/{layer}")
        if s is None:
            continue
        _, late = _late(*s)
        if len(late) < T.min_points:
            continue
        med, first = float(np.median(late)), float(s[1][0])
        rise = med - first
        if not (med >= T.dead_abs or (med >= T.dead_rising and rise >= T.dead_rise)):
            continue
        span = _span(s[0], s[1] >= min(T.dead_rising, med))
        out.append(
            _make(
                "dead_relu",
                ERROR,
                layer,
                span,
                {"late_median": med, "first_probe": first, "rise": rise, "threshold": T.dead_abs},
                f"{layer}: {_pct(med)} of units output exactly 0 on every probe state (median over the last "
                f"half; {_pct(first)} at the first probe, step {int(s[0][0])}).",
                "A ReLU with x <= 0 on every input has local gradient 0, so its incoming weights and bias "
                "get exactly zero gradient and the unit can never come back.",
                "Lower the learning rate, use He init with zero biases (network.bias_init = 0), or a leaky "
                "activation; reset dead units (ReDo, Sokar et al. 2023).",
            )
        )
    return out


def _depth_ratio(series: Series) -> tuple[np.ndarray, np.ndarray] | None:
    """grad/depth_ratio, or grad_norm of hidden_0/kernel over the last hidden kernel, aligned by step."""
    s = _get(series, "grad/depth_ratio")
    if s is not None:
        return s
    hidden = [h for h in _suffixes(series, "grad_norm/hidden_") if h.endswith("/kernel")]
    hidden.sort(key=lambda h: int(re.match(r"\d+", h).group()) if re.match(r"\d+", h) else 0)
    if len(hidden) < 2:
        return None
    first, last = (
        _get(series, f"grad_norm/hidden_{hidden[0]}"),
        _get(series, f"grad_norm/hidden_{hidden[-1]}"),
    )
    if first is None or last is None:
        return None
    common, i, j = np.intersect1d(first[0], last[0], return_indices=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(last[1][j] > 0, first[1][i] / last[1][j], 0.0)
    return common.astype(np.int64), ratio


def rule_saturated_activation(series: Series, run: Mapping) -> list[Finding]:
    """Saturated sigmoid/tanh: act_saturated_frac near 1 AND the backward signal collapsing through it."""
    activation = _cfg(run, "config", "network", "activation", types=str)
    if activation is not None and activation not in T.activation_ceiling:
        return []  # ReLU layers report 0 saturation anyway; dead units are the ReLU analogue
    ceiling = T.activation_ceiling.get(activation, 0.25)
    depth = _depth_ratio(series)
    depth_pos = depth[1][depth[1] > 0] if depth is not None else np.array([])
    depth_med = float(np.median(_late(depth_pos, depth_pos)[1])) if len(depth_pos) >= T.min_points else np.nan
    out = []
    for layer in _suffixes(series, "act_saturated_frac/"):
        sat = _get(series, f"act_saturated_frac/{layer}")
        if sat is None or len(_late(*sat)[1]) < T.min_points:
            continue
        sat_med = float(np.median(_late(*sat)[1]))
        deriv = _get(series, f"act_deriv_mean/{layer}")
        rel = float(np.median(_late(*deriv)[1])) / ceiling if deriv is not None else np.nan
        collapsed = rel <= T.deriv_collapse or depth_med <= T.depth_ratio  # NaN compares False
        if sat_med < T.saturated_frac or not collapsed:
            continue
        out.append(
            _make(
                "saturated_activation",
                ERROR,
                layer,
                _span(sat[0], sat[1] >= T.saturated_frac),
                {"late_saturated_frac": sat_med, "deriv_over_ceiling": rel, "depth_ratio": depth_med},
                f"{layer}: {_pct(sat_med)} of {activation or 'bounded'} outputs within the margin of their "
                f"bounds; mean local derivative {rel:.1e} of its {ceiling:g} ceiling; grad/depth_ratio "
                f"{depth_med:.1e} (medians over the last half).",
                f"A saturated unit's local gradient f'(x) is ~0 (sigmoid z(1-z) <= {0.25:g}), and backprop "
                "multiplies by it at every such layer, so the layers below hear almost nothing.",
                "Use Glorot init with zero biases (or normalise inputs) so pre-activations stay near 0; "
                "or switch to ReLU with He init.",
            )
        )
    return out


def rule_vanishing_gradient(series: Series, run: Mapping) -> list[Finding]:
    """First hidden layer's gradient norm orders of magnitude below the last one's (sustained)."""
    depth = _depth_ratio(series)
    if depth is None:
        return []
    steps, ratio = depth
    pos = ratio > 0  # exactly-zero gradients are the blocked / no-learning rules' finding, not this one
    late_steps, late = _late(steps[pos], ratio[pos])
    if len(late) < T.min_points or pos.sum() < T.min_points:
        return []
    med = float(np.median(late))
    if med > T.depth_ratio:
        return []
    frac_below = float(np.mean(late <= T.depth_ratio))
    first = "conv_0" if "grad_norm/conv_0/kernel" in series else "hidden_0"  # a CNN: conv_0 over hidden_0
    return [
        _make(
            "vanishing_gradient",
            ERROR,
            first,
            _span(late_steps, late <= T.depth_ratio),
            {"late_median_depth_ratio": med, "late_frac_below": frac_below, "threshold": T.depth_ratio},
            f"The first hidden layer's gradient norm is {med:.1e} of the last hidden layer's (median of "
            f"grad/depth_ratio over the last half; {_pct(frac_below)} of points below {T.depth_ratio:g}).",
            "Backprop multiplies the error signal by every layer's weights and local derivative on the way "
            "down; here the product shrinks it by orders of magnitude before it reaches the first layer.",
            "Use ReLU with He init, or keep sigmoid/tanh unsaturated (Glorot init, zero biases, normalised "
            "inputs); fewer or narrower bounded layers.",
        )
    ]


def _spikes(values: np.ndarray) -> np.ndarray:
    """Mask of points above spike_factor x the median of the spike_window points before them."""
    mask = np.zeros(len(values), bool)
    for i in range(T.spike_window, len(values)):
        ref = np.median(values[i - T.spike_window : i])
        mask[i] = ref > 0 and values[i] >= T.spike_factor * ref
    return mask


def _bptt_growth(series: Series) -> tuple[np.ndarray, np.ndarray] | None:
    """Per measured step, log10(||g|| at the oldest unrolled step / ||g|| at the newest)."""
    ks = sorted(int(k) for k in _suffixes(series, "bptt/grad_norm/t-") if k.isdigit())
    if len(ks) < 2:
        return None
    old, new = _get(series, f"bptt/grad_norm/t-{ks[-1]}"), _get(series, f"bptt/grad_norm/t-{ks[0]}")
    if old is None or new is None:
        return None
    common, i, j = np.intersect1d(old[0], new[0], return_indices=True)
    ok = (old[1][i] > 0) & (new[1][j] > 0)
    return common[ok], np.log10(old[1][i][ok] / new[1][j][ok])


def _late_median(series: Series, tag: str) -> float:
    s = _get(series, tag)
    if s is None or len(_late(*s)[1]) < T.min_points:
        return np.nan
    return float(np.median(_late(*s)[1]))


def _vanilla_cell(run: Mapping) -> bool:
    """The run's recurrent cell is the simple (ungated) one: `config.recurrent.cell` (docs/presets.md)."""
    recurrent = _cfg(run, "config", "recurrent", types=Mapping) or {}
    return recurrent.get("cell", "simple") == "simple"


def rule_exploding_gradient(series: Series, run: Mapping) -> list[Finding]:
    """Global-norm spikes far above the running median, BPTT norm growing with k, or rho(W_hh) > 1."""
    tag = "grad_norm/preclip_global" if "grad_norm/preclip_global" in series else "grad_norm/global"
    norm = _get(series, tag)
    spikes = _spikes(norm[1]) if norm is not None else np.zeros(0, bool)
    # With global-norm clipping on, a spike the clip absorbs took a bounded step: only those past the
    # bound count (MountainCar: a norm of ~0.05 jumps to 2-9 at the rare goal transition, under a clip of 10).
    clip = _cfg(run, "config", "train", "grad_clip_norm", default=0.0)
    if isinstance(clip, (int, float)) and clip > 0 and norm is not None:
        spikes &= norm[1] > clip
    growth = _bptt_growth(series)
    growth_med = (
        float(np.median(_late(*growth)[1])) if growth and len(_late(*growth)[1]) >= T.min_points else np.nan
    )
    jac = _late_median(series, "bptt/jacobian_norm")
    rho = _late_median(series, "rnn/spectral_radius")
    sigma = _late_median(series, "rnn/max_singular_value")
    hits = {
        "spikes": spikes.sum() >= T.min_spikes,
        "bptt": growth_med >= T.bptt_growth_log10,
        "jacobian": jac >= T.jacobian_norm,
        "radius": rho > T.spectral_radius and _vanilla_cell(run),
    }
    if not any(hits.values()):
        return []
    if hits["spikes"]:
        span = _span(norm[0], spikes)
    else:
        alt = [growth, _get(series, "bptt/jacobian_norm"), _get(series, "rnn/spectral_radius")]
        span = _span(next(a for a in alt if a is not None)[0])
    parts = []
    if hits["spikes"]:
        peak = float(norm[1][spikes].max())
        n = int(spikes.sum())
        parts.append(f"{n} {tag} spikes >= {T.spike_factor:g}x the running median (peak {peak:.3g})")
    if hits["bptt"]:
        parts.append(f"BPTT gradient norm grows {10**growth_med:.3g}x from the newest to the oldest step")
    if hits["jacobian"]:
        parts.append(f"BPTT Jacobian norm {jac:.3g}")
    if hits["radius"]:
        parts.append(f"spectral radius of W_hh {rho:.3g} > 1 with a vanilla cell")
    gradient_evidence = hits["spikes"] or hits["bptt"] or hits["jacobian"]
    return [
        _make(
            "exploding_gradient",
            ERROR if gradient_evidence else WARNING,
            "",
            span,
            {
                "spikes": float(spikes.sum()),
                "bptt_growth_log10": growth_med,
                "jacobian_norm": jac,
                "spectral_radius": rho,
                "max_singular_value": sigma,
            },
            "; ".join(parts) + " (late-half medians).",
            _exploding_why(run),
            _exploding_fix(run),
        )
    ]


def _recurrent(run: Mapping) -> bool:
    return _cfg(run, "config", "network", "kind", default="mlp") == "rnn"


def _exploding_why(run: Mapping) -> str:
    if _recurrent(run):
        return (
            "Backprop through time multiplies the error by W_hh and f' once per step, so with spectral "
            "radius above 1 the gradient grows exponentially with the steps back (Pascanu et al. 2013)."
        )
    # A feed-forward net has no time axis: its spikes come from the TD error, which has no fixed scale.
    return (
        "The gradient is the TD error times dQ/dtheta: a burst of large TD errors (a rare large reward, a "
        "target refresh, Q-values drifting) makes the global norm jump far above its running median, and an "
        "unclipped step of that size can throw the weights off."
    )


def _exploding_fix(run: Mapping) -> str:
    if not _recurrent(run):
        return (
            "Clip the global norm (train.grad_clip_norm), lower the learning rate, or bound the loss's "
            "gradient (Huber); check the reward scale."
        )
    if (_cfg(run, "config", "train", "grad_clip_norm", default=0.0) or 0.0) > 0:  # clipping is already on
        return (
            "Clipping is on and bounds each step, but not the Jacobians: use an LSTM/GRU cell, or start W_hh "
            "nearer spectral radius 1 (recurrent.recurrent_init_scale)."
        )
    return "Clip the global norm (train.grad_clip_norm), lower the learning rate, or use an LSTM/GRU cell."


def rule_divergence(series: Series, run: Mapping) -> list[Finding]:
    """The run ended 'diverged', or some gradient was non-finite (a NaN is never noise: one is enough)."""
    diverged = run.get("status") == "diverged"
    nonfinite = series.get("grad/nonfinite")
    bad = np.zeros(0, bool)
    steps = np.zeros(0, np.int64)
    if nonfinite is not None and len(nonfinite[1]):
        steps, vals = np.asarray(nonfinite[0]), np.asarray(nonfinite[1], np.float64)
        bad = ~np.isfinite(vals) | (vals > 0)
    if not diverged and not bad.any():
        return []
    div = _cfg(run, "divergence", types=Mapping) or {}
    weights = [str(w) for w in _cfg(div, "nonfinite_weights", types=list) or []]
    div_step = _cfg(div, "step", types=int)
    span = _span(steps, bad) if bad.any() else (int(div_step or 0), int(div_step or 0))
    if div_step is not None:
        span = (min(span[0], int(div_step)), max(span[1], int(div_step)))
    # Live (status still 'running'), the stop comes right after: say only what was measured.
    what = f"run ended 'diverged' at step {div_step}; " if diverged else ""
    origin = div.get("origin") if isinstance(div.get("origin"), Mapping) else {}
    env_data = _env_data(_cfg(div, "nonfinite_env_data", types=Mapping))
    cause = env_data_cause(env_data)  # the data were not finite: the env's, whatever the gradient then did
    began = f"; it began in the raw gradient of {origin['variable']}" if origin.get("variable") else ""
    where = cause + began + (f"; non-finite weights: {', '.join(weights)}" if weights else "")
    why, fix = (
        "Once one gradient entry is inf or NaN, the update writes it into the weights and every later "
        "forward and backward pass through them is non-finite too.",
        "Lower the learning rate, clip the global gradient norm (train.grad_clip_norm), use Huber, "
        "and check inputs and rewards for inf/NaN.",
    )
    if env_data:
        why = (
            "A NaN or inf observation or reward makes its TD error non-finite, and the update writes it "
            "into the weights: no learning rate, clip or loss can prevent it."
        )
        fix = "Fix the env (or wrap it to check each step's observation and reward with np.isfinite)."
    return [
        _make(
            "divergence",
            ERROR,
            "",
            span,
            {
                "nonfinite_grad_updates": float(bad.sum()),
                "diverged": float(diverged),
                "step": float(div_step if div_step is not None else span[0]),
                "nonfinite_env_entries": float(sum(env_data.values())),
            },
            f"{what}{_nonfinite_panels(int(bad.sum()), diverged)}{where}.",
            why,
            fix,
        )
    ]


def _env_data(env_data) -> dict[str, int]:
    """run.json's `divergence.nonfinite_env_data` (field -> count), its well-formed nonzero entries."""
    if not isinstance(env_data, Mapping):
        return {}
    return {
        str(k): v for k, v in env_data.items() if isinstance(v, int) and not isinstance(v, bool) and v > 0
    }


def env_data_cause(env_data: Mapping | None) -> str:
    """'; the env put non-finite values in replay (1 in rewards, 4 in next_obs): the env's, not the
    network's', or '' for none: the clause a divergence's line and finding both carry."""
    env_data = _env_data(env_data)
    if not env_data:
        return ""
    counts = ", ".join(f"{count} in {name}" for name, count in env_data.items())
    return f"; the env put non-finite values in replay ({counts}): the env's, not the network's"


def _nonfinite_panels(count: int, diverged: bool) -> str:
    """How many measured updates (the panel's, one per measured burst) saw a non-finite gradient; none, when
    the run diverged, says it came between them (a burst stops at its first non-finite update, which is the
    measured one only by chance)."""
    if count == 0 and diverged:
        return "no measured update had a non-finite gradient (it came in an update between them)"
    return f"{count} measured update{'' if count == 1 else 's'} had non-finite gradients"


def _grad_nonzero(series: Series, var: str, steps: np.ndarray) -> np.ndarray:
    """Mask over `steps`: the variable's gradient was nonzero at that measured update (unknown -> True)."""
    for tag, nonzero in ((f"grad_norm/{var}", lambda v: v > 0), (f"grad_zero_frac/{var}", lambda v: v < 1)):
        s = _get(series, tag)
        if s is not None:
            lookup = dict(zip(s[0].tolist(), nonzero(s[1]).tolist(), strict=True))
            return np.array([lookup.get(int(t), False) for t in steps], bool)
    return np.ones(len(steps), bool)


def rule_update_ratio(series: Series, run: Mapping) -> list[Finding]:
    """||dW|| / ||W|| per variable far from ~1e-3, median over the measured updates with nonzero gradient."""
    out = []
    for var in _suffixes(series, "update_ratio/"):
        s = _get(series, f"update_ratio/{var}")
        if s is None:
            continue
        keep = _grad_nonzero(series, var, s[0])  # zero gradient => ratio 0: not this rule's finding
        steps, vals = s[0][keep], s[1][keep]
        if len(vals) < 2 * T.min_points:
            continue
        med = float(np.median(vals))
        if T.update_low <= med <= T.update_high:
            continue
        high = med > T.update_high
        word = "too large a step" if high else "the weights barely move"
        out.append(
            _make(
                "update_ratio",
                WARNING,
                var,
                _span(steps, vals > T.update_high if high else vals < T.update_low),
                {"median": med, "points": float(len(vals)), "low": T.update_low, "high": T.update_high},
                f"{var}: update/weight ratio median {med:.1e} over {len(vals)} updates with nonzero gradient "
                f"({word}; rule of thumb ~1e-3).",
                "The applied update is the gradient scaled by the optimizer's step; "
                + (
                    "at this size each update rewrites the weights and the targets chase a moving network."
                    if high
                    else "at this size the gradient reaching this variable is too small to change it."
                ),
                "Lower the learning rate (or clip the global norm)."
                if high
                else "Raise the learning rate, or fix what shrinks the gradient here (init, saturation).",
            )
        )
    return out


def rule_dormant_growth(series: Series, run: Mapping) -> list[Finding]:
    """act_dormant_frac/<layer> rising by a large margin from the early probes to the late half. The early
    level is the median of the first quarter of the probes, not the first alone: a probe taken before the
    network has trained (the probe floor puts one right after learning starts) reads lower than any later
    one (an LSTM's dense layer: 12% at the first probe, 45-53% at every probe after it, over 4k steps).
    Not while the run solves its task (`solves_its_task`)."""
    out = []
    if solves_its_task(series, run):
        return out
    for layer in _suffixes(series, "act_dormant_frac/"):
        s = _get(series, f"act_dormant_frac/{layer}")
        if s is None:
            continue
        _, late = _late(*s)
        if len(late) < T.min_points:
            continue
        med, first = float(np.median(late)), float(np.median(s[1][: max(1, len(s[1]) // 4)]))
        if med - first < T.dormant_rise or med < T.dormant_level:
            continue
        tau = _cfg(run, "config", "diagnostics", "dormant_tau", default=0.025)
        out.append(
            _make(
                "dormant_growth",
                WARNING,
                layer,
                _span(s[0], s[1] >= first + T.dormant_rise),
                {"late_median": med, "early_median": first, "rise": med - first, "threshold": T.dormant_rise},
                f"{layer}: tau-dormant units (tau = {tau:g}) grew from {_pct(first)} (median over the first "
                f"quarter of the probes) to {_pct(med)} (median over the last half).",
                "A dormant unit's output is near 0 on every state, so it passes almost no signal forward and "
                "gets almost no gradient back; the network's capacity shrinks as training goes on.",
                "Lower the replay ratio (fewer gradient steps per env step) or the learning rate; "
                "recycle dormant units (ReDo, Sokar et al. 2023).",
            )
        )
    return out


def _zero_grad_mask(series: Series) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, mask) of measured updates whose whole gradient was ~0."""
    g = _get(series, "grad_norm/global")
    if g is not None:
        return g[0], g[1] <= T.zero_grad
    zs = [_get(series, f"grad_zero_frac/{v}") for v in _suffixes(series, "grad_zero_frac/")]
    zs = [z for z in zs if z is not None]
    if not zs or len({len(z[1]) for z in zs}) != 1:
        return None
    return zs[0][0], np.min([z[1] for z in zs], axis=0) >= 1.0


def rule_learning_never_starts(series: Series, run: Mapping) -> list[Finding]:
    """Zero gradient on (nearly) every measured update and a flat TD loss."""
    zero = _zero_grad_mask(series)
    loss = _get(series, "loss/td")
    if zero is None or loss is None or len(zero[1]) < 2 * T.min_points or len(loss[1]) < 4:
        return []
    frac = float(zero[1].mean())
    q = len(loss[1]) // 4
    early, late = float(np.median(loss[1][:q])), float(np.median(loss[1][-q:]))
    change = abs(late - early) / max(abs(early), 1e-12)
    if frac < T.zero_grad_frac or change > T.flat_loss_rel:
        return []
    return [
        _make(
            "learning_never_starts",
            ERROR,
            "",
            _span(*zero),
            {"zero_grad_frac": frac, "loss_early": early, "loss_late": late, "loss_rel_change": change},
            f"The gradient was ~0 (<= {T.zero_grad:g}) on {_pct(frac)} of {len(zero[1])} measured updates "
            f"and the TD loss stayed flat ({early:.3g} -> {late:.3g}).",
            "No nonzero gradient reaches any weight, so the optimizer never changes the network and the "
            "loss cannot move.",
            "Find where the backward signal is cut: the loss (use Huber), dead or saturated layers, or a "
            "stop_gradient on the online network.",
        )
    ]


def _reward_scale(series: Series) -> float:
    """Largest |return| / length over finished episodes: the per-step reward scale (CartPole: 1)."""
    ret, length = _get(series, "episode/return"), _get(series, "episode/length")
    if ret is None or length is None or len(ret[1]) != len(length[1]):
        return np.nan
    ok = length[1] > 0
    return float(np.max(np.abs(ret[1][ok]) / length[1][ok])) if ok.any() else np.nan


def rule_q_overestimation(series: Series, run: Mapping) -> list[Finding]:
    """The Q-values of the greedy policy's actions far above the discounted return they really got
    (eval/q_overestimation, where evaluations logged it); else q/max far above r_max / (1 - gamma) in the
    last quarter and still growing."""
    gamma = _cfg(run, "config", "train", "gamma", default=0.99)
    gamma = gamma if isinstance(gamma, (int, float)) else np.nan
    r = _reward_scale(series)
    if not np.isfinite(r) or r <= 0 or not 0 < gamma < 1:
        return []
    bound = r / (1.0 - gamma)
    if _get(series, "eval/q_overestimation") is not None:
        return _measured_overestimation(series, bound)
    return _bounded_overestimation(series, bound)


_OVERESTIMATION_WHY = (
    "The max in the target picks the most overestimated action, and regressing on it feeds the error back "
    "into the next target; nothing in the gradient pulls the values back to the returns."
)
_OVERESTIMATION_FIX = (
    "Use Double DQN (train.double_dqn = true), update the target less often, or lower the learning rate; "
    "if the loss blocks large TD errors, fix that first (the terminal transitions that pull Q down are the "
    "ones with the largest errors)."
)


def _measured_overestimation(series: Series, bound: float) -> list[Finding]:
    q, g = _get(series, "eval/q_estimate"), _get(series, "eval/discounted_return")
    if q is None:
        return []
    steps, late = _late(*q)
    if len(late) < T.min_points:
        return []
    med, last, first = float(np.median(late)), float(late[-1]), float(late[0])
    gross = med >= T.q_over_factor * bound
    climbing = last >= T.q_over_factor * bound and first > 0 and last >= T.q_over_growth * first
    if not (gross or climbing):
        return []
    realized = _late_median(series, "eval/discounted_return") if g is not None else np.nan
    how = (
        f"a late-half median of {med:.4g}, {med / bound:.1f}x"
        if gross
        else f"{last:.4g} at the last evaluation ({last / bound:.2f}x), {last / first:.1f}x its value at "
        f"step {int(steps[0]):,},"
    )
    got = (
        f" The discounted return the policy really got: {realized:.4g} (late median)."
        if np.isfinite(realized)
        else ""
    )
    return [
        _make(
            "q_overestimation",
            WARNING,
            "",
            _span(steps, late > bound),
            {
                "late_median_q_estimate": med,
                "last_q_estimate": last,
                "bound": bound,
                "discounted_return": realized,
            },
            f"In greedy evaluations the Q-value of the action taken reaches {how} the largest discounted "
            f"return any policy can get, r_max/(1-gamma) = {bound:.4g}.{got}",
            _OVERESTIMATION_WHY,
            _OVERESTIMATION_FIX,
        )
    ]


def _bounded_overestimation(series: Series, bound: float) -> list[Finding]:
    s = _get(series, "q/max")
    if s is None or len(s[1]) < 4 * T.min_points:
        return []
    q = len(s[1]) // 4
    third, last = float(np.median(s[1][-2 * q : -q])), float(np.median(s[1][-q:]))
    if last < T.q_bound_factor * bound or last < T.q_growth * third:
        return []
    tm = _late_median(series, "q/target_mean")
    return [
        _make(
            "q_overestimation",
            WARNING,
            "",
            _span(s[0][-2 * q :]),
            {"q_max_last_quarter": last, "q_max_third_quarter": third, "bound": bound, "target_mean": tm},
            f"q/max median {last:.4g} in the last quarter ({last / bound:.1f}x the bound r_max/(1-gamma) = "
            f"{bound:.4g}) and still growing ({last / third:.2f}x the third quarter's {third:.4g}).",
            _OVERESTIMATION_WHY,
            _OVERESTIMATION_FIX,
        )
    ]


def _late_points(series: Series, prefix: str) -> int | None:
    """Points in the late half of the longest series whose tag starts with `prefix`; None when none."""
    lengths = [len(np.asarray(v)) for tag, (_, v) in series.items() if tag.startswith(prefix)]
    if not lengths:
        return None
    n = max(lengths)
    return n - int(n * (1.0 - T.late_frac))


def evidence_gaps(series: Series, run: Mapping) -> list[str]:
    """What the rules could not judge for want of evidence, one line each: a run with no finding and a gap is
    'not enough evidence', never 'healthy'. Gradient rules need `min_points` measured updates in the late
    half, activation rules as many probes; a run whose diagnostics were off gives the rules nothing."""
    diagnostics = _cfg(run, "config", "diagnostics", default=None)
    if not isinstance(diagnostics, Mapping):
        return []  # not a run dqnlab configured (hand-made files): nothing to expect
    if diagnostics.get("enabled") is False:
        return ["diagnostics were off (diagnostics.enabled = false): no rule could judge the backward pass"]
    gaps = []
    measured = _late_points(series, "loss/td")
    if measured is None or measured < T.min_points:
        gaps.append(
            "the gradient rules (blocked_td_gradient, vanishing_gradient, exploding_gradient, update_ratio): "
            f"{measured or 0} measured updates in the last half of the run, need {T.min_points}"
        )
    if _cfg(run, "config", "diagnostics", "probe_every", default=0) > 0:
        probes = _late_points(series, "act_")
        if probes is None or probes < T.min_points:
            gaps.append(
                "the activation rules (dead_relu, saturated_activation, dormant_growth): "
                f"{probes or 0} probes in the last half of the run, need {T.min_points}"
            )
    # A user's loop (dqnlab.panel): what it could not log, and the rules that needed it.
    panel = run.get("panel")
    for entry in panel.get("missing", []) if isinstance(panel, Mapping) else []:
        if isinstance(entry, Mapping) and entry.get("rules"):
            tags = ", ".join(map(str, entry.get("tags", [])))
            gaps.append(
                f"the rules {', '.join(map(str, entry['rules']))}: {tags} not logged ({entry.get('why')})"
            )
    return gaps


Rule = Callable[[Series, Mapping], list[Finding]]

RULES: tuple[Rule, ...] = (
    rule_divergence,
    rule_blocked_td_gradient,
    rule_learning_never_starts,
    rule_exploding_gradient,
    rule_saturated_activation,
    rule_vanishing_gradient,
    rule_dead_relu,
    rule_dormant_growth,
    rule_update_ratio,
    rule_q_overestimation,
)

# When a finding of the key rule is present, findings of these rules on the same subject -- any subject when
# the key finding is run-wide (subject ""), or a variable of the key's layer -- are its consequences, not
# separate pathologies, and are dropped so that each cause is reported once.
SUBSUMES: Mapping[str, frozenset[str]] = {
    # With the TD gradient cut, "no learning", zero/odd update ratios, a depth ratio of noise, dormant drift,
    # the units that die while only the small errors push on them (clipped_delta_relu seed 1: hidden_1 46% ->
    # 71% dead over 30k steps, Huber on the same seed stays at 48%) and Q drift are all downstream of the bug.
    "blocked_td_gradient": frozenset(
        {
            "learning_never_starts",
            "update_ratio",
            "vanishing_gradient",
            "dormant_growth",
            "dead_relu",
            "q_overestimation",
        }
    ),
    "saturated_activation": frozenset({"update_ratio"}),
    "vanishing_gradient": frozenset({"update_ratio"}),
    "dead_relu": frozenset({"dormant_growth", "update_ratio"}),
}

_SEVERITY_RANK = {ERROR: 0, WARNING: 1}


def _covers(key: Finding, other: Finding) -> bool:
    if other.rule not in SUBSUMES.get(key.rule, ()):
        return False
    return key.subject in ("", other.subject) or other.subject.startswith(key.subject + "/")


def diagnose(series: Series, run: Mapping) -> list[Finding]:
    """Run every rule; drop subsumed findings; sort by severity, then rule order in RULES, then subject."""
    findings = [f for rule in RULES for f in rule(series, run)]
    kept = [f for f in findings if not any(_covers(k, f) for k in findings if k is not f)]
    order = {rule.__name__.removeprefix("rule_"): i for i, rule in enumerate(RULES)}
    return sorted(kept, key=lambda f: (_SEVERITY_RANK.get(f.severity, 9), order.get(f.rule, 99), f.subject))
