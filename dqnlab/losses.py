"""TD losses for DQN, as pure per-sample functions of the TD error.

Every function takes `delta = target - Q(s, a)` of shape [B] and a `bound` (the clip bound, or Huber's
kappa) and returns the per-sample loss, shape [B]; the learner reduces it with an explicit mean. What
matters for dqnlab is what each one does to the gradient dL/d(delta) *beyond the bound*:

| loss                       | forward             | gradient inside | gradient beyond the bound |
|----------------------------|---------------------|-----------------|---------------------------|
| `squared`                  | 0.5 d^2             | d               | d (unbounded)             |
| `clipped_delta_squared`    | clip(d, -b, b)^2    | 2 d             | exactly 0 (the bug)       |
| `clipped_gradient_squared` | 0.5 d^2             | d               | +-b (= Huber's)           |
| `huber`                    | Huber(d, kappa = b) | d               | +-kappa                   |

The bug: devsisters/DQN-tensorflow (`dqn/agent.py`, 2016) wrote `loss = mean(square(clip_by_value(delta,
-1, 1)))`, meaning to clip the gradient as the 2015 Nature DQN does. But clip_by_value's local gradient is
0 outside its range, so every transition with |delta| > 1 teaches nothing. Reported in that repository's
issue #16 and fixed the next day with a Huber loss (commit 6d11105).
"""

from __future__ import annotations

from collections.abc import Callable

from dqnlab._tf import tf

LossFn = Callable[[tf.Tensor, float], tf.Tensor]


def squared(delta: tf.Tensor, bound: float) -> tf.Tensor:
    """0.5 * delta^2: the unclipped control. Gradient: delta, unbounded. `bound` is ignored."""
    del bound
    return 0.5 * tf.square(delta)


def clipped_delta_squared(delta: tf.Tensor, bound: float) -> tf.Tensor:
    """square(clip_by_value(delta, -bound, bound)): the 2016 clipped-delta bug, written exactly as it was.

    Gradient: 2 * delta for |delta| <= bound and EXACTLY ZERO beyond it, because clip_by_value passes no
    gradient outside its range. The factor 2 inside the bound (against Huber's 1) is kept so this is
    literally the buggy code; Adam is invariant to a constant scale of the loss, so it changes nothing there.
    Source: devsisters/DQN-tensorflow issue #16 (2016-12-18).
    """
    return tf.square(tf.clip_by_value(delta, -bound, bound))


def clipped_gradient_squared(delta: tf.Tensor, bound: float) -> tf.Tensor:
    """Forward 0.5 * delta^2, backward clip(delta, -bound, bound): what the 2016 code meant.

    Gradient: delta inside the bound and +-bound beyond, i.e. exactly Huber's gradient (rlax:
    grad of 0.5 * clip_gradient(d)^2 == grad of huber(d)); the forward value is the squared loss's.
    The clip is applied to each sample's own gradient, not to the cotangent flowing into delta: rlax's
    `clip_gradient` clips the incoming cotangent, which after a batch mean is delta_i / B -- which is why
    dqn_zoo sets `grad_error_bound = 1 / 32` for B = 32. Done per sample, it equals Huber whatever the
    reduction.
    """

    @tf.custom_gradient
    def _loss(d: tf.Tensor):
        def grad(upstream: tf.Tensor) -> tf.Tensor:
            return upstream * tf.clip_by_value(d, -bound, bound)

        return 0.5 * tf.square(d), grad

    return _loss(delta)


def huber(delta: tf.Tensor, bound: float) -> tf.Tensor:
    """Huber loss with kappa = bound: 0.5 d^2 for |d| <= kappa, kappa * (|d| - 0.5 kappa) beyond.

    Gradient: clip(delta, -kappa, kappa), so +-kappa beyond the bound: every transition still teaches, the
    large errors at a bounded rate (Huber 1964; the fix of devsisters/DQN-tensorflow commit 6d11105).
    Written elementwise: keras.losses.Huber averages over the last axis.
    """
    abs_delta = tf.abs(delta)
    quadratic = tf.minimum(abs_delta, bound)
    linear = abs_delta - quadratic
    return 0.5 * tf.square(quadratic) + bound * linear


LOSSES: dict[str, LossFn] = {
    "squared": squared,
    "clipped_delta_squared": clipped_delta_squared,
    "clipped_gradient_squared": clipped_gradient_squared,
    "huber": huber,
}


def get_loss(name: str) -> LossFn:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}") from None
