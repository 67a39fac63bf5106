"""The Atari A/B: the 2016 clipped-delta loss against Huber, on Pong with the Nature DQN CNN.

    python scripts/atari_ab.py                          # 2 arms x 3 seeds x 2M env steps: a GPU machine
    python scripts/atari_ab.py --seeds 1 --steps 20000  # a smoke run of the whole path
    python scripts/atari_ab.py --device gpu --workers 2
    python scripts/atari_ab.py --throughput             # env steps/s of pong_huber here, by phase

Arms: pong_clipped_delta and pong_huber, identical except [loss]. Needs the atari extra
(`pip install -e ".[atari]"`). The default budget, 2M env steps (8M frames), is about where published DQN
curves first move Pong's return off -21; at the CPU throughput measured in docs/atari.md that is about
5.5 hours per run on one free core (17 hours for the six runs on 2 cores), so it is meant for a GPU
machine. Read td/grad_blocked_frac and the conv_* panels in TensorBoard; `dqnlab compare` prints the
table; the script then prints each run's first and last greedy eval return. Extra arguments are passed
to `dqnlab ab` as they are.

`--throughput [STEPS]` trains pong_huber in this process on one TensorFlow thread, as each `ab` worker
runs (TF_NUM_INTRAOP_THREADS=2 TF_NUM_INTEROP_THREADS=2 measures two), learning from env step 5,000 with
epsilon at its final 0.01 from then on (the greedy policy runs on 99% of steps, as for most of a real run).
It prints env steps/s of the acting-only phase and of the learning phase, per wall second and per CPU
second of this process (the second is what the run gets on an otherwise idle core).
"""

import os
import shlex
import sys
import time
from pathlib import Path

from dqnlab.cli import build_parser, main
from dqnlab.cliargs import EXIT_BAD_INPUT, one_line
from dqnlab.rundir import default_experiment_name

ARMS = ["pong_clipped_delta", "pong_huber"]
THROUGHPUT_STEPS, THROUGHPUT_LEARNING_STARTS = 15_000, 5_000


def report_learning(name: str, logdir: str) -> None:
    """Each run's greedy eval returns, first and last: did the arm move Pong's score?"""
    from dqnlab.rundir import read_run

    print("\neval/return (the game score, greedy), first -> last evaluation:")
    for run_json in sorted((Path(logdir) / name).glob("*/*/seed_*/run.json")):
        res = read_run(run_json.parent)
        history = res.final.get("eval_history") or []
        if history:
            (s0, r0), (s1, r1) = history[0], history[-1]
            verdict = "improved" if r1 > r0 else "not improved"
            print(f"  {res.preset} seed {res.seed}: {r0:+.1f} at {s0:,} -> {r1:+.1f} at {s1:,} env steps "
                  f"({verdict}; {res.status})")  # fmt: skip


def throughput(steps: int, learning_starts: int = THROUGHPUT_LEARNING_STARTS) -> None:
    for key in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):  # set them to measure other counts
        os.environ.setdefault(key, "1")
    from dqnlab.config import load_preset
    from dqnlab.envs import make_env
    from dqnlab.kinds import learner_and_replay, make_sampler
    from dqnlab.loop import EpisodeEnd, Schedule, Updated, run_loop

    cfg = load_preset(
        "pong_huber",
        {"train.learning_starts": learning_starts, "train.epsilon_decay_steps": learning_starts},
    )
    env = make_env(cfg.env, seed=0, atari=cfg.atari)
    learner, replay = learner_and_replay(cfg, env, seed=0)
    d = cfg.diagnostics
    eval_env = make_env(cfg.env, atari=cfg.atari, evaluation=True)
    schedule = Schedule(measure_every=d.every, probe_every=d.probe_every, probe_size=d.probe_size)
    sampler = make_sampler(cfg, replay)
    events = run_loop(env, eval_env, learner, sampler, cfg.train, schedule, steps=steps, seed=0)
    start = (0, time.perf_counter(), time.process_time())
    acted = learned = None  # the last episode end before learning; the second burst (graphs traced)
    bursts = 0
    for event in events:
        now = (event.step, time.perf_counter(), time.process_time())
        if isinstance(event, EpisodeEnd) and event.step < learning_starts:
            acted = now
        elif isinstance(event, Updated):
            bursts += 1
            learned = learned if bursts != 2 else now
            if event.step >= steps - cfg.train.train_every:
                end = now
                break  # before the final greedy evaluation
    (s0, w0, c0), (s1, w1, c1), (s2, w2, c2) = start, acted, end
    s3, w3, c3 = learned
    print(f"acting only (epsilon 1, no updates), {s1 - s0} steps: "
          f"{(s1 - s0) / (w1 - w0):.0f} steps/s wall, {(s1 - s0) / (c1 - c0):.0f} per CPU s")  # fmt: skip
    print(f"learning (epsilon 0.01, 1 update / 4 steps, diagnostics on), {s2 - s3} steps: "
          f"{(s2 - s3) / (w2 - w3):.1f} steps/s wall, {(s2 - s3) / (c2 - c3):.1f} per CPU s")  # fmt: skip


def throughput_steps(args: list[str]) -> int:
    """The STEPS of `--throughput [STEPS]` (the whole command line): exits 2 with one line if malformed."""
    value = args[0].partition("=")[2] or (args[1] if len(args) > 1 else str(THROUGHPUT_STEPS))
    extra = args[1:] if "=" in args[0] else args[2:]
    low = THROUGHPUT_LEARNING_STARTS + 1_000
    try:
        if extra:
            raise ValueError(f"--throughput takes one STEPS argument, then nothing: got {shlex.join(extra)}")
        steps = int(value)
        if steps < low:
            raise ValueError(
                f"--throughput: STEPS must be >= {low:,} (learning starts at env step "
                f"{THROUGHPUT_LEARNING_STARTS:,})"
            )
    except ValueError as exc:
        msg = str(exc) if "--throughput" in str(exc) else f"--throughput: expected an integer, got {value!r}"
        print(f"atari_ab.py: error: {one_line(msg)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    try:  # a missing atari extra is one line too, before TensorFlow is imported
        from dqnlab.config import ConfigError, load_preset
        from dqnlab.runner import validate_env

        validate_env(load_preset("pong_huber").env)
    except ConfigError as exc:
        print(f"atari_ab.py: error: {one_line(str(exc))}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    return steps


if __name__ == "__main__":
    extra = sys.argv[1:]
    if extra[:1] == ["--throughput"] or extra[:1] and extra[0].startswith("--throughput="):
        throughput(throughput_steps(extra))
        sys.exit(0)
    seeds = [] if "--seeds" in extra else ["--seeds", "3"]
    steps = [] if "--steps" in extra else ["--steps", "2000000"]
    name = [] if "--name" in extra else ["--name", default_experiment_name()]
    argv = ["ab", *ARMS, *seeds, *steps, *name, *extra]
    status = main(argv)
    if status == EXIT_BAD_INPUT:  # bad input: dqnlab said so in one line, and nothing ran
        sys.exit(status)
    args = build_parser().parse_args(argv)  # the name and logdir dqnlab used, however they were spelled
    report_learning(args.name, args.logdir)
    sys.exit(status)
