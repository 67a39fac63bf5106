"""The short comparison table `dqnlab ab` prints when an experiment ends.

One row per (env, preset): runs done / total, final greedy eval return (mean +- std over seeds), the best
eval return, and the TD-gradient diagnostics that tell the headline A/B apart, averaged over each run's
measured updates and then over seeds. Read back from run.json and the event files, never from memory.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from dqnlab.rundir import find_runs, read_run

KEY_TAGS = ("td/grad_blocked_frac", "td/beyond_bound_frac")


def summarize(experiment_dir: str | Path) -> list[dict]:
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for run_dir in find_runs(experiment_dir):
        res = read_run(run_dir)
        groups[(res.env, res.preset)].append(res)
    rows = []
    for (env, preset), runs in groups.items():
        evals = [r.final["eval_return"] for r in runs if "eval_return" in r.final]
        bests = [r.final["best_eval_return"] for r in runs if "best_eval_return" in r.final]
        row = {
            "env": env,
            "preset": preset,
            "done": sum(r.status == "done" for r in runs),
            "runs": len(runs),
            "statuses": sorted({r.status for r in runs}),
            "eval_mean": float(np.mean(evals)) if evals else None,
            "eval_std": float(np.std(evals)) if evals else None,
            "best_eval_mean": float(np.mean(bests)) if bests else None,
        }
        for tag in KEY_TAGS:
            means = [np.mean([v for _, v in s]) for r in runs if (s := r.all_scalars().get(tag))]
            row[tag] = float(np.mean(means)) if means else None
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    header = ["env", "preset", "done", "final eval", "best eval", "blocked frac", "beyond bound"]
    body = []
    for r in rows:
        body.append(
            [
                r["env"],
                r["preset"],
                f"{r['done']}/{r['runs']}"
                + ("" if r["statuses"] == ["done"] else f" ({','.join(r['statuses'])})"),
                _pm(r["eval_mean"], r["eval_std"]),
                _num(r["best_eval_mean"], "{:.1f}"),
                _num(r["td/grad_blocked_frac"], "{:.3f}"),
                _num(r["td/beyond_bound_frac"], "{:.3f}"),
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    lines = [
        "  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
        for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _pm(mean: float | None, std: float | None) -> str:
    return "-" if mean is None else f"{mean:.1f} +- {std:.1f}"
