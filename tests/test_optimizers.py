"""FusedAdam makes the same updates as keras.optimizers.Adam."""

from __future__ import annotations

import numpy as np
import pytest

from dqnlab._tf import keras, tf
from dqnlab.optimizers import FusedAdam


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("lr, eps", [(1e-3, 1e-7), (2.3e-3, 1e-8), (0.1, 1e-3)])
def test_fused_adam_equals_keras_adam(compiled, lr, eps):
    rng = np.random.default_rng(0)
    init = [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)]
    ours = [keras.Variable(w) for w in init]
    theirs = [keras.Variable(w) for w in init]
    fused, reference = FusedAdam(lr, epsilon=eps), keras.optimizers.Adam(lr, epsilon=eps)
    fused.build(ours)
    reference.build(theirs)

    def step(grads):  # variables are captured, as in the learner
        fused.apply(grads, ours)

    step = tf.function(step, autograph=False) if compiled else step
    for _ in range(20):
        grads = [tf.constant(rng.normal(scale=3.0, size=w.shape).astype(np.float32)) for w in init]
        step(grads)
        reference.apply(grads, theirs)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert int(fused.iterations.numpy()) == 20


def test_resource_handle_is_the_storage_of_a_keras_variable_and_of_a_tf_variable():
    """The one Keras internal used (`var.value.handle`): a write through the handle changes the variable."""
    from dqnlab._tf import keras, tf
    from dqnlab.optimizers import resource_handle

    for var in (keras.Variable(np.zeros(3, np.float32)), tf.Variable(np.zeros(3, np.float32))):
        tf.raw_ops.AssignVariableOp(resource=resource_handle(var), value=np.arange(3, dtype=np.float32))
        np.testing.assert_array_equal(np.asarray(var), [0.0, 1.0, 2.0])
