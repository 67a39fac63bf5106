"""Appending TensorBoard event files, fast: every dqnlab writer of event files goes through `EventFile`.

The format is TensorFlow's: a sequence of TFRecords (length, masked CRC32C of the length, the serialized
`Event`, masked CRC32C of the data), the first event saying `file_version: "brain.Event:2"`, in a file named
`events.out.tfevents.<time>.<host>.<pid>.<n>`, as TensorBoard's `EventFileWriter` writes it.

Why not `EventFileWriter` itself: it computes CRC32C in pure Python, a byte at a time, in a background thread
that holds the GIL; at the panel's ~60 scalars per written update that was a few percent of a whole CartPole
run (docs/performance.md, "The whole loop"). Here the checksum is `google_crc32c` (C), the record is written
in the calling thread, and a timer thread only flushes.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import struct
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import google_crc32c
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2
from tensorboard.plugins.scalar import metadata as scalar_metadata

_FILE_NUMBER = itertools.count()  # two writers of one process in one second still get two files


# What TensorBoard's `scalar_pb` attaches to a scalar; TensorBoard reads it from a tag's first value.
SCALAR_METADATA = scalar_metadata.create_summary_metadata(display_name=None, description=None)


def scalar_value(tag: str, value: float, with_metadata: bool = True) -> summary_pb2.Summary.Value:
    """What TensorBoard's `scalar_pb` builds (a float32 scalar tensor), without its numpy conversion."""
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[value], tensor_shape={})
    if with_metadata:
        return summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=SCALAR_METADATA)
    return summary_pb2.Summary.Value(tag=tag, tensor=tensor)


class ScalarEncoder:
    """Scalar events serialized from bytes kept per tag: byte for byte what protobuf writes for an `Event` of
    `scalar_value`s (tests/test_eventfile.py checks it), at a fifth of the cost: a measured burst writes ~60
    scalars, ~3.9 us each as protobuf messages, ~0.8 us here (scripts/bench_summaries.py).

    A `Summary` is only its repeated field of values, so the serialized values one after another are the
    serialized summary; a scalar value is its tag's fixed bytes around the value's four float32 bytes."""

    # A float32 whose bytes mark where a value goes (`_frame`): they start with 0xFE, which never occurs in
    # UTF-8 or in a length prefix this short, so no tag's bytes can hold them; `_frame` checks anyway.
    _SENTINEL = 1.2345678e-12

    def __init__(self):
        self._framed: dict[tuple[str, bool], tuple[bytes, bytes] | None] = {}

    def value(self, tag: str, value: float, with_metadata: bool) -> bytes:
        """One serialized `Summary` holding `scalar_value(tag, value, with_metadata)`."""
        key = (tag, with_metadata)
        framed = self._framed[key] if key in self._framed else self._frame(key)
        if framed is None:  # the tag's own bytes hold the sentinel's: let protobuf write it
            return summary_pb2.Summary(value=[scalar_value(tag, value, with_metadata)]).SerializeToString()
        try:
            return framed[0] + _FLOAT32(value) + framed[1]
        except OverflowError:  # beyond float32's range: protobuf stores inf, as a C cast gives
            return framed[0] + _FLOAT32(math.copysign(math.inf, value)) + framed[1]

    def _frame(self, key: tuple[str, bool]) -> tuple[bytes, bytes] | None:
        tag, with_metadata = key
        whole = summary_pb2.Summary(value=[scalar_value(tag, self._SENTINEL, with_metadata)])
        whole = whole.SerializeToString()
        marker = _FLOAT32(self._SENTINEL)
        framed = tuple(whole.split(marker)) if whole.count(marker) == 1 else None
        self._framed[key] = framed
        return framed


def scalar_event(wall_time: float, step: int, summary: bytes) -> bytes:
    """A serialized `Event(wall_time, step, summary)` from a serialized `Summary`: the event's two numbers,
    then its field 5 (`summary`), as protobuf orders fields by number."""
    return (
        event_pb2.Event(wall_time=wall_time, step=step).SerializeToString()
        + b"\x2a"
        + _varint(len(summary))
        + summary
    )


def _varint(n: int) -> bytes:
    """Protobuf's base-128 length prefix."""
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_FLOAT32 = struct.Struct("<f").pack


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC32C rotated right by 15 bits plus a constant (so a CRC of CRCs is not 0)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One TFRecord framing `data`."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


def event_file_name(filename_suffix: str = "") -> str:
    """`events.out.tfevents.<time>.<host>.<pid>.<n>`, TensorBoard's name for a new event file."""
    return (
        f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
        f"{next(_FILE_NUMBER)}{filename_suffix}"
    )


def file_version_event() -> event_pb2.Event:
    """The first event of every event file."""
    return event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")


def write_event_file(logdir: str | Path, events: Iterable[event_pb2.Event]) -> Path:
    """A new event file in `logdir` holding `events`, written in one go and synced to disk: for data written
    whole (the aggregates), where `EventFile`'s flushing thread buys nothing. Returns its path."""
    path = Path(logdir) / event_file_name()
    data = b"".join(record(e.SerializeToString()) for e in itertools.chain([file_version_event()], events))
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # on disk before it is swapped in, so a power loss cannot leave it zero-filled
    return path


class EventFile:
    """A new event file in `logdir`; `add_event` appends, a timer flushes every `flush_every_s`.

    Use as a context manager (or call `close`) so the tail is on disk; after a SIGKILL at most the last
    `flush_every_s` of events are lost, as with TensorBoard's writer. A write that fails in the flushing
    thread (a full disk) is raised by the next `add_event`, `flush` or `close` of the writing thread, so
    the run stops and says why instead of losing events silently.
    """

    def __init__(self, logdir: str | Path, flush_every_s: float = 10.0, filename_suffix: str = ""):
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        self.path = logdir / event_file_name(filename_suffix)
        self._file = open(self.path, "wb")  # noqa: SIM115 -- closed by close()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._error: OSError | None = None  # a failed background flush, raised in the writing thread
        self.add_event(file_version_event())
        self.flush()
        self._flusher = threading.Thread(target=self._flush_every, args=(flush_every_s,), daemon=True)
        self._flusher.start()

    def add_event(self, event: event_pb2.Event) -> None:
        self.add_serialized(event.SerializeToString())

    def add_serialized(self, event: bytes) -> None:
        """Append an already serialized `Event`."""
        data = record(event)
        with self._lock:
            self._raise_background_error()
            self._file.write(data)

    def flush(self) -> None:
        with self._lock:
            self._raise_background_error()
            if not self._file.closed:
                self._file.flush()

    def _raise_background_error(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._flusher.join()
        with self._lock:
            try:
                self._file.close()
            except OSError:
                if self._error is None:  # the first report of a failure; a repeated one adds nothing
                    raise

    def _flush_every(self, seconds: float) -> None:
        while not self._closed.wait(seconds):
            try:
                self.flush()
            except OSError as exc:
                self._error = self._error or exc
                return

    def __enter__(self) -> EventFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
