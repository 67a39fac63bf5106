"""What `--deterministic` costs: `dqnlab train` with and without it, same preset and seed, in one run.

    python scripts/bench_determinism.py [--steps 20000] [--repeats 3] [--preset huber_relu]

Each measurement is a fresh `dqnlab train` process (order alternated); the time is the run's own wall time
from run.json (TensorFlow start-up excluded). Prints the medians and their ratio, and whether the
deterministic reruns gave identical scalars.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from dqnlab.cliargs import OneLineParser, int_at_least
from dqnlab.config import ConfigError, check_env_fits, load_preset
from dqnlab.events import read_series


def train(logdir: Path, name: str, preset: str, steps: int, deterministic: bool) -> Path:
    cmd = [sys.executable, "-m", "dqnlab.cli", "train", preset, "--steps", str(steps), "--quiet"]
    cmd += ["--logdir", str(logdir), "--name", name] + (["--deterministic"] if deterministic else [])
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL)
    if done.returncode != 0:  # its own error is on stderr above
        raise SystemExit(f"bench_determinism.py: dqnlab train {preset} exited {done.returncode}")
    return next((logdir / name).rglob("run.json"))


def scalars(run_json: Path) -> dict:
    return {t: v.tolist() for t, (_, v) in read_series(run_json.parent).items() if not t.startswith("perf/")}


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int_at_least(1), default=20_000)
    ap.add_argument(
        "--repeats", type=int_at_least(1), default=3, help="runs each, with and without (2+ checks reruns)"
    )
    ap.add_argument("--preset", default="huber_relu", help="a name in agents/ or a path to a .toml preset")
    args = ap.parse_args(argv)
    try:  # an unknown preset or a missing env extra fails here, not in the first training process
        from dqnlab.runner import validate_env

        cfg = load_preset(args.preset)
        check_env_fits(cfg, cfg.env)
        validate_env(cfg.env)
    except ConfigError as exc:
        ap.error(str(exc))
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
    identical = all(r == det_runs[0] for r in det_runs[1:]) if len(det_runs) > 1 else None
    print(f"{args.preset}, {args.steps:,} env steps, {args.repeats} runs each:")
    print(f"  default: {off:.1f} s   --deterministic: {on:.1f} s   ratio {on / off:.2f}x")
    checked = identical if identical is not None else "not checked (one run; --repeats 2 or more)"
    print(f"  deterministic reruns identical (every scalar but perf/): {checked}")
    return 0 if identical is not False else 1


if __name__ == "__main__":
    sys.exit(main())
