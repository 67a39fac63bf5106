"""`Compiled`: a traced function called below TF's argument binding must still check what it is given."""

import re

import numpy as np
import pytest

from dqnlab import compiled
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


def _calls(fn, times=3):
    """`times` calls of an `_affine` function, results as numpy."""
    x, k = np.arange(6, dtype=np.float32).reshape(3, 2), np.array(3, np.int32)
    return [(out.numpy(), float(extra["sum"])) for out, extra in (fn(x, k) for _ in range(times))]


def _public_calls(monkeypatch) -> list:
    """Count the calls that go through the public `ConcreteFunction.__call__`."""
    concrete_class = type(_affine()[1].concrete)
    public, seen = concrete_class.__call__, []

    def counted(self, *args, **kwargs):
        seen.append(1)
        return public(self, *args, **kwargs)

    monkeypatch.setattr(concrete_class, "__call__", counted)
    return seen


def _compiled_warnings(record) -> list:
    return [w for w in record if w.category is RuntimeWarning and "dqnlab.compiled" in str(w.message)]


def test_this_tensorflow_takes_the_fast_path_without_a_warning(monkeypatch, recwarn):
    public = _public_calls(monkeypatch)
    _, fn = _affine()
    _calls(fn)
    assert _compiled_warnings(recwarn) == [] and public == []  # never the public call


@pytest.mark.parametrize("tensorflow", ["without the entry point", "with another signature"])
def test_a_changed_private_entry_point_falls_back_to_the_public_call_with_one_warning(
    tensorflow, monkeypatch, recwarn
):
    expected = _calls(_affine()[1])  # the fast path's results
    concrete_class = type(_affine()[1].concrete)
    if tensorflow == "without the entry point":  # as if TensorFlow had renamed it
        monkeypatch.setattr(compiled, "FAST_ENTRY", "_call_flat_renamed")
        message = "has no _call_flat_renamed"
    else:  # the public call still works through it; Compiled must not pass it two arguments
        original = concrete_class._call_flat

        def with_another_signature(self, tensor_inputs, captured_inputs, cancellation_manager=None):
            return original(self, tensor_inputs, captured_inputs)

        monkeypatch.setattr(concrete_class, "_call_flat", with_another_signature)
        message = r"takes \(tensor_inputs, captured_inputs, cancellation_manager\)"
    public = _public_calls(monkeypatch)
    _, fn = _affine()
    got = _calls(fn)
    (warning,) = _compiled_warnings(recwarn)  # one, when traced: not one per call
    text = str(warning.message)
    assert re.search(message, text) and "calling through ConcreteFunction.__call__ instead" in text
    assert len(public) == 3  # every call went through the public entry
    for (out, total), (want, want_total) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(out, want)
        assert total == want_total


def test_the_probe_tells_an_entry_point_that_returns_flat_outputs():
    """An entry point taking the right arguments but returning what an older TensorFlow's did (a flat list,
    not the traced structure) is refused; the real one is not."""
    concrete_class = type(_affine()[1].concrete)
    original = concrete_class._call_flat

    def flat(self, tensor_inputs, captured_inputs):
        return tf.nest.flatten(original(self, tensor_inputs, captured_inputs))

    assert compiled.entry_point_problem(original) is None
    problem = compiled.entry_point_problem(flat)
    assert problem == (
        "ConcreteFunction._call_flat on a probe: TypeError: "
        "The two structures don't have the same nested structure."
    )


def test_the_check_calls_nothing_so_an_update_is_applied_once_per_call():
    counter = tf.Variable(0.0)
    fn = Compiled(lambda x: counter.assign_add(tf.reduce_sum(x)), [tf.TensorSpec([2], tf.float32)])
    assert float(counter.numpy()) == 0.0  # traced and checked: the side effect has not run
    fn(np.ones(2, np.float32))
    assert float(counter.numpy()) == 2.0
