"""Checkpoints are data, verified, and replaced atomically (dqnlab.checkpoint, dqnlab.plainstate).

Fault injection, in process: a crafted checkpoint whose payload would write a marker file, a bit flipped
in each file, a kill between every pair of filesystem operations of a save. Each asserts that nothing ran,
nothing was lost, and the refusal is one `CheckpointError` naming the problem."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import tempfile
from collections import deque
from pathlib import Path

import numpy as np
import pytest

from dqnlab import checkpoint, plainstate
from dqnlab.checkpoint import CheckpointError


def sample_state(step: int) -> dict:
    rng = np.random.default_rng(3)
    rng.random(5)  # a generator part-way through its stream
    return {
        "loop": {"step": step, "obs": np.arange(4, dtype=np.float32), "rng": rng, "state": None},
        "env": {"layers": [{"state": (0.1, -0.2), "queue": deque([np.ones(2)], maxlen=4)}], "emulator": None},
        "replay": {"_next": 7, "_obs_shape": (4,), "scalar": np.float32(1.5)},
        "run": {"final": {"eval_return": float("nan")}, "updates": 12},
    }


ARRAYS = {"online/0": np.ones((4, 3), np.float32), "optimizer/0": np.array(5, np.int64)}


def test_a_saved_checkpoint_loads_back_equal_value_for_value(tmp_path):
    checkpoint.save(tmp_path, 100, ARRAYS, sample_state(100))
    ckpt = checkpoint.load(tmp_path)
    assert ckpt.step == 100 and ckpt.path == tmp_path / "checkpoints" / "step-000000000100"
    assert (
        all(np.array_equal(ckpt.arrays[k], ARRAYS[k]) for k in ARRAYS) and ckpt.arrays.keys() == ARRAYS.keys()
    )
    loop, env, replay = ckpt.state["loop"], ckpt.state["env"], ckpt.state["replay"]
    assert loop["obs"].dtype == np.float32 and loop["obs"].tolist() == [0, 1, 2, 3]
    assert loop["rng"].random() == sample_state(100)["loop"]["rng"].random()  # the stream goes on
    assert env["layers"][0]["state"] == (0.1, -0.2)
    assert isinstance(env["layers"][0]["queue"], deque) and env["layers"][0]["queue"].maxlen == 4
    assert replay["_obs_shape"] == (4,) and replay["scalar"].dtype == np.float32 and replay["scalar"] == 1.5
    assert np.isnan(ckpt.state["run"]["final"]["eval_return"])
    manifest = json.loads((ckpt.path / "MANIFEST.json").read_text())
    assert manifest["format"] == 2 and manifest["step"] == 100 and set(manifest["files"]) == {
        "arrays.npz", "state.json", "state.npz"
    }  # fmt: skip


def test_state_that_is_not_plain_data_is_refused_when_saving(tmp_path):
    with pytest.raises(TypeError, match="loop/env: a PosixPath cannot be stored as data"):
        checkpoint.save(tmp_path, 1, ARRAYS, {"loop": {"step": 1, "env": tmp_path}})
    with pytest.raises(TypeError, match="object arrays"):
        checkpoint.save(tmp_path, 1, ARRAYS, {"loop": {"step": 1, "x": np.array([None])}})
    assert checkpoint.latest(tmp_path) is None and not list((tmp_path / "checkpoints").iterdir())


class Payload:
    """Unpickling this writes a marker file: what a crafted checkpoint would do to whoever loads it."""

    marker: Path

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def rewrite_manifest(path: Path) -> None:
    """Make the manifest match the files again, as an attacker who can write the run directory would."""
    manifest = json.loads((path / "MANIFEST.json").read_text())
    manifest["files"] = {
        p.name: checkpoint.file_digest(p) for p in path.iterdir() if p.name != "MANIFEST.json"
    }
    (path / "MANIFEST.json").write_text(json.dumps(manifest))


def test_a_crafted_first_format_pickle_is_never_loaded(tmp_path):
    Payload.marker = tmp_path / "marker"
    legacy = tmp_path / "checkpoints" / "latest"
    legacy.mkdir(parents=True)
    (legacy / "state.pkl").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match="first format .* not read"):
        checkpoint.load(tmp_path)
    assert not Payload.marker.exists()


def test_a_crafted_object_array_with_a_matching_manifest_is_refused_and_inert(tmp_path):
    Payload.marker = tmp_path / "marker"
    path = checkpoint.save(tmp_path, 100, ARRAYS, sample_state(100))
    payload = np.empty(1, dtype=object)
    payload[0] = Payload()
    np.savez(path / "state.npz", **{"loop/obs": payload})  # a pickle inside the .npz
    rewrite_manifest(path)
    with pytest.raises(CheckpointError, match="state.npz"):
        checkpoint.load(tmp_path)
    assert not Payload.marker.exists()


@pytest.mark.parametrize(
    "node",
    [
        {"__plain__": "object", "class": "os:system", "args": ["touch marker"]},
        {"__plain__": "generator", "state": {"bit_generator": "os.system", "state": {}}},
        {"__plain__": "array", "key": "nowhere"},
        {"__plain__": "intdict", "items": [["0", 1]]},
    ],
    ids=["unknown-node", "unknown-bit-generator", "missing-array", "intdict-with-a-str-key"],
)
def test_a_state_tree_naming_anything_but_data_is_refused(tmp_path, node):
    path = checkpoint.save(tmp_path, 100, ARRAYS, sample_state(100))
    tree = json.loads((path / "state.json").read_text())
    tree["loop"]["obs"] = node
    (path / "state.json").write_text(json.dumps(tree))
    rewrite_manifest(path)
    with pytest.raises(CheckpointError, match="is not a dqnlab checkpoint state"):
        checkpoint.load(tmp_path)


@pytest.mark.parametrize("name", ["arrays.npz", "state.json", "state.npz", "MANIFEST.json"])
def test_one_flipped_bit_in_any_file_is_refused_and_nothing_changes(tmp_path, name):
    path = checkpoint.save(tmp_path, 100, ARRAYS, sample_state(100))
    data = bytearray((path / name).read_bytes())
    data[len(data) // 2] ^= 0x10
    (path / name).write_bytes(bytes(data))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError) as refused:
        checkpoint.load(tmp_path)
    assert "\n" not in str(refused.value)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_step_that_disagrees_with_the_state_is_refused(tmp_path):
    path = checkpoint.save(tmp_path, 100, ARRAYS, sample_state(100))
    renamed = path.with_name("step-000000999999")  # the directory says 999999, the manifest 100
    path.rename(renamed)
    with pytest.raises(CheckpointError, match="manifest names step 100"):
        checkpoint.load(tmp_path)
    renamed.rename(path)
    manifest = json.loads((path / "MANIFEST.json").read_text())
    (path / "MANIFEST.json").write_text(json.dumps({**manifest, "step": 999999}))
    path.rename(renamed)
    with pytest.raises(CheckpointError, match="the manifest says step 999999, the state says 100"):
        checkpoint.load(tmp_path)


# -- a kill between any two filesystem operations of a save -------------------------------------------------


class Killed(BaseException):
    """The process died here: nothing after this point runs, cleanup handlers included."""


def filesystem_operations(monkeypatch, kill_at: int | None) -> list[str]:
    """Count (and at `kill_at`, kill) every filesystem call a save makes; after the kill every call fails
    too, so no cleanup handler can tidy up what a real SIGKILL would leave."""
    done: list[str] = []

    def wrap(name, real):
        def op(*args, **kwargs):
            if kill_at is not None and len(done) >= kill_at:
                raise Killed(name)
            done.append(name)
            return real(*args, **kwargs)

        return op

    monkeypatch.setattr(checkpoint, "open", wrap("open", open), raising=False)
    for module, name in [
        (os, "rename"),
        (os, "fsync"),
        (os, "open"),
        (shutil, "rmtree"),
        (tempfile, "mkdtemp"),
    ]:
        monkeypatch.setattr(module, name, wrap(name, getattr(module, name)))
    monkeypatch.setattr(Path, "mkdir", wrap("mkdir", Path.mkdir))
    return done


def test_a_kill_between_any_two_filesystem_operations_leaves_a_whole_checkpoint(tmp_path, monkeypatch):
    base = tmp_path / "base"
    (base / "probe").mkdir(parents=True)
    checkpoint.save(base, 100, ARRAYS, sample_state(100))
    with monkeypatch.context() as m:
        ops = filesystem_operations(m, kill_at=None)
        checkpoint.save(base / "probe", 100, ARRAYS, sample_state(100))
        checkpoint.save(base / "probe", 200, ARRAYS, sample_state(200))
    total = len(ops) - ops.index("mkdir", 1)  # the operations of the second save alone
    assert total >= 10, ops
    shutil.rmtree(base / "probe")
    for kill_at in range(total + 1):
        run = tmp_path / f"kill_{kill_at}"
        shutil.copytree(base, run)
        with monkeypatch.context() as m:
            filesystem_operations(m, kill_at=kill_at)
            with contextlib.suppress(Killed):
                checkpoint.save(run, 200, ARRAYS, sample_state(200))
        ckpt = checkpoint.load(run)  # the newest whole one: the old, or the new if it got far enough
        assert ckpt is not None and ckpt.step in (100, 200), kill_at
        assert ckpt.step == 200 or kill_at < total, kill_at
        checkpoint.save(run, 300, ARRAYS, sample_state(300))  # the next save tidies everything up
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000000000300"], kill_at


def test_stale_staging_and_older_checkpoints_are_removed_by_the_next_save(tmp_path):
    checkpoint.save(tmp_path, 100, ARRAYS, sample_state(100))
    stale = tmp_path / "checkpoints" / ".staging-dead"
    stale.mkdir()
    (stale / "state.npz").write_bytes(b"x" * 1000)
    checkpoint.save(tmp_path, 200, ARRAYS, sample_state(200))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000000000200"]


def test_a_symlinked_checkpoints_directory_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").symlink_to(elsewhere)
    with pytest.raises(CheckpointError, match="symbolic link"):
        checkpoint.save(run, 100, ARRAYS, sample_state(100))
    with pytest.raises(CheckpointError, match="symbolic link"):
        checkpoint.load(run)
    assert not list(elsewhere.iterdir())


def test_plainstate_round_trips_through_json_exactly():
    value = {"t": (1, 2.5, None, True), "d": deque([1], maxlen=3), "a": np.arange(3, dtype=np.uint8),
             "g": np.random.default_rng(5), "s": np.int64(2**40), "l": [float("inf"), "x"],
             "P": {0: {1: [(0.5, 4, 0.0, False)]}, 7: {}}}  # fmt: skip
    arrays: dict[str, np.ndarray] = {}
    back = plainstate.decode(json.loads(json.dumps(plainstate.encode(value, arrays))), arrays)
    assert back["t"] == (1, 2.5, None, True) and back["l"] == [float("inf"), "x"]
    assert back["d"] == deque([1], maxlen=3) and back["d"].maxlen == 3
    assert back["a"].dtype == np.uint8 and back["s"] == 2**40 and back["s"].dtype == np.int64
    assert back["g"].integers(1 << 60) == np.random.default_rng(5).integers(1 << 60)
    assert back["P"] == {0: {1: [(0.5, 4, 0.0, False)]}, 7: {}}  # a toy-text env's transitions, int keys


def test_restore_attributes_refuses_another_shape_kind_or_a_name_that_hides_a_method():
    class Thing:
        def __init__(self):
            self.a = np.zeros((2, 3), np.float32)
            self.n = 0

        def step(self):
            return 1

    plainstate.restore_attributes(Thing(), {"a": np.ones((2, 3), np.float64), "n": 5}, "thing")
    with pytest.raises(ValueError, match=r"thing.a: expected float32\[2, 3\], found float32\[3, 2\]"):
        plainstate.restore_attributes(Thing(), {"a": np.ones((3, 2), np.float32)}, "thing")
    with pytest.raises(ValueError, match="thing.a: expected an array, found a str"):
        plainstate.restore_attributes(Thing(), {"a": "x"}, "thing")
    with pytest.raises(ValueError, match="'step', which a fresh one does not"):
        plainstate.restore_attributes(Thing(), {"step": 3}, "thing", allow_new=True)
    with pytest.raises(ValueError, match="'extra', which a fresh one does not"):
        plainstate.restore_attributes(Thing(), {"extra": 3}, "thing")
