"""TD losses for DQN, as pure per-sample functions of the TD error.

Every function takes `delta = target - Q(s, a)` of shape [B] and a `bound` (the clip bound, or Huber's
kappa) and returns the per-sample loss, shape [B]; the caller reduces it with an explicit mean. What
matters for dqnlab is what each one does to the gradient dL/d(delta) *beyond the bound*:

| loss                       | forward             | gradient inside | gradient beyond the bound |
|----------------------------|---------------------|-----------------|---------------------------|
| `squared`                  | 0.5 d^2             | d               | d (unbounded)             |
| `clipped_delta_squared`    | clip(d, -b, b)^2    | 2 d             | exactly 0 (the bug)       |
| `clipped_gradient_squared` | 0.5 d^2             | d               | +-b (= Huber's)           |
| `huber`                    | Huber(d, kappa = b) | d               | +-kappa                   |

The bug: devsisters/DQN-tensorflow (`dqn/agent.py`, late 2016) wrote `loss = mean(square(clip_by_value(
delta, -1, 1)))`, meaning to clip the gradient as the 2015 Nature DQN does. But clip_by_value's local
gradient is 0 outside its range, so every transition with |delta| > 1 -- the ones with most to teach --
contributes nothing. Reported in that repository's issue #16 (2016-12-18) and fixed the next day with a
Huber loss (commit 6d11105). The correct clip is a backward one (`clipped_gradient_squared`): forward value
unchanged, gradient clipped, which is exactly Huber's gradient.

All four work eagerly and inside `tf.function`, in float32 and float64; `bound` is a Python float.
"""

from __future__ import annotations

from collections.abc import Callable

from dqnlab._tf import tf

LossFn = Callable[[tf.Tensor, float], tf.Tensor]


def squared(delta: tf.Tensor, bound: float) -> tf.Tensor:
    """0.5 * delta^2: the unclipped control (the squared TD error of Mnih et al. 2013; CleanRL's MSE).

    Gradient: d/d(delta) = delta, unbounded: large TD errors give large gradients. `bound` is ignored.
    """
    del bound  # Same signature as the others so the registry can swap them.
    return 0.5 * tf.square(delta)


def clipped_delta_squared(delta: tf.Tensor, bound: float) -> tf.Tensor:
    """square(clip_by_value(delta, -bound, bound)): the 2016 clipped-delta bug, written exactly as it was.

    Source: devsisters/DQN-tensorflow `dqn/agent.py` (2016), issue #16; fixed with Huber in commit 6d11105.
    Gradient: 2 * delta for |delta| <= bound (the bound itself included) and EXACTLY ZERO for
    |delta| > bound, because clip_by_value passes no gradient outside its range. The factor 2 inside the
    bound (against Huber's 1; there is no 0.5) is kept so that this is literally the buggy code; Adam is
    invariant to a constant scale of the loss, so the factor changes nothing there.
    """
    return tf.square(tf.clip_by_value(delta, -bound, bound))


def clipped_gradient_squared(delta: tf.Tensor, bound: float) -> tf.Tensor:
    """Forward 0.5 * delta^2, backward clip(delta, -bound, bound): what the 2016 code meant.

    Source: the 2015 Nature DQN's error clipping (Mnih et al.); rlax `clip_gradient`, whose docs state
    grad of 0.5 * clip_gradient(d)^2 == grad of huber(d). Gradient: delta for |delta| <= bound and exactly
    +-bound beyond, i.e. exactly Huber's gradient with kappa = bound; the forward value is `squared`'s.

    The clip is applied to each sample's own gradient dL_i/d(delta_i), via `tf.custom_gradient` on the
    per-sample loss, not to the cotangent that flows into delta. rlax's `clip_gradient` clips that incoming
    cotangent, which after a batch mean is delta_i / B, not delta_i -- which is why dqn_zoo sets
    `grad_error_bound = 1 / 32` for B = 32. Done per sample, the gradient equals Huber's whatever the
    reduction (sum, mean, any B).
    """

    @tf.custom_gradient
    def _loss(d: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
        def grad(upstream: tf.Tensor) -> tf.Tensor:
            # upstream is the reduction's weight (1 or 1/B); the clip acts on dL_i/d(delta_i) itself.
            return upstream * tf.clip_by_value(d, -bound, bound)

        return 0.5 * tf.square(d), grad

    return _loss(delta)


def huber(delta: tf.Tensor, bound: float) -> tf.Tensor:
    """Huber loss, kappa = bound: 0.5 * d^2 for |d| <= kappa, kappa * (|d| - 0.5 * kappa) beyond.

    Source: Huber (1964); the fix of devsisters/DQN-tensorflow (commit 6d11105); rlax `huber_loss`.
    Gradient: clip(delta, -kappa, kappa): delta inside, exactly +-kappa beyond, so every transition still
    teaches and large errors do so at a bounded rate.

    Written elementwise (keras.losses.Huber averages over the last axis) and with `tf.where` rather than
    rlax's `0.5 * q^2 + kappa * (|d| - q)`, q = min(|d|, kappa): that form sums two gradient terms that
    cancel only up to rounding (about 1e-9 off under a batch mean), whereas this one gives bit-for-bit the
    same gradient as `clipped_gradient_squared`.
    """
    abs_delta = tf.abs(delta)
    # Clipped inside the quadratic branch so its unselected gradient (2d) cannot overflow to inf for huge
    # |d|, which tf.where's zero upstream would turn into NaN; inside the bound the clip is the identity.
    small = tf.clip_by_value(delta, -bound, bound)
    return tf.where(abs_delta <= bound, 0.5 * tf.square(small), bound * (abs_delta - 0.5 * bound))


LOSSES: dict[str, LossFn] = {
    "squared": squared,
    "clipped_delta_squared": clipped_delta_squared,
    "clipped_gradient_squared": clipped_gradient_squared,
    "huber": huber,
}


def get_loss(name: str) -> LossFn:
    """The per-sample loss registered under `name`, or the user's function an import path names
    (`package.module:fn`, dqnlab.components); ValueError listing the valid names otherwise."""
    if ":" in name:
        from dqnlab.components import resolve

        return resolve("loss.kind", name)
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid losses: {', '.join(LOSSES)}") from None


def td_target(
    rewards: tf.Tensor,
    discounts: tf.Tensor,
    q_target_next: tf.Tensor,
    q_selector_next: tf.Tensor | None = None,
) -> tf.Tensor:
    """The one-step TD target r_t + discount_t * v(s_t), held constant (no gradient flows into it).

    Shapes [...] for `rewards` and `discounts` (gamma already folded in: 0 at a terminal) and [..., A] for
    the Q-values of s_t. v(s_t) is max_a Q_target(s_t, a) (DQN), or with `q_selector_next` Double DQN's
    Q_target(s_t, argmax_a Q_selector(s_t, a)) (van Hasselt et al. 2016; rlax's `double_q_learning`).
    """
    if q_selector_next is None:
        v_next = tf.reduce_max(q_target_next, axis=-1)
    else:
        a_next = tf.argmax(q_selector_next, axis=-1, output_type=tf.int32)
        v_next = tf.gather(q_target_next, a_next, batch_dims=a_next.shape.rank)
    return tf.stop_gradient(rewards + discounts * v_next)
