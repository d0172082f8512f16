"""The sync transport's stream writer: what one write carries (no gRPC: the writer's generator
driven by hand, the GIL yield replaced by callers queueing their envelopes)."""

from __future__ import annotations

import queue
from typing import Any

import pytest

from grpcrpc.envelope import Envelope
from grpcrpc.generated.v1 import transport_pb2 as tpb
from grpcrpc.transport import _sync_stream as sync
from grpcrpc.transport.batching import BATCH_BYTES, frame


def _stream(waiting: int) -> Any:
    """A `_Stream` with `waiting` callers waiting for replies and nothing queued yet."""
    stream = object.__new__(sync.Stream)
    stream._queue = queue.SimpleQueue()
    stream._max_bytes = BATCH_BYTES
    stream._pending = {f"m{i}": object() for i in range(waiting)}
    return stream


def _ids(batch: bytes) -> list[bytes]:
    return [bytes(e.id, "ascii") for e in tpb.EnvelopeBatch.FromString(batch).envelopes]


def _env(i: int) -> bytes:
    return Envelope(id=f"m{i}").SerializeToString()


def test_a_busy_stream_yields_once_so_woken_callers_join_the_write(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stream = _stream(waiting=10)
    yields = []

    def other_callers_run(seconds: float) -> None:  # what the GIL yield lets happen
        yields.append(seconds)
        for i in (1, 2, 3):
            stream._queue.put((_env(i), f"m{i}"))

    monkeypatch.setattr(sync.time, "sleep", other_callers_run)
    stream._queue.put((_env(0), "m0"))
    writes = stream._requests()
    assert _ids(next(writes)) == [b"m0", b"m1", b"m2", b"m3"]
    assert yields == [0]


def test_a_lone_caller_is_written_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = _stream(waiting=1)
    monkeypatch.setattr(sync.time, "sleep", lambda s: pytest.fail("a lone caller waited"))
    stream._queue.put((_env(0), "m0"))
    assert _ids(next(stream._requests())) == [b"m0"]


def test_a_full_batch_is_written_without_yielding(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = _stream(waiting=100)
    monkeypatch.setattr(sync.time, "sleep", lambda s: pytest.fail("a full batch waited"))
    big = b"x" * (BATCH_BYTES // 2)
    for i in range(3):
        stream._queue.put((Envelope(id=f"m{i}", context=big).SerializeToString(), f"m{i}"))
    writes = stream._requests()
    assert len(_ids(next(writes))) == 1  # the second one would not fit: it goes next
    assert len(_ids(next(writes))) == 1


def test_the_end_after_a_batch_stops_the_writer() -> None:
    stream = _stream(waiting=0)
    stream._queue.put((_env(0), "m0"))
    stream._queue.put(sync.END)
    writes = stream._requests()
    assert next(writes) == frame([_env(0)])
    assert list(writes) == []
