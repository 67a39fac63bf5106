"""What `--deterministic` costs: `dqnlab train` with and without it, same preset and seed, in one run.

    python scripts/bench_determinism.py [--steps 20000] [--repeats 3] [--preset huber_relu]

Each measurement is a fresh `dqnlab train` process (order alternated); the time is the run's own wall time
from run.json (TensorFlow start-up excluded). Prints the medians and their ratio, and whether the
deterministic reruns gave identical scalars.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from dqnlab.events import read_series


def train(logdir: Path, name: str, preset: str, steps: int, deterministic: bool) -> Path:
    cmd = [sys.executable, "-m", "dqnlab.cli", "train", preset, "--steps", str(steps), "--quiet"]
    cmd += ["--logdir", str(logdir), "--name", name] + (["--deterministic"] if deterministic else [])
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return next((logdir / name).rglob("run.json"))


def scalars(run_json: Path) -> dict:
    return {t: v.tolist() for t, (_, v) in read_series(run_json.parent).items() if not t.startswith("perf/")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--preset", default="huber_relu")
    args = ap.parse_args(argv)
    times: dict[bool, list[float]] = {True: [], False: []}
    det_runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for det in (True, False) if i % 2 == 0 else (False, True):
                run_json = train(Path(tmp), f"r{i}-{det}", args.preset, args.steps, det)
                times[det].append(json.loads(run_json.read_text())["wall_time_s"])
                if det:
                    det_runs.append(scalars(run_json))
    on, off = statistics.median(times[True]), statistics.median(times[False])
    identical = all(r == det_runs[0] for r in det_runs[1:])
    print(f"{args.preset}, {args.steps:,} env steps, {args.repeats} runs each:")
    print(f"  default: {off:.1f} s   --deterministic: {on:.1f} s   ratio {on / off:.2f}x")
    print(f"  deterministic reruns identical (every scalar but perf/): {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
