"""A TF function traced once for fixed input shapes, called with as little Python per call as TF allows.

A small DQN pays per call, not per FLOP. `ConcreteFunction.__call__` binds its arguments against the traced
signature on every call (signature binding, nest flattening, numpy conversion); docs/performance.md has
what that costs an update call. `Compiled` checks each call's arrays against the traced shapes itself (a
tuple compare, so a wrong shape is still one clear error) and enters through `ConcreteFunction._call_flat`,
the entry point TF's own `__call__` ends in once arguments are bound.

That method is private, so `Compiled` checks it once, when it traces, before any call (see
`fast_path_problem`), and on any mismatch calls the public `ConcreteFunction.__call__` for good, with one
warning. The check never calls the traced function itself, whose calls have side effects (an optimizer
update): it reads the function's signature and graph inputs, and compares the two entry points on a probe
function without side effects, once per process.

A function's first call runs TF's graph optimizer (Grappler) on it, and on a CPU-only process four of its
steps do nothing for these graphs but cost every compiled function's first call (`lean_call_options`):
`Compiled` calls with options that leave them out, set for its own call only (TF reads them per thread, per
call), so a user's own TF code in the same process keeps TF's defaults.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from dqnlab._tf import tf

try:  # private: used only through `lean_call_options`, which checks what it needs
    from tensorflow.python.eager import context as tf_context
except ImportError:  # pragma: no cover - a TensorFlow that moved it: TF's own options
    tf_context = None

FAST_ENTRY = "_call_flat"  # the private ConcreteFunction method the fast path calls (spelled out there)
FAST_ENTRY_PARAMETERS = ["tensor_inputs", "captured_inputs"]  # what it takes, as the fast path passes them
# Grappler's steps that `Compiled`'s calls leave out on a CPU-only process (`lean_call_options`): a
# RewriterConfig field and its value (a string names one of RewriterConfig's enum values).
LEFT_OUT = {
    "meta_optimizer_iterations": "ONE",  # its second round
    "disable_tfg_optimizer": True,  # the TFG (MLIR) pipeline
    "memory_optimization": "NO_MEM_OPT",  # swapping to host memory, for GPUs
    "layout_optimizer": "OFF",  # converts no layout on a CPU
}


class Compiled:
    """`fn` traced once (autograph off) for `specs`; call it with numpy arrays of exactly those shapes."""

    def __init__(self, fn: Callable, specs: Sequence[tf.TensorSpec]):
        self.concrete = tf.function(fn, autograph=False).get_concrete_function(*specs)
        self._specs = [(tuple(spec.shape), np.dtype(spec.dtype.as_numpy_dtype)) for spec in specs]
        problem = fast_path_problem(self.concrete, specs)
        self._fast = problem is None
        self._options = lean_call_options()
        if problem is not None:
            warnings.warn(
                f"dqnlab.compiled: {problem}; calling through ConcreteFunction.__call__ instead "
                "(same results, slower per call)",
                RuntimeWarning,
                stacklevel=2,
            )

    def __call__(self, *arrays: np.ndarray):
        if len(arrays) != len(self._specs):
            raise TypeError(f"expected {len(self._specs)} arrays, got {len(arrays)}")
        for i, (array, (shape, dtype)) in enumerate(zip(arrays, self._specs, strict=True)):
            if array.shape != shape or array.dtype != dtype:
                raise ValueError(
                    f"argument {i} is {array.dtype}{list(array.shape)}, but this function was traced for "
                    f"{dtype}{list(shape)}: shapes are fixed once traced"
                )
        if self._options is None:
            return self._call(arrays)
        context = tf_context.context()
        saved, context.function_call_options = context.function_call_options, self._options
        try:
            return self._call(arrays)
        finally:
            context.function_call_options = saved

    def _call(self, arrays):
        if not self._fast:
            return self.concrete(*arrays)
        return self.concrete._call_flat([tf.constant(a) for a in arrays], self.concrete.captured_inputs)


@functools.cache
def lean_call_options():
    """The function-call options `Compiled` calls with: this thread's, less four Grappler steps that leave a
    dqnlab graph as it was on a CPU-only process; None (TF's own) on a process that sees a GPU, or where this
    TensorFlow's call options cannot be read (then with one warning).

    Measured on the 256-256 MLP's measured burst of 128 updates (TF_CPP_VMODULE=meta_optimizer=1 and
    docs/performance.md): the meta optimizer's second round removes 16 of ~880 nodes, the TFG pipeline,
    the memory optimizer (GPU swapping) and the layout optimizer (no conversion on a CPU) none, and together
    they cost the burst's first call ~75 ms, the probe's ~25 ms, a plain burst's ~30 ms. The values computed
    are the same bits (tests/test_compiled.py; every scalar of six presets' runs, docs/performance.md). With
    a GPU the layout optimizer is what puts convolutions in the GPU's layout, so TF's defaults stay.
    """
    if tf.config.list_logical_devices("GPU"):
        return None
    try:
        context = tf_context.context()
        config = tf.compat.v1.ConfigProto()
        config.ParseFromString(context.function_call_options.config_proto_serialized)
        rewrite = config.graph_options.rewrite_options
        for field, value in LEFT_OUT.items():
            setattr(rewrite, field, getattr(type(rewrite), value) if isinstance(value, str) else value)
        options, saved = tf_context.FunctionCallOptions(config_proto=config), context.function_call_options
        context.function_call_options = options  # the setter, once, as `Compiled.__call__` uses it
        context.function_call_options = saved
        return options
    except Exception as err:  # any failure of a private API is a reason to leave it
        first_line = next(iter(str(err).splitlines()), "")
        warnings.warn(
            f"dqnlab.compiled: TF's function-call options cannot be set ({type(err).__name__}: "
            f"{first_line}); TF's default graph optimizations instead (same results, slower first calls)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def fast_path_problem(concrete, specs: Sequence[tf.TensorSpec]) -> str | None:
    """Why `concrete` cannot be called as `Compiled` calls it, or None. Calls nothing of `concrete`'s.

    - The entry point exists and takes `(tensor_inputs, captured_inputs)`.
    - The traced graph's inputs are the arrays, in `specs`' order, then one per captured input, of the same
      dtypes: what `concrete.captured_inputs` holds (the public property `__call__` passes along too).
    - The entry point, called that way, returns what `__call__` returns: checked on a probe with a
      captured variable and nested outputs, once per process and implementation of the entry point.
    """
    entry = getattr(concrete, FAST_ENTRY, None)
    if not callable(entry):
        return f"this TensorFlow's ConcreteFunction has no {FAST_ENTRY}"
    try:
        parameters = list(inspect.signature(entry).parameters)
    except (TypeError, ValueError):
        return f"ConcreteFunction.{FAST_ENTRY}'s signature cannot be read"
    if parameters != FAST_ENTRY_PARAMETERS:
        return (
            f"ConcreteFunction.{FAST_ENTRY} takes ({', '.join(parameters)}), not "
            f"({', '.join(FAST_ENTRY_PARAMETERS)})"
        )
    inputs, captured = list(concrete.inputs), list(concrete.captured_inputs)
    if len(inputs) != len(specs) + len(captured):
        return (
            f"the traced graph takes {len(inputs)} inputs, not {len(specs)} arrays and "
            f"{len(captured)} captured inputs"
        )
    for i, (graph_input, spec) in enumerate(zip(inputs, specs, strict=False)):
        if graph_input.dtype != spec.dtype or graph_input.shape != spec.shape:
            return f"the traced graph's input {i} is {graph_input.dtype.name}{graph_input.shape}, not {spec}"
    for graph_input, outside in zip(inputs[len(specs) :], captured, strict=True):
        if graph_input.dtype != outside.dtype:
            return f"a captured input is {outside.dtype.name} where the graph takes {graph_input.dtype.name}"
    implementation = getattr(type(concrete), FAST_ENTRY, None)
    if not callable(implementation):
        return f"{FAST_ENTRY} is not a method of {type(concrete).__name__}"
    return entry_point_problem(implementation)


@functools.cache
def entry_point_problem(implementation: Callable) -> str | None:
    """Whether `implementation(concrete, tensor_inputs, captured_inputs)` (the unbound entry point) returns
    what `concrete(*args)` returns, on a probe that only reads: a captured variable, two arguments, a tuple
    holding a dict. Cached per implementation: a probe is traced once per process."""
    weights = tf.Variable([[1.0, 2.0], [3.0, 4.0]])
    probe = tf.function(
        lambda x, k: (tf.matmul(x, weights) * tf.cast(k, tf.float32), {"k": k + 1}), autograph=False
    ).get_concrete_function(tf.TensorSpec([2, 2], tf.float32), tf.TensorSpec([], tf.int32))
    x, k = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32), np.array(3, np.int32)
    public = probe(x, k)
    try:
        fast = implementation(probe, [tf.constant(x), tf.constant(k)], probe.captured_inputs)
        tf.nest.assert_same_structure(public, fast)
    except Exception as err:  # any failure of a private API is a reason to leave it
        first_line = next(iter(str(err).splitlines()), "")
        return f"ConcreteFunction.{FAST_ENTRY} on a probe: {type(err).__name__}: {first_line}"
    pairs = zip(tf.nest.flatten(public), tf.nest.flatten(fast), strict=True)
    if not all(np.array_equal(a.numpy(), b.numpy()) for a, b in pairs):
        return f"ConcreteFunction.{FAST_ENTRY} on a probe returned other values than __call__"
    return None
