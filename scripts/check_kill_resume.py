"""Kill a run again and again, resume it each time, and check it ends bit for bit like an uninterrupted one.

    python scripts/check_kill_resume.py [--preset huber_relu] [--env ID] [--kills 15] [--steps 50000]
                                        [--checkpoint-every 1000] [--seed 0] [--set section.key=value ...]

Both runs use `--deterministic --checkpoint-replay`. The interrupted one gets SIGKILL `--kills` times:
each waits until the run has written a checkpoint newer than the one it resumed from; then every third
kill lands while the next checkpoint is being written (a `.staging-*` directory exists), the others a
random 0-0.3 s later. After each kill `dqnlab train ... --resume` continues it.
At the end every logged series (but the wall-clock `perf/` rates) and the final weights, target and
optimizer state must be identical. Prints one line per kill and the verdict; exit 0 when identical.
On Atari: `--preset pong_huber --steps 3000 --checkpoint-every 500 --set replay.capacity=3000 ...`.
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
    cmd = [sys.executable, "-m", "dqnlab.cli", "train", args.preset, "--steps", str(args.steps), "--quiet"]
    cmd += ["--seed", str(args.seed), "--deterministic", "--checkpoint-replay"]
    cmd += ["--checkpoint-every", str(args.checkpoint_every), "--logdir", str(logdir), "--name", name]
    cmd += ["--env", args.env] if args.env else []
    for override in args.overrides:
        cmd += ["--set", override]
    return cmd


def kill_once(cmd: list[str], run: Path, during_save: bool, rng: random.Random) -> str | None:
    """Start (or resume) the run and SIGKILL it once it has made progress (a checkpoint newer than the one
    it started from): at once when a save is under way, or after a random fraction of a second. Returns
    what happened, or None when the run finished first."""
    before = checkpoint.latest_step(run) or 0
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root = run / checkpoint.CHECKPOINTS
    while proc.poll() is None and (checkpoint.latest_step(run) or 0) <= before:
        time.sleep(0.01)
    delay = rng.uniform(0.0, 0.3)
    until = time.monotonic() + (10.0 if during_save else delay)
    while proc.poll() is None and time.monotonic() < until:
        if during_save and root.is_dir() and any(p.name.startswith(".staging-") for p in root.iterdir()):
            break
        time.sleep(0.001)
    if proc.poll() is not None:
        if proc.returncode != 0:
            raise SystemExit(f"check_kill_resume.py: the run exited {proc.returncode}: {proc.stderr.read()}")
        return None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saving = root.is_dir() and any(p.name.startswith(".staging-") for p in root.iterdir())
    where = "inside a checkpoint save" if saving else f"{delay:.2f} s after a checkpoint"
    return f"killed {where}; newest whole checkpoint: step {checkpoint.latest_step(run):,}"


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
        cut = run_dir_for(logdir, "cut", cfg.name, args.env or cfg.env, args.seed)
        kills = 0
        while kills < args.kills:
            resume = ["--resume"] if (cut / "run.json").is_file() else []
            what = kill_once(train_command(args, logdir, "cut") + resume, cut, kills % 3 == 2, rng)
            if what is None:
                print(f"the run finished after {kills} kills: use more --steps for {args.kills}")
                break
            kills += 1
            print(f"kill {kills:2d}: {what}", flush=True)
        final = subprocess.run(train_command(args, logdir, "cut") + ["--resume"], stdout=subprocess.DEVNULL)
        info = json.loads((cut / "run.json").read_text())
        leftover = [p.name for p in (cut / checkpoint.CHECKPOINTS).iterdir() if p.name.startswith(".")]
        problems = [] if final.returncode == 0 else [f"the last resume exited {final.returncode}"]
        problems += [] if not leftover else [f"staging left behind: {leftover}"]
        problems += same_run(run_dir_for(logdir, "whole", cfg.name, args.env or cfg.env, args.seed), cut)
        print(f"{kills} kills, resumed from steps {info.get('resumed_from')}, status {info['status']}")
        for problem in problems:
            print(f"  DIFFERS: {problem}")
        print("identical to the uninterrupted run, bit for bit" if not problems else "NOT identical")
        return 0 if not problems and kills == args.kills else 1


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
