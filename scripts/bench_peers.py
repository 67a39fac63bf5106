"""dqnlab vs Stable-Baselines3 DQN: env steps per second at public DQN settings (scripts/bench.py), same run.

    python scripts/bench_peers.py [--steps 50000] [--repeats 2] [--settings NAMES] [--json FILE]

Settings (scripts/bench.py): `sb3_cleanrl_like` (SB3 with CleanRL's 120-84 ReLU MLP, batch 128, one update
every 10 env steps, target sync every 500; not CleanRL's own defaults, which SB3 cannot run) and `sb3_zoo`
(256-256, batch 64, 128 gradient steps every 256 env steps, target every 10) on CartPole by default;
`--settings lunar_zoo` (LunarLander, box2d extra) and `--settings pong_zoo`
(Pong on the Nature CNN, atari extra) add the others. Every measurement runs in its own fresh subprocess
(TensorFlow and torch never share a process) with one thread per framework; the order alternates between
repeats and the median per framework is reported.
Prints env steps/s for dqnlab with diagnostics on and off and for SB3, and the ratios dqnlab diag-on / SB3
(target >= 2) and dqnlab diag-on / diag-off (target >= 1/1.15, i.e. diagnostics cost <= 15%).

Stable-Baselines3 and torch are benchmark-only dependencies, never runtime ones. Install a CPU torch
first, then the `bench` extra:

    pip install torch==2.13.0        # a CPU build here; elsewhere use PyTorch's CPU wheel index
    pip install -e '.[bench]'        # stable-baselines3>=2.3

Exit status: 0 after printing the results (whether or not the targets are met), 2 when SB3 is missing.
"""

from __future__ import annotations

import sys
import time

import bench

from dqnlab.cliargs import OneLineParser

JOBS = [("dqnlab", True), ("sb3", None), ("dqnlab", False)]


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    args, settings = bench.parse_bench_args(ap, argv, sb3=True)
    if not bench.sb3_available():
        print(f"bench_peers.py: {bench.SB3_INSTALL_HINT}", file=sys.stderr)
        return 2

    info = bench.machine_info()
    start = time.perf_counter()
    results = bench.run_schedule(
        JOBS, settings, args.steps, args.repeats, seed=args.seed, log=lambda m: print(m, file=sys.stderr)
    )
    wall = time.perf_counter() - start
    med = bench.medians(results)

    rows, summary = [], {}
    for s in settings:
        on, off, sb3 = med[(s, "dqnlab diag-on")], med[(s, "dqnlab diag-off")], med[(s, "SB3")]
        summary[s] = {"dqnlab_diag_on": on, "dqnlab_diag_off": off, "sb3": sb3}
        summary[s].update(on_over_sb3=on / sb3, on_over_off=on / off)
        rows.append(
            [s, f"{on:,.0f}", f"{off:,.0f}", f"{sb3:,.0f}", f"{on / sb3:.2f}x", f"{on / off:.3f}",
             "yes" if on / sb3 >= 2 and off / on <= 1.15 else "NO"]
        )  # fmt: skip
    print(
        f"dqnlab vs Stable-Baselines3 DQN: {args.steps:,} env steps per measurement, "
        f"median of {args.repeats} (order alternated), seed {args.seed}"
    )
    print(bench.machine_line(info))
    print(bench.TIMED_NOTE)
    print()
    header = ["setting", "dqnlab diag-on", "dqnlab diag-off", "SB3", "on/SB3 (>=2)", "on/off (>=0.87)", "met"]
    print(bench.format_table(header, rows) + "\n")
    bench.finish_report(results, wall, args, info, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
