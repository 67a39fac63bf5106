"""Replay memory and sampling speed for Atari frame stacks: FrameReplay against the plain ReplayBuffer.

    python scripts/bench_replay.py [--transitions 1000000] [--batches 20000] [--repeats 3] [--json FILE]

Memory is measured, not estimated: the resident-set growth of this process (VmRSS in /proc/self/status)
from before the FrameReplay is built to after it is filled with (4, 84, 84) uint8 stacks in episodes of
500-1,500 steps, ended by termination or truncation at random. Filling goes on until every frame row and
every transition slot has been written once, so every page is resident: the steady state of a long run.
Bar: <= 7.5 GB for 1M transitions, 7,500 B per transition (the frames alone are 7,056 B).

Speed: batches of 32 per second, median of `--repeats` timings of `--batches` calls each, single thread, for
`sample` (obs and next_obs, 8 frames per transition), `sample_frames` (5 frames), `sample_frames` into a
reused `out` array, and, as the baseline, `ReplayBuffer.sample` holding whole stacked obs and next_obs at
`--baseline-capacity` transitions (the FrameReplay is freed first, so the two never share memory).
Bar: >= 10,000 batches/s, checked for each sampler.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import bench
import numpy as np

from dqnlab.cliargs import SEED, OneLineParser, int_at_least, output_file_problem
from dqnlab.frame_replay import FrameReplay
from dqnlab.replay import ReplayBuffer

OBS_SHAPE = (4, 84, 84)
BATCH = 32
BAR_BYTES = 7_500  # per transition: 7.5 GB per 1M
BAR_BATCHES_PER_S = 10_000
POOL = 4_096  # random frames generated once; episodes are windows into them (no RNG call per frame)
EPISODE = (500, 1_500)  # steps per episode, uniform


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def total_gb() -> float:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) * 1024 / 1e9  # MemTotal is the first line


def fill(buf, pool: np.ndarray, rng: np.random.Generator, transitions: int, frames: int) -> tuple[int, int]:
    """Adds FrameStack-like episodes until `transitions` were added and `frames` frames written.

    Returns (transitions, episodes) added. A stack is a window of the pool, so obs and next_obs are views:
    the time measured is the buffer's, not that of building observations."""
    stack = OBS_SHAPE[0]
    added = written = episodes = 0
    while added < transitions or written < frames:
        length = int(rng.integers(*EPISODE, endpoint=True))
        o = int(rng.integers(0, POOL - length - stack))
        actions = rng.integers(0, 18, length)
        terminated = bool(rng.random() < 0.8)  # else the episode is truncated (a time limit)
        for j in range(length):
            last = j == length - 1
            buf.add(pool[o + j : o + j + stack], actions[j], 1.0, pool[o + j + 1 : o + j + 1 + stack],
                    last and terminated, last and not terminated)  # fmt: skip
        added += length
        written += length + stack
        episodes += 1
    return added, episodes


def batches_per_s(draw, batches: int, repeats: int) -> float:
    for _ in range(min(batches, 500)):  # warm-up: caches, allocator, first-touch of outputs
        draw()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            draw()
        rates.append(batches / (time.perf_counter() - start))
    return statistics.median(rates)


def measure_frame_replay(capacity: int, args, pool: np.ndarray, rng: np.random.Generator) -> dict:
    """Fills a FrameReplay, measuring its RSS growth, then times its samplers. It is freed on return."""
    before = rss_bytes()
    buf = FrameReplay(capacity, OBS_SHAPE, seed=args.seed)
    start = time.perf_counter()
    added, episodes = fill(buf, pool, rng, capacity, buf.frame_capacity)
    fill_s = time.perf_counter() - start
    grown = rss_bytes() - before
    out = np.empty((BATCH, OBS_SHAPE[0] + 1, *OBS_SHAPE[1:]), np.uint8)
    samplers = {
        "FrameReplay.sample": lambda: buf.sample(BATCH),
        "FrameReplay.sample_frames": lambda: buf.sample_frames(BATCH),
        "FrameReplay.sample_frames(out=)": lambda: buf.sample_frames(BATCH, out=out),
    }
    return {
        "len": len(buf),
        "added": added,
        "episodes": episodes,
        "fill_s": fill_s,
        "frame_capacity": buf.frame_capacity,
        "nbytes": buf.nbytes,
        "rss_growth_bytes": grown,
        "batches_per_s": {k: batches_per_s(f, args.batches, args.repeats) for k, f in samplers.items()},
    }


def measure_baseline(capacity: int, args, pool: np.ndarray, rng: np.random.Generator) -> dict:
    """The same for ReplayBuffer, which stores whole stacked obs and next_obs.

    Runs after the FrameReplay samplers on purpose: their one 1.8 MB array per batch has raised glibc's
    mmap threshold, so the baseline's two 0.9 MB arrays per batch are recycled. In a fresh process glibc
    hands those back to the kernel after each call and page-faults them in again: ~10x slower."""
    before = rss_bytes()
    buf = ReplayBuffer(capacity, OBS_SHAPE, obs_dtype=np.uint8, seed=args.seed)
    fill(buf, pool, rng, capacity, 0)
    grown = rss_bytes() - before
    rate = batches_per_s(lambda: buf.sample(BATCH), args.batches, args.repeats)
    return {"capacity": capacity, "nbytes": buf.nbytes, "rss_growth_bytes": grown, "batches_per_s": rate}


def report(n: int, fr: dict, base: dict, args, info: dict, wall: float) -> tuple[bool, bool]:
    """Prints the results; returns (memory bar met, speed bar met)."""
    per = fr["rss_growth_bytes"] / n
    print(f"replay memory and sampling speed, (4, 84, 84) uint8 stacks, batch {BATCH}, seed {args.seed}")
    print(
        f"machine: {info['cpu']}, {info['logical_cores']} logical cores ({info['usable_cores']} usable), "
        f"{total_gb():.0f} GB RAM; python {info['python']}, numpy {np.__version__}; one thread"
    )
    print()
    print(
        f"FrameReplay, {n:,} transitions: {fr['added']:,} added in {fr['episodes']:,} episodes of "
        f"{EPISODE[0]}-{EPISODE[1]} steps in {fr['fill_s']:.0f} s, until all {fr['frame_capacity']:,} "
        "frame rows were written"
    )
    grown = fr["rss_growth_bytes"]
    print(f"  measured RSS growth {grown:>15,} B = {grown / 1e9:.3f} GB = {per:,.1f} B/transition")
    print(f"  nbytes              {fr['nbytes']:>15,} B = {fr['nbytes'] / 1e9:.3f} GB")
    ok_mem = per <= BAR_BYTES
    print(
        f"  bar <= {BAR_BYTES:,} B/transition (7.5 GB per 1M; the frames alone are 7,056): "
        f"{'met' if ok_mem else 'NOT met'}, {per * 1e6 / 1e9:.3f} GB per 1M transitions"
    )
    base_per = base["rss_growth_bytes"] / base["capacity"]
    print(
        f"ReplayBuffer baseline, {base['capacity']:,} transitions: measured RSS growth "
        f"{base['rss_growth_bytes'] / 1e9:.3f} GB = {base_per:,.1f} B/transition; "
        f"1M would take {base_per * 1e6 / 1e9:.1f} GB"
    )
    print()
    rates = {**fr["batches_per_s"], "ReplayBuffer.sample (baseline)": base["batches_per_s"]}
    rows = []
    for name, rate in rates.items():
        mb = (5 if "sample_frames" in name else 8) * BATCH * 7_056 / 1e6  # frames copied per batch
        vs = rate / base["batches_per_s"]
        met = "yes" if rate >= BAR_BATCHES_PER_S else "NO"
        rows.append([name, f"{mb:.2f}", f"{rate:,.0f}", f"{rate * mb / 1e3:.1f}", f"{vs:.2f}", met])
    header = ["sampler, batch 32", "MB/batch", "batches/s", "GB/s gathered", "vs baseline", ">= 10,000"]
    print(bench.format_table(header, rows))
    ok_speed = rates["FrameReplay.sample"] >= BAR_BATCHES_PER_S
    print(
        f"median of {args.repeats} x {args.batches:,} calls per sampler; the baseline is timed after the "
        f"FrameReplay samplers, allocator warm (see measure_baseline); {wall:.0f} s in all"
    )
    return ok_mem, ok_speed


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--transitions",
        type=int_at_least(EPISODE[1]),
        default=1_000_000,
        help=f"FrameReplay capacity (default 1M; at least {EPISODE[1]:,})",
    )
    positive = int_at_least(1)
    ap.add_argument(
        "--batches", type=positive, default=20_000, help="sample calls per timing (default 20000)"
    )
    ap.add_argument("--repeats", type=positive, default=3, help="timings per sampler; the median is reported")
    ap.add_argument(
        "--baseline-capacity", type=positive, default=50_000, help="ReplayBuffer capacity (50000)"
    )
    ap.add_argument("--seed", type=SEED, default=0)
    ap.add_argument("--json", metavar="FILE", help="also save the results as JSON")
    ap.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    args = ap.parse_args(argv)
    if problem := output_file_problem(args.json, args.force, "--json"):
        ap.error(problem)
    # One buffer at a time: the FrameReplay is freed before the baseline is built.
    need = max(FrameReplay.bytes_needed(args.transitions, OBS_SHAPE), args.baseline_capacity * 56_460)
    if need > 0.9 * available_bytes():
        ap.error(
            f"--transitions {args.transitions:,} and --baseline-capacity {args.baseline_capacity:,} need "
            f"{need / 1e9:.2f} GB, only {available_bytes() / 1e9:.2f} GB available"
        )

    info = {**bench.machine_info(frameworks=("dqnlab",)), "threads": "one thread; numpy only, no TensorFlow"}
    rng = np.random.default_rng(args.seed)
    pool = rng.integers(0, 256, (POOL, *OBS_SHAPE[1:]), dtype=np.uint8)
    start = time.perf_counter()
    fr = measure_frame_replay(args.transitions, args, pool, rng)
    if fr["len"] != args.transitions:  # cannot happen at these episode lengths: the ring has room for 80+
        print(
            f"bench_replay.py: only {fr['len']:,} of {args.transitions:,} transitions kept", file=sys.stderr
        )
        return 1
    base = measure_baseline(args.baseline_capacity, args, pool, rng)
    wall = time.perf_counter() - start
    ok_mem, ok_speed = report(args.transitions, fr, base, args, info, wall)

    if args.json:
        with open(args.json, "w") as f:
            payload = {"transitions": args.transitions, "batch": BATCH, "batches": args.batches}
            payload.update(repeats=args.repeats, seed=args.seed, wall_s=wall, machine=info)
            payload.update(frame_replay=fr, baseline=base, memory_bar_met=ok_mem, speed_bar_met=ok_speed)
            json.dump(payload, f, indent=2)
        print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
