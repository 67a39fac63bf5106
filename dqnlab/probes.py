"""Activation probes: what each hidden layer does on a fixed batch of probe states.

Pure TF functions of a layer's pre-activations `x` [N, U] (N probe states, U units) and outputs `z`; the
learner runs them inside a compiled call on its own schedule. Definitions (docs/metrics.md):
- dead: a unit whose output is exactly 0 on every probe state (for ReLU: pre-activation <= 0 everywhere)
  gets no gradient on any of them ("permanent brain damage"); `dead_frac` is their share of the layer.
- dormant (Sokar et al., ICML 2023): unit score s_i = E|z_i| / mean_k E|z_k|; tau-dormant when s_i <= tau.
  A layer that is zero everywhere scores 0 for every unit (all dormant). tau = 0 is the dead fraction.
- saturated: sigmoid/tanh outputs within `margin` (0.03) of their bounds, as a share of (state, unit) entries.
- zero derivative: entries whose local derivative is exactly 0 in float32 (sigmoid output exactly 0 or 1,
  tanh exactly +-1, ReLU pre-activation <= 0): there the backward signal is cut, not just shrunk.
- srank (Kumar et al. 2021): smallest k with sum of the top-k singular values >= (1 - delta) of their total.

Conv layers (`conv_layer_stats`) are measured per channel: a channel is one unit seen at every spatial
position, so [N, H, W, C] becomes [N * H * W, C] and the same definitions apply. A channel is dead when its
output is 0 at every position of every probe state; its dormant score is its mean |z| over states and
positions divided by the layer's mean over channels; saturation and derivatives stay shares of entries.
"""

from __future__ import annotations

from dqnlab._tf import tf

SATURATION_BOUNDS = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}


def local_derivative(x: tf.Tensor, z: tf.Tensor, activation: str) -> tf.Tensor:
    """d z / d x elementwise, written from the output as TF's own gradients are."""
    if activation == "relu":
        return tf.cast(x > 0.0, z.dtype)
    if activation == "sigmoid":
        return z * (1.0 - z)
    if activation == "tanh":
        return 1.0 - tf.square(z)
    raise ValueError(f"no local derivative for activation {activation!r}")


def dead_frac(z: tf.Tensor) -> tf.Tensor:
    """Share of units whose output is exactly 0 on every probe state. z: [N, U]."""
    return tf.reduce_mean(tf.cast(tf.reduce_all(tf.equal(z, 0.0), axis=0), tf.float32))


def dormant_frac(z: tf.Tensor, tau: float) -> tf.Tensor:
    """Share of tau-dormant units (Sokar et al. 2023). z: [N, U]."""
    per_unit = tf.reduce_mean(tf.abs(z), axis=0)  # [U]
    score = tf.math.divide_no_nan(per_unit, tf.reduce_mean(per_unit))  # 0 everywhere if the layer is all 0
    return tf.reduce_mean(tf.cast(score <= tau, tf.float32))


def saturated_frac(z: tf.Tensor, activation: str, margin: float = 0.03) -> tf.Tensor:
    """Share of (state, unit) outputs within `margin` of the activation's bounds (0 for ReLU)."""
    if activation not in SATURATION_BOUNDS:
        return tf.constant(0.0)
    low, high = SATURATION_BOUNDS[activation]
    return tf.reduce_mean(tf.cast((z <= low + margin) | (z >= high - margin), tf.float32))


def zero_derivative_frac(x: tf.Tensor, z: tf.Tensor, activation: str) -> tf.Tensor:
    """Share of (state, unit) entries whose local derivative is exactly 0."""
    return tf.reduce_mean(tf.cast(tf.equal(local_derivative(x, z, activation), 0.0), tf.float32))


def srank(features: tf.Tensor, delta: float = 0.01) -> tf.Tensor:
    """Effective rank of a feature matrix [N, U]: min k with sum_{i<=k} sigma_i >= (1 - delta) sum sigma.

    The singular values are the square roots of the eigenvalues of the smaller Gram matrix (U x U or N x N),
    formed and decomposed in float64: float32 products are exact in float64, so this is more accurate than
    a float32 SVD wherever a value counts (a singular value below ~1e-7 of the largest adds nothing to the
    sum), and 1.7x faster at the probe's 256 x 256 (docs/performance.md)."""
    rows, cols = features.shape
    if rows is None or cols is None:  # shapes known only at run time: the SVD, whatever they are
        sigma = tf.linalg.svd(features, compute_uv=False)  # descending
    else:
        x = tf.cast(features, tf.float64)
        gram = tf.matmul(x, x, transpose_a=rows >= cols, transpose_b=rows < cols)
        sigma = tf.sqrt(tf.maximum(tf.reverse(tf.linalg.eigvalsh(gram), [0]), 0.0))  # descending
    cumulative = tf.math.cumsum(sigma) / tf.maximum(tf.reduce_sum(sigma), 1e-12)
    return tf.reduce_sum(tf.cast(cumulative < 1.0 - delta, tf.int32)) + 1


def layer_stats(name: str, x: tf.Tensor, z: tf.Tensor, activation: str, diag) -> dict[str, tf.Tensor]:
    """The probe's tags for one layer from its pre-activations `x` and outputs `z` ([N, U]); `diag` is the
    DiagnosticsConfig (tau, saturation margin)."""
    return {
        f"act_dead_frac/{name}": dead_frac(z),
        f"act_dormant_frac/{name}": dormant_frac(z, diag.dormant_tau),
        f"act_saturated_frac/{name}": saturated_frac(z, activation, diag.saturation_margin),
        f"act_zero_deriv_frac/{name}": zero_derivative_frac(x, z, activation),
        f"act_deriv_mean/{name}": tf.reduce_mean(local_derivative(x, z, activation)),
    }


def channels_as_units(t: tf.Tensor) -> tf.Tensor:
    """A conv layer's [N, H, W, C] as [N * H * W, C]: each channel one unit, each position a sample."""
    return tf.reshape(t, [-1, t.shape[-1]])


def conv_layer_stats(name: str, x: tf.Tensor, z: tf.Tensor, activation: str, diag) -> dict[str, tf.Tensor]:
    """`layer_stats` of a conv layer (NHWC pre-activations `x` and outputs `z`), per channel."""
    return layer_stats(name, channels_as_units(x), channels_as_units(z), activation, diag)
