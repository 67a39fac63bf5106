"""dqnlab.eventfile writes files TensorFlow and TensorBoard read: checked with their own readers."""

import math
import struct

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboard_masked_crc32c

from dqnlab.eventfile import (
    EventFile,
    ScalarEncoder,
    file_version_event,
    masked_crc32c,
    scalar_event,
    scalar_value,
    write_event_file,
)
from dqnlab.events import read_series


def test_checksum_matches_tensorboards_pure_python_one():
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 100, 4096):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert masked_crc32c(data) == tensorboard_masked_crc32c(data)


def write_run(path):
    with EventFile(path) as f:
        for step in range(5):
            summary = summary_pb2.Summary(
                value=[scalar_value("a", step * 0.5), scalar_value("b/c", -step, with_metadata=step == 0)]
            )
            f.add_event(event_pb2.Event(wall_time=1.0, step=step, summary=summary))
    return f.path


def test_tensorflow_reads_every_record_with_valid_checksums(tmp_path):
    from dqnlab._tf import tf

    path = write_run(tmp_path)
    assert path.name.startswith("events.out.tfevents.")
    records = [event_pb2.Event.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]
    assert records[0].file_version == "brain.Event:2"
    assert [e.step for e in records[1:]] == [0, 1, 2, 3, 4]


def test_tensorboard_and_dqnlab_read_every_value_of_a_multi_value_event(tmp_path):
    write_run(tmp_path)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert sorted(acc.Tags()["tensors"]) == ["a", "b/c"]
    got = [float(tf_event.tensor_proto.float_val[0]) for tf_event in acc.Tensors("b/c")]
    assert got == [0.0, -1.0, -2.0, -3.0, -4.0]
    series = read_series(tmp_path)
    np.testing.assert_array_equal(series["a"][0], [0, 1, 2, 3, 4])
    np.testing.assert_allclose(series["a"][1], [0.0, 0.5, 1.0, 1.5, 2.0])


def test_two_writers_in_one_second_write_two_files(tmp_path):
    with EventFile(tmp_path) as a, EventFile(tmp_path) as b:
        assert a.path != b.path


def test_a_file_written_in_one_go_is_read_by_tensorboard(tmp_path):
    events = [
        event_pb2.Event(
            wall_time=1.0, step=step, summary=summary_pb2.Summary(value=[scalar_value("a", step)])
        )
        for step in (3, 7)
    ]
    path = write_event_file(tmp_path, events)
    assert path.parent == tmp_path and path.name.startswith("events.out.tfevents.")
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [(e.step, float(e.tensor_proto.float_val[0])) for e in acc.Tensors("a")] == [(3, 3.0), (7, 7.0)]


def test_a_failed_background_flush_is_raised_in_the_writing_thread(tmp_path):
    """A full disk in the flushing thread must stop the run, not print a thread traceback and lose events."""
    import errno
    import time

    writer = EventFile(tmp_path, flush_every_s=0.01)

    class FullDisk:
        closed = False

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device", str(writer.path))

        def write(self, data):
            return len(data)

        def close(self):
            self.flush()

    real, writer._file = writer._file, FullDisk()
    deadline = time.monotonic() + 5
    while writer._error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(OSError, match="No space left on device"):
        writer.add_event(file_version_event())
    with pytest.raises(OSError, match="No space left on device"):
        writer.flush()
    writer.close()  # the failure was already reported: closing does not raise it again
    real.close()


EDGE_VALUES = [
    0.0,
    -0.0,
    1.0,
    -2.5,
    1e-45,
    1e-40,
    3.4028235e38,
    3.4028236e38,
    1e39,
    -1e300,
    math.inf,
    -math.inf,
    math.nan,
    -math.nan,
    0.1,
    123456789.0,
    7,
    True,
    np.float32(0.3),
    np.float64(-1e-7),
]


def protobuf_event(wall_time, step, values, described):
    summary = summary_pb2.Summary(value=[scalar_value(t, v, t not in described) for t, v in values])
    return event_pb2.Event(wall_time=wall_time, step=step, summary=summary).SerializeToString()


def encoded_event(encoder, wall_time, step, values, described):
    return scalar_event(wall_time, step, b"".join(encoder.value(t, v, t not in described) for t, v in values))


def test_scalar_events_are_protobufs_bytes_for_bytes():
    """The encoder's events equal protobuf's serialization of the same `Event`, for every float32 edge
    (signed zeros, subnormals, the largest float32 and what rounds past it, infinities, NaNs), ints, bools,
    numpy scalars, a tag's first value (with its metadata) and later ones, and many values per event."""
    encoder, rng = ScalarEncoder(), np.random.default_rng(0)
    tags = ["loss/td", "grad_norm/hidden_0/kernel", "a", "x" * 300, "ünï/cødé", "eval/return"]
    for step, wall_time in [(0, 0.0), (1, 1.5), (127, 1e9 + 0.25), (128, 1796620000.123), (2**40, 3.0)]:
        for described in (set(), set(tags)):
            for value in EDGE_VALUES:
                values = [(t, value) for t in tags]
                assert encoded_event(encoder, wall_time, step, values, described) == protobuf_event(
                    wall_time, step, values, described
                ), (step, value)
            values = [(t, float(v)) for t, v in zip(tags * 30, rng.normal(0, 1e3, 180), strict=True)]
            assert encoded_event(encoder, wall_time, step, values, described) == protobuf_event(
                wall_time, step, values, described
            )


def test_a_value_whose_place_cannot_be_found_is_written_by_protobuf():
    """The shipped sentinel's first byte, 0xFE, never occurs in UTF-8, so no tag can hold it; with a sentinel
    whose bytes are text, a tag holding them is found out and written by protobuf, still the same bytes."""

    class TextSentinel(ScalarEncoder):
        _SENTINEL = struct.unpack("<f", b"abcd")[0]

    encoder = TextSentinel()
    assert ScalarEncoder._SENTINEL and struct.pack("<f", ScalarEncoder._SENTINEL)[0] == 0xFE
    for tag in ("xabcdx", "plain"):
        assert encoded_event(encoder, 1.0, 3, [(tag, 2.0)], set()) == protobuf_event(
            1.0, 3, [(tag, 2.0)], set()
        )
    assert encoder._framed[("xabcdx", True)] is None and encoder._framed[("plain", True)] is not None
