"""The only writer of TensorBoard data. The x-axis of every tag is the environment step.

Tag names are exactly the metric keys the learner returns (see docs/metrics.md). Values are pulled from the
device here, once per written burst, never inside the compiled step.
"""

from __future__ import annotations

from pathlib import Path

from dqnlab._tf import tf
from dqnlab.loop import EpisodeEnd, Evaluated


class Summaries:
    """One run's TensorBoard writer. Use as a context manager so the last events are always flushed."""

    def __init__(self, run_dir: Path, flush_every_s: float = 10.0):
        self._writer = tf.summary.create_file_writer(str(run_dir), flush_millis=int(flush_every_s * 1000))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        with self._writer.as_default(step=step):
            for tag, value in values.items():
                tf.summary.scalar(tag, value)

    def metrics(self, step: int, metrics: dict[str, tf.Tensor]) -> dict[str, float]:
        """Write a measured update's tensors; return them as floats."""
        values = {tag: float(v) for tag, v in metrics.items()}
        self.scalars(step, values)
        return values

    def episode(self, event: EpisodeEnd) -> None:
        self.scalars(
            event.step,
            {
                "episode/return": event.episode_return,
                "episode/length": event.length,
                "charts/epsilon": event.epsilon,
            },
        )

    def evaluation(self, event: Evaluated) -> None:
        self.scalars(event.step, {"eval/return": event.mean_return})

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> Summaries:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
