"""The fast histogram summary agrees with TensorBoard's own, and what is written reads back."""

from __future__ import annotations

import numpy as np
import pytest
from tensorboard.plugins.histogram.summary_v2 import histogram_pb as tensorboard_histogram_pb
from tensorboard.util import tensor_util

from dqnlab.events import read_series
from dqnlab.summaries import Summaries, histogram_pb


def table(summary) -> np.ndarray:
    return tensor_util.make_ndarray(summary.value[0].tensor)


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(0).normal(size=10_000),
        np.random.default_rng(1).integers(0, 5, size=1_000).astype(float),  # values on bucket edges
        # Values on bucket edges where `np.histogram`'s own edge rounding puts one a bucket away from
        # TensorBoard's floor((value - min) / width) (the fast version counted with it until #18).
        np.arange(6) * 0.7,
        np.full(17, 3.5),  # constant
        np.array([]),
    ],
    ids=["normal", "integers", "edge_rounding", "constant", "empty"],
)
def test_histogram_matches_tensorboards(data):
    ours, theirs = table(histogram_pb("t", data)), table(tensorboard_histogram_pb("t", data))
    np.testing.assert_allclose(ours[:, :2], theirs[:, :2], rtol=1e-12)
    np.testing.assert_array_equal(ours[:, 2], theirs[:, 2])
    assert histogram_pb("t", data).value[0].metadata == tensorboard_histogram_pb("t", data).value[0].metadata


def test_hparams_rows_are_named_by_the_run(tmp_path):
    from tensorboard.plugins.hparams import metadata as hparams_metadata

    from dqnlab.events import iter_events
    from dqnlab.summaries import Summaries

    names = {}
    for seed in (0, 1):
        run_dir = tmp_path / "exp" / "huber_relu" / "dqnlab-CartPole-reward100-v1" / f"seed_{seed}"
        run_dir.mkdir(parents=True)
        with Summaries(run_dir) as summaries:
            summaries.hparams({"preset": "huber_relu", "seed": seed, "optimizer.learning_rate": 2.3e-3})
        (event,) = [e for f in run_dir.iterdir() for e in iter_events(f) if e.HasField("summary")]
        (value,) = event.summary.value
        assert value.metadata.plugin_data.plugin_name == hparams_metadata.PLUGIN_NAME
        start = hparams_metadata.parse_session_start_info_plugin_data(value.metadata.plugin_data.content)
        assert start.hparams["seed"].number_value == seed
        names[seed] = start.group_name
    # TensorBoard groups sessions by this name and shows it in the HParams table: the run, not a hash.
    assert names == {
        0: "huber_relu/dqnlab-CartPole-reward100-v1/seed_0",
        1: "huber_relu/dqnlab-CartPole-reward100-v1/seed_1",
    }


def test_a_tag_first_logged_after_the_checkpoint_a_run_resumed_from_is_gone(tmp_path):
    """A resumed run's restart voids every point after its checkpoint: a tag with none left is not read
    (before, reading it raised an IndexError; a batch member resumed from an older checkpoint than its
    newest met it: scripts/check_kill_resume.py --batch)."""
    with Summaries(tmp_path) as first:
        first.scalars(1, {"a": 1.0})
        first.scalars(5, {"a": 5.0, "late": 5.0})
    with Summaries(tmp_path) as again:
        again.restart_after(3)
        again.scalars(4, {"a": 4.0})
    series = read_series(tmp_path)
    assert set(series) == {"a"} and series["a"][0].tolist() == [1, 4]
