"""The doctor's evaluation set: runs built to show each pathology, their healthy twins and look-alikes, across
CartPole, Acrobot, MountainCar and LunarLander, batch sizes 32 to 256 and run lengths 10k to 100k; the
doctor's verdict on each against a label justified from the logged series alone; the confusion table.

    python scripts/eval_doctor.py [--seeds 2] [--logdir runs/doctor_eval] [--case NAME ...] [--workers N]
    python scripts/eval_doctor.py --list

Cases already trained under --logdir are read back, not trained again (delete the directory to retrain).
A label is the set of doctor rules a case must fire (empty: healthy). It is *justified* only when the run's
own series say so, by criteria written here independently of the doctor's thresholds (`EVIDENCE`):
structural facts (a healthy loss blocks exactly 0 samples) or gross ones (>= 95% of units dead at the last
probe, in a run that does not solve its task). A case whose series contradict its label is reported as
unjustified, not scored. Prints one line per run and the confusion table per rule; exit status 0 when
recall and precision are both 100%.
docs/doctor.md carries the table.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dqnlab.cliargs import OneLineParser, int_at_least
from dqnlab.compare import registry_threshold
from dqnlab.config import ConfigError
from dqnlab.doctor import examine
from dqnlab.doctor_rules import SUBSUMES
from dqnlab.events import read_series


@dataclass(frozen=True)
class Case:
    name: str
    preset: str
    env: str
    steps: int
    label: frozenset[str]  # the doctor rules this case must fire, and no others
    overrides: tuple[str, ...] = ()
    about: str = ""


def case(name, preset, env, steps, label=(), overrides=(), about="") -> Case:
    return Case(name, preset, env, steps, frozenset(label), tuple(overrides), about)


BLOCKED, DEAD, DIVERGED = {"blocked_td_gradient"}, {"dead_relu"}, {"divergence"}
SATURATED = {"saturated_activation", "vanishing_gradient"}
EXPLODING, OVERESTIMATING = {"exploding_gradient"}, {"q_overestimation"}
CLIP = "loss.kind=clipped_delta_squared"
# huber_relu as it shipped before it took SB3's init (#21)
HE_INIT = ["network.kernel_init=he_uniform", "network.bias_init_kind=constant", "optimizer.epsilon=1e-7"]

# fmt: off
CASES = (
    # The forward clip on every task and batch size, each beside the same config with Huber.
    case("cartpole_clipped_b64_50k", "clipped_delta_relu", "CartPole-v1", 50_000, BLOCKED),
    case("cartpole_huber_b64_50k", "huber_relu", "CartPole-v1", 50_000, about="the fix"),
    case("cartpole_clipped_b32_10k", "clipped_delta_relu", "CartPole-v1", 10_000, BLOCKED,
         ["train.batch_size=32"], "short run, small batch"),
    case("cartpole_huber_b32_10k", "huber_relu", "CartPole-v1", 10_000, (), ["train.batch_size=32"]),
    case("acrobot_clipped_b128_15k", "acrobot_huber", "Acrobot-v1", 15_000, BLOCKED, [CLIP],
         "a few goal transitions with |delta| 20-27 are the blocked ones: ~1% of samples"),
    case("acrobot_huber_b128_15k", "acrobot_huber", "Acrobot-v1", 15_000),
    case("lunarlander_clipped_b128_30k", "lunarlander_clipped_delta", "LunarLander-v3", 30_000, BLOCKED),
    case("lunarlander_huber_b128_30k", "lunarlander_huber", "LunarLander-v3", 30_000),
    case("cartpole100_clipped_b256_30k", "clipped_delta_relu", "dqnlab/CartPole-reward100-v1", 30_000,
         BLOCKED, ["train.batch_size=256"]),
    case("cartpole100_huber_b64_30k", "huber_relu", "dqnlab/CartPole-reward100-v1", 30_000, OVERESTIMATING,
         HE_INIT, "most TD errors beyond Huber's bound, none blocked, but Q climbs past r/(1-gamma) = 10,000 "
         "(with PyTorch's init, as huber_relu ships, Q ends at 0.77-0.78x r/(1-gamma): none due)"),
    case("mountaincar_clipped_b256_20k", "mountaincar_huber", "MountainCar-v0", 20_000, (),
         [CLIP, "train.batch_size=256"],
         "look-alike: the forward clip, but MountainCar's TD errors stay under its bound (|delta| max ~0.1)"),
    case("mountaincar_huber_b256_20k", "mountaincar_huber", "MountainCar-v0", 20_000, (),
         ["train.batch_size=256"],
         "does not solve the task in 20k steps, but its backward pass is sound; rare 100x gradient spikes at "
         "the goal, under the clip"),
    # Dead ReLUs, and a net that is half dead but learns.
    case("cartpole_dead_20k", "relu_dead", "CartPole-v1", 20_000, DEAD, about="the README's command"),
    case("cartpole_half_dead_20k", "huber_relu", "CartPole-v1", 20_000,
         about="look-alike: hidden_1 ~70% dead (PyTorch init), learns"),
    case("mountaincar_dead_b32_20k", "mountaincar_huber", "MountainCar-v0", 20_000, DEAD,
         ["network.bias_init=-3", "train.batch_size=32"]),
    case("frozenlake_mostly_dead_30k", "huber_relu", "FrozenLake-v1", 30_000, (), ["train.eval_episodes=100"],
         about="look-alike: one-hot states leave hidden_1 ~93% dead; it solves the lake"),
    # Saturated sigmoids, and a sigmoid net that is mostly saturated but passes a gradient and learns.
    case("cartpole_saturated_20k", "sigmoid_saturated", "CartPole-v1", 20_000, SATURATED,
         about="the README's command"),
    case("cartpole_glorot_20k", "sigmoid_glorot", "CartPole-v1", 20_000,
         about="look-alike: 87-97% of hidden_1 within the saturation margin, learns"),
    # Recurrent: a vanilla cell at spectral radius 3 against an LSTM, on the velocity-masked CartPole.
    case("masked_rnn_exploding_30k", "rnn_exploding", "dqnlab/CartPole-masked-v1", 30_000, EXPLODING),
    case("masked_lstm_30k", "lstm", "dqnlab/CartPole-masked-v1", 30_000),
    # Divergence: a learning rate no network survives.
    case("cartpole_diverging_10k", "squared_relu", "CartPole-v1", 10_000, DIVERGED,
         ["optimizer.learning_rate=1e12"]),
    case("cartpole_squared_b128_100k", "squared_relu", "CartPole-v1", 100_000, (),
         ["train.batch_size=128", *HE_INIT], "a long run of the unclipped loss (with PyTorch's init, as "
         "squared_relu ships, seed 1's greedy Q ends at 1.36x r/(1-gamma): the doctor says so)"),
)
# fmt: on


# -- labels justified from the series, independently of the doctor's thresholds ------------------------------


def _last(series, tag: str) -> float:
    return float(series[tag][1][-1]) if tag in series and len(series[tag][1]) else float("nan")


def _layers(series, prefix: str) -> list[str]:
    return sorted(t[len(prefix) :] for t in series if t.startswith(prefix))


def blocked_evidence(series, info) -> tuple[bool, str]:
    """Healthy losses (Huber, squared, the backward clip) give dL/dQ = 0 to no sample with delta != 0, by
    construction, so a blocked sample is the forward clip; it is a pathology when it is routine: blocked
    samples in at least a quarter of the measured updates of the second half."""
    fracs = series.get("td/grad_blocked_frac", (np.zeros(0), np.zeros(0)))[1]
    late = fracs[len(fracs) // 2 :]
    share = float(np.mean(late > 0)) if len(late) else 0.0
    peak = float(np.max(fracs, initial=0))
    return share >= 0.25, f"blocked in {share:.0%} of the second half's measured updates (max {peak:.3f})"


def dead_evidence(series, info) -> tuple[bool, str]:
    """At the last probe, a hidden layer with >= 95% of units silent on every probe state, in a run whose
    last evaluation is below its env's registered reward threshold (gymnasium's): a net that solves its
    task with the units it has left is the look-alike, not the pathology."""
    dead = {layer: _last(series, f"act_dead_frac/{layer}") for layer in _layers(series, "act_dead_frac/")}
    worst = max(dead, key=lambda k: dead[k], default=None)
    if worst is None:
        return False, "no probe"
    note = f"{worst} {dead[worst]:.0%} dead at the last probe"
    threshold, last = registry_threshold(info["env"]), _last(series, "eval/return")
    if threshold is not None and last >= threshold:
        return False, f"{note}, and it solves its task (last evaluation {last:.3g} >= {threshold:g})"
    return dead[worst] >= 0.95, note


def saturated_evidence(series, info) -> tuple[bool, str]:
    """At the last probe, a layer >= 95% saturated, and the first layer's gradient below a thousandth of
    the last hidden layer's over the second half (the backward signal really gone)."""
    sat = {
        layer: _last(series, f"act_saturated_frac/{layer}")
        for layer in _layers(series, "act_saturated_frac/")
    }
    worst = max(sat, key=lambda k: sat[k], default=None)
    ratio = series.get("grad/depth_ratio", (np.zeros(0), np.zeros(0)))[1]
    late = float(np.median(ratio[len(ratio) // 2 :])) if len(ratio) else float("nan")
    yes = worst is not None and sat[worst] >= 0.95 and late < 1e-3
    return yes, f"{worst} {sat.get(worst, float('nan')):.0%} saturated; depth ratio {late:.1e}"


def exploding_evidence(series, info) -> tuple[bool, str]:
    """At some point of the run, the BPTT gradient 100x larger at the oldest unrolled step than at the
    newest (a median over 10 consecutive measured updates): the gradient grew geometrically through time."""
    ks = sorted(int(k) for k in _layers(series, "bptt/grad_norm/t-") if k.isdigit())
    if len(ks) < 2:
        return False, "no BPTT norms"
    old, new = series[f"bptt/grad_norm/t-{ks[-1]}"][1], series[f"bptt/grad_norm/t-{ks[0]}"][1]
    with np.errstate(divide="ignore", invalid="ignore"):
        growth = old / new
    rolling = [float(np.median(growth[i : i + 10])) for i in range(max(1, len(growth) - 9))]
    peak = max(rolling)
    return peak >= 100, f"BPTT growth t-{ks[-1]} / t-{ks[0]} up to {peak:.3g}x (median of 10 updates)"


def overestimation_evidence(series, info) -> tuple[bool, str]:
    """The greedy actions' Q-values at the last evaluation 1.3x above r_max / (1 - gamma), the most any
    policy can get (r_max: the largest per-step reward of the episodes): impossible values."""
    q, ret, length = (series.get(t) for t in ("eval/q_estimate", "episode/return", "episode/length"))
    if q is None or not len(q[1]) or ret is None or length is None or len(ret[1]) != len(length[1]):
        return False, "no value check"
    gamma = info["config"]["train"]["gamma"]
    bound = float(np.max(np.abs(ret[1]) / np.maximum(length[1], 1))) / (1 - gamma)
    last = float(q[1][-1])
    return (
        last >= 1.3 * bound,
        f"Q of the greedy actions {last:.4g} at the end, {last / bound:.2f}x r/(1-gamma)",
    )


def diverged_evidence(series, info) -> tuple[bool, str]:
    return info.get("status") == "diverged", f"status {info.get('status')}"


EVIDENCE: dict[str, Callable] = {
    "blocked_td_gradient": blocked_evidence,
    "dead_relu": dead_evidence,
    "saturated_activation": saturated_evidence,
    "vanishing_gradient": saturated_evidence,
    "exploding_gradient": exploding_evidence,
    "divergence": diverged_evidence,
    "q_overestimation": overestimation_evidence,
}


def justification(series, info, label: frozenset[str]) -> tuple[bool, list[str]]:
    """Whether the series support the label: each pathology's evidence present iff it is in the label."""
    ok, notes = True, []
    # The doctor reports a cause, not its consequences (doctor_rules.SUBSUMES): evidence of a consequence
    # of a labelled cause neither supports nor contradicts the label.
    consequences = {r for cause in label for r in SUBSUMES.get(cause, ())}
    for rules, evidence in _evidence_once():
        if rules <= consequences:
            continue
        present, note = evidence(series, info)
        wanted = bool(rules & label)
        ok &= present == wanted
        if present or wanted:
            notes.append(note)
    return ok, notes


def _evidence_once():
    """Each evidence function once, with the rules it justifies."""
    by_fn: dict[Callable, set[str]] = {}
    for rule, fn in EVIDENCE.items():
        by_fn.setdefault(fn, set()).add(rule)
    return [(frozenset(rules), fn) for fn, rules in by_fn.items()]


# -- running and scoring ----------------------------------------------------------------------------------


def train_case(c: Case, seeds: int, logdir: Path, workers: int | None) -> Path:
    """Train the case's seeds (or read them back if a run of it already finished)."""
    from dqnlab.runner import plan_experiment, run_experiment

    exp = logdir / c.name
    resume = exp.is_dir()
    specs, _ = plan_experiment([c.preset], [c.env], list(range(seeds)), c.steps, logdir, c.name,
                               list(c.overrides), resume=resume, checkpoint_every=0)  # fmt: skip
    run_experiment(specs, workers=workers, quiet=True)
    return exp


@dataclass
class Scored:
    case: Case
    seed: int
    found: frozenset[str]
    justified: bool
    notes: list[str]


def score(c: Case, exp: Path) -> list[Scored]:
    out = []
    for run in examine(exp).runs:
        info = json.loads((run.run_dir / "run.json").read_text())
        if info["status"] == "failed":  # the run itself broke: nothing to judge the doctor by
            out.append(Scored(c, run.seed, frozenset(), False, [f"the run failed: {info.get('error')}"]))
            continue
        justified, notes = justification(read_series(run.run_dir), info, c.label)
        out.append(Scored(c, run.seed, frozenset(f.rule for f in run.findings), justified, notes))
    return out


def confusion(scored: list[Scored]) -> tuple[str, float, float]:
    """Per-rule TP/FN/FP over the justified runs, and overall recall and precision."""
    rules = sorted({r for s in scored for r in s.case.label | s.found})
    lines = [f"{'rule':24s} {'TP':>4s} {'FN':>4s} {'FP':>4s} {'TN':>4s}"]
    tp = fn = fp = 0
    for rule in rules:
        counts = {"TP": 0, "FN": 0, "FP": 0, "TN": 0}
        for s in (s for s in scored if s.justified):
            wanted, got = rule in s.case.label, rule in s.found
            counts["TP" if wanted and got else "FN" if wanted else "FP" if got else "TN"] += 1
        tp, fn, fp = tp + counts["TP"], fn + counts["FN"], fp + counts["FP"]
        lines.append(f"{rule:24s} " + " ".join(f"{counts[k]:4d}" for k in ("TP", "FN", "FP", "TN")))
    recall = tp / (tp + fn) if tp + fn else 1.0
    precision = tp / (tp + fp) if tp + fp else 1.0
    return "\n".join(lines), recall, precision


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int_at_least(1), default=2)
    ap.add_argument("--logdir", default="runs/doctor_eval", help="where the cases' experiments live")
    ap.add_argument("--case", action="append", default=[], help="only this case (repeatable)")
    ap.add_argument("--workers", type=int_at_least(1), help="parallel runs (default: the CPU count)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args(argv)
    names = {c.name for c in CASES}
    if unknown := [n for n in args.case if n not in names]:
        ap.error(f"unknown case {unknown[0]!r}; see --list")
    cases = [c for c in CASES if not args.case or c.name in args.case]
    if args.list:
        for c in cases:
            label = ", ".join(sorted(c.label)) or "healthy"
            print(f"{c.name:32s} {c.preset:26s} {c.env:28s} {c.steps:>7,}  {label}  {c.about}")
        return 0
    scored: list[Scored] = []
    for c in cases:
        try:
            exp = train_case(c, args.seeds, Path(args.logdir), args.workers)
        except ConfigError as exc:
            ap.error(f"case {c.name}: {exc}")
        for s in score(c, exp):
            scored.append(s)
            label = ", ".join(sorted(c.label)) or "healthy"
            got = ", ".join(sorted(s.found)) or "healthy"
            mark = "ok" if s.found == c.label else "MISS"
            mark = mark if s.justified else "UNJUSTIFIED"
            notes = "; ".join(s.notes)
            print(f"{mark:11s} {c.name} seed {s.seed}: expected {label}; doctor {got}  [{notes}]", flush=True)
    table, recall, precision = confusion(scored)
    unjustified = sum(not s.justified for s in scored)
    scored_runs = len(scored) - unjustified
    print(f"\n{table}\n\nrecall {recall:.0%}, precision {precision:.0%} over {scored_runs} runs "
          f"({len(cases)} cases x {args.seeds} seeds; {unjustified} unjustified)")  # fmt: skip
    return 0 if recall == precision == 1.0 and not unjustified else 1


if __name__ == "__main__":
    sys.exit(main())
