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
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["BATCH_BYTES", "Outbox", "frame"]

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


class Outbox(Generic[K]):
    """Queue messages for one stream; a single writer task sends them in batches.

    `write` sends one batch (the stream's write); `max_bytes` bounds a batch (a message larger
    than that goes alone; `batched=False` sends each message as it is, one per write). When a
    write fails, `on_error(error, unsent_keys)` hears of it with the keys of the messages that
    were still queued and so were provably never written; the outbox then refuses new ones.
    """

    def __init__(
        self,
        write: Callable[[bytes], Awaitable[object]],
        max_bytes: int,
        on_error: Callable[[BaseException, list[K]], None],
        *,
        batched: bool = True,
    ) -> None:
        self._write = write
        # Unbatched: one message per write, for a stream whose peer expects single messages.
        self._max = max_bytes if batched else 0
        self._on_error = on_error
        self._items: list[tuple[bytes, K | None]] = []
        self._writer: asyncio.Task[None] | None = None
        self.failed = False

    def put(self, data: bytes, key: K | None = None) -> None:
        if self.failed:
            raise RuntimeError("the stream's writer has failed")
        self._items.append((data, key))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while self._items:
                take, size = 0, 0
                for data, _ in self._items:
                    if take and size + len(data) + 10 > self._max:
                        break
                    take += 1
                    size += len(data) + 10
                batch, self._items = self._items[:take], self._items[take:]
                await self._write(frame([d for d, _ in batch]) if self._max else batch[0][0])
        except BaseException as error:
            self.failed = True
            unsent = [k for _, k in self._items if k is not None]
            self._items = []
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
        self._items = []
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
