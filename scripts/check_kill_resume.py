"""Kill a run again and again, resume it each time, and check it ends bit for bit like an uninterrupted one.

    python scripts/check_kill_resume.py [--preset huber_relu] [--env ID] [--kills 15] [--steps 50000]
                                        [--checkpoint-every 1000] [--seed 0] [--set section.key=value ...]
                                        [--batch N]

Both runs use `--deterministic --checkpoint-replay`. The interrupted one gets SIGKILL `--kills` times:
each waits until the run has written a checkpoint newer than the one it resumed from; then every third
kill lands while the next checkpoint is being written (a `.staging-*` directory exists), the others a
random 0-0.3 s later. After each kill `dqnlab train ... --resume` continues it.
At the end every logged series (but the wall-clock `perf/` rates) and the final weights, target and
optimizer state must be identical. Prints one line per kill and the verdict; exit 0 when identical.
On Atari: `--preset pong_huber --steps 3000 --checkpoint-every 500 --set replay.capacity=3000 ...`.
With `--batch N` the run is a batch of N seeds (`dqnlab sweep PRESET --grid optimizer.epsilon=<the
preset's> --seeds N --batch-runs N`, seeds 0 to N - 1): each kill is a SIGKILL of the
batch's process, each resume `sweep ... --resume`, and every member must end identical to the
uninterrupted batch's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dqnlab import checkpoint
from dqnlab.cliargs import OneLineParser, int_at_least
from dqnlab.config import ConfigError, check_env_fits, load_preset
from dqnlab.events import read_series
from dqnlab.rundir import run_dir_for


def train_command(args, logdir: Path, name: str) -> list[str]:
    cmd = [sys.executable, "-m", "dqnlab.cli"]
    if args.batch:  # one sweep cell (the preset's own epsilon), N seeds, one batch
        epsilon = load_preset(args.preset, args.overrides).optimizer.epsilon
        cmd += ["sweep", args.preset, "--grid", f"optimizer.epsilon={epsilon!r}", "--seeds", str(args.batch)]
        cmd += ["--batch-runs", str(args.batch), "--workers", "1"]
    else:
        cmd += ["train", args.preset, "--seed", str(args.seed)]
    cmd += ["--steps", str(args.steps), "--quiet", "--deterministic", "--checkpoint-replay"]
    cmd += ["--checkpoint-every", str(args.checkpoint_every), "--logdir", str(logdir), "--name", name]
    cmd += ["--env", args.env] if args.env else []
    for override in args.overrides:
        cmd += ["--set", override]
    return cmd


def saving(runs: list[Path]) -> bool:
    """A checkpoint save is under way in one of the runs (a `.staging-*` directory exists)."""
    roots = [run / checkpoint.CHECKPOINTS for run in runs]
    return any(p.name.startswith(".staging-") for root in roots if root.is_dir() for p in root.iterdir())


def kill_once(cmd: list[str], runs: list[Path], during_save: bool, rng: random.Random) -> str | None:
    """Start (or resume) the run (or batch: `runs` its members) and SIGKILL it once it has made progress (a
    checkpoint of its first run newer than the one it started from): at once when a save is under way in
    any run, or after a random fraction of a second. Returns what happened, or None when it finished
    first. A batch's process is the one killed (run.json's `pid`), and its runner records it."""
    before = checkpoint.latest_step(runs[0]) or 0
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and (checkpoint.latest_step(runs[0]) or 0) <= before:
        time.sleep(0.01)
    delay = rng.uniform(0.0, 0.3)
    until = time.monotonic() + (10.0 if during_save else delay)
    while proc.poll() is None and time.monotonic() < until:
        if during_save and saving(runs):
            break
        time.sleep(0.001)
    if proc.poll() is not None:
        if proc.returncode != 0:
            raise SystemExit(f"check_kill_resume.py: the run exited {proc.returncode}: {proc.stderr.read()}")
        return None
    if len(runs) == 1:
        proc.send_signal(signal.SIGKILL)
    else:
        os.kill(json.loads((runs[0] / "run.json").read_text())["pid"], signal.SIGKILL)
    in_save = saving(runs)
    proc.wait()
    where = "inside a checkpoint save" if in_save else f"{delay:.2f} s after a checkpoint"
    newest = ", ".join(f"{checkpoint.latest_step(run):,}" for run in runs)
    return f"killed {where}; newest whole checkpoint: step {newest}"


def same_run(whole: Path, cut: Path) -> list[str]:
    """What differs between the two runs (empty: bit-identical)."""
    a = {t: v for t, (_, v) in read_series(whole).items() if not t.startswith("perf/")}
    b = {t: v for t, (_, v) in read_series(cut).items() if not t.startswith("perf/")}
    problems = [f"tags differ: {sorted(a.keys() ^ b.keys())}"] if a.keys() != b.keys() else []
    problems += [f"{t}: values differ" for t in sorted(a.keys() & b.keys()) if not np.array_equal(a[t], b[t])]
    with (
        np.load(checkpoint.latest(whole) / "arrays.npz") as x,
        np.load(checkpoint.latest(cut) / "arrays.npz") as y,
    ):
        problems += [
            f"final {k} differs" for k in x.files if k not in y.files or not np.array_equal(x[k], y[k])
        ]
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="huber_relu", help="a name in agents/ or a path to a .toml preset")
    ap.add_argument("--env", help="gymnasium id (default: the preset's)")
    ap.add_argument("--kills", type=int_at_least(1), default=15)
    ap.add_argument("--steps", type=int_at_least(1), default=50_000)
    ap.add_argument("--checkpoint-every", type=int_at_least(1), default=1000)
    ap.add_argument("--seed", type=int_at_least(0), default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--keep", metavar="DIR", help="train into DIR (a new directory) and keep it, to look at")
    ap.add_argument(
        "--batch", type=int_at_least(2), metavar="N", help="a batch of seeds 0..N-1 (--batch-runs)"
    )
    args = ap.parse_args(argv)
    try:
        cfg = load_preset(args.preset, args.overrides)
        check_env_fits(cfg, args.env or cfg.env)
    except ConfigError as exc:
        ap.error(str(exc))
    if args.keep and Path(args.keep).exists():
        ap.error(f"--keep {args.keep}: already exists; give a new directory")
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        logdir = Path(args.keep or tmp)
        t0 = time.monotonic()
        if subprocess.run(train_command(args, logdir, "whole"), stdout=subprocess.DEVNULL).returncode != 0:
            return 1
        print(f"uninterrupted run: {time.monotonic() - t0:.0f} s", flush=True)
        whole = sorted((logdir / "whole").glob("*/*/seed_*/run.json"), key=str)
        arm = whole[0].parents[2].name  # the preset's name, or the sweep cell's
        seeds = range(args.batch) if args.batch else [args.seed]
        cuts = [run_dir_for(logdir, "cut", arm, args.env or cfg.env, seed) for seed in seeds]
        cut = cuts[0]
        kills = 0
        while kills < args.kills:
            resume = ["--resume"] if (cut / "run.json").is_file() else []
            what = kill_once(train_command(args, logdir, "cut") + resume, cuts, kills % 3 == 2, rng)
            if what is None:
                print(f"the run finished after {kills} kills: use more --steps for {args.kills}")
                break
            kills += 1
            print(f"kill {kills:2d}: {what}", flush=True)
        final = subprocess.run(train_command(args, logdir, "cut") + ["--resume"], stdout=subprocess.DEVNULL)
        problems = [] if final.returncode == 0 else [f"the last resume exited {final.returncode}"]
        for run, seed in zip(cuts, seeds, strict=True):
            info = json.loads((run / "run.json").read_text())
            leftover = [p.name for p in (run / checkpoint.CHECKPOINTS).iterdir() if p.name.startswith(".")]
            problems += [] if not leftover else [f"seed {seed}: staging left behind: {leftover}"]
            same = run_dir_for(logdir, "whole", arm, args.env or cfg.env, seed)
            problems += [f"seed {seed}: {problem}" for problem in same_run(same, run)]
            print(
                f"seed {seed}: {kills} kills, resumed from steps {info.get('resumed_from')}, {info['status']}"
            )
        for problem in problems:
            print(f"  DIFFERS: {problem}")
        print("identical to the uninterrupted run, bit for bit" if not problems else "NOT identical")
        return 0 if not problems and kills == args.kills else 1


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
