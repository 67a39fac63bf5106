"""What dqnlab reads of a Keras Q-network it did not build (a `network.kind` of your own, `dqnlab.Panel`'s
model): where its activations are, found by watching the model run.

`probe_plan` runs the model once, in a trace, with every layer's `call` watched, and finds each place a
nonlinearity is applied to a layer's units:

- a Dense or convolution layer's own activation (`Dense(64, activation="relu")`);
- an activation layer (`Activation`, `ReLU`, `LeakyReLU`, `ELU`, `PReLU`) anywhere: right after a linear
  Dense, after a normalization (`Dense -> LayerNormalization -> ReLU`, the block of many recent RL networks),
  after a residual sum;
- an activation op your own `call` applies to a linear layer's output (`tf.nn.relu(self.fc(x))`), read off
  the traced graph (relu, sigmoid, tanh, elu, selu, leaky relu, relu6).

Its units are named after the linear layer they come from when only normalization or dropout layers stand in
between (`Dense(64, name="trunk")` then `ReLU()` logs `act_dead_frac/trunk`), else after the activation
layer. A linear layer that no activation follows (a dueling head's value stream, a residual branch) has no
units that can die and is not probed: its outputs are never exactly 0, so it would read 0% dead forever.

Only the layers' calls are watched, so subclassed and nested models are read as they run, whatever their
`call` does. `probed_activations` replays the plan on the probe states (in a trace or eagerly) and returns
each point's pre-activations and outputs, and the features the Q head reads (`features/srank`).
"""

from __future__ import annotations

import contextlib
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

from dqnlab import probes
from dqnlab._tf import keras, tf

PROBED_ACTIVATIONS = ("relu", "sigmoid", "tanh")  # probes.local_derivative and saturation bounds know these

# Layers that apply an activation and nothing else, besides `Activation` (a plain ReLU() is "relu").
_ACTIVATION_LAYERS = (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU, keras.layers.PReLU)

# Layers between a linear layer and its activation that keep its units as units: the activation's units are
# still that layer's (BatchNorm and LayerNorm blocks, dropout).
_PASS_THROUGH = tuple(
    getattr(keras.layers, name)
    for name in (
        "BatchNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "UnitNormalization",
        "RMSNormalization",
        "Dropout",
        "AlphaDropout",
        "GaussianDropout",
        "GaussianNoise",
    )
    if hasattr(keras.layers, name)
)

# Graph ops that are an activation applied in a model's own code: op type -> (name, function of the op).
_OP_ACTIVATIONS: dict[str, Callable[[Any], tuple[str, Callable]]] = {
    "Relu": lambda op: ("relu", tf.nn.relu),
    "Sigmoid": lambda op: ("sigmoid", tf.sigmoid),
    "Tanh": lambda op: ("tanh", tf.tanh),
    "Elu": lambda op: ("elu", tf.nn.elu),
    "Selu": lambda op: ("selu", tf.nn.selu),
    "Relu6": lambda op: ("relu_variant", tf.nn.relu6),
    "LeakyRelu": lambda op: ("leaky_relu", partial(tf.nn.leaky_relu, alpha=op.get_attr("alpha"))),
}


@dataclass(frozen=True)
class ProbePoint:
    """One place the model applies an activation to a layer's units."""

    name: str  # the <layer> of its act_*/<layer> tags
    activation: str  # "relu", "sigmoid", "tanh": every probe; any other: dead and dormant units only
    read: str  # "own": a layer's own activation; "layer": an activation layer; "op": an op on its output
    layer: keras.layers.Layer  # the layer with the activation ("own", "layer") or whose output the op reads
    call: int  # which of `layer`'s calls in one forward pass (a layer may be called more than once)
    kernel_layer: keras.layers.Layer | None  # the layer whose kernel makes these units, if one does
    fn: Callable | None = None  # "op": the activation, applied here to `layer`'s output


@dataclass(frozen=True)
class ProbePlan:
    points: tuple[ProbePoint, ...]  # in the order the forward pass applies them
    head: keras.layers.Layer | None  # the last layer with a kernel the forward pass calls: the Q head
    head_call: int = 0


class _Call(NamedTuple):
    layer: keras.layers.Layer
    inputs: Any
    outputs: Any


def activation_name(layer: keras.layers.Layer) -> str:
    """The name of a layer's own `activation` ("linear" when it has none; a function of yours by its name)."""
    fn = getattr(layer, "activation", None)
    return "linear" if fn is None else getattr(fn, "__name__", type(fn).__name__)


def probe_plan(model: keras.Model, spec: tf.TensorSpec) -> ProbePlan:
    """Where `model` applies its activations, from one traced run on inputs of `spec` (nothing is computed).
    Raises what the model raises when it cannot run on such inputs."""
    plans: list[ProbePlan] = []

    def trace(states):
        calls, _ = _watched_forward(model, states)
        plans.append(_plan(calls))

    tf.function(trace, autograph=False).get_concrete_function(spec)
    return plans[0]


def probed_activations(
    model: keras.Model, plan: ProbePlan, states: tf.Tensor
) -> tuple[list[tuple[ProbePoint, tf.Tensor, tf.Tensor]], tf.Tensor | None]:
    """Each point of `plan` with its pre-activations x and outputs z on `states` ([N, U]; a convolution's
    channels are its units, each position a sample), and the features the Q head reads ([N, F], None
    without a head)."""
    calls, own = _watched_forward(model, states)
    made: dict[int, list[_Call]] = defaultdict(list)
    for c in calls:
        made[id(c.layer)].append(c)
    own_made: dict[int, list[tuple[Any, Any]]] = defaultdict(list)
    for layer, x, z in own:
        own_made[id(layer)].append((x, z))
    out = []
    for p in plan.points:
        if p.read == "own":
            x, z = own_made[id(p.layer)][p.call]
        elif p.read == "layer":
            c = made[id(p.layer)][p.call]
            x, z = c.inputs, c.outputs
        else:
            x = made[id(p.layer)][p.call].outputs
            z = p.fn(x)
        out.append((p, _units(x), _units(z)))
    features = None
    if plan.head is not None:
        features = _units(_first(made[id(plan.head)][plan.head_call].inputs))
    return out, features


def _units(t) -> tf.Tensor:
    """[N, ..., U] as float32 [N * ..., U]: a unit is the last axis (a convolution's channel)."""
    t = tf.cast(t, tf.float32)
    return t if t.shape.rank == 2 else tf.reshape(t, [-1, t.shape[-1]])


def _first(inputs):
    return inputs[0] if isinstance(inputs, (list, tuple)) else inputs


def _layers(model: keras.layers.Layer) -> list[keras.layers.Layer]:
    """Every layer inside `model`, those of nested models and layers included."""
    try:
        return list(model._flatten_layers(include_self=False, recursive=True))
    except AttributeError:  # a Keras without it: the layers each layer lists
        found = []
        for layer in getattr(model, "layers", None) or getattr(model, "_layers", []):
            found += [layer, *_layers(layer)]
        return found


@contextlib.contextmanager
def _watching(model: keras.Model) -> Iterator[tuple[list[_Call], list[tuple]]]:
    """While inside, every layer's call is recorded (layer, first input, output), in the order they end, and
    every kernel layer's own activation (layer, x, z); each patch is on the instance and undone after."""
    calls: list[_Call] = []
    own: list[tuple] = []
    undo: list[tuple[keras.layers.Layer, str, Any]] = []

    def patch(layer, attribute: str, value) -> None:
        undo.append((layer, attribute, layer.__dict__.get(attribute, _ABSENT)))
        object.__setattr__(layer, attribute, value)

    def watched_call(layer, call):
        def call_and_record(*args, **kwargs):
            outputs = call(*args, **kwargs)
            calls.append(_Call(layer, args[0] if args else kwargs.get("inputs"), outputs))
            return outputs

        return call_and_record

    def watched_activation(layer, fn):
        def activate_and_record(x):
            z = fn(x)
            own.append((layer, x, z))
            return z

        return activate_and_record

    try:
        for layer in _layers(model):
            patch(layer, "call", watched_call(layer, layer.call))
            if _has_kernel(layer) and activation_name(layer) != "linear":
                patch(layer, "activation", watched_activation(layer, layer.activation))
        yield calls, own
    finally:
        for layer, attribute, value in reversed(undo):
            if value is _ABSENT:
                object.__delattr__(layer, attribute)
            else:
                object.__setattr__(layer, attribute, value)


_ABSENT = object()


def _watched_forward(model: keras.Model, states) -> tuple[list[_Call], list[tuple]]:
    with _watching(model) as (calls, own):
        model(states, training=False)
    return calls, own


def _has_kernel(layer: keras.layers.Layer) -> bool:
    return getattr(layer, "kernel", None) is not None and hasattr(layer, "activation")


def _activation_layer(layer: keras.layers.Layer) -> str | None:
    """The activation an activation layer applies (None: not one, or an `Activation("linear")`)."""
    if isinstance(layer, keras.layers.Activation):
        name = activation_name(layer)
        return None if name == "linear" else name
    if type(layer) is keras.layers.ReLU:  # capped, leaky or shifted: not the probes' relu
        return "relu" if _plain_relu(layer) else "relu_variant"
    if isinstance(layer, _ACTIVATION_LAYERS):  # LeakyReLU, ELU, PReLU: dead and dormant units only
        return type(layer).__name__.lower()
    return None


def _plain_relu(layer: keras.layers.Layer) -> bool:
    config = layer.get_config()  # max(x, 0) only: no cap, no leak, no shifted threshold
    return config.get("max_value") is None and not (config.get("negative_slope") or config.get("threshold"))


def _plan(calls: list[_Call]) -> ProbePlan:
    """The points of one traced forward pass's calls (graph tensors: an op's consumers are readable)."""
    nth: dict[int, int] = defaultdict(int)
    ordinal = []  # each call's index among its layer's calls
    for c in calls:
        ordinal.append(nth[id(c.layer)])
        nth[id(c.layer)] += 1
    readers: dict[int, list[int]] = defaultdict(list)  # id(tensor) -> indices of the calls reading it
    for i, c in enumerate(calls):
        # a call that returns its input (dropout at inference) is skipped: its readers read that input
        if c.outputs is not _first(c.inputs):
            readers[id(_first(c.inputs))].append(i)

    found: list[tuple[int, ProbePoint]] = []  # (when it is applied, point)
    claimed: set[int] = set()  # activation layer calls named after the linear layer before them
    for i, c in enumerate(calls):
        if not _has_kernel(c.layer):
            continue
        name = activation_name(c.layer)
        if name != "linear":
            found.append((i, ProbePoint(c.layer.name, name, "own", c.layer, ordinal[i], c.layer)))
            continue
        at, tensor = i, c.outputs  # follow the linear output through normalization and dropout
        while True:
            (j, *more) = readers.get(id(tensor), [None])
            if j is not None and not more:
                reader = calls[j].layer
                if (act := _activation_layer(reader)) is not None:
                    found.append((j, ProbePoint(c.layer.name, act, "layer", reader, ordinal[j], c.layer)))
                    claimed.add(j)
                    break
                if isinstance(reader, _PASS_THROUGH):
                    at, tensor = j, calls[j].outputs
                    continue
            elif j is None and (op := _only_consumer(tensor)) is not None and op.type in _OP_ACTIVATIONS:
                act, fn = _OP_ACTIVATIONS[op.type](op)
                point = ProbePoint(c.layer.name, act, "op", calls[at].layer, ordinal[at], c.layer, fn)
                found.append((at, point))
            break
    for i, c in enumerate(calls):
        if i not in claimed and (act := _activation_layer(c.layer)) is not None:
            found.append((i, ProbePoint(c.layer.name, act, "layer", c.layer, ordinal[i], None)))
    points = [p for _, p in sorted(found, key=lambda ip: ip[0])]
    heads = [i for i, c in enumerate(calls) if _has_kernel(c.layer)]
    head = calls[heads[-1]].layer if heads else None
    return ProbePlan(tuple(_unique_names(points)), head, ordinal[heads[-1]] if heads else 0)


def _only_consumer(tensor):
    """The one op reading a graph tensor (None for several, none, or an eager tensor)."""
    try:
        consumers = tensor.consumers()
    except (AttributeError, ValueError):
        return None
    return consumers[0] if len(consumers) == 1 else None


def _unique_names(points: list[ProbePoint]) -> list[ProbePoint]:
    """A layer called twice (shared weights) names its second point `<name>_2`, and so on."""
    seen: dict[str, int] = defaultdict(int)
    out = []
    for p in points:
        seen[p.name] += 1
        out.append(p if seen[p.name] == 1 else _renamed(p, f"{p.name}_{seen[p.name]}"))
    return out


def _renamed(p: ProbePoint, name: str) -> ProbePoint:
    return ProbePoint(name, p.activation, p.read, p.layer, p.call, p.kernel_layer, p.fn)


def activation_stats(
    points: list[tuple[ProbePoint, tf.Tensor, tf.Tensor]], features: tf.Tensor | None, diag, histograms: bool
) -> dict[str, tf.Tensor]:
    """The probe's tags of `probed_activations`' points: every activation statistic for the activations the
    probes know (relu, sigmoid, tanh), dead and dormant units for any other; `features/srank` of the head's
    features (of the last point's outputs when there is no head); `hist/activation/<layer>` with
    `histograms`. `diag`: the dormant tau, saturation margin and srank delta."""
    m: dict[str, tf.Tensor] = {}
    for p, x, z in points:
        if p.activation in PROBED_ACTIVATIONS:
            m.update(probes.layer_stats(p.name, x, z, p.activation, diag))
        else:
            m[f"act_dead_frac/{p.name}"] = probes.dead_frac(z)
            m[f"act_dormant_frac/{p.name}"] = probes.dormant_frac(z, diag.dormant_tau)
        if histograms:
            m[f"hist/activation/{p.name}"] = z
    if features is None and points:
        features = points[-1][2]
    if features is not None:
        m["features/srank"] = tf.cast(probes.srank(features, diag.srank_delta), tf.float32)
    return m


def error_line(err: Exception) -> str:
    """`Type: message` of what a model of yours raised, in one line: Keras's "Exception encountered when
    calling ..." preface and its terminal colours left out."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(err).splitlines()]
    said = [line for line in lines if line and not line.startswith("Exception encountered when calling")]
    return f"{type(err).__name__}: {said[0] if said else ''}".rstrip(": ")
