"""Where a measured update's cost goes: the per-call panel with parts of it taken out.

    taskset -c 1 python scripts/bench_panel_parts.py [--hidden 64,64] [--calls 300] [--rounds 7]

scripts/bench_diagnostics.py measures the whole panel against a bare update call (target <= 1.15x at 64-64,
batch 64). This script measures, in one process and against the same bare call, measured updates that
compute less and less of the panel. Each variant is a `Learner` subclass and returns a metrics vector of the
shipped length (zeros where it computes nothing), so every variant pays the same host pull. The weights are
still read before the update in every variant; only the shipped panel uses that read.

Run it on one quiet core: the variants differ by tens of microseconds a call.
"""

from __future__ import annotations

import sys

import numpy as np

from dqnlab import bench
from dqnlab._tf import tf
from dqnlab.cliargs import OneLineParser, int_at_least
from dqnlab.learner import PER_VARIABLE, Learner


class HostPullOnly(Learner):
    """The measured update is a bare one that also returns a zero vector of the shipped length: the floor
    that returning and reading the metrics costs."""

    vector_length = 0  # set from the shipped learner's trace

    def _update(self, b, with_diagnostics):
        out = super()._update(b, False)
        if with_diagnostics:
            self._metric_names = [f"m{i}" for i in range(self.vector_length)]
            out["values"] = tf.zeros([self.vector_length])
        return out


class PartialPanel(Learner):
    """The shipped TD statistics, and of the per-variable block only `parts` (the rest of its columns 0)."""

    parts: tuple[str, ...] = ()

    def _per_variable_stats(self, grads, before):
        rows = []
        for g in grads:
            columns = [tf.sqrt(2.0 * tf.nn.l2_loss(g))] if "norms" in self.parts else [tf.constant(0.0)]
            if "counts" in self.parts:
                abs_g = tf.abs(g)
                masks = tf.stack([tf.equal(abs_g, 0.0), abs_g < self._near_zero_tol, abs_g < np.inf])
                counts = tf.reduce_sum(tf.cast(masks, tf.float32), axis=list(range(1, len(g.shape) + 1)))
                size = float(np.prod(g.shape))
                columns += [counts[0] / size, counts[1] / size, size - counts[2]]
            rows.append(tf.stack(columns))
        table = tf.stack(rows)
        return tf.pad(table, [[0, 0], [0, len(PER_VARIABLE) - table.shape[1]]])


class TDOnly(PartialPanel):
    parts = ()


class TDAndNorms(PartialPanel):
    parts = ("norms",)


class TDNormsAndCounts(PartialPanel):
    parts = ("norms", "counts")


VARIANTS = {
    "nothing but the same host pull": HostPullOnly,
    "TD statistics (no per-variable block)": TDOnly,
    "+ per-variable gradient norms": TDAndNorms,
    "+ zero, near-zero and non-finite counts": TDNormsAndCounts,
    "+ weight norms, update ratios, distance from init (shipped)": Learner,
}


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    positive = int_at_least(1)
    ap.add_argument("--hidden", default="64,64", help="hidden layer sizes (default 64,64)")
    ap.add_argument("--batch", type=positive, default=64, help="batch size (default 64)")
    ap.add_argument(
        "--calls", type=positive, default=300, help="update calls per arm and round (default 300)"
    )
    ap.add_argument("--rounds", type=positive, default=7, help="rounds; medians are reported (default 7)")
    args = ap.parse_args(argv)
    try:
        hidden = tuple(int(h) for h in args.hidden.split(","))
    except ValueError:
        ap.error(f"--hidden takes comma-separated integers, got {args.hidden!r}")
    if min(hidden) < 1:
        ap.error(f"--hidden sizes must be >= 1, got {args.hidden!r}")

    bench.limit_tf_to_one_thread()
    learners = {label: bench.bench_learner(cls, hidden, args.batch) for label, cls in VARIANTS.items()}
    shipped = learners[list(VARIANTS)[-1]]
    shipped.update(_probe_burst(args.batch), True)  # traces it: the metrics vector's length is known
    HostPullOnly.vector_length = len(shipped._metric_names)
    arms = {"bare (no diagnostics)": (shipped, False)}
    arms.update({label: (learner, True) for label, learner in learners.items()})
    costs = bench.interleaved_call_costs(arms, args.batch, args.calls, rounds=args.rounds)
    bare = costs["bare (no diagnostics)"]
    info = bench.machine_info(("dqnlab",))
    info["threads"] = "this process, TF intra-op=1 inter-op=1"
    print(bench.machine_line(info))
    print(f"one update call, {'-'.join(map(str, hidden))} MLP, batch {args.batch}; medians of {args.rounds}")
    rows = [
        [label, f"{cost * 1e3:.3f} ms", f"{(cost - bare) * 1e6:+.0f} us", f"{cost / bare:.3f}"]
        for label, cost in costs.items()
    ]
    print(bench.format_table(["the measured update computes", "per call", "vs bare", "ratio"], rows))
    return 0


def _probe_burst(batch_size: int):
    """One burst of random transitions, to trace the shipped learner and learn its metrics vector's length."""
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(1, batch_size, 4)).astype(np.float32)
    return (
        obs,
        rng.integers(2, size=(1, batch_size)),
        np.ones((1, batch_size), np.float32),
        obs,
        np.ones((1, batch_size), np.float32),
    )


if __name__ == "__main__":
    sys.exit(main())
