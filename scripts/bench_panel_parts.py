"""Where a measured update's cost goes: the per-call panel, part by part.

    taskset -c 1 python scripts/bench_panel_parts.py [--hidden 64,64] [--calls 40] [--rounds 40]

scripts/bench_diagnostics.py measures the whole panel against a bare update call (target <= 1.15x at 64-64,
batch 64). This script measures, in one process and against the same bare call, measured updates that
compute more and more of the panel, up to the shipped one, and then the shipped one with the two families
that the probes take instead (what moving them saved). Each variant is a `Learner` subclass and returns a
metrics vector of the shipped length (zeros where it computes nothing), so every variant pays the same host
pull; the first reads it as plain tags, the others as the shipped panel (whose count-based fractions are
divided on the host). The weights are still read before the update in every variant; only the shipped panel
uses that read.
The non-finite counts are those of a clipping preset (huber_relu clips at 10), read off the pre-clip norm
on the host (see `Learner._metric_reader`); with the gradient norms, which the host also derives, the
"+ per-variable gradient norms" row adds nothing to the graph.

Run it on one quiet core: the variants differ by tens of microseconds a call.
"""

from __future__ import annotations

import sys

import bench
import numpy as np

from dqnlab._tf import tf
from dqnlab.cliargs import OneLineParser, int_at_least
from dqnlab.learner import Learner, MetricReader


class HostPullOnly(Learner):
    """The measured update is a bare one that also returns a zero vector of the shipped length, read as
    that many tags: the floor that returning and reading the metrics costs."""

    vector_length = 0  # set from the shipped learner's trace

    def _measured_burst(self, batch, num_updates):
        finite, _ = self._plain_burst(batch, num_updates)
        names = [f"m{i}" for i in range(self.vector_length)]
        self._reader = MetricReader(names)
        for name in names:
            self._reader.tag(name)
        self._reader.finish()
        return finite, tf.zeros([self.vector_length])


# What each part of the shipped panel adds to the pulled vector (`Learner._panel`): the half squares of the
# weights and steps, the nonzero counts, and without clipping the non-finite counts; the gradient norms are
# the host's, from the raw half squares every burst returns.
PARTS = {"weights": ("~half_weight/", "~half_step/"), "counts": ("~half_nonzero/", "grad_nonfinite")}


class PartialPanel(Learner):
    """The shipped TD statistics, and of the per-variable sums only `parts` (the others zeros)."""

    parts: tuple[str, ...] = ()

    def _panel(self, applied, before):
        m = super()._panel(applied, before)
        dropped = [p for part, prefixes in PARTS.items() if part not in self.parts for p in prefixes]
        return {name: tf.zeros_like(x) if name.startswith(tuple(dropped)) else x for name, x in m.items()}


class TDOnly(PartialPanel):
    parts = ()


class TDAndNorms(PartialPanel):
    parts = ("norms",)


class TDNormsAndCounts(PartialPanel):
    parts = ("norms", "counts")


class WithProbeFamilies(Learner):
    """The shipped panel plus the two families it leaves to the probes, computed in the measured update:
    near-zero shares of g (a compare, a cast, a mean per variable) and distances from the initial weights
    (a difference and an l2_loss): what moving them saved."""

    def _panel(self, applied, before):
        m = super()._panel(applied, before)
        m["grad_near_zero_frac"] = tf.stack(
            [tf.reduce_mean(tf.cast(tf.abs(g) < self._near_zero_tol, tf.float32)) for g in applied.grads]
        )
        distances = [tf.nn.l2_loss(v.value - w) for v, w in zip(self.variables, self._initial, strict=True)]
        m["weight_dist_init"] = tf.sqrt(2.0 * tf.stack(distances))
        for family in ("grad_near_zero_frac", "weight_dist_init"):
            self._family_tags[family] = [f"{family}/{t}" for t in self.variable_tags]
        return m


SHIPPED = "+ weight norms and update ratios (shipped)"
VARIANTS = {
    "nothing but the same host pull": HostPullOnly,
    "TD statistics (no per-variable block)": TDOnly,
    "+ per-variable gradient norms": TDAndNorms,
    "+ zero and non-finite counts": TDNormsAndCounts,
    SHIPPED: Learner,
    "+ near-zero shares, distance from init (at the probes instead)": WithProbeFamilies,
}


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    positive = int_at_least(1)
    ap.add_argument("--hidden", default="64,64", help="hidden layer sizes (default 64,64)")
    ap.add_argument("--batch", type=positive, default=64, help="batch size (default 64)")
    ap.add_argument("--calls", type=positive, default=40, help="update calls per arm and round (default 40)")
    ap.add_argument("--rounds", type=positive, default=40, help="rounds; medians are reported (default 40)")
    args = ap.parse_args(argv)
    try:
        hidden = tuple(int(h) for h in args.hidden.split(","))
    except ValueError:
        ap.error(f"--hidden takes comma-separated integers, got {args.hidden!r}")
    if min(hidden) < 1:
        ap.error(f"--hidden sizes must be >= 1, got {args.hidden!r}")

    bench.limit_tf_to_one_thread()
    learners = {label: bench.bench_learner(cls, hidden, args.batch) for label, cls in VARIANTS.items()}
    shipped = learners[SHIPPED]
    shipped.update(probe_burst(args.batch), True)  # traces it: the metrics vector's length is known
    HostPullOnly.vector_length = len(shipped._last.values)
    arms = {"bare (no diagnostics)": (shipped, False)}
    arms.update({label: (learner, True) for label, learner in learners.items()})
    costs = bench.interleaved_call_costs(arms, args.batch, args.calls, rounds=args.rounds)
    bare = costs.seconds["bare (no diagnostics)"]
    info = bench.machine_info(("dqnlab",))
    info["threads"] = "this process, TF intra-op=1 inter-op=1"
    print(bench.machine_line(info))
    print(
        f"one update call, {'-'.join(map(str, hidden))} MLP, batch {args.batch}; medians of {args.rounds}"
        " rounds (ratio: the median of each round's own ratio to the bare call)"
    )
    rows = [
        [label, f"{cost * 1e3:.3f} ms", f"{(cost - bare) * 1e6:+.0f} us", f"{costs.ratio[label]:.3f}"]
        for label, cost in costs.seconds.items()
    ]
    print(bench.format_table(["the measured update computes", "per call", "vs bare", "ratio"], rows))
    return 0


def probe_burst(batch_size: int):
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
