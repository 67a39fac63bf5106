"""Optimizers for the learner: `make_optimizer(cfg)` -> an object with `build(variables)` and
`apply(grads, variables)`, the Keras 3 optimizer interface.

Adam, the optimizer of every shipped preset, is `FusedAdam`: the same update as `keras.optimizers.Adam`
(tests/test_optimizers.py checks them against each other) done by TensorFlow's fused `ResourceApplyAdam`
kernel, one op per variable instead of about a dozen. At one small update per call, op dispatch and not
arithmetic is the cost, and this saves a large share of an update (docs/performance.md). RMSProp and SGD are
Keras's own; `rmsprop_tf1` is TensorFlow 1's `tf.train.RMSPropOptimizer` (`FusedRMSPropTF1`), the optimizer of
devsisters/DQN-tensorflow.

The learning rate is a function of the env step (`learning_rate_at`: constant, staircase or linear). With a
schedule, the optimizer reads it from a variable that `LearningRateFeed` sets before each burst of updates,
to the value of the env step the burst runs at (every update of a burst belongs to that step: dqnlab.loop);
a constant rate stays a constant in the graph, so the default update has no extra op.
"""

from __future__ import annotations

from collections.abc import Sequence

from dqnlab._tf import keras, tf
from dqnlab.config import OptimizerConfig


def resource_handle(var) -> tf.Tensor:
    """The resource handle TensorFlow's fused `ResourceApply*` kernels update in place: a `tf.Variable`'s
    own, or the one inside a Keras 3 variable (`.value` is the tf.Variable it wraps: a Keras internal, so it
    is read here only; tests/test_optimizers.py checks it is the variable's storage)."""
    return var.handle if isinstance(var, tf.Variable) else var.value.handle


def slot_pairs(variables: Sequence, first: tuple, second: tuple) -> list[tuple[tf.Variable, tf.Variable]]:
    """Two state variables per trained variable, each (name, initial-value function of the variable)."""
    return [
        tuple(tf.Variable(init(v), trainable=False, name=name) for name, init in (first, second))
        for v in variables
    ]


class FusedAdam:
    """Adam (Kingma & Ba 2015) with Keras's defaults beta_1 = 0.9, beta_2 = 0.999, epsilon outside the sqrt:
    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    w <- w - lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps).
    """

    def __init__(
        self,
        learning_rate: float,
        epsilon: float = 1e-7,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        scheduled: bool = False,
    ):
        self._lr = _rate(learning_rate, scheduled)
        self._eps = tf.constant(epsilon, tf.float32)
        self._b1 = tf.constant(beta_1, tf.float32)
        self._b2 = tf.constant(beta_2, tf.float32)
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        self._b1_power = tf.Variable(1.0, trainable=False, name="beta_1_power")  # beta_1^t
        self._b2_power = tf.Variable(1.0, trainable=False, name="beta_2_power")
        self._slots: list[tuple[tf.Variable, tf.Variable]] = []

    def build(self, variables: Sequence) -> None:
        self._slots = slot_pairs(variables, ("m", tf.zeros_like), ("v", tf.zeros_like))

    @property
    def variables(self) -> list[tf.Variable]:
        """Its whole state, for checkpoints (Keras optimizers have the same attribute)."""
        return [
            self.iterations,
            self._b1_power,
            self._b2_power,
            *(slot for pair in self._slots for slot in pair),
        ]

    def apply(self, grads: Sequence[tf.Tensor], variables: Sequence) -> None:
        b1_power = self._b1_power.assign(self._b1_power * self._b1)
        b2_power = self._b2_power.assign(self._b2_power * self._b2)
        self.iterations.assign_add(1)
        for g, var, (m, v) in zip(grads, variables, self._slots, strict=True):
            tf.raw_ops.ResourceApplyAdam(
                var=resource_handle(var),
                m=m.handle,
                v=v.handle,
                beta1_power=b1_power,
                beta2_power=b2_power,
                lr=self._lr,
                beta1=self._b1,
                beta2=self._b2,
                epsilon=self._eps,
                grad=g,
            )


def _rate(learning_rate: float, scheduled: bool) -> tf.Tensor | tf.Variable:
    """The learning rate as the graph reads it: a constant, or a variable `set_learning_rate` assigns."""
    if scheduled:
        return tf.Variable(learning_rate, dtype=tf.float32, trainable=False, name="learning_rate")
    return tf.constant(learning_rate, tf.float32)


class FusedRMSPropTF1:
    """TensorFlow 1's `tf.train.RMSPropOptimizer(lr, decay=0.9, momentum, epsilon)` (devsisters/DQN-tensorflow
    passes momentum=0.95, epsilon=0.01), through the same `ResourceApplyRMSProp` kernel TF1 used:
    ms <- decay ms + (1 - decay) g^2;  mom <- momentum mom + lr g / sqrt(ms + eps);  w <- w - mom,
    with ms starting at 1 and mom at 0. Keras's RMSprop starts its mean square at 0, so its first steps are
    up to 1 / sqrt(1 - decay) = 3.2x larger (tests/test_lr_schedule.py checks this one against
    `tf.compat.v1.train.RMSPropOptimizer`)."""

    def __init__(
        self,
        learning_rate: float,
        momentum: float = 0.0,
        epsilon: float = 1e-10,
        decay: float = 0.9,
        scheduled: bool = False,
    ):
        self._lr = _rate(learning_rate, scheduled)
        self._rho = tf.constant(decay, tf.float32)
        self._momentum = tf.constant(momentum, tf.float32)
        self._eps = tf.constant(epsilon, tf.float32)
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        self._slots: list[tuple[tf.Variable, tf.Variable]] = []

    def build(self, variables: Sequence) -> None:
        self._slots = slot_pairs(variables, ("rms", tf.ones_like), ("momentum", tf.zeros_like))

    @property
    def variables(self) -> list[tf.Variable]:
        return [self.iterations, *(slot for pair in self._slots for slot in pair)]

    def apply(self, grads: Sequence[tf.Tensor], variables: Sequence) -> None:
        self.iterations.assign_add(1)
        for g, var, (ms, mom) in zip(grads, variables, self._slots, strict=True):
            tf.raw_ops.ResourceApplyRMSProp(
                var=resource_handle(var),
                ms=ms.handle,
                mom=mom.handle,
                lr=self._lr,
                rho=self._rho,
                momentum=self._momentum,
                epsilon=self._eps,
                grad=g,
            )


# Keras's optimizers keep their rate in a variable of their own (one of `optimizer.variables`).
OPTIMIZER_BUILDERS = {
    "adam": lambda c: FusedAdam(
        learning_rate=c.learning_rate, epsilon=c.epsilon, scheduled=c.schedule != "constant"
    ),
    "rmsprop": lambda c: keras.optimizers.RMSprop(
        learning_rate=c.learning_rate, epsilon=c.epsilon, momentum=c.momentum
    ),
    "rmsprop_tf1": lambda c: FusedRMSPropTF1(
        learning_rate=c.learning_rate,
        momentum=c.momentum,
        epsilon=c.epsilon,
        scheduled=c.schedule != "constant",
    ),
    "sgd": lambda c: keras.optimizers.SGD(learning_rate=c.learning_rate, momentum=c.momentum),
}


def make_optimizer(cfg: OptimizerConfig):
    try:
        return OPTIMIZER_BUILDERS[cfg.kind](cfg)
    except KeyError:
        raise ValueError(f"unknown optimizer {cfg.kind!r}; valid: {', '.join(OPTIMIZER_BUILDERS)}") from None


def learning_rate_at(step: int, cfg: OptimizerConfig) -> float:
    """The learning rate at env step `step`, in float64 (the optimizer applies it as float32):

    - constant: `learning_rate`;
    - staircase: max(learning_rate_end, learning_rate * decay_rate ** floor(step / decay_steps)), what
      devsisters/DQN-tensorflow computes with `tf.maximum(learning_rate_minimum,
      tf.train.exponential_decay(..., staircase=True))`, fed its env step;
    - linear: learning_rate + min(step / decay_steps, 1) * (learning_rate_end - learning_rate), the linear
      schedule SB3 and CleanRL use for epsilon.
    """
    lr0 = cfg.learning_rate
    if cfg.schedule == "staircase":
        return max(cfg.learning_rate_end, lr0 * cfg.decay_rate ** (step // cfg.decay_steps))
    if cfg.schedule == "linear":
        return lr0 + min(step / cfg.decay_steps, 1.0) * (cfg.learning_rate_end - lr0)
    if cfg.schedule == "constant":
        return lr0
    raise ValueError(f"unknown learning-rate schedule {cfg.schedule!r}")  # config validation lists them


def set_learning_rate(optimizer, value: float) -> None:
    """Make `optimizer`'s next updates use `value` (its rate must be a variable: a scheduled one)."""
    if isinstance(optimizer, (FusedAdam, FusedRMSPropTF1)):
        optimizer._lr.assign(value)
    else:
        optimizer.learning_rate = value  # Keras assigns its own learning-rate variable


class LearningRateFeed:
    """Sets the optimizer's learning rate to `learning_rate_at(step)` before each burst (assigning only when
    it changes) and returns it, for `charts/learning_rate`. It keeps no state a checkpoint needs: the rate
    is a function of the env step, which the loop's state restores."""

    def __init__(self, optimizer, cfg: OptimizerConfig):
        self._optimizer, self._cfg = optimizer, cfg
        self._last: float | None = None

    def __call__(self, step: int) -> float:
        value = learning_rate_at(step, self._cfg)
        if value != self._last:
            set_learning_rate(self._optimizer, value)
            self._last = value
        return value


def learning_rate_feed(optimizer, cfg: OptimizerConfig) -> LearningRateFeed | None:
    """The feed of a scheduled rate; None for a constant one (nothing to set, nothing extra to log)."""
    return None if cfg.schedule == "constant" else LearningRateFeed(optimizer, cfg)
