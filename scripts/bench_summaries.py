"""What writing a measured burst's scalars costs: `Summaries.scalars` against the same values built as
protobuf messages, per written event.

    taskset -c 1 python scripts/bench_summaries.py [--events 200] [--rounds 20]

The tags and values are those of one measured burst of `huber_relu` (256-256, batch 64, 128 updates: ~60
scalars). The reference arm is `Summaries.scalars` as it was before #18's per-tag bytes: a `Summary` of
`scalar_value` messages, serialized as an `Event` (the history the live doctor reads kept alike). The arms
alternate in rounds of `--events` writes to files in a temporary directory; the ratio is the median of the
rounds' own ratios. Both arms' files are then read back and compared event by event.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import bench
from tensorboard.compat.proto import event_pb2, summary_pb2

from dqnlab.cliargs import OneLineParser, int_at_least
from dqnlab.eventfile import scalar_value
from dqnlab.events import iter_events
from dqnlab.summaries import Summaries


class ProtobufSummaries(Summaries):
    """The reference: every scalar built as protobuf messages, then the event serialized."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        summary = summary_pb2.Summary()
        for tag, value in values.items():
            steps, kept = self.history.setdefault(tag, ([], []))
            steps.append(int(step))
            kept.append(float(value))
            summary.value.append(scalar_value(tag, value, with_metadata=tag not in self._described))
            self._described.add(tag)
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))


def measured_burst_values() -> dict[str, float]:
    """The scalars of one measured burst of huber_relu (256-256, batch 64, 128 updates)."""
    from dqnlab.learner import Learner

    learner = bench.bench_learner(Learner, (256, 256), 64)
    replay = bench.random_replay(0)
    return dict(learner.update(replay.sample_many(128, 64), True).metrics.items())


def read_back(path: Path) -> list[tuple[int, bytes]]:
    """Each event's step and summary, as `dqnlab.events` reads them (the wall times differ)."""
    return [(e.step, e.summary.SerializeToString()) for e in iter_events(path) if e.HasField("summary")]


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    positive = int_at_least(1)
    ap.add_argument("--events", type=positive, default=200, help="written events per arm and round")
    ap.add_argument("--rounds", type=positive, default=20, help="rounds")
    args = ap.parse_args(argv)

    bench.limit_tf_to_one_thread()
    values = measured_burst_values()
    times: dict[str, list[float]] = {"per-tag bytes (shipped)": [], "protobuf messages (before)": []}
    with tempfile.TemporaryDirectory() as tmp:
        arms = {
            label: cls(Path(tmp) / str(i))
            for i, (label, cls) in enumerate(zip(times, (Summaries, ProtobufSummaries), strict=True))
        }
        step = 0
        for _ in range(args.rounds):
            for label, summaries in arms.items():
                start = time.perf_counter()
                for k in range(args.events):
                    summaries.scalars(step + k, values)
                times[label].append((time.perf_counter() - start) / args.events)
            step += args.events
        files = []
        for summaries in arms.values():
            summaries.close()
            files.append(read_back(summaries._writer.path))
        same = files[0] == files[1]
    shipped, before = times.values()
    ratio = statistics.median(b / s for s, b in zip(shipped, before, strict=True))
    info = bench.machine_info(("dqnlab",))
    info["threads"] = "this process, TF intra-op=1 inter-op=1 (the learner that gave the values)"
    print(bench.machine_line(info))
    print(
        bench.format_table(
            ["writer", "per event", "scalars per event", "speed-up"],
            [
                [
                    label,
                    f"{statistics.median(t) * 1e6:.1f} us",
                    str(len(values)),
                    f"{ratio:.2f}x" if i else "1",
                ]
                for i, (label, t) in enumerate(times.items())
            ],
        )
    )
    print(f"the two files' summaries read back: {'identical' if same else 'DIFFERENT'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
