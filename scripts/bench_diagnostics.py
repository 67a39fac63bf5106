"""What the diagnostics cost, measured in one run.

    python scripts/bench_diagnostics.py [--steps 50000] [--repeats 2] [--calls 300]

1. The every-step panel (all core and update-health metrics of a measured update, pulled to the host)
   against a bare update, per call, for a 64-64 MLP at batch 64 (target <= 1.15x).
2. The full panel on its default schedule (huber_relu: one measured update per 128, probes and histograms
   every 2,560) against diagnostics off, for the whole training loop (target <= 1.05x), each run in a fresh
   single-threaded process, order alternated, medians.
"""

from __future__ import annotations

import argparse
import sys

from dqnlab import bench


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50_000, help="env steps per whole-loop measurement")
    ap.add_argument("--repeats", type=int, default=2, help="whole-loop measurements per arm")
    ap.add_argument(
        "--calls", type=int, default=300, help="update calls per round in the per-call measurement"
    )
    args = ap.parse_args(argv)

    per_call = bench.update_call_costs(hidden=(64, 64), batch_size=64, calls=args.calls)
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    log(
        f"per-call: {per_call['panel_s'] * 1e3:.3f} ms with the panel, {per_call['bare_s'] * 1e3:.3f} ms bare"
    )
    jobs = [("dqnlab", True), ("dqnlab", False)]
    results = bench.run_schedule(jobs, ["sb3_zoo"], args.steps, args.repeats, seed=0, log=log)
    med = bench.medians(results)
    on, off = (
        med[("sb3_zoo", bench.job_label("dqnlab", True))],
        med[("sb3_zoo", bench.job_label("dqnlab", False))],
    )
    print(bench.machine_line(bench.machine_info(("dqnlab",))))
    print(
        bench.format_table(
            ["measurement", "with diagnostics", "without", "cost ratio", "target", "met"],
            [
                [
                    "one update call, 64-64 MLP, batch 64",
                    f"{per_call['panel_s'] * 1e3:.3f} ms",
                    f"{per_call['bare_s'] * 1e3:.3f} ms",
                    f"{per_call['ratio']:.3f}",
                    "<= 1.15",
                    "yes" if per_call["ratio"] <= 1.15 else "NO",
                ],
                [
                    f"whole loop, huber_relu default schedule, {args.steps:,} steps",
                    f"{on:,.0f} steps/s",
                    f"{off:,.0f} steps/s",
                    f"{off / on:.3f}",
                    "<= 1.05",
                    "yes" if off / on <= 1.05 else "NO",
                ],
            ],
        )
    )
    print(bench.spread_note(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
