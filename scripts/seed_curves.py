"""Per-seed greedy curves and instruments of an experiment: which seeds failed, and how (#21).

    python scripts/seed_curves.py runs/NAME                  # every arm (cell) of a dqnlab ab / sweep
    python scripts/seed_curves.py runs/NAME --threshold 475  # default: the env's gymnasium threshold

For each arm, one row per seed: the greedy evaluation returns in order (`eval/return`), the first env step one
reached the threshold, the final one, and what the instruments logged: the largest `q/max` of a measured
update, the median over the run's second half of `eval/q_overestimation` (greedy Q of the actions taken minus
the discounted return that followed), the largest and the last dead fraction of any hidden layer
(`act_dead_frac/*`, probes), the first training episode at the env's maximum return, and `features/srank` at
the first and last probe. Then the arm's count of seeds that reached the threshold, the mean final return, the
mean AUC (`dqnlab compare`'s: the greedy curve's trapezoid area over its span) and the seeds whose final
evaluation is at the maximum. A tag a run did not log (diagnostics off) shows as `-`. Exit status 0, or 2 with
one line for a directory without runs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from dqnlab.cliargs import OneLineParser
from dqnlab.compare import load_run_dirs
from dqnlab.events import read_series
from dqnlab.rundir import read_run
from dqnlab.stats import area_under_curve

COLUMNS = (
    "seed | greedy returns | first >= thr | final | q/max max | q over | dead max/last | 1st max | srank"
)


def _fmt(x, digits: int = 0) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def seed_row(run_dir: Path, threshold: float | None) -> dict:
    s = read_series(run_dir)
    steps, returns = s.get("eval/return", (np.array([]), np.array([])))
    hits = [int(a) for a, b in zip(steps, returns, strict=True) if threshold is not None and b >= threshold]
    reached = hits[0] if hits else None
    dead = [s[k][1] for k in s if k.startswith("act_dead_frac/")]
    over = s.get("eval/q_overestimation")
    late = over[1][over[0] > over[0][-1] / 2] if over is not None and len(over[0]) else np.array([])
    ep_steps, ep_returns = s.get("episode/return", (np.array([]), np.array([])))
    best = ep_returns.max() if len(ep_returns) else None
    srank = s.get("features/srank")
    return {
        "returns": [float(r) for r in returns],
        "auc": area_under_curve(steps, returns) if len(returns) else None,
        "reached": reached,
        "final": float(returns[-1]) if len(returns) else None,
        "q_max": float(s["q/max"][1].max()) if "q/max" in s else None,
        "q_over_late": float(np.median(late)) if len(late) else None,
        "dead": (max(float(d.max()) for d in dead), max(float(d[-1]) for d in dead)) if dead else None,
        "first_max_episode": next(
            (int(a) for a, b in zip(ep_steps, ep_returns, strict=True) if b >= best), None
        ),
        "srank": (float(srank[1][0]), float(srank[1][-1])) if srank is not None else None,
    }


def arm_lines(arm: str, rows: dict[int, dict]) -> list[str]:
    lines = [f"== {arm}", COLUMNS]
    for seed, r in sorted(rows.items()):
        curve = " ".join(f"{x:.0f}" for x in r["returns"])
        dead = "-" if r["dead"] is None else f"{r['dead'][0]:.2f}/{r['dead'][1]:.2f}"
        srank = "-" if r["srank"] is None else f"{r['srank'][0]:.0f}/{r['srank'][1]:.0f}"
        lines.append(
            f"{seed} | {curve} | {_fmt(r['reached'])} | {_fmt(r['final'], 1)} | {_fmt(r['q_max'])} | "
            f"{_fmt(r['q_over_late'], 1)} | {dead} | {_fmt(r['first_max_episode'])} | {srank}"
        )
    finals = [r["final"] for r in rows.values() if r["final"] is not None]
    aucs = [r["auc"] for r in rows.values() if r["returns"]]
    top = max(finals) if finals else None
    final_mean = _fmt(float(np.mean(finals)) if finals else None, 1)
    auc_mean = _fmt(float(np.mean(aucs)) if aucs else None, 1)
    lines.append(
        f"reached {sum(r['reached'] is not None for r in rows.values())}/{len(rows)}; "
        f"final mean {final_mean}; "
        f"AUC mean {auc_mean}; final at the best final ({_fmt(top)}) on "
        f"{sum(f == top for f in finals)}"
    )
    return lines


def env_threshold(env_id: str) -> float | None:
    """gymnasium's reward threshold of `env_id` (None when it has none)."""
    import gymnasium as gym

    import dqnlab.envs  # noqa: F401  (registers the dqnlab/ ids)

    try:
        return gym.spec(env_id).reward_threshold
    except gym.error.Error:
        return None


def main(argv: list[str] | None = None) -> int:
    from dqnlab.config import ConfigError

    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("directory", help="an experiment (dqnlab ab / sweep) or one run directory")
    ap.add_argument(
        "--threshold", type=float, help="return to reach (default: the env's gymnasium threshold)"
    )
    args = ap.parse_args(argv)
    try:
        run_dirs, _ = load_run_dirs(args.directory)
    except ConfigError as e:
        ap.error(str(e))
    if not run_dirs:
        ap.error(f"no runs (run.json) under {args.directory}")
    arms: dict[str, dict[int, dict]] = {}
    for run_dir in run_dirs:
        res = read_run(run_dir)
        threshold = args.threshold if args.threshold is not None else env_threshold(res.env)
        arms.setdefault(f"{res.preset} on {res.env} (threshold {_fmt(threshold)})", {})[res.seed] = seed_row(
            run_dir, threshold
        )
    for arm, rows in arms.items():
        print("\n".join(arm_lines(arm, rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
