"""Read scalar series out of TensorBoard event files, fast.

An event file is a sequence of TFRecords (`u64 length, u32 crc, data, u32 crc`) holding `Event` protos.
TensorBoard's own loaders check both CRCs in pure Python and build every event into its multiplexer. Here
the framing is walked with `struct` over the file's bytes and each event is parsed by the C (upb) protobuf,
an order of magnitude faster (docs/performance.md). This is what lets `dqnlab compare` and `dqnlab doctor`
read an experiment of many runs in seconds.

Damaged files are read up to the damage, never past it, and never fail the read. Each whole record's two
CRCs are checked (google_crc32c, in C), and a file's read stops at its first record
that is not whole and good:
- a **torn tail** ends the read silently: a last record cut short (a process killed mid-write), or zero
  bytes from some point to the end of the file (a power loss: the file grew, its last blocks never reached
  the disk), even when they start inside a record. It is what a crash leaves; a `done` run whose events
  lost their final evaluation this way is caught by `dqnlab.compare.events_end_early`.
- anything else is **damage** (bytes changed after they were written, e.g. a bad disk or a broken copy): a
  CRC mismatch with non-zero bytes after the record. The read stops there too (no framing to resync on,
  and what follows cannot be trusted to be aligned), keeps every record before it, and reports a `Damage`
  (`read_series_checked`; `read_series` logs it as a warning). Nothing from a bad record on is returned.
"""

from __future__ import annotations

import logging
import struct
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tensorboard.compat.proto import event_pb2

from dqnlab.eventfile import masked_crc32c

EVENT_FILE_GLOB = "events.out.tfevents.*"
_PACKED_DTYPES = {1: np.float32, 2: np.float64}  # DataType enum: DT_FLOAT, DT_DOUBLE
_HEADER = struct.Struct("<QI")  # record length, masked CRC of the length
_CRC = struct.Struct("<I")
# Zeros shorter than a CRC at the end of a file may be a CRC's own zero bytes, not a power loss's zero fill.
_MIN_ZERO_FILL = _CRC.size

_log = logging.getLogger(__name__)

Series = dict[str, tuple[np.ndarray, np.ndarray]]  # tag -> (steps int64, values float64), sorted by step


def tensorboard_without_tensorflow() -> None:
    """Let TensorBoard read event files with its pure-Python stub instead of importing TensorFlow.

    TensorBoard looks for `tensorboard.compat.notf`; without it, reading a file costs a full TensorFlow
    import (2-3 s, and TF's start-up log lines). Only done where TensorFlow is not loaded already.
    """
    if "tensorflow" not in sys.modules:
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


def event_files(run_dir: Path) -> list[Path]:
    """The event files directly in `run_dir`, oldest first (a resumed run writes a second file)."""
    return sorted(run_dir.glob(EVENT_FILE_GLOB), key=lambda p: (p.stat().st_mtime, p.name))


@dataclass(frozen=True)
class Damage:
    """Where the read of an event file stopped at a damaged record; the records before it were read."""

    path: Path
    offset: int  # the byte where the damaged record starts
    size: int  # of the file
    reason: str
    records_read: int
    last_step: int | None  # of the last event read before the damage (None: none was)

    def __str__(self) -> str:
        after = f" (last env step {self.last_step:,})" if self.last_step is not None else ""
        where = f"at byte {self.offset:,} of {self.size:,} ({self.reason})"
        return (
            f"{self.path.name}: damaged event record {where}; read the {self.records_read} records before "
            f"it{after}, not the {self.size - self.offset:,} bytes from it on"
        )


def iter_events(path: Path, on_damage: Callable[[Damage], None] | None = None) -> Iterator[event_pb2.Event]:
    """The events of one file, in order, up to its first record that is not whole and good (module
    docstring). A torn tail ends it silently; damage is passed to `on_damage` (by default: logged)."""
    data = path.read_bytes()
    parse = event_pb2.Event.FromString
    pos, size, read, last_step = 0, len(data), 0, None
    while pos + _HEADER.size <= size:
        length, length_crc = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        end = start + length
        if masked_crc32c(data[pos : pos + 8]) != length_crc:
            reason, record_end = "its length fails its CRC", start
        elif end + _CRC.size > size:
            return  # cut short by a crash mid-write: keep what came before
        elif masked_crc32c(data[start:end]) != _CRC.unpack_from(data, end)[0]:
            reason, record_end = "its data fails its CRC", end + _CRC.size
        else:
            event = parse(data[start:end])
            yield event
            pos, read, last_step = end + _CRC.size, read + 1, event.step
            continue
        if not _zero_filled_from_within(data, record_end):
            (on_damage or _log_damage)(Damage(path, pos, size, reason, read, last_step))
        return


def _zero_filled_from_within(data: bytes, record_end: int) -> bool:
    """Whether the file ends in a run of zero bytes that starts before `record_end`: the bad record was cut
    by a power loss's zero fill (a torn tail), not changed in place."""
    content_end = len(data.rstrip(b"\0"))
    return content_end < record_end and len(data) - content_end >= _MIN_ZERO_FILL


def _log_damage(damage: Damage) -> None:
    _log.warning("dqnlab: %s", damage)


def _scalar_value(value) -> float | None:
    """The float of a scalar summary value, or None when the value is not a scalar (histogram, text)."""
    if value.HasField("tensor"):
        tensor = value.tensor
        if tensor.tensor_shape.dim:
            return None
        if tensor.float_val:
            return float(tensor.float_val[0])
        if tensor.double_val:
            return float(tensor.double_val[0])
        if tensor.tensor_content and tensor.dtype in _PACKED_DTYPES:  # written by TensorFlow as raw bytes
            return float(np.frombuffer(tensor.tensor_content, _PACKED_DTYPES[tensor.dtype])[0])
        return None
    if value.HasField("simple_value"):
        return float(value.simple_value)  # TF1-style scalar
    return None


def read_series(run_dir: str | Path, tags: Iterable[str] | Callable[[str], bool] | None = None) -> Series:
    """Every scalar series of a run (or only `tags`: names, or a predicate on the tag), as numpy arrays
    sorted by step. A damaged event file gives its records up to the damage, and a logged warning.

    A resumed run's SessionLog START at step s voids what earlier files logged from s on (TensorBoard's own
    purge rule); should a step still be logged twice for a tag, the later write wins, so each appears once.
    """
    series, damage = read_series_checked(run_dir, tags)
    for found in damage:
        _log_damage(found)
    return series


def read_series_checked(
    run_dir: str | Path, tags: Iterable[str] | Callable[[str], bool] | None = None
) -> tuple[Series, list[Damage]]:
    """`read_series`, and the damage found, for callers that report it themselves (compare, doctor)."""
    tensorboard_without_tensorflow()
    if tags is None:
        wanted = None
    elif callable(tags):
        wanted = _Filter(tags)
    else:
        wanted = set(tags)
    points: dict[str, list[tuple[int, float]]] = {}
    damage: list[Damage] = []
    for path in event_files(Path(run_dir)):
        for event in iter_events(path, on_damage=damage.append):
            if event.session_log.status == event_pb2.SessionLog.START and event.step > 0:
                _purge_from(points, event.step)  # a resumed run: what was logged from here on is void
            for value in event.summary.value:
                if wanted is not None and value.tag not in wanted:
                    continue
                number = _scalar_value(value)
                if number is not None:
                    points.setdefault(value.tag, []).append((event.step, number))
    return {tag: _sorted_unique(pairs) for tag, pairs in points.items()}, damage


def _purge_from(points: dict[str, list[tuple[int, float]]], step: int) -> None:
    """TensorBoard's restart rule: a SessionLog START at `step` drops every earlier point at >= step (a tag
    left with no point is gone: it first appeared after the checkpoint the run resumed from)."""
    for tag, pairs in list(points.items()):
        kept = [(s, v) for s, v in pairs if s < step]
        if kept:
            points[tag] = kept
        else:
            del points[tag]


class _Filter:
    """Membership by predicate, asked once per distinct tag (a run has ~100 tags and ~30k values)."""

    def __init__(self, predicate: Callable[[str], bool]):
        self._predicate = predicate
        self._known: dict[str, bool] = {}

    def __contains__(self, tag: str) -> bool:
        known = self._known.get(tag)
        if known is None:
            known = self._known[tag] = bool(self._predicate(tag))
        return known


def _sorted_unique(pairs: list[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    steps = np.fromiter((s for s, _ in pairs), np.int64, len(pairs))
    values = np.fromiter((v for _, v in pairs), np.float64, len(pairs))
    # Stable sort keeps write order within a step; keep the last write of each step.
    order = np.argsort(steps, kind="stable")
    steps, values = steps[order], values[order]
    last_of_step = np.append(steps[1:] != steps[:-1], True)
    return steps[last_of_step], values[last_of_step]
