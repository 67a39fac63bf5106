"""Agent presets: TOML files in `agents/` parsed into a frozen, validated `Config`.

A preset is complete: every section and every key below must be present (no inheritance), and an unknown
key is an error. The only exceptions are the few keys added after the shipped presets were written, each
with a stated default that keeps the old behaviour (`default=` below; docs/presets.md lists them), so that
older presets and run directories still load. Each field carries a one-line `doc` (rendered into
docs/presets.md by `field_reference_rows`) and, where it applies, the valid `choices` or bounds `min`/`max`.

This module is pure Python (no TensorFlow) so the CLI can reject bad input before paying for an import.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dqnlab.kinds import KINDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# A wheel carries the presets inside the package; a source checkout (and an editable install) has them in the
# top-level agents/.
_PACKAGE_DIR = Path(__file__).resolve().parent
AGENTS_DIR = _PACKAGE_DIR / "agents" if (_PACKAGE_DIR / "agents").is_dir() else _PACKAGE_DIR.parent / "agents"

LOSS_KINDS = ("squared", "clipped_delta_squared", "clipped_gradient_squared", "huber")
NETWORK_KINDS = KINDS.keys()  # the kind table's: a kind added there is valid here
CELLS = ("simple", "lstm", "gru")
INITIAL_STATES = ("stored", "zero")
ACTIVATIONS = ("relu", "sigmoid", "tanh")
KERNEL_INITS = (
    "he_uniform",
    "he_normal",
    "glorot_uniform",
    "glorot_normal",
    "lecun_normal",
    "truncated_normal_0.02",
    "torch_default",
)
BIAS_INIT_KINDS = ("constant", "torch_default")
OPTIMIZERS = ("adam", "rmsprop", "rmsprop_tf1", "sgd")
LR_SCHEDULES = ("constant", "staircase", "linear")
# The smallest screen the Nature CNN's convs (8x8 s4, 4x4 s2, 3x3 s1, no padding) leave a pixel of.
MIN_ATARI_SCREEN = 36
# The largest integer any value may take: what numpy's, TensorFlow's and TensorBoard's int64 counters hold.
MAX_INT = 2**63 - 1


class ConfigError(ValueError):
    """Bad preset, override or argument. Its message is one line, fit to show a user as is."""


def _f(doc: str, **meta: Any):
    """A preset field. With `default=`, the key may be left out of a preset: only keys added after the shipped
    presets were written have one (so older presets and run directories still load); every other key is
    required."""
    if "default" in meta:
        return field(default=meta["default"], metadata={"doc": doc, **meta})
    return field(metadata={"doc": doc, **meta})


@dataclass(frozen=True)
class LossConfig:
    """The TD loss: the one thing the headline A/B varies."""

    kind: str = _f(
        "TD loss on delta = target - Q(s,a); see dqnlab/losses.py; or your own as package.module:fn "
        "(docs/components.md)",
        choices=LOSS_KINDS,
        import_path=True,
    )
    bound: float = _f("clip bound for the clipped losses, kappa for Huber (ignored by squared)", min=0.0)


@dataclass(frozen=True)
class NetworkConfig:
    """The Q-network: layers are named hidden_0, hidden_1, ..., q_head (and `rnn` for kind rnn; `conv_0`,
    `conv_1`, `conv_2` before the hidden layers for kind cnn)."""

    kind: str = _f(
        "network family: mlp; rnn (needs a [recurrent] section); cnn, the Nature DQN on Atari frames (needs "
        "an [atari] section); or your own builder as package.module:build (docs/components.md)",
        choices=NETWORK_KINDS,
        import_path=True,
    )
    activation: str = _f("hidden-layer nonlinearity", choices=ACTIVATIONS)
    hidden: tuple[int, ...] = _f(
        "dense hidden layer widths, input side first (rnn: the layers after the cell; cnn: after the convs)",
        min=1,
    )
    kernel_init: str = _f(
        "Keras initializer of every dense and conv kernel (an rnn cell's own kernels: see [recurrent]); "
        "torch_default is PyTorch's nn.Linear/nn.Conv2d default, U(-1/sqrt(fan_in), +1/sqrt(fan_in))",
        choices=KERNEL_INITS,
    )
    init_scale: float = _f(
        "multiplies every initial dense and conv kernel (large values saturate sigmoids)", min=0.0
    )
    bias_init: float = _f(
        "initial value of every hidden dense and conv bias (very negative values kill ReLUs); q_head's "
        "starts at 0"
    )
    bias_init_kind: str = _f(
        "constant: hidden biases start at bias_init, q_head's at 0; torch_default: every dense and conv "
        "bias, q_head's included, ~ U(-1/sqrt(fan_in), +1/sqrt(fan_in)) as PyTorch's nn.Linear/nn.Conv2d "
        "draw it (bias_init must then be 0: set bias_init_kind = 'constant' to choose one); mlp and cnn only",
        choices=BIAS_INIT_KINDS,
        default="constant",
    )
    dueling: bool = _f(
        "dueling head (Wang et al. 2016): the last `hidden` width becomes two streams, value_hidden -> value "
        "and advantage_hidden -> advantage, and Q = value + advantage - mean(advantage); mlp and cnn only",
        default=False,
    )


@dataclass(frozen=True)
class RecurrentConfig:
    """Only with network.kind = "rnn": the cell, and how sequences are replayed (DRQN / R2D2 style)."""

    cell: str = _f("recurrent cell: simple (vanilla RNN), lstm or gru", choices=CELLS)
    units: int = _f("size of the recurrent state h", min=1)
    activation: str = _f(
        "the simple cell's core nonlinearity (lstm and gru need tanh)", choices=("tanh", "relu")
    )
    recurrent_init_scale: float = _f(
        "W_hh starts as this times an orthogonal matrix: the simple cell's spectral radius, exactly (the "
        "cell's input kernel and bias keep Keras's defaults: glorot_uniform, zeros, LSTM forget gate 1)",
        min=0.0,
    )
    pre_hidden: tuple[int, ...] = _f(
        "dense layers before the cell, input side first (may be empty)", min=1, empty=True
    )
    sequence_length: int = _f("trained steps per replayed sequence (the BPTT window)", min=1)
    burn_in: int = _f("steps replayed before them only to warm the state up, without gradient (R2D2)", min=0)
    initial_state: str = _f(
        "state a replayed sequence starts from: the one stored while acting, or zeros", choices=INITIAL_STATES
    )


@dataclass(frozen=True)
class AtariConfig:
    """Only with network.kind = "cnn": the ALE v5 env and its preprocessing (docs/atari.md)."""

    repeat_action_probability: float = _f(
        "sticky actions: chance the emulator repeats the previous action (ALE v5 default 0.25)",
        min=0.0,
        max=1.0,
    )
    terminal_on_life_loss: bool = _f(
        "a lost life ends the learner's episode (discount 0); the game itself goes on (Mnih et al. 2015)"
    )
    clip_rewards: bool = _f("train on sign(reward) (Nature DQN); eval/return is always the game score")
    frame_stack: int = _f("preprocessed frames stacked into one observation", min=1)
    noop_max: int = _f("up to this many no-op actions at each reset (random start states)", min=0)
    screen_size: int = _f(
        "grayscale frames are resized to screen_size x screen_size (the Nature CNN's convs need 36 or more)",
        min=MIN_ATARI_SCREEN,
    )


@dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer and its learning-rate schedule, a function of the env step (dqnlab.optimizers)."""

    kind: str = _f(
        "optimizer; rmsprop is Keras's (mean square starts at 0), rmsprop_tf1 TensorFlow 1's "
        "tf.train.RMSPropOptimizer (decay 0.9, mean square starts at 1, epsilon inside the sqrt)",
        choices=OPTIMIZERS,
    )
    learning_rate: float = _f("step size (with a schedule: at env step 0)", min=0.0)
    epsilon: float = _f("Adam/RMSProp denominator epsilon (ignored by SGD)", min=0.0)
    momentum: float = _f("RMSProp/SGD momentum (Adam takes none)", min=0.0, max=1.0, default=0.0)
    schedule: str = _f(
        "learning rate per env step: constant; staircase, max(learning_rate_end, learning_rate * "
        "decay_rate^floor(step / decay_steps)); linear, from learning_rate to learning_rate_end over "
        "decay_steps",
        choices=LR_SCHEDULES,
        default="constant",
    )
    decay_steps: int = _f("env steps per staircase step, or of the linear decay", min=1, default=1)
    decay_rate: float = _f("staircase factor per decay_steps", min=0.0, max=1.0, default=1.0)
    learning_rate_end: float = _f(
        "the staircase's floor, the linear decay's final value", min=0.0, default=0.0
    )


@dataclass(frozen=True)
class ReplayConfig:
    capacity: int = _f(
        "transitions kept in the uniform replay ring buffer (rnn: steps, plus one row per stored episode)",
        min=1,
    )


@dataclass(frozen=True)
class TrainConfig:
    """Step counts are environment steps unless the name says updates."""

    steps: int = _f("environment steps of training", min=1)
    learning_starts: int = _f("environment steps of pure acting before the first update", min=0)
    train_every: int = _f("environment steps between bursts of updates", min=1)
    gradient_steps: int = _f("updates per burst, fused into one compiled call", min=1)
    batch_size: int = _f("transitions per update (rnn: replayed windows); <= replay.capacity", min=1)
    gamma: float = _f("discount factor", min=0.0, max=1.0)
    target_update_every: int = _f("environment steps between target-network updates", min=1)
    target_tau: float = _f(
        "target update weight: 1.0 copies (hard), < 1 is Polyak averaging; 0 is refused (it never updates)",
        min=0.0,
        max=1.0,
    )
    double_dqn: bool = _f("pick the bootstrap action with the online network (van Hasselt et al. 2016)")
    epsilon_start: float = _f("exploration epsilon at step 0", min=0.0, max=1.0)
    epsilon_end: float = _f("exploration epsilon after the decay", min=0.0, max=1.0)
    epsilon_decay_steps: int = _f("environment steps of the linear epsilon decay", min=1)
    grad_clip_norm: float = _f("global-norm gradient clipping threshold; 0 turns it off", min=0.0)
    eval_every: int = _f("environment steps between greedy evaluations; 0 evaluates only at the end", min=0)
    eval_episodes: int = _f("episodes per greedy evaluation", min=1)
    epsilon_decay_start: int = _f(
        "environment steps at epsilon_start before the decay begins (devsisters: learn_start)",
        min=0,
        default=0,
    )


@dataclass(frozen=True)
class DiagnosticsConfig:
    enabled: bool = _f(
        "compute and log the diagnostics; false also turns off the probes, histograms and perf/* (the TD "
        "loss and gradient norm are still checked for divergence)"
    )
    every: int = _f(
        "updates between measured bursts: a burst that crosses a multiple is measured (every update's burst "
        "statistics, the per-variable panel on one update at a rotating position)",
        min=1,
    )
    near_zero_tol: float = _f("|g| below this counts in grad_near_zero_frac (at the probes)", min=0.0)
    probe_every: int = _f("updates between activation probes and histograms; 0 turns them off", min=0)
    probe_size: int = _f(
        "probe states (rnn: windows), drawn once from replay when the first probe runs", min=1
    )
    min_probes: int = _f(
        "probe at least this often: every (steps - learning_starts) / min_probes env steps, and at the run's "
        "last burst, however far apart probe_every puts them; 0 only probe_every",
        min=0,
    )
    dormant_tau: float = _f("a unit is tau-dormant when its score E|h_i| / mean_k E|h_k| is <= tau", min=0.0)
    saturation_margin: float = _f(
        "sigmoid/tanh outputs this close to their bounds count as saturated", min=0.0
    )
    histograms: bool = _f("write gradient, weight and activation histograms at each probe")
    srank_delta: float = _f("srank threshold: top-k singular values reaching 1 - delta of the total", min=0.0)
    min_measured: int = _f(
        "measure at least this often: a burst that crosses a multiple of (steps - learning_starts) / "
        "min_measured env steps is measured too, however far apart `every` puts them (a sparse update "
        "cadence); 0 only `every`",
        min=0,
        default=0,
    )


SECTIONS: dict[str, type] = {
    "loss": LossConfig,
    "network": NetworkConfig,
    "optimizer": OptimizerConfig,
    "replay": ReplayConfig,
    "train": TrainConfig,
    "diagnostics": DiagnosticsConfig,
}
# Sections present only in some presets: the network kind that needs each.
OPTIONAL_SECTIONS: dict[str, tuple[type, str]] = {
    "recurrent": (RecurrentConfig, "rnn"),
    "atari": (AtariConfig, "cnn"),
}
ATARI_ENV_PREFIX = "ALE/"  # ale-py's v5 ids, e.g. ALE/Pong-v5
TOP_LEVEL = {"description": "one line: what this preset shows", "env": "default gymnasium id"}


def field_reference_rows() -> list[str]:
    """docs/presets.md's field table, one markdown row per key, from the fields' own docs and bounds (a test
    checks that the doc holds every row verbatim)."""
    rows = [f"| `{key}` | str | {doc} |" for key, doc in TOP_LEVEL.items()]
    sections = {**SECTIONS, **{name: cls for name, (cls, _) in OPTIONAL_SECTIONS.items()}}
    for section, cls in sections.items():
        for f in dataclasses.fields(cls):
            meta = f.metadata
            typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            text = meta["doc"]
            if "choices" in meta:
                text += " (one of " + ", ".join(f"`{c}`" for c in meta["choices"]) + ")"
            each = "each " if typ.startswith("tuple") else ""
            bounds = [f"{each}>= {meta['min']}"] if "min" in meta else []
            bounds += [f"<= {meta['max']:g}"] if "max" in meta else []
            if bounds:
                text += "; " + ", ".join(bounds)
            if "default" in meta:
                default = meta["default"]
                shown = str(default).lower() if isinstance(default, bool) else repr(default).replace("'", '"')
                text += f"; default `{shown}`"
            rows.append(f"| `{section}.{f.name}` | {typ} | {text.replace('|', chr(92) + '|')} |")
    return rows


@dataclass(frozen=True)
class Config:
    """A complete, validated agent configuration (a parsed preset plus overrides)."""

    name: str
    description: str
    env: str
    loss: LossConfig
    network: NetworkConfig
    optimizer: OptimizerConfig
    replay: ReplayConfig
    train: TrainConfig
    diagnostics: DiagnosticsConfig
    recurrent: RecurrentConfig | None = None
    atari: AtariConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict (tuples become lists)."""
        return dataclasses.asdict(
            self, dict_factory=lambda kv: {k: list(v) if isinstance(v, tuple) else v for k, v in kv}
        )


# ---------------------------------------------------------------------------------------------------
# Parsing and validation


_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_][\w.]*$")


def check_import_path(where: str, text: str) -> None:
    """`package.module:name`, checked for form only: importing it is `dqnlab.components`' job."""
    if not _IMPORT_PATH.match(text):
        raise ConfigError(f"{where}: {text!r} is not an import path of the form package.module:name")


def _check_value(where: str, f: dataclasses.Field, value: Any) -> Any:
    """Type-check one value against its field; return it normalized (ints accepted as floats)."""
    typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    meta = f.metadata
    if typ == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
    elif typ == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        _check_int_range(where, value)
    elif typ == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):  # nan passes every bound check, inf none that matters
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    elif typ == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
    elif typ == "tuple[int, ...]":
        if (
            not isinstance(value, (list, tuple))
            or not (value or meta.get("empty"))
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            kind = "a list" if meta.get("empty") else "a non-empty list"
            raise ConfigError(f"{where}: expected {kind} of integers, got {value!r}")
        for v in value:
            _check_int_range(where, v)
        value = tuple(value)
    else:  # pragma: no cover - a new field type must be taught here
        raise TypeError(f"unsupported config field type {typ}")
    choices = meta.get("choices")
    if meta.get("import_path") and isinstance(value, str) and ":" in value:
        check_import_path(where, value)  # the user's own component: imported and checked before a run
    elif choices is not None and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    values = value if isinstance(value, tuple) else (value,)
    low, high = meta.get("min"), meta.get("max")
    if low is not None and any(v < low for v in values):
        raise ConfigError(f"{where}: must be >= {low}, got {value!r}")
    if high is not None and any(v > high for v in values):
        raise ConfigError(f"{where}: must be <= {high:g}, got {value!r}")
    return value


def _check_int_range(where: str, value: int) -> None:
    """TOML reads integers of any size; beyond int64 numpy and TensorFlow fail far from the cause."""
    if value > MAX_INT:
        raise ConfigError(f"{where}: must be <= {MAX_INT} (2**63 - 1), got {value}")


def _unknown(where: str, key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{where}: unknown key {key!r}{hint}; valid keys: {', '.join(known)}")


def _build_section(source: str, section: str, table: Any) -> Any:
    cls = SECTIONS[section] if section in SECTIONS else OPTIONAL_SECTIONS[section][0]
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{section}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in fields:
            raise _unknown(f"{source} [{section}]", key, list(fields))
    missing = [k for k in fields if k not in table and "default" not in fields[k].metadata]
    if missing:
        raise ConfigError(f"{source} [{section}]: missing key(s) {', '.join(missing)} (presets are complete)")
    values = {
        k: _check_value(f"{source} {section}.{k}", f, table[k]) if k in table else f.metadata["default"]
        for k, f in fields.items()
    }
    return cls(**values)


def _cross_check(cfg: Config, source: str) -> None:
    t = cfg.train
    r = cfg.recurrent
    if r is not None and r.cell != "simple" and r.activation != "tanh":
        raise ConfigError(
            f"{source} recurrent.activation: the {r.cell} cell needs tanh, got {r.activation!r}"
        )
    if r is not None and r.burn_in + r.sequence_length > cfg.replay.capacity:
        raise ConfigError(f"{source}: recurrent.burn_in + sequence_length exceeds replay.capacity")
    check_network_fits_env(cfg, cfg.env, source)
    _check_optimizer(cfg.optimizer, source)
    if cfg.network.bias_init_kind != "constant" and cfg.network.kind == "rnn":
        raise ConfigError(
            f"{source} network.bias_init_kind: {cfg.network.bias_init_kind!r} is only for network.kind "
            "'mlp' or 'cnn', not 'rnn'"
        )
    if cfg.network.bias_init_kind == "torch_default" and cfg.network.bias_init != 0:
        # A silent no-op would make a sweep over bias_init return identical cells.
        raise ConfigError(
            f"{source} network.bias_init: {cfg.network.bias_init:g} has no effect with bias_init_kind "
            "'torch_default' (PyTorch's drawn biases); also set network.bias_init_kind=constant"
        )
    if cfg.network.dueling and cfg.network.kind == "rnn":
        raise ConfigError(f"{source} network.dueling: only for network.kind 'mlp' or 'cnn', not 'rnn'")
    if t.batch_size > cfg.replay.capacity:
        raise ConfigError(
            f"{source}: train.batch_size {t.batch_size} exceeds replay.capacity {cfg.replay.capacity}"
        )
    if t.target_tau == 0:  # Polyak averaging with weight 0: the target network would never move
        raise ConfigError(
            f"{source} train.target_tau: 0 never updates the target network; use 1.0 (hard copies) or a "
            "Polyak weight in (0, 1)"
        )


def _check_optimizer(o: OptimizerConfig, source: str) -> None:
    """The schedule's keys mean something only for its kind, and momentum only for RMSProp and SGD."""
    if o.momentum > 0 and o.kind == "adam":
        raise ConfigError(f"{source} optimizer.momentum: adam takes no momentum, got {o.momentum!r}")
    if o.momentum >= 1:
        raise ConfigError(f"{source} optimizer.momentum: must be < 1, got {o.momentum!r}")
    unused = {"constant": ("decay_steps", "decay_rate", "learning_rate_end"), "linear": ("decay_rate",)}
    defaults = {f.name: f.metadata.get("default") for f in dataclasses.fields(OptimizerConfig)}
    for key in unused.get(o.schedule, ()):
        if getattr(o, key) != defaults[key]:
            raise ConfigError(
                f"{source} optimizer.{key}: set to {getattr(o, key)!r}, but the {o.schedule!r} schedule "
                f"does not use it (set optimizer.schedule)"
            )
    if o.schedule == "staircase" and o.learning_rate_end > o.learning_rate:
        raise ConfigError(
            f"{source} optimizer.learning_rate_end: the staircase's floor {o.learning_rate_end!r} is above "
            f"learning_rate {o.learning_rate!r}"
        )


def is_atari_env(env_id: str) -> bool:
    return env_id.startswith(ATARI_ENV_PREFIX)


def check_env_fits(cfg: Config, env_id: str, source: str = "--env") -> None:
    """The config can train on `env_id` on this machine: its network reads that env's observations
    (`check_network_fits_env`) and what it must hold fits this machine's memory (`check_fits_memory`).
    Pure Python: the CLI calls it before TensorFlow is imported, the trainer before anything is written."""
    check_network_fits_env(cfg, env_id, source)
    check_fits_memory(cfg, env_id)


def check_network_fits_env(cfg: Config, env_id: str, source: str = "--env") -> None:
    """The CNN reads Atari frames and only Atari frames; the other kinds read flat vectors."""
    if cfg.network.kind == "cnn" and not is_atari_env(env_id):
        raise ConfigError(
            f"{source}: network.kind = 'cnn' needs an Atari id ({ATARI_ENV_PREFIX}...), got {env_id!r}"
        )
    if cfg.network.kind != "cnn" and is_atari_env(env_id):
        raise ConfigError(f"{source}: {env_id} gives image observations: use a cnn preset (e.g. pong_huber)")


# ---------------------------------------------------------------------------------------------------
# Memory: floors, known before any env or array exists. Each part assumes the smallest env (one input,
# one action) and leaves out the Nature CNN's convs, so a config refused here could never have run; the
# trainer checks the replay's exact size once the env is built.

FLOAT32 = 4
# Per parameter: the online weights, the target copy and Adam's two slots. The gradient, the initial
# weights the probes measure the distance from and the acting copy come on top.
WEIGHT_COPIES = 4
# Per hidden unit and row of a pass: its pre-activation, its activation and the activation's gradient (a
# probe keeps the SVD's copy of the features instead). About 6 were measured at a 256-state probe.
ACTIVATION_COPIES = 3


def machine_memory() -> int | None:
    """This machine's physical memory in bytes (what the trainer checks the replay against); None when
    the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_memory(cfg: Config, env_id: str) -> None:
    """A ConfigError naming the biggest part when what the config must hold at least (network, replay,
    a burst's batch) exceeds this machine's memory: TensorFlow would otherwise die of an out-of-memory
    error or std::bad_alloc, with run.json left saying 'running'."""
    have = machine_memory()
    if have is None:
        return
    parts = memory_floor(cfg)
    need = sum(parts.values())
    if need > have:
        what, biggest = max(parts.items(), key=lambda kv: kv[1])
        raise ConfigError(
            f"{cfg.name} on {env_id}: needs at least {_gib(need)} of memory, more than this machine's "
            f"{_gib(have)} (the biggest part: {what}, {_gib(biggest)})"
        )


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


def memory_floor(cfg: Config) -> dict[str, int]:
    """Bytes the config must hold at the least, by part (a one-line description of each part as key)."""
    n, t, d = cfg.network, cfg.train, cfg.diagnostics
    params = parameter_floor(cfg)
    hidden = f"network.hidden = {list(n.hidden)}"
    if cfg.recurrent is not None:
        hidden += f", recurrent.units = {cfg.recurrent.units}"
    rows = 2 * t.batch_size  # an update passes s through the online and s' through the target network
    if d.enabled and d.probe_every > 0:
        rows = max(rows, d.probe_size)
    steps = cfg.recurrent.burn_in + cfg.recurrent.sequence_length if cfg.recurrent is not None else 1
    rows_shown = f"{rows:,} rows" + (f" x {steps} steps" if cfg.recurrent is not None else "")
    units = _hidden_units(cfg)
    sampled = t.gradient_steps * t.batch_size * steps  # one burst's transitions, sampled at once
    return {
        f"the Q-network's weights and optimizer state ({hidden}: at least {params:,} parameters)": (
            WEIGHT_COPIES * FLOAT32 * params
        ),
        f"the Q-network's activations ({rows_shown} x {units:,} hidden units)": (
            ACTIVATION_COPIES * FLOAT32 * rows * steps * units
        ),
        f"the replay (replay.capacity = {cfg.replay.capacity:,})": (
            cfg.replay.capacity * _transition_floor(cfg)
        ),
        f"a burst's batch (train.gradient_steps x train.batch_size = {sampled:,})": (
            sampled * _sampled_floor(cfg)
        ),
    }


def parameter_floor(cfg: Config, obs_dim: int = 1, num_actions: int = 1) -> int:
    """Parameters of the config's Q-network with `obs_dim` inputs (the cnn: inputs to its first dense
    layer, its convs left out) and `num_actions` outputs: the defaults give a floor for any env."""
    n, r = cfg.network, cfg.recurrent
    if r is None:
        return _dense_params([obs_dim, *n.hidden, num_actions])
    pre = [obs_dim, *r.pre_hidden]
    gates = {"simple": 1, "lstm": 4, "gru": 3}[r.cell]
    cell = gates * (pre[-1] * r.units + r.units * r.units + r.units)
    return _dense_params(pre) + cell + _dense_params([r.units, *n.hidden, num_actions])


def _dense_params(widths: list[int]) -> int:
    """Kernels and biases of dense layers from widths[0] inputs through each next width."""
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))


def _hidden_units(cfg: Config) -> int:
    """Units a row passes through, per step (the cnn: its dense layers only)."""
    r = cfg.recurrent
    recurrent = 0 if r is None else sum(r.pre_hidden) + {"simple": 1, "lstm": 4, "gru": 3}[r.cell] * r.units
    return sum(cfg.network.hidden) + recurrent


def _transition_floor(cfg: Config) -> int:
    """Bytes the replay stores per transition at the least (one input, one action)."""
    if cfg.atari is not None:  # frames stored once: about one frame per transition
        return cfg.atari.screen_size**2 + 20
    if cfg.recurrent is not None:  # obs, action, reward, 3 flags, the stored state
        stored = cfg.recurrent.units * (2 if cfg.recurrent.cell == "lstm" else 1)
        return 15 + (FLOAT32 * stored if cfg.recurrent.initial_state == "stored" else 0)
    return 2 * FLOAT32 + 12  # s, s', action, reward, discount


def _sampled_floor(cfg: Config) -> int:
    """Bytes a sampled transition takes in a burst's batch at the least."""
    if cfg.atari is not None:  # s and s' as stacks of uint8 frames
        return 2 * cfg.atari.frame_stack * cfg.atari.screen_size**2
    return 5 * FLOAT32  # packed: s, a, r, s', discount


def config_from_dict(data: dict[str, Any], name: str, source: str = "<dict>") -> Config:
    """Validate a parsed preset table and build the frozen Config."""
    known = list(TOP_LEVEL) + list(SECTIONS) + list(OPTIONAL_SECTIONS)
    for key in data:
        if key not in known:
            raise _unknown(source, key, known)
    for key in list(TOP_LEVEL) + list(SECTIONS):
        if key not in data:
            raise ConfigError(f"{source}: missing {'key' if key in TOP_LEVEL else 'section'} {key!r}")
    for key in TOP_LEVEL:
        if not isinstance(data[key], str) or not data[key]:
            raise ConfigError(f"{source}: {key!r} must be a non-empty string")
    sections = {s: _build_section(source, s, data[s]) for s in SECTIONS}
    for section, (_, kind) in OPTIONAL_SECTIONS.items():
        wanted = sections["network"].kind == kind
        present = data.get(section) is not None
        if wanted and not present:
            article = "an" if section[0] in "aeiou" else "a"
            raise ConfigError(f"{source}: network.kind = {kind!r} needs {article} [{section}] section")
        if present and not wanted:
            raise ConfigError(f"{source}: [{section}] is only for network.kind = {kind!r}")
        sections[section] = _build_section(source, section, data[section]) if present else None
    cfg = Config(name=name, description=data["description"], env=data["env"], **sections)
    _cross_check(cfg, source)
    return cfg


def resolve_preset_path(name_or_path: str | Path) -> Path:
    """A bare name resolves to agents/<name>.toml; anything with a suffix or a slash is a path."""
    text = str(name_or_path)
    if text.endswith(".toml") or "/" in text or "\\" in text:
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"preset file not found: {text}")
        return path
    path = AGENTS_DIR / f"{text}.toml"
    if not path.is_file():
        names = preset_names()
        close = difflib.get_close_matches(text, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown preset {text!r}{hint}; run `dqnlab presets` to list them")
    return path


def preset_names() -> list[str]:
    return sorted(p.stem for p in AGENTS_DIR.glob("*.toml"))


def load_preset(name_or_path: str | Path, overrides: dict[str, Any] | list[str] | None = None) -> Config:
    """Load and validate a preset by name (agents/<name>.toml) or path, then apply overrides.

    `overrides` is a dict {"section.key": value} or a list of "section.key=value" strings (TOML values).
    """
    path = resolve_preset_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: unreadable ({exc.strerror or exc})") from None
    cfg = config_from_dict(data, name=path.stem, source=str(path))
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """'train.gamma=0.9' -> ('train.gamma', 0.9). The value is read as TOML; bare words are strings."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key or not raw:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word such as huber or CartPole-v1
    return key, value


def apply_overrides(cfg: Config, overrides: dict[str, Any] | list[str]) -> Config:
    """Return a new Config with overrides applied and type-checked like preset values."""
    items = [parse_override(o) for o in overrides] if isinstance(overrides, list) else list(overrides.items())
    data = cfg.to_dict()
    name = data.pop("name")
    for key, value in items:
        section, _, sub = key.partition(".")
        if not sub:
            if section not in TOP_LEVEL:
                raise _unknown("--set", key, list(TOP_LEVEL) + [f"{s}.<key>" for s in SECTIONS])
            data[section] = value
            continue
        if section not in SECTIONS and section not in OPTIONAL_SECTIONS:
            raise _unknown("--set", section, list(SECTIONS) + list(OPTIONAL_SECTIONS))
        if data.get(section) is None:
            kind = OPTIONAL_SECTIONS[section][1]
            raise ConfigError(
                f"--set {key}: this preset has no [{section}] section (network.kind is not {kind})"
            )
        if sub not in data[section]:
            raise _unknown(f"--set [{section}]", sub, list(data[section]))
        data[section][sub] = value
    return config_from_dict(data, name=name, source="--set")


def preset_description(name: str) -> str:
    """The preset's one-line description, without validating the rest (for listings)."""
    try:
        return str(tomllib.loads((AGENTS_DIR / f"{name}.toml").read_text()).get("description", ""))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        return f"(unreadable: {exc})"
