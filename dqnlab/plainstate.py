"""State as data, never code: a tree of JSON values plus named numpy arrays, and its way back.

A checkpoint is read back from a directory others may write to, so it must not be able to run code when
loaded (pickle can). `encode` turns a value built from the types below into a JSON-able tree whose arrays
are replaced by references into a dict of arrays (stored with `numpy.savez`, read with
`allow_pickle=False`); `decode` rebuilds it. Nothing else is accepted: an unknown type is a TypeError when
encoding, an unknown tag a ValueError when decoding.

    None, bool, int, float, str           as themselves (floats keep nan and inf)
    list, dict with str keys              as themselves
    tuple, collections.deque, int-keyed dict  tagged (a toy-text env's transition table `P`)
    numpy arrays (not object dtype)       a reference into the arrays
    numpy scalars (np.float32(1.5), ...)  a 0-d array, so dtype and bits survive
    numpy.random.Generator                its bit generator's state (plain integers)

Objects are never rebuilt from a name found in the file: a caller restores the attributes of an object it
built itself (`restore_attributes`), each checked against what that fresh object holds.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

_TAG = "__plain__"  # the key of a tagged node; a plain dict may not use it


def encode(value: Any, arrays: dict[str, np.ndarray], path: str = "") -> Any:
    """The JSON-able tree of `value`; its arrays are added to `arrays` under their path."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, np.generic):
        return value
    if isinstance(value, np.ndarray | np.generic):
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise TypeError(f"{path or 'value'}: object arrays cannot be stored as data")
        key = path or "value"
        if key in arrays:
            raise TypeError(f"{key}: two arrays would be stored under one name")
        arrays[key] = array
        kind = "scalar" if isinstance(value, np.generic) else "array"
        return {_TAG: kind, "key": key}
    if isinstance(value, np.random.Generator):
        return {_TAG: "generator", "state": value.bit_generator.state}
    if isinstance(value, (tuple, deque)):
        items = [encode(v, arrays, _join(path, i)) for i, v in enumerate(value)]
        node = {_TAG: "tuple" if isinstance(value, tuple) else "deque", "items": items}
        if isinstance(value, deque):
            node["maxlen"] = value.maxlen
        return node
    if isinstance(value, list):
        return [encode(v, arrays, _join(path, i)) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if value and all(type(k) is int for k in value):  # FrozenLake's P: state -> action -> transitions
            items = [[k, encode(v, arrays, _join(path, k))] for k, v in value.items()]
            return {_TAG: "intdict", "items": items}
        if not all(isinstance(k, str) for k in value) or _TAG in value:
            raise TypeError(f"{path or 'value'}: only dicts with string or int keys can be stored as data")
        return {k: encode(v, arrays, _join(path, k)) for k, v in value.items()}
    raise TypeError(f"{path or 'value'}: a {type(value).__name__} cannot be stored as data")


def _join(path: str, key: object) -> str:
    return f"{path}/{key}" if path else str(key)


def decode(tree: Any, arrays: dict[str, np.ndarray]) -> Any:
    """The value `encode` made `tree` from."""
    if isinstance(tree, list):
        return [decode(v, arrays) for v in tree]
    if not isinstance(tree, dict):
        return tree
    kind = tree.get(_TAG)
    if kind is None:
        return {k: decode(v, arrays) for k, v in tree.items()}
    if kind in ("array", "scalar"):
        key = tree.get("key")
        if key not in arrays:
            raise ValueError(f"the state names an array {key!r} that is not stored")
        return arrays[key] if kind == "array" else arrays[key][()]
    if kind == "generator":
        return _generator(tree.get("state"))
    if kind in ("tuple", "deque"):
        items = [decode(v, arrays) for v in tree.get("items", [])]
        return tuple(items) if kind == "tuple" else deque(items, maxlen=tree.get("maxlen"))
    if kind == "intdict":
        pairs = tree.get("items", [])
        if not all(isinstance(p, list) and len(p) == 2 and type(p[0]) is int for p in pairs):
            raise ValueError("an int-keyed dict in a stored state has an entry that is not [int, value]")
        return {k: decode(v, arrays) for k, v in pairs}
    raise ValueError(f"unknown node {kind!r} in a stored state")


def _generator(state: Any) -> np.random.Generator:
    """A Generator of numpy's own bit generators only (PCG64 and friends), never a class the file names."""
    names = {"PCG64": np.random.PCG64, "PCG64DXSM": np.random.PCG64DXSM, "Philox": np.random.Philox,
             "SFC64": np.random.SFC64, "MT19937": np.random.MT19937}  # fmt: skip
    kind = state.get("bit_generator") if isinstance(state, dict) else None
    if kind not in names:
        raise ValueError(f"unknown bit generator {kind!r} in a stored state")
    bits = names[kind]()
    bits.state = state
    return np.random.Generator(bits)


def is_plain(value: Any) -> bool:
    """Whether `encode` can store `value`."""
    try:
        encode(value, {})
    except TypeError:
        return False
    return True


def restore_attributes(obj: Any, saved: dict[str, Any], what: str, allow_new: bool = False) -> None:
    """Set `obj`'s attributes from `saved`, after checking each against the one `obj` holds now: the same
    names, the same kinds of value, arrays of the same shape and kind of number. `obj` is a fresh object of
    the class that was saved, so a file cannot give it an attribute, a shape or a type it would not have.
    `allow_new` lets it add instance attributes a fresh object has not set yet (an env sets some on its
    first step), never one that would hide a method or property of its class.
    A ValueError names the first mismatch."""
    current = vars(obj)
    for name, value in saved.items():
        if name not in current and (not allow_new or hasattr(type(obj), name)):
            raise ValueError(f"{what}: the stored state has {name!r}, which a fresh one does not")
        problem = _mismatch(current.get(name), value)
        if problem:
            raise ValueError(f"{what}.{name}: {problem}")
    for name, value in saved.items():
        setattr(obj, name, value)


def _mismatch(fresh: Any, stored: Any) -> str | None:
    """Why `stored` cannot take the place of `fresh`, or None. Values that may change kind during a run
    (None <-> a value, int <-> float) pass; containers and arrays are checked element by element."""
    if fresh is None or stored is None:
        return None
    if isinstance(fresh, np.ndarray) or isinstance(stored, np.ndarray):
        if isinstance(fresh, (tuple, list)) or isinstance(stored, (tuple, list)):  # MountainCar's state is
            same = len(fresh) == len(stored)  # an array after reset, a tuple after a step
            return None if same else f"expected {len(fresh)} items, found {len(stored)}"
        if not (isinstance(fresh, np.ndarray) and isinstance(stored, np.ndarray)):
            return f"expected an array, found a {type(stored).__name__}"
        # The same shape and kind of number; the width may change during a run (Acrobot's state is
        # float32 after reset and float64 after a step).
        if stored.dtype.kind != fresh.dtype.kind or stored.shape != fresh.shape:
            return f"expected {fresh.dtype}{list(fresh.shape)}, found {stored.dtype}{list(stored.shape)}"
        return None
    if isinstance(fresh, (bool, np.bool_)) or isinstance(stored, (bool, np.bool_)):
        return None if isinstance(stored, (bool, np.bool_, int, np.integer)) else "expected a bool"
    if isinstance(fresh, (int, float, np.number)):
        ok = isinstance(stored, (int, float, np.number))
        return None if ok else f"expected a number, found a {type(stored).__name__}"
    if isinstance(fresh, (tuple, list, deque)):
        if not isinstance(stored, type(fresh)):
            return f"expected a {type(fresh).__name__}"
        if len(fresh) == len(stored):  # element by element (a list may grow; then only its kind is checked)
            return next(filter(None, map(_mismatch, fresh, stored)), None)
        return None if isinstance(fresh, list) else f"expected {len(fresh)} items, found {len(stored)}"
    for kind in (np.random.Generator, str, dict):
        if isinstance(fresh, kind):
            return None if isinstance(stored, kind) else f"expected a {kind.__name__}"
    return None
