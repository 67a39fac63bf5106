"""What a compiled function's first call costs with `Compiled`'s call options against TF's defaults.

    taskset -c 0 python scripts/bench_first_calls.py [--repeats 3] [--calls 20]

A function's first call runs TF's graph optimizer (Grappler) on it. `dqnlab.compiled.Compiled` calls with
options that leave out four of its steps on a CPU-only process (`compiled.LEFT_OUT`). For the `sb3_zoo`
setting's learner (huber_relu, 256-256, batch 64, bursts of 128 updates), in fresh single-threaded
processes, the two option sets alternating: the trace and the first call of a plain burst, then, in another
process, of a measured burst followed by a probe (as a run with diagnostics meets them), and the median of
`--calls` later calls of each. The results must be the same bits: each process prints a digest of every
value it computed, and the two option sets' digests are compared.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time

import bench

from dqnlab.cliargs import OneLineParser, int_at_least

_MARKER = "FIRST_CALLS "
OPTIONS = ("Compiled's", "TF's defaults")


def _measure(spec: dict) -> dict:
    """One process: trace, first call and later calls of a burst (and, measured, of the probe)."""
    bench.limit_tf_to_one_thread()
    import numpy as np

    from dqnlab import compiled
    from dqnlab._tf import tf
    from dqnlab.learner import Learner

    if spec["options"] == OPTIONS[1]:
        compiled.lean_call_options = lambda: None  # read by every Compiled built from here on
    learner = bench.bench_learner(Learner, (256, 256), 64)
    replay = bench.random_replay(0)
    measured, digest, out = spec["measured"], hashlib.sha256(), {}
    states = np.random.default_rng(1).normal(size=(256, 4)).astype(np.float32)

    def burst() -> None:
        result = learner.update(replay.sample_many(128, 64), measured)
        for w in result.weights:
            digest.update(w.numpy().tobytes())
        digest.update(json.dumps(dict(result.metrics), sort_keys=True).encode())

    def probe() -> None:
        for tag, value in sorted(learner.probe(states, replay.sample(64)).items()):
            digest.update(tag.encode() + np.asarray(value).tobytes())

    first = replay.sample_many(128, 64)
    start = time.perf_counter()
    learner._compile([tf.TensorSpec(p.shape, p.dtype) for p in learner._pack(first)], measured)
    out["burst: trace"] = time.perf_counter() - start
    for label, call in [("burst", burst), *([("probe", probe)] if measured else [])]:
        start = time.perf_counter()
        call()
        out[f"{label}: first call"] = time.perf_counter() - start  # the probe's includes its trace
        later = []
        for _ in range(spec["calls"]):
            start = time.perf_counter()
            call()
            later.append(time.perf_counter() - start)
        out[f"{label}: later call"] = statistics.median(later)
    out["digest"] = digest.hexdigest()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int_at_least(1), default=3, help="processes per option set and burst")
    ap.add_argument("--calls", type=int_at_least(1), default=20, help="later calls timed per process")
    args = ap.parse_args(argv)
    results: dict[tuple[bool, str], list[dict]] = {}
    for r in range(args.repeats):
        for measured in (False, True):
            for options in OPTIONS if r % 2 == 0 else OPTIONS[::-1]:
                spec = {"options": options, "measured": measured, "calls": args.calls}
                res = bench.run_child(__file__, "--child", spec, _MARKER, f"{options} first calls")
                results.setdefault((measured, options), []).append(res)
                print(
                    f"[{r + 1}/{args.repeats}] {'measured' if measured else 'plain'} burst, {options}",
                    file=sys.stderr,
                )
    rows, same = [], True
    for measured in (False, True):
        ours, theirs = results[(measured, OPTIONS[0])], results[(measured, OPTIONS[1])]
        same &= len({res["digest"] for res in ours + theirs}) == 1
        for what in [k for k in ours[0] if k != "digest"]:
            a, b = (statistics.median(res[what] for res in runs) for runs in (ours, theirs))
            rows.append(
                [
                    f"{'measured' if measured else 'plain'} {what}",
                    f"{a * 1e3:.1f} ms",
                    f"{b * 1e3:.1f} ms",
                    f"{a / b:.2f}",
                ]
            )
    print(bench.machine_line(bench.machine_info(("dqnlab",))))
    print(bench.format_table(["", OPTIONS[0], OPTIONS[1], "ratio"], rows))
    print(f"every value computed: {'the same bits' if same else 'DIFFERENT'} under both option sets")
    return 0 if same else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(_MARKER + json.dumps(_measure(json.loads(sys.argv[2]))), flush=True)
    else:
        sys.exit(main())
