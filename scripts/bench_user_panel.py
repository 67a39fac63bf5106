"""What dqnlab.Panel costs a user's own TF2 DQN step, measured in one run.

    taskset -c 1 python scripts/bench_user_panel.py [--rounds 30] [--calls 128] [--steps 3000] [--repeats 2]

1. Per call: the hand-written step of examples/tf2_dqn.py (sample a batch from a Python-list replay, the
   target network's max, a GradientTape, a Keras loss, Adam's apply_gradients) on a 64-64 MLP at batch 64,
   CartPole's shapes, bare (`tape.gradient`) against the same step with `panel.gradients` (default
   schedule: one measured call in 128, probes every 2,560 calls). The arms alternate in rounds of `calls`
   calls each, one TF thread; the ratio is the median of the rounds' own ratios (target <= 1.2x). For
   information, the same per call with every call measured (`every=1`). Then the same step compiled with
   `tf.function` (sampling outside it), bare against the panel (its graph path; target <= 1.2x).
2. The whole loop: examples/tf2_dqn.py against examples/tf2_dqn_panel.py for `steps` env steps, each in a
   fresh single-threaded process, order alternated, medians of `repeats`.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench
import numpy as np

from dqnlab.cliargs import OneLineParser, int_at_least

ROOT = Path(__file__).resolve().parent.parent
# Each arm's bare twin: its cost ratio is to that arm's.
BARE_OF = {
    "bare": "bare",
    "panel": "bare",
    "panel, every call measured": "bare",
    "bare, tf.function step": "bare, tf.function step",
    "panel, tf.function step": "bare, tf.function step",
}
ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


def _arm(panel_kwargs: dict | None, logdir: str, name: str, compiled: bool = False):
    """One user step as a closure: its own network, target, optimizer and (with `panel_kwargs`) panel; with
    `compiled`, the step after sampling is a `tf.function` (the panel's graph path)."""
    from dqnlab._tf import keras, tf
    from dqnlab.panel import Panel

    keras.utils.set_random_seed(0)

    def net():
        layers = [keras.layers.Dense(64, activation="relu"), keras.layers.Dense(64, activation="relu")]
        return keras.Sequential([keras.Input((4,)), *layers, keras.layers.Dense(2)])

    q_net, target_net = net(), net()
    target_net.set_weights(q_net.get_weights())
    optimizer, loss_object = keras.optimizers.Adam(1e-3), keras.losses.Huber()
    rng = random.Random(0)
    replay = [
        (
            np.random.normal(size=4),
            rng.randrange(2),
            1.0,
            np.random.normal(size=4),
            float(rng.random() < 0.05),
        )
        for _ in range(10_000)
    ]
    panel = None
    if panel_kwargs is not None:
        panel = Panel(q_net, env="CartPole-v1", arm=name, experiment="bench", logdir=logdir,
                      warn=lambda _: None, **panel_kwargs)  # fmt: skip
    step_count = [0]

    def learn(o, a, r, o2, d, env_step):
        target = r + 0.99 * (1.0 - d) * tf.reduce_max(target_net(o2), axis=1)
        with tf.GradientTape() as tape:
            q = q_net(o)
            qa = tf.gather(q, a, batch_dims=1)
            loss = loss_object(target, qa)
        if panel is None:
            grads = tape.gradient(loss, q_net.trainable_variables)
        else:
            grads = panel.gradients(
                tape, loss, q_net.trainable_variables, qa=qa, target=target, q=q, obs=o, step=env_step
            )
        optimizer.apply_gradients(zip(grads, q_net.trainable_variables, strict=True))

    learn_fn = tf.function(learn) if compiled else learn

    def step():
        step_count[0] += 1
        o, a, r, o2, d = map(np.array, zip(*rng.sample(replay, 64), strict=True))
        o, o2, r, d = (x.astype(np.float32) for x in (o, o2, r, d))
        learn_fn(o, a, r, o2, d, tf.constant(step_count[0], tf.int64) if compiled else step_count[0])

    return step, panel


def per_call(rounds: int, calls: int) -> dict[str, dict[str, float]]:
    """Seconds per call of each arm (median over rounds) and its ratio to bare (median of rounds' ratios)."""
    bench.limit_tf_to_one_thread()
    logdir = tempfile.mkdtemp(prefix="bench_user_panel_")
    arms = {
        "bare": _arm(None, logdir, "bare"),
        "panel": _arm({}, logdir, "panel"),
        "panel, every call measured": _arm({"every": 1, "probe_every": 0}, logdir, "every_call"),
        "bare, tf.function step": _arm(None, logdir, "bare_graph", compiled=True),
        "panel, tf.function step": _arm({}, logdir, "panel_graph", compiled=True),
    }
    for step, _ in arms.values():  # warm up: traces, first probes
        for _ in range(calls):
            step()
    seconds: dict[str, list[float]] = {label: [] for label in arms}
    for i in range(rounds):
        order = list(arms) if i % 2 == 0 else list(arms)[::-1]
        for label in order:
            step = arms[label][0]
            start = time.perf_counter()
            for _ in range(calls):
                step()
            seconds[label].append((time.perf_counter() - start) / calls)
    for _, panel in arms.values():
        if panel is not None:
            panel.close()
    costs = {}
    for label, s in seconds.items():
        bare = np.array(seconds[BARE_OF[label]])
        costs[label] = {
            "s": float(np.median(s)),
            "ratio": float(np.median(np.array(s) / bare)),
            "ratio_iqr": tuple(float(x) for x in np.percentile(np.array(s) / bare, [25, 75])),
        }
    return costs


def whole_loop(steps: int, repeats: int, log) -> dict[str, float]:
    """Median wall seconds of each example for `steps` env steps, fresh single-threaded processes."""
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(ROOT)}
    times: dict[str, list[float]] = {"bare": [], "panel": []}
    scripts = {"bare": ROOT / "examples" / "tf2_dqn.py", "panel": ROOT / "examples" / "tf2_dqn_panel.py"}
    with tempfile.TemporaryDirectory(prefix="bench_user_panel_") as logdir:
        for i in range(repeats):
            for label in ("bare", "panel") if i % 2 == 0 else ("panel", "bare"):
                extra = ["--logdir", logdir, "--name", f"loop_{i}"] if label == "panel" else []
                start = time.perf_counter()
                cmd = [sys.executable, str(scripts[label]), "--steps", str(steps), "--huber", *extra]
                subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                times[label].append(time.perf_counter() - start)
                log(f"whole loop {label}, repeat {i}: {times[label][-1]:.1f} s")
    return {label: float(np.median(t)) for label, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    positive = int_at_least(1)
    ap.add_argument("--rounds", type=positive, default=30, help="rounds of the per-call measurement")
    ap.add_argument("--calls", type=positive, default=128, help="calls per arm and round")
    ap.add_argument("--steps", type=int_at_least(0), default=3000, help="env steps per whole loop (0: skip)")
    ap.add_argument("--repeats", type=positive, default=2, help="whole-loop runs per arm")
    args = ap.parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731

    costs = per_call(args.rounds, args.calls)
    rows = []
    for label, c in costs.items():
        if BARE_OF[label] == label:
            continue
        bar = label in ("panel", "panel, tf.function step")
        target = "<= 1.2" if bar else "-"
        met = ("yes" if c["ratio"] <= 1.2 else "NO") if bar else "-"
        iqr = f"{c['ratio_iqr'][0]:.3f}-{c['ratio_iqr'][1]:.3f}"
        bare_ms = costs[BARE_OF[label]]["s"] * 1e3
        row = [
            f"per call, {label}",
            f"{c['s'] * 1e3:.3f} ms",
            f"{bare_ms:.3f} ms",
            f"{c['ratio']:.3f} (IQR {iqr})",
        ]
        rows.append([*row, target, met])
    if args.steps:
        loop = whole_loop(args.steps, args.repeats, log)
        ratio = loop["panel"] / loop["bare"]
        met = "yes" if ratio <= 1.2 else "NO"
        label = f"whole loop, {args.steps:,} env steps (examples/)"
        rows.append([label, f"{loop['panel']:.1f} s", f"{loop['bare']:.1f} s", f"{ratio:.3f}", "<= 1.2", met])
    info = bench.machine_info(("tensorflow",))
    info["threads"] = "TF intra-op=1 inter-op=1"
    print(bench.machine_line(info))
    print(
        f"per call: {args.rounds} rounds x {args.calls} calls per arm; 64-64 MLP, batch 64, CartPole shapes"
    )
    print(bench.format_table(["measurement", "with the panel", "bare", "cost ratio", "target", "met"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
