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


# ---- the call options: TF's own, less four Grappler steps, for Compiled's calls only --------------------


def _rewrite_options(options):
    config = tf.compat.v1.ConfigProto()
    config.ParseFromString(options.config_proto_serialized)
    return config.graph_options.rewrite_options


def test_on_a_cpu_the_calls_leave_out_the_four_grappler_steps_and_nothing_else():
    from tensorflow.python.eager import context

    lean = _rewrite_options(compiled.lean_call_options())
    default = _rewrite_options(context.context().function_call_options)
    assert lean.meta_optimizer_iterations == type(lean).ONE
    assert lean.disable_tfg_optimizer and lean.memory_optimization == type(lean).NO_MEM_OPT
    assert lean.layout_optimizer == type(lean).OFF
    for field in compiled.LEFT_OUT:
        lean.ClearField(field)
        default.ClearField(field)
    assert lean == default  # constant folding, the remapper's fusions, pruning...: TF's own


def test_a_call_sets_the_options_for_itself_only_even_when_it_raises():
    from tensorflow.python.eager import context

    before = context.context().function_call_options
    checked_log = Compiled(lambda x: tf.debugging.check_numerics(tf.math.log(x), "log"), [
        tf.TensorSpec([2], tf.float32)
    ])  # fmt: skip
    assert np.array_equal(checked_log(np.ones(2, np.float32)).numpy(), [0, 0])
    assert context.context().function_call_options is before
    with pytest.raises(tf.errors.InvalidArgumentError):
        checked_log(-np.ones(2, np.float32))
    assert context.context().function_call_options is before  # a user's own calls keep TF's defaults


def test_a_learner_computes_the_same_bits_with_tf_default_options(monkeypatch):
    """The steps left out change no value: a measured burst, a plain one and a probe, bit for bit."""
    from tests.helpers import OBS, batch, tiny_learner

    def run():
        learner = tiny_learner("clipped_delta_squared")
        measured = learner.update(batch(8), True)
        plain = learner.update(batch(8), False)
        one = batch(1)
        probe = learner.probe(np.tile(OBS, (4, 1)), type(one)(*(x[0] for x in one)))
        weights = [w.numpy() for w in plain.weights]
        return measured.metrics, weights, {tag: np.asarray(v) for tag, v in probe.items()}

    lean = run()
    monkeypatch.setattr(compiled, "lean_call_options", lambda: None)
    default = run()
    assert lean[0] == default[0]
    for a, b in zip(lean[1], default[1], strict=True):
        np.testing.assert_array_equal(a, b)
    assert lean[2].keys() == default[2].keys()
    for tag in lean[2]:
        np.testing.assert_array_equal(lean[2][tag], default[2][tag])


def test_with_a_gpu_tf_defaults(monkeypatch, recwarn):
    compiled.lean_call_options.cache_clear()
    gpu = lambda kind=None: ["/GPU:0"] if kind == "GPU" else []  # noqa: E731
    monkeypatch.setattr(tf.config, "list_logical_devices", gpu)
    assert compiled.lean_call_options() is None and _compiled_warnings(recwarn) == []
    compiled.lean_call_options.cache_clear()


class _ContextWithoutASetter:
    """TF's eager context as a TensorFlow might change it: options to read, none to set."""

    def __init__(self, real):
        self._real = real

    @property
    def function_call_options(self):
        return self._real.function_call_options


@pytest.mark.parametrize("tensorflow", ["without the context module", "without the options' setter"])
def test_without_the_private_options_tf_defaults_with_one_warning(tensorflow, monkeypatch, recwarn):
    from tensorflow.python.eager import context

    compiled.lean_call_options.cache_clear()
    if tensorflow == "without the context module":  # as if TensorFlow had moved it
        monkeypatch.setattr(compiled, "tf_context", None)
    else:
        fake = type("FakeContextModule", (), {})()
        fake.context = lambda: _ContextWithoutASetter(context.context())
        fake.FunctionCallOptions = context.FunctionCallOptions
        monkeypatch.setattr(compiled, "tf_context", fake)
    assert compiled.lean_call_options() is None
    (warning,) = _compiled_warnings(recwarn)
    assert "TF's default graph optimizations instead" in str(warning.message)
    compiled.lean_call_options.cache_clear()
    _, fn = _affine()
    assert fn._options is None and _calls(fn)[0][1] == 15.0  # and the calls still work
    compiled.lean_call_options.cache_clear()
