"""dqnlab's env steps per second with diagnostics on and off, at public DQN settings (scripts/bench.py).

    python scripts/bench_throughput.py [--steps 50000] [--repeats 2] [--settings NAMES] [--json FILE]

Measures the full loop (acting, replay, update bursts, TensorBoard summaries) with the gradient
diagnostics on, and the same with them off, in the same run: each measurement in its own fresh
subprocess with one TensorFlow thread (intra-op = inter-op = 1, OMP/OPENBLAS/MKL_NUM_THREADS=1), the
order alternating between repeats, medians reported. The ratio diag-off / diag-on is what diagnostics
cost (target <= 1.15). Settings (scripts/bench.py): `sb3_cleanrl_like` (120-84 ReLU MLP, batch 128, one
update every 10 env steps, target sync every 500, learning from step 1,000) and `sb3_zoo` (256-256, batch 64,
128 gradient steps every 256 env steps, target every 10) by default; `--settings cleanrl` is CleanRL
dqn.py's own defaults (learning from step 10,000, MSE, no clipping). The comparison with Stable-Baselines3
is scripts/bench_peers.py.
"""

from __future__ import annotations

import sys
import time

import bench

from dqnlab.cliargs import OneLineParser

JOBS = [("dqnlab", True), ("dqnlab", False)]


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    args, settings = bench.parse_bench_args(ap, argv)

    info = bench.machine_info(frameworks=("dqnlab",))
    start = time.perf_counter()
    results = bench.run_schedule(
        JOBS, settings, args.steps, args.repeats, seed=args.seed, log=lambda m: print(m, file=sys.stderr)
    )
    wall = time.perf_counter() - start
    med = bench.medians(results)

    rows, summary = [], {}
    for s in settings:
        on, off = med[(s, "dqnlab diag-on")], med[(s, "dqnlab diag-off")]
        summary[s] = {"dqnlab_diag_on": on, "dqnlab_diag_off": off, "off_over_on": off / on}
        rows.append([s, f"{on:,.0f}", f"{off:,.0f}", f"{off / on:.3f}", "yes" if off / on <= 1.15 else "NO"])
    print(
        f"dqnlab throughput: {args.steps:,} env steps per measurement, "
        f"median of {args.repeats} (order alternated), seed {args.seed}"
    )
    print(bench.machine_line(info))
    print(bench.TIMED_NOTE.split(";")[0])
    print()
    header = ["setting", "diag-on", "diag-off", "off/on = diagnostics cost (<=1.15)", "met"]
    print(bench.format_table(header, rows) + "\n")
    bench.finish_report(results, wall, args, info, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
