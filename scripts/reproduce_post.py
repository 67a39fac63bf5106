"""The post, reproduced: every backward-pass pathology next to its fix, measured, with a report.

    python scripts/reproduce_post.py                 # 4 A/Bs x 2 seeds, short budgets (~6 min on 2 cores)
    python scripts/reproduce_post.py --full          # 3 seeds x 50k env steps each (about an hour)
    python scripts/reproduce_post.py --out runs/post --seeds 3

Studies (scripts/reproduce.py): clipped-delta vs Huber; saturated sigmoid vs Glorot sigmoid vs ReLU; killed
ReLU vs healthy; vanilla RNN at spectral radius 3 vs the same clipped vs LSTM. Writes OUT/<study>/ (one
experiment each, readable by dqnlab compare/doctor/board), OUT/report.md and a self-contained
OUT/report.html. Exit status 0 when the doctor's verdict on every arm is the expected one, 1 otherwise.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from dqnlab.cliargs import OneLineParser, int_at_least, new_directory_problem
from dqnlab.rundir import default_experiment_name


def _fraction(text: str) -> float:
    """An argparse type: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="output folder (default: runs/post-<timestamp>); must not exist")
    ap.add_argument("--seeds", type=int_at_least(1), help="seeds per arm (default: 2, or 3 with --full)")
    ap.add_argument("--full", action="store_true", help="50k env steps per run instead of the short budgets")
    ap.add_argument("--workers", type=int_at_least(1), help="parallel processes (default: CPU count)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--scale", type=_fraction, default=1.0, help=argparse.SUPPRESS)  # tests: shrink budgets
    args = ap.parse_args(argv)
    out = args.out or Path("runs") / f"post-{default_experiment_name()}"
    if problem := new_directory_problem(out, "--out"):
        ap.error(problem)
    seeds = args.seeds or (3 if args.full else 2)
    from reproduce import collect, run_studies, write_report  # matplotlib and more: after the checks

    out.mkdir(parents=True)
    run_studies(out, seeds, args.full, args.workers, args.quiet, args.scale)
    results = collect(out)
    command = "python scripts/reproduce_post.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    md, page = write_report(out, results, command.strip())
    for r in results:
        print(f"{r.study.key}: doctor {'agrees with every arm' if r.doctor_agrees else 'DISAGREES'}")
    print(f"report: {page}  (and {md})")
    return 0 if all(r.doctor_agrees for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
