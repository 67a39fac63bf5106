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
