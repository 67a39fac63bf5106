"""What the diagnostics cost, measured in one run.

    python scripts/bench_diagnostics.py [--steps 50000] [--repeats 2] [--calls 40] [--rounds 40]

1. The every-step panel (all core and update-health metrics of a measured update, pulled to the host)
   against a bare update, per call, for a 64-64 MLP at batch 64 (target <= 1.15x); for information, the
   same at 256-256 (the shipped presets' network), and per measured burst of 128 updates (their schedule:
   every update's burst statistics, the panel on one). The arms alternate in rounds; the ratio is the
   median of the rounds' own ratios.
2. The full panel on its default schedule (huber_relu: every burst of 128 updates measured, probes and
   histograms every 2,560) against diagnostics off, for the whole training loop (target <= 1.05x), each
   run in a fresh single-threaded process, order alternated, medians.
"""

from __future__ import annotations

import sys

import bench

from dqnlab.cliargs import OneLineParser, int_at_least


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    positive = int_at_least(1)
    ap.add_argument("--steps", type=positive, default=50_000, help="env steps per whole-loop measurement")
    ap.add_argument("--repeats", type=positive, default=2, help="whole-loop measurements per arm")
    ap.add_argument(
        "--calls",
        type=positive,
        default=40,
        help="update calls per arm and round in the per-call measurement",
    )
    ap.add_argument("--rounds", type=positive, default=40, help="rounds of the per-call measurement")
    args = ap.parse_args(argv)

    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    calls = {
        "one update call, 64-64 MLP, batch 64": ((64, 64), 1, args.calls, 1.15),
        "one update call, 256-256 MLP, batch 64": ((256, 256), 1, max(args.calls // 2, 1), None),
        "one measured burst of 128 updates, 256-256": ((256, 256), 128, max(args.calls // 20, 1), None),
    }
    per_call = {}
    for label, (hidden, updates, n, _) in calls.items():
        per_call[label] = bench.update_call_costs(
            hidden, batch_size=64, calls=n, updates_per_call=updates, rounds=args.rounds
        )
        on_ms, off_ms = per_call[label]["panel_s"] * 1e3, per_call[label]["bare_s"] * 1e3
        log(f"{label}: {on_ms:.3f} ms with the panel, {off_ms:.3f} ms bare")
    jobs = [("dqnlab", True), ("dqnlab", False)]
    results = bench.run_schedule(jobs, ["sb3_zoo"], args.steps, args.repeats, seed=0, log=log)
    med = bench.medians(results)
    on, off = (
        med[("sb3_zoo", bench.job_label("dqnlab", True))],
        med[("sb3_zoo", bench.job_label("dqnlab", False))],
    )
    info = bench.machine_info(("dqnlab",))
    info["threads"] = f"per call: this process, TF intra-op=1 inter-op=1; whole loop: {info['threads']}"
    print(bench.machine_line(info))
    print(
        bench.format_table(
            ["measurement", "with diagnostics", "without", "cost ratio", "target", "met"],
            [
                *(
                    [
                        label,
                        f"{per_call[label]['panel_s'] * 1e3:.3f} ms",
                        f"{per_call[label]['bare_s'] * 1e3:.3f} ms",
                        f"{per_call[label]['ratio']:.3f}",
                        f"<= {target}" if target else "-",
                        ("yes" if per_call[label]["ratio"] <= target else "NO") if target else "-",
                    ]
                    for label, (*_, target) in calls.items()
                ),
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
