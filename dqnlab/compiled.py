"""A TF function traced once for fixed input shapes, called with as little Python per call as TF allows.

A small DQN pays per call, not per FLOP. `ConcreteFunction.__call__` binds its arguments against the traced
signature on every call (signature binding, nest flattening, numpy conversion): about 0.06 ms of a 0.5 ms
update call at the `cleanrl` benchmark setting (scripts/bench_peers.py). `Compiled` checks each call's
arrays against the traced shapes itself (a tuple compare, so a wrong shape is still one clear error) and
enters through `ConcreteFunction._call_flat`, the entry point TF's own `__call__` ends in once arguments
are bound. That method is private: where a TensorFlow lacks it, the public call is used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from dqnlab._tf import tf


class Compiled:
    """`fn` traced once (autograph off) for `specs`; call it with numpy arrays of exactly those shapes."""

    def __init__(self, fn: Callable, specs: Sequence[tf.TensorSpec]):
        self.concrete = tf.function(fn, autograph=False).get_concrete_function(*specs)
        self._specs = [(tuple(spec.shape), np.dtype(spec.dtype.as_numpy_dtype)) for spec in specs]
        self._fast = callable(getattr(self.concrete, "_call_flat", None))

    def __call__(self, *arrays: np.ndarray):
        if len(arrays) != len(self._specs):
            raise TypeError(f"expected {len(self._specs)} arrays, got {len(arrays)}")
        for i, (array, (shape, dtype)) in enumerate(zip(arrays, self._specs, strict=True)):
            if array.shape != shape or array.dtype != dtype:
                raise ValueError(
                    f"argument {i} is {array.dtype}{list(array.shape)}, but this function was traced for "
                    f"{dtype}{list(shape)}: shapes are fixed once traced"
                )
        if not self._fast:
            return self.concrete(*arrays)
        return self.concrete._call_flat([tf.constant(a) for a in arrays], self.concrete.captured_inputs)
