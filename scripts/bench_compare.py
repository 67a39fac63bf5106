"""How fast `dqnlab compare` and `dqnlab doctor` answer on 3 arms x 5 seeds x 100k env steps (target < 5 s).

    python scripts/bench_compare.py                       # trains one 100k-step huber_relu run first (~2 min)
    python scripts/bench_compare.py --source RUN_DIR      # or clones an existing run

The experiment is built by cloning one real run's event files 15 times (the reading cost depends on the
files, not on what is in them). Measured in this run, each in a fresh process:
1. `dqnlab compare EXP` with stale aggregates (it rewrites the three `_aggregate/` runs), then again with
   fresh ones (the usual case: `dqnlab ab` keeps them current), both the whole command as a user runs it;
2. `dqnlab doctor EXP` (every rule on every run);
3. reading every scalar of the 15 runs with dqnlab.events against TensorBoard's EventAccumulator, the
   baseline way to read event files; the ratio is printed.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dqnlab.cliargs import OneLineParser, int_at_least

ARMS = ("clipped_delta_relu", "huber_relu", "squared_relu")
TARGET_S = 5.0


def train_source(workdir: Path, steps: int) -> Path:
    cmd = [sys.executable, "-m", "dqnlab.cli", "train", "huber_relu", "--steps", str(steps)]
    done = subprocess.run([*cmd, "--logdir", str(workdir), "--name", "source", "--quiet"])
    if done.returncode != 0:  # its own error is on stderr above
        raise SystemExit(f"bench_compare.py: dqnlab train huber_relu exited {done.returncode}")
    return next((workdir / "source").rglob("run.json")).parent


def source_problem(source: Path) -> str | None:
    """Why `source` is not a run directory to clone (no run.json, unreadable, no event files), or None."""
    if not source.is_dir():
        return f"--source {source}: {'not a directory' if source.exists() else 'no such directory'}"
    try:
        info = json.loads((source / "run.json").read_text())
    except FileNotFoundError:
        return f"--source {source}: no run.json there (expected a run directory, .../seed_<k>/)"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"--source {source}: cannot read its run.json: {exc}"
    if not isinstance(info, dict):
        return f"--source {source}: its run.json is not a JSON object"
    if not any(source.glob("events.out.tfevents.*")):
        return f"--source {source}: no TensorBoard event files there"
    return None


def build_experiment(source: Path, exp: Path, seeds: int) -> None:
    info = json.loads((source / "run.json").read_text())
    for arm in ARMS:
        for seed in range(seeds):
            run = exp / arm / "CartPole-v1" / f"seed_{seed}"
            shutil.copytree(source, run, ignore=shutil.ignore_patterns("checkpoints"))
            (run / "run.json").write_text(json.dumps({**info, "preset": arm, "seed": seed}))
    (exp / "experiment.json").write_text(json.dumps({"presets": list(ARMS)}))


def time_command(args: list[str], ok=(0,)) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dqnlab.cli", *args], stdout=subprocess.DEVNULL)
    if done.returncode not in ok:
        raise SystemExit(f"dqnlab {' '.join(args)} exited {done.returncode}")
    return time.perf_counter() - start


READ_CODE = """
import sys, time
from pathlib import Path
from dqnlab.rundir import find_runs
runs = find_runs(sys.argv[2])
start = time.perf_counter()
if sys.argv[1] == "dqnlab":
    from dqnlab.events import read_series
    n = sum(v.size for run in runs for _, v in read_series(run).values())
else:
    from dqnlab.events import tensorboard_without_tensorflow
    tensorboard_without_tensorflow()
    from tensorboard.backend.event_processing import event_accumulator as ea
    n = 0
    for run in runs:
        acc = ea.EventAccumulator(str(run), size_guidance={ea.TENSORS: 0, ea.SCALARS: 0, ea.HISTOGRAMS: 1})
        acc.Reload()
        n += sum(len(acc.Tensors(t)) for t in acc.Tags()["tensors"] if not t.startswith("hist/"))
print(time.perf_counter() - start, n)
"""


def time_reader(reader: str, exp: Path) -> tuple[float, int]:
    out = subprocess.run([sys.executable, "-c", READ_CODE, reader, str(exp)], check=True, capture_output=True)
    seconds, values = out.stdout.split()
    return float(seconds), int(values)


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    positive = int_at_least(1)
    ap.add_argument("--source", type=Path, help="a run directory to clone (default: train one)")
    ap.add_argument("--steps", type=positive, default=100_000, help="env steps of the trained source run")
    ap.add_argument("--seeds", type=positive, default=5)
    ap.add_argument(
        "--repeats", type=positive, default=3, help="timings per measurement (the median is shown)"
    )
    args = ap.parse_args(argv)
    if args.source is not None and (problem := source_problem(args.source)):
        ap.error(problem)
    with tempfile.TemporaryDirectory(prefix="bench_compare_") as tmp:
        tmp = Path(tmp)
        source = args.source or train_source(tmp, args.steps)
        exp = tmp / "exp"
        build_experiment(source, exp, args.seeds)
        mb = sum(p.stat().st_size for p in exp.rglob("events.out.tfevents.*")) / 2**20
        runs = len(ARMS) * args.seeds
        stale, fresh = [], []
        for _ in range(args.repeats):
            shutil.rmtree(exp / "_aggregate", ignore_errors=True)
            stale.append(time_command(["compare", str(exp)]))
            fresh.append(time_command(["compare", str(exp)]))
        doctor = [time_command(["doctor", str(exp)], ok=(0, 1)) for _ in range(args.repeats)]
        ours = [time_reader("dqnlab", exp) for _ in range(args.repeats)]
        theirs = [time_reader("tensorboard", exp) for _ in range(args.repeats)]
    ours_s, theirs_s = statistics.median(s for s, _ in ours), statistics.median(s for s, _ in theirs)
    print(f"experiment: {len(ARMS)} arms x {args.seeds} seeds, {runs} runs, {mb:.1f} MB of event files")
    print(f"dqnlab compare, aggregates fresh: {statistics.median(fresh):.2f} s (target < {TARGET_S:g} s)")
    print(f"dqnlab compare, aggregates stale (rewrites them): {statistics.median(stale):.2f} s")
    print(f"dqnlab doctor: {statistics.median(doctor):.2f} s (target < {TARGET_S:g} s)")
    print(f"reading every scalar ({ours[0][1]:,} values): dqnlab.events {ours_s:.2f} s, "
          f"TensorBoard EventAccumulator {theirs_s:.2f} s: {theirs_s / ours_s:.1f}x faster")  # fmt: skip
    return 0 if max(statistics.median(fresh), statistics.median(doctor)) < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
