"""The fast histogram summary agrees with TensorBoard's own, and what is written reads back."""

from __future__ import annotations

import numpy as np
import pytest
from tensorboard.plugins.histogram.summary_v2 import histogram_pb as tensorboard_histogram_pb
from tensorboard.util import tensor_util

from dqnlab.summaries import histogram_pb


def table(summary) -> np.ndarray:
    return tensor_util.make_ndarray(summary.value[0].tensor)


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(0).normal(size=10_000),
        np.random.default_rng(1).integers(0, 5, size=1_000).astype(float),  # values on bucket edges
        np.full(17, 3.5),  # constant
        np.array([]),
    ],
    ids=["normal", "integers", "constant", "empty"],
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
