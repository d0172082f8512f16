"""Coalescing writes on a stream: one gRPC message carries every envelope (or reply) that was
queued while the previous write was in flight.

gRPC's per-message cost (a completion-queue round trip through the event loop on each side)
dominates a busy stream; batching pays it once per batch. An idle stream still sends each
message at once, in a batch of one, so latency does not suffer. The framing is protobuf's own
wire form of a `repeated` message field 1 — tag, length, bytes — so messages serialised once
are batched without being parsed again, and the receiver parses the batch with the generated
`EnvelopeBatch`/`ReplyBatch` classes.

>>> from grpcrpc.generated.v1 import transport_pb2
>>> from grpcrpc.envelope import Envelope
>>> data = frame([Envelope(id="a").SerializeToString(), Envelope(id="b").SerializeToString()])
>>> [e.id for e in transport_pb2.EnvelopeBatch.FromString(data).envelopes]
['a', 'b']
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["BATCH_BYTES", "Outbox", "count_batch", "frame"]

K = TypeVar("K")
# A batch is at most this big (a message larger than that goes by itself). Clients send an
# envelope larger than this as a unary RPC, not on a shared stream: a peer's size limit refusing
# it then fails that call alone instead of the stream and everything in flight on it.
BATCH_BYTES = 64 * 1024
_TAG = b"\x0a"  # field 1, wire type 2 (length-delimited)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def frame(items: Sequence[bytes]) -> bytes:
    """Serialised messages → one serialised batch (`repeated` field 1)."""
    return b"".join(_TAG + _varint(len(d)) + d for d in items)


def count_batch(data: bytes, limit: int) -> int:
    """How many messages a serialised batch holds, counting no further than `limit` + 1, and
    without parsing any of them: a receiver refuses an oversized batch before it costs more
    than this walk. Raises ValueError if `data` is not a batch's framing.

    >>> count_batch(frame([b"a", b"bc", b""]), 10), count_batch(frame([b"a"] * 5), 2)
    (3, 3)
    """
    pos, n, end = 0, 0, len(data)
    while pos < end:
        if n > limit:
            break
        if data[pos] != 0x0A:
            raise ValueError(f"unexpected field tag {data[pos]:#x} at byte {pos}")
        pos += 1
        length, shift = 0, 0
        while True:
            if pos >= end or shift > 28:
                raise ValueError("truncated length")
            b = data[pos]
            pos += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        pos += length
        if pos > end:
            raise ValueError("truncated message")
        n += 1
    return n


class Outbox(Generic[K]):
    """Queue messages for one stream; a single writer task sends them in batches.

    `write` sends one batch (the stream's write); `max_bytes` bounds a batch (a message larger
    than that goes alone; `batched=False` sends each message as it is, one per write). When a
    write fails, `on_error(error, unsent_keys)` hears of it with the keys of the messages that
    were still queued and so were provably never written; the outbox then refuses new ones.
    `unsent` counts the bytes queued and not yet written (a write waits while the peer's
    HTTP/2 window is shut), `on_unsent(delta)` hears of every change, and `drained(n)` waits
    until at most `n` bytes are left: what a reader needs for backpressure.
    """

    def __init__(
        self,
        write: Callable[[bytes], Awaitable[object]],
        max_bytes: int,
        on_error: Callable[[BaseException, list[K]], None],
        *,
        batched: bool = True,
        on_unsent: Callable[[int], None] | None = None,
    ) -> None:
        self._write = write
        # Unbatched: one message per write, for a stream whose peer expects single messages.
        self._max = max_bytes if batched else 0
        self._on_error = on_error
        self._on_unsent = on_unsent
        # A deque: appending and taking a batch cost the same however much is queued.
        self._items: collections.deque[tuple[bytes, K | None]] = collections.deque()
        self._writer: asyncio.Task[None] | None = None
        self._drained: asyncio.Event | None = None
        self._drain_to = 0
        self.unsent = 0
        self.failed = False

    def put(self, data: bytes, key: K | None = None) -> None:
        if self.failed:
            raise RuntimeError("the stream's writer has failed")
        self._items.append((data, key))
        self._count(len(data))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._run())

    def _count(self, delta: int) -> None:
        self.unsent += delta
        if self._on_unsent is not None:
            self._on_unsent(delta)
        if self._drained is not None and (self.unsent <= self._drain_to or self.failed):
            self._drained.set()
            self._drained = None

    async def drained(self, at_most: int) -> None:
        """Return once at most `at_most` bytes are queued (or the writer failed)."""
        while self.unsent > at_most and not self.failed:
            if self._drained is None or self._drain_to != at_most:
                if self._drained is not None:
                    self._drained.set()  # wake the other waiter: it re-checks its own bound
                self._drained = asyncio.Event()
                self._drain_to = at_most
            await self._drained.wait()

    async def _run(self) -> None:
        items = self._items
        try:
            while items:
                batch: list[bytes] = []
                size = 0
                while items:
                    data = items[0][0]
                    if batch and (not self._max or size + len(data) + 10 > self._max):
                        break
                    items.popleft()
                    batch.append(data)
                    size += len(data) + 10
                try:
                    await self._write(frame(batch) if self._max else batch[0])
                finally:
                    self._count(-(size - 10 * len(batch)))
        except BaseException as error:
            self.failed = True
            unsent = [k for _, k in items if k is not None]
            left = sum(len(d) for d, _ in items)
            items.clear()
            self._count(-left)
            self._on_error(error, unsent)
            if isinstance(error, asyncio.CancelledError):
                raise
        finally:
            self._writer = None

    def abandon(self) -> list[K]:
        """Stop writing: the keys of the messages still queued (provably never written); the
        outbox then refuses new ones."""
        self.failed = True
        unsent = [k for _, k in self._items if k is not None]
        left = sum(len(d) for d, _ in self._items)
        self._items.clear()
        self._count(-left)
        if self._writer is not None:
            self._writer.cancel()
        return unsent

    async def flush(self) -> None:
        """Wait until everything queued has been written (or the writer failed)."""
        while self._writer is not None:
            await asyncio.wait({self._writer})

    def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
