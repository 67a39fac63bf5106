"""Env steps per second of N runs batched in one process against the same N runs unbatched (issue #24).

    python scripts/bench_batched.py [--steps 20000] [--repeats 2] [--runs 1,2,4,8] [--settings S,..]
    python scripts/bench_batched.py --calls [--repeats 5] [--runs 1,2,4,8,16,32] [--settings S,..]
    python scripts/bench_batched.py --paired 8 [--steps 20000] [--runs 8] [--settings S,..]
    python scripts/bench_batched.py --batched-only [--runs 1,8,32,128,256] [--settings S,..]

Unbatched: each run is `dqnlab.train` of the setting (scripts/bench.py) with diagnostics on, seed s, in its
own fresh one-thread process (`bench.measure_in_subprocess`), one after another on the same core; N runs'
total env steps per second is N * steps over the sum of seeds 0..N-1's times. Batched: `run_batched` of the
same N configs and seeds in one fresh one-thread process (THREAD_ENV, TF intra = inter = 1), timed from
building the learners to the last burst. The ratio batched / unbatched is the issue's bar (>= 3x at
`cleanrl` for N = 8, >= 0.95x at `sb3_zoo`). Medians over repeats; the order alternates between repeats.

`--paired R` is for a machine whose load changes within minutes (other jobs on it): R rounds of unbatched
seed r mod N, then the batched N, then unbatched seed r + 1 mod N, each round's ratio the batched total env
steps/s over the mean of its two neighbours' (N runs one after another go at one run's rate; each seed's
process is measured right before or after the batch it is compared with); the median ratio over rounds
and its range.

`--batched-only` measures the batched side alone, for batch sizes whose unbatched side would take hours
(hundreds of seeds), and for `scripts/gpu_check.sh`: on a GPU machine the batch's learner runs on the GPU
(TensorFlow's default placement), and with `CUDA_VISIBLE_DEVICES=""` on the CPU.

`--calls` measures the update alone instead (where the time goes, docs/batched.md): one burst call of the
`BatchedLearner` for N runs against N burst calls of the unbatched `Learner`, each at the setting's shapes
(K updates of a batch of B), diagnostics off and on, in one fresh one-thread process; the arms take turns
in each of `--repeats` rounds (scripts/bench.py's `interleaved_call_costs` way), and the ratio is the median
over rounds of each round's batched / (N x unbatched). A call includes sampling the batches from a replay
and reading the weights back, as the loop does.

Not like for like in the batched engine's favour: `dqnlab.train` also writes event files and run.json and
plays one greedy evaluation episode at the end, which `run_batched` does not do yet (docs/batched.md).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import bench

from dqnlab.cliargs import OneLineParser

_RESULT = "BATCHED_BENCH_RESULT "
BARS = {"cleanrl": (8, 3.0), "sb3_zoo": (None, 0.95)}  # setting -> (N the bar is for, None: every N; ratio)


def measure_batched_here(setting_name: str, runs: int, steps: int) -> dict:
    """One batched measurement in this process (one TF thread): N runs of the setting, seeds 0..N-1."""
    bench.limit_tf_to_one_thread()
    from dqnlab.batched_loop import run_batched
    from dqnlab.config import load_preset

    setting = bench.SETTINGS[setting_name]
    cfg = load_preset(setting.preset, bench.dqnlab_overrides(setting, True, steps))
    start = time.perf_counter()
    result = run_batched([cfg] * runs, list(range(runs)), setting.env, steps)
    seconds = time.perf_counter() - start
    if not result.alive.all():
        raise RuntimeError(f"batched runs masked out: {result.errors or 'diverged'}")
    return {
        "seconds": seconds,
        "steps_per_s": runs * steps / seconds,
        "measured_bursts": len(result.metric_rows),
    }


def call_costs_here(settings: list[str], counts: list[int], rounds: int) -> list[list[str]]:
    """`--calls`: per-call cost of N batched runs' burst against N unbatched bursts, in this process."""
    bench.limit_tf_to_one_thread()

    from dqnlab.batched_learner import make_batched_learner
    from dqnlab.config import load_preset
    from dqnlab.kinds import make_learner

    rows = []
    for name in settings:
        setting = bench.SETTINGS[name]
        cfg = load_preset(setting.preset, bench.dqnlab_overrides(setting, True, 20_000))
        replay = bench.random_replay(0)
        learners = {0: make_learner(cfg, (4,), 2, 0)}
        learners.update({n: make_batched_learner([cfg] * n, list(range(n)), (4,), 2) for n in counts})
        for flag in (False, True):
            seconds = interleaved_bursts(learners, replay, setting, flag, rounds)
            for n in counts:
                ratio = statistics.median(b / (n * u) for b, u in zip(seconds[n], seconds[0], strict=True))
                unbatched, batched = (statistics.median(seconds[x]) * 1e3 for x in (0, n))
                row = [name, str(n), "on" if flag else "off", f"{unbatched:.2f}", f"{batched:.2f}"]
                rows.append([*row, f"{ratio:.2f}"])
    return rows


def interleaved_bursts(learners: dict, replay, setting, with_diagnostics: bool, rounds: int) -> dict:
    """Seconds per burst call of each learner (0: the unbatched one, N: N runs batched), per round; the
    learners take turns, ~40 updates each per round."""
    k, size = setting.gradient_steps, setting.batch_size
    calls = max(1, 40 // k)

    def call(n: int) -> None:
        if n == 0:
            out = learners[0].update(replay.sample_many(k, size), with_diagnostics)
            dict(out.metrics)
        else:
            out = learners[n].update([replay.sample_many(k, size) for _ in range(n)], with_diagnostics)
        [w.numpy() for w in out.weights]

    seconds: dict[int, list[float]] = {n: [] for n in learners}
    for n in learners:
        call(n)  # traces
    for _ in range(rounds):
        for n in learners:
            start = time.perf_counter()
            for _ in range(calls):
                call(n)
            seconds[n].append((time.perf_counter() - start) / calls)
    return seconds


def measure_batched(setting_name: str, runs: int, steps: int) -> dict:
    spec = {"setting": setting_name, "runs": runs, "steps": steps}
    script = str(Path(__file__).resolve())
    return bench.run_child(script, "--child", spec, _RESULT, f"batched {setting_name} N={runs}")


def one_repeat(settings: list[str], counts: list[int], steps: int, repeat: int, log) -> list[dict]:
    """Every setting's unbatched seeds and batched N, in alternating order between repeats."""
    rows = []
    for setting in settings:
        jobs = [("unbatched", seed) for seed in range(max(counts))] + [("batched", n) for n in counts]
        for kind, value in jobs if repeat % 2 == 0 else jobs[::-1]:
            if kind == "unbatched":
                res = bench.measure_in_subprocess("dqnlab", setting, steps, diagnostics=True, seed=value)
                res = {"seconds": steps / res["steps_per_s"], "steps_per_s": res["steps_per_s"]}
            else:
                res = measure_batched(setting, value, steps)
            rows.append({"setting": setting, "kind": kind, "value": value, "repeat": repeat, **res})
            log(f"[r{repeat}] {setting:8s} {kind:9s} {value:3d}  {res['steps_per_s']:9,.0f} env steps/s")
    return rows


def ratios(rows: list[dict], setting: str, n: int, repeats: int, steps: int) -> tuple[float, float, float]:
    """Median over repeats of (batched total env steps/s, unbatched total env steps/s, their ratio)."""
    out = []
    for r in range(repeats):
        mine = [x for x in rows if x["setting"] == setting and x["repeat"] == r]
        batched = next(x["steps_per_s"] for x in mine if x["kind"] == "batched" and x["value"] == n)
        seconds = sum(x["seconds"] for x in mine if x["kind"] == "unbatched" and x["value"] < n)
        unbatched = n * steps / seconds
        out.append((batched, unbatched, batched / unbatched))
    return tuple(statistics.median(column) for column in zip(*out, strict=True))


def unbatched_rate(setting: str, steps: int, seed: int) -> float:
    return bench.measure_in_subprocess("dqnlab", setting, steps, diagnostics=True, seed=seed)["steps_per_s"]


def paired_rounds(settings: list[str], counts: list[int], steps: int, rounds: int, log) -> list[list[str]]:
    """`--paired`: per setting and N, the median, min and max over rounds of batched / unbatched, each
    round's batch between two unbatched seeds' processes."""
    rows = []
    for setting in settings:
        for n in counts:
            ratios, batched, unbatched = [], [], []
            for r in range(rounds):
                before = unbatched_rate(setting, steps, r % n)
                res = measure_batched(setting, n, steps)
                single = (before + unbatched_rate(setting, steps, (r + 1) % n)) / 2
                ratios.append(res["steps_per_s"] / single)  # N runs one after another: one run's rate
                batched.append(res["steps_per_s"])
                unbatched.append(single)
                log(f"[r{r}] {setting} N={n} batched {batched[-1]:9,.0f} unbatched {unbatched[-1]:9,.0f}")
            rows.append(
                [
                    setting,
                    str(n),
                    f"{statistics.median(batched):,.0f}",
                    f"{statistics.median(unbatched):,.0f}",
                    f"{statistics.median(ratios):.2f}",
                    f"{min(ratios):.2f}-{max(ratios):.2f}",
                ]
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        spec = json.loads(argv[1])
        print(_RESULT + json.dumps(measure_batched_here(spec["setting"], spec["runs"], spec["steps"])))
        return 0
    if argv[:1] == ["--child-calls"]:
        spec = json.loads(argv[1])
        print(_RESULT + json.dumps(call_costs_here(spec["settings"], spec["runs"], spec["rounds"])))
        return 0
    ap = OneLineParser(description=__doc__.splitlines()[0])
    from dqnlab.cliargs import int_at_least

    ap.add_argument("--steps", type=int_at_least(1), default=20_000, help="env steps per run (default 20000)")
    ap.add_argument("--repeats", type=int_at_least(1), default=2)
    ap.add_argument("--runs", default="1,2,4,8", help="batch sizes N (default 1,2,4,8)")
    ap.add_argument("--settings", default="cleanrl,sb3_zoo")
    ap.add_argument("--calls", action="store_true", help="the update call alone (see above), not whole runs")
    ap.add_argument("--paired", type=int_at_least(1), help="R rounds, each batch between two unbatched seeds")
    ap.add_argument(
        "--batched-only",
        action="store_true",
        help="the batched engine's env steps/s against N alone, no unbatched runs (large N; the GPU check)",
    )
    args = ap.parse_args(argv)
    try:
        counts = [int(n) for n in args.runs.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        ap.error(f"--runs {args.runs!r}: expected comma-separated integers >= 1")
    settings = args.settings.split(",")
    cartpole = [name for name, s in bench.SETTINGS.items() if s.env == "CartPole-v1"]
    if any(name not in cartpole for name in settings):
        ap.error(f"--settings {args.settings!r}: expected comma-separated names from {', '.join(cartpole)}")
    info = bench.machine_info(frameworks=("dqnlab",))
    start = time.perf_counter()
    if args.calls:
        return print_call_costs(settings, counts, args.repeats, info, start)
    if args.batched_only:
        return print_batched_curve(settings, counts, args.steps, args.repeats, info, start)
    if args.paired:
        log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
        table = paired_rounds(settings, counts, args.steps, args.paired, log)
        steps, rounds = f"{args.steps:,} env steps per run", f"{args.paired} rounds"
        print(f"batched vs unbatched, paired: {steps}, diagnostics on, {rounds}")
        print(bench.machine_line(info))
        cores = sorted(os.sched_getaffinity(0))
        print(f"pinned to cores {cores}; wall {time.perf_counter() - start:.0f} s\n")
        header = ["setting", "N", "batched env steps/s", "unbatched env steps/s", "median ratio", "range"]
        print(bench.format_table(header, table))
        return 0
    rows = []
    for r in range(args.repeats):
        rows += one_repeat(settings, counts, args.steps, r, lambda m: print(m, file=sys.stderr, flush=True))
    print(f"batched vs unbatched: {args.steps:,} env steps per run, diagnostics on, median of {args.repeats}")
    print(bench.machine_line(info))
    print(f"pinned to cores {sorted(os.sched_getaffinity(0))}; wall {time.perf_counter() - start:.0f} s\n")
    header = ["setting", "N", "batched env steps/s", "unbatched env steps/s", "batched/unbatched", "bar"]
    table = []
    for setting in settings:
        bar_n, bar = BARS.get(setting, (None, None))
        for n in counts:
            b, u, ratio = ratios(rows, setting, n, args.repeats, args.steps)
            applies = bar is not None and (bar_n is None or bar_n == n)
            verdict = (f">= {bar}: {'met' if ratio >= bar else 'NOT met'}") if applies else ""
            table.append([setting, str(n), f"{b:,.0f}", f"{u:,.0f}", f"{ratio:.2f}", verdict])
    print(bench.format_table(header, table))
    return 0


def print_batched_curve(
    settings: list[str], counts: list[int], steps: int, repeats: int, info: dict, start: float
) -> int:
    """`--batched-only`: each N's batch in a fresh process (on the GPU when TensorFlow sees one), medians
    over repeats of its total env steps/s, and per run."""
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    table = []
    for setting in settings:
        for n in counts:
            rates = []
            for r in range(repeats):
                rates.append(measure_batched(setting, n, steps)["steps_per_s"])
                log(f"[r{r}] {setting} N={n} batched {rates[-1]:,.0f} env steps/s")
            rate = statistics.median(rates)
            table.append([setting, str(n), f"{rate:,.0f}", f"{rate / n:,.0f}"])
    print(f"the batched engine alone: {steps:,} env steps per run, diagnostics on, median of {repeats}")
    print(bench.machine_line(info))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    print(f"CUDA_VISIBLE_DEVICES={visible!r}; wall {time.perf_counter() - start:.0f} s\n")
    header = ["setting", "N", "batched env steps/s", "per run"]
    print(bench.format_table(header, table))
    return 0


def print_call_costs(settings: list[str], counts: list[int], rounds: int, info: dict, start: float) -> int:
    spec = json.dumps({"settings": settings, "runs": counts, "rounds": rounds})
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child-calls", spec],
        env={**os.environ, **bench.THREAD_ENV},
        capture_output=True,
        text=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_RESULT)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"--calls failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    rows = json.loads(lines[-1][len(_RESULT) :])
    print(f"update call: N runs batched in one burst call vs N unbatched burst calls, median of {rounds}")
    print(bench.machine_line(info))
    print(f"pinned to cores {sorted(os.sched_getaffinity(0))}; wall {time.perf_counter() - start:.0f} s\n")
    header = ["setting", "N", "diagnostics", "unbatched ms/call", "batched ms/call", "batched/(N unbatched)"]
    print(bench.format_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
