"""Your own loss, network and environment, named in a preset by import path (`package.module:name`).

    [loss]     kind = "mypkg.losses:quantile_huber"  # fn(delta, bound) -> per-sample loss
    [network]  kind = "mypkg.nets:build"  # fn(cfg.network, obs_shape, num_actions, name) -> Keras model
    env = "mypkg.envs:MyEnv-v0"  # gymnasium's own "module:id": importing the module registers the id

Importing user code is explicit: a module is imported only when a preset names it, and only its contract
check and the run that uses it import it. `check_components` imports and calls each named component once on
a tiny input before any run starts, so a component that breaks its contract is one line naming what is
wrong (exit 2), not a stack trace an hour in. `describe` gives run.json and HParams the import path and the
SHA-256 of the module's source file, so a result can be traced to the code that made it.

The contracts are written out in docs/components.md. A module is looked up on `sys.path` and then in the
working directory (as `python -m` and most "module:attr" tools do), so a package beside the experiment works
from the `dqnlab` command too.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from pathlib import Path
from typing import Any

from dqnlab.config import Config, ConfigError, check_import_path


def is_import_path(text: str) -> bool:
    """Whether `text` names an object as `package.module:attribute` rather than a built-in kind."""
    return ":" in text


def import_module(name: str):
    """`importlib.import_module`, retried with the working directory on sys.path (the `dqnlab` console
    script does not put it there, `python -m` does)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        if exc.name != name.split(".")[0] or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(name)


def resolve(where: str, path: str) -> Any:
    """The object `path` names; a ConfigError naming `where` when its module or attribute is missing or
    its module fails to import."""
    check_import_path(where, path)
    module_name, attribute = path.split(":")
    try:
        module = import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{where}: cannot import {module_name!r} ({exc})") from None
    except Exception as exc:  # the user's module raised while importing
        raise ConfigError(f"{where}: importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{where}: module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{where}: {path!r} is a {type(obj).__name__}, not a function")
    return obj


def source_sha256(path: str) -> str | None:
    """SHA-256 of the source file of the module an import path (or a gymnasium "module:id") names."""
    module = sys.modules.get(path.split(":")[0]) or import_module(path.split(":")[0])
    file = getattr(module, "__file__", None)
    return hashlib.sha256(Path(file).read_bytes()).hexdigest() if file else None


def named_components(cfg: Config, env_id: str) -> dict[str, str]:
    """The config's components given by import path: role -> path (loss, network, env)."""
    named = {"loss": cfg.loss.kind, "network": cfg.network.kind, "env": env_id}
    return {role: path for role, path in named.items() if is_import_path(path)}


def describe(cfg: Config, env_id: str) -> dict[str, dict[str, str | None]]:
    """run.json's `components`: each user component's import path and source hash."""
    return {
        role: {"path": p, "sha256": source_sha256(p)} for role, p in named_components(cfg, env_id).items()
    }


def check_components(cfg: Config, env_id: str) -> None:
    """Import every component the config names and check it meets its contract on a tiny input: one
    ConfigError line naming the component and what is wrong. Built-in kinds pass untouched (and nothing is
    imported for them)."""
    named = named_components(cfg, env_id)
    if "loss" in named:
        check_loss(named["loss"], cfg.loss.bound)
    if "network" in named:
        from dqnlab.envs import make_env

        try:
            env = make_env(env_id)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        try:
            check_network(named["network"], cfg, env.observation_space.shape, int(env.action_space.n))
        finally:
            env.close()


def check_loss(path: str, bound: float) -> None:
    """A loss is fn(delta [B] float32, bound: float) -> per-sample loss [B], finite, differentiable."""
    from dqnlab._tf import tf

    where = f"loss.kind {path!r}"
    fn = resolve(where, path)
    delta = tf.constant([-3.0, -0.5, 0.0, 0.5, 3.0], tf.float32)
    try:
        with tf.GradientTape() as tape:
            tape.watch(delta)
            out = fn(delta, float(bound))
        grad = tape.gradient(out, delta)
    except Exception as exc:
        raise ConfigError(
            f"{where}: calling it on delta of shape [5] raised {type(exc).__name__}: {exc}"
        ) from None
    out = tf.convert_to_tensor(out)
    if out.shape != delta.shape:
        raise ConfigError(
            f"{where}: must return one loss per sample (shape [5] for delta [5]), returned shape "
            f"{list(out.shape)}; dqnlab takes the mean itself"
        )
    if not out.dtype.is_floating or not bool(tf.reduce_all(tf.math.is_finite(out))):
        raise ConfigError(f"{where}: must return finite floats; returned {out.numpy().tolist()}")
    if grad is None:
        raise ConfigError(f"{where}: its result does not depend on delta (no gradient flows back)")


def check_network(path: str, cfg: Config, obs_shape: tuple[int, ...], num_actions: int) -> None:
    """A network is build(cfg.network, obs_shape, num_actions, name) -> a Keras model mapping [B, *obs_shape]
    floats to Q-values [B, num_actions], with trainable variables in uniquely named layers."""
    from dqnlab._tf import keras, tf
    from dqnlab.networks import variable_tag

    where = f"network.kind {path!r}"
    build = resolve(where, path)
    try:
        model = build(cfg.network, tuple(obs_shape), num_actions, "contract_check")
    except Exception as exc:
        raise ConfigError(f"{where}: building it raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, keras.Model):
        raise ConfigError(f"{where}: must return a keras.Model, returned a {type(model).__name__}")
    try:
        q = model(tf.zeros([2, *obs_shape], tf.float32))
    except Exception as exc:
        raise ConfigError(
            f"{where}: calling it on obs [2, {obs_shape}] raised {type(exc).__name__}: {exc}"
        ) from None
    if tuple(q.shape) != (2, num_actions):
        raise ConfigError(
            f"{where}: must map obs [B, {', '.join(map(str, obs_shape))}] to Q-values [B, {num_actions}]; "
            f"returned shape {list(q.shape)}"
        )
    tags = [variable_tag(v) for v in model.trainable_variables]
    if not tags:
        raise ConfigError(f"{where}: the model has no trainable variables")
    repeated = sorted({t for t in tags if tags.count(t) > 1})
    if repeated:
        raise ConfigError(
            f"{where}: per-layer tags must be unique, but {', '.join(repeated)} name several variables; "
            "give every layer its own name"
        )
