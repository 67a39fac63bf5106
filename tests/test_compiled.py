"""`Compiled`: a traced function called below TF's argument binding must still check what it is given."""

import numpy as np
import pytest

from dqnlab._tf import tf
from dqnlab.compiled import Compiled


def _affine():
    w = tf.Variable([[1.0, 2.0], [3.0, 4.0]])  # captured: the call must pass the variable's handle along
    return w, Compiled(lambda x, k: (tf.matmul(x, w) * tf.cast(k, tf.float32), {"sum": tf.reduce_sum(x)}), [
        tf.TensorSpec([3, 2], tf.float32),
        tf.TensorSpec([], tf.int32),
    ])  # fmt: skip


def test_result_equals_the_function_and_keeps_its_structure():
    w, fn = _affine()
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    out, extra = fn(x, np.array(2, np.int32))
    np.testing.assert_allclose(out.numpy(), 2 * x @ w.numpy())
    assert float(extra["sum"]) == 15.0
    w.assign(tf.zeros([2, 2]))  # the live variable is read on each call, not a copy taken at trace time
    assert np.all(fn(x, np.array(2, np.int32))[0].numpy() == 0)


@pytest.mark.parametrize(
    "x, k, message",
    [
        (np.zeros((4, 2), np.float32), np.array(1, np.int32), r"float32\[4, 2\].*traced for float32\[3, 2\]"),
        (np.zeros((3, 2), np.float64), np.array(1, np.int32), r"argument 0 is float64\[3, 2\]"),
        (np.zeros((3, 2), np.float32), np.array(1, np.int64), r"argument 1 is int64\[\]"),
    ],
)
def test_a_shape_or_dtype_other_than_the_traced_one_is_one_clear_error(x, k, message):
    _, fn = _affine()
    with pytest.raises(ValueError, match=message):
        fn(x, k)


def test_a_wrong_number_of_arrays_is_a_type_error():
    _, fn = _affine()
    with pytest.raises(TypeError, match="expected 2 arrays, got 1"):
        fn(np.zeros((3, 2), np.float32))


def test_public_call_fallback_gives_the_same_result(monkeypatch):
    _, fn = _affine()
    x, k = np.ones((3, 2), np.float32), np.array(3, np.int32)
    fast = fn(x, k)[0].numpy()
    monkeypatch.setattr(fn, "_fast", False)  # as on a TensorFlow without ConcreteFunction._call_flat
    np.testing.assert_array_equal(fn(x, k)[0].numpy(), fast)
