"""Where the whole loop's cost of diagnostics goes: the seconds each part takes, diagnostics on and off.

    taskset -c 0 python scripts/bench_loop_parts.py [--pairs 4] [--steps 50000]

scripts/bench_diagnostics.py measures the whole loop's ratio (target <= 1.05x). This script runs the same
50k-step `sb3_zoo` training (huber_relu, 256-256, bursts of 128 updates) with diagnostics on and off, each
in a fresh single-threaded process, the order alternated, and times inside the process what each part of
a run spends: tracing the burst, its first call and the later ones, the probe's first call and the later
ones, writing the metrics, the live doctor. Medians over `--pairs`; the last column is what diagnostics
add to each. The timers cost ~1 us a call, the same in both arms.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict

import bench

from dqnlab.cliargs import OneLineParser, int_at_least

_MARKER = "LOOP_PARTS "


def _timed(cls, name: str, seconds: dict, calls: dict, label: str, first_apart: bool = False) -> None:
    """Wrap `cls.name` to add its seconds to `seconds[label]` (its first call to `label + ' (first)'`)."""
    method = getattr(cls, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            first = first_apart and calls[label] == 0
            calls[label] += 1
            seconds[f"{label} (first)" if first else label] += time.perf_counter() - start

    setattr(cls, name, timed)


def _measure(spec: dict) -> dict[str, float]:
    """One training run in this process, its parts timed."""
    bench.limit_tf_to_one_thread()
    import dqnlab.trainer  # noqa: F401  (the imports before anything is timed)
    from dqnlab import doctor, learner, summaries

    seconds: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    _timed(learner.Learner, "_compile", seconds, calls, "burst: trace")
    _timed(learner.Learner, "update", seconds, calls, "burst: calls", first_apart=True)
    _timed(learner.Learner, "probe", seconds, calls, "probe: calls", first_apart=True)
    _timed(summaries.Summaries, "metrics", seconds, calls, "metrics written (histograms too)")
    _timed(doctor.LiveDoctor, "maybe_check", seconds, calls, "live doctor")
    with tempfile.TemporaryDirectory() as logdir:
        start = time.perf_counter()
        bench.dqnlab_steps_per_s("sb3_zoo", spec["steps"], spec["diagnostics"], logdir=logdir)
        seconds["whole run"] = time.perf_counter() - start
    # The burst's first call includes its trace: shown apart.
    seconds["burst: calls (first)"] -= seconds["burst: trace"]
    return dict(seconds)


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int_at_least(1), default=4, help="runs per arm, alternated")
    ap.add_argument("--steps", type=int_at_least(1_000), default=50_000, help="env steps per run")
    args = ap.parse_args(argv)
    runs: dict[bool, list[dict]] = {True: [], False: []}
    for pair in range(args.pairs):
        for diagnostics in (True, False) if pair % 2 == 0 else (False, True):
            spec = {"diagnostics": diagnostics, "steps": args.steps}
            runs[diagnostics].append(bench.run_child(__file__, "--child", spec, _MARKER, "a timed run"))
            print(f"[{pair + 1}/{args.pairs}] diagnostics {'on' if diagnostics else 'off'}", file=sys.stderr)
    parts = sorted({part for run in runs[True] + runs[False] for part in run}, key=lambda p: p == "whole run")
    rows = []
    for part in parts:
        on, off = (statistics.median(run.get(part, 0.0) for run in runs[arm]) for arm in (True, False))
        rows.append([part, f"{on:.3f} s", f"{off:.3f} s", f"{on - off:+.3f} s"])
    print(bench.machine_line(bench.machine_info(("dqnlab",))))
    print(f"{args.steps:,}-step sb3_zoo runs, medians of {args.pairs} per arm")
    print(bench.format_table(["part", "diagnostics on", "off", "difference"], rows))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(_MARKER + json.dumps(_measure(json.loads(sys.argv[2]))), flush=True)
    else:
        sys.exit(main())
