"""The asyncio transport: envelope streams over `grpc.aio`, many messages in flight per stream.

Each endpoint gets `streams_per_endpoint` bidirectional `Batches` streams, opened lazily. A
message is queued on a stream's outbox, which writes everything queued while its previous write
was in flight as one batch; the stream's reader task matches replies to waiters by message id.
A stream that cannot open fails its message *before* anything was written, and a stream that
breaks fails the messages still queued the same way (`NotSent`), so those go to another endpoint;
the messages already written fail with `DeliveryError` (they may have been delivered), and the
stream is replaced on the next message. A server that freezes keeps its connections open: a
watcher task probes a connection whose messages have waited `probe_after` seconds in silence,
and fails them the same way if the probe goes unanswered (see `Liveness`).

>>> import asyncio
>>> from grpcrpc.discovery import StaticResolver
>>> async def main():
...     transport = AsyncTransport(StaticResolver([]))
...     await transport.close()
>>> asyncio.run(main())
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import grpc
import grpc.aio

from grpcrpc import envelope as ev
from grpcrpc import fanout
from grpcrpc._errors import map_rpc_error
from grpcrpc.discovery.base import Endpoint, Resolver
from grpcrpc.exceptions import (
    ClientClosed,
    DeliveryError,
    GrpcrpcError,
    MessagingTimeout,
    Overloaded,
)
from grpcrpc.fanout import FanoutReport
from grpcrpc.generated.v1 import transport_pb2 as tpb
from grpcrpc.target import Target
from grpcrpc.transport import detached
from grpcrpc.transport.base import (
    BATCHES_METHOD,
    FANOUT_METHOD,
    PROBE_METHOD,
    UNARY_METHOD,
    Attempts,
    Liveness,
    NotSent,
    TransportBase,
    TransportOptions,
    broadcaster_target,
    broken_stream_error,
    call_metadata,
    cancel_envelope,
    cast_wait,
    channel_options,
    check_size,
    fanout_request,
    parse_report,
    rpc_failure,
    settle_probe,
)
from grpcrpc.transport.batching import BATCH_BYTES, Outbox

__all__ = ["AsyncTransport"]

# How long close() waits for detached fanouts' answers when casts have no acceptance bound.
_CLOSE_WAIT = 5.0

log = logging.getLogger("grpcrpc.transport")


class _Stream:
    """One envelope stream (`Batches`): writes coalesced by an `Outbox`, replies matched to
    waiters by message id by a reader task."""

    def __init__(self, channel: grpc.aio.Channel, address: str,
                 metadata: tuple[tuple[str, str], ...], max_bytes: int) -> None:
        self.address = address
        self._call = channel.stream_stream(BATCHES_METHOD)(metadata=metadata or None)
        self._pending: dict[str, asyncio.Future[ev.Reply]] = {}
        self._outbox: Outbox[str] = Outbox(self._call.write, min(max_bytes, BATCH_BYTES),
                                           self._write_failed)
        self._opened = False
        self._open_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self.broken = False
        # When the server was last heard from (or, while nothing waited, last sent to).
        self.heard = time.monotonic()
        self._failure: BaseException | None = None  # set by fail(): what the reader reports

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def _open(self) -> None:
        async with self._open_lock:
            if self._opened:
                return
            try:
                await self._call.wait_for_connection()
            except grpc.RpcError as err:
                self.broken = True
                raise rpc_failure(err, f"stream @ {self.address}") from None
            self._reader = asyncio.get_running_loop().create_task(self._read())
            self._opened = True

    async def request(self, msg_id: str, data: bytes) -> asyncio.Future[ev.Reply]:
        """Queue one envelope; the future its reply will resolve. The future fails with
        `NotSent` if the stream broke before the envelope was written, `DeliveryError` if after.
        """
        if not self._opened:
            await self._open()
        if self.broken:
            raise NotSent("stream closed")
        fut: asyncio.Future[ev.Reply] = asyncio.get_running_loop().create_future()
        if not self._pending:  # silence counts from the first message waiting
            self.heard = time.monotonic()
        self._pending[msg_id] = fut
        self._outbox.put(data, msg_id)
        return fut

    def forget(self, msg_id: str) -> None:
        self._pending.pop(msg_id, None)

    def send_only(self, data: bytes) -> None:
        """Queue a control envelope (cancel) that gets no reply; best effort."""
        if not self.broken and self._opened and not self._outbox.failed:
            self._outbox.put(data)

    def _write_failed(self, error: BaseException, unsent: list[str]) -> None:
        self.broken = True
        for msg_id in unsent:  # still queued: provably never written, safe to send elsewhere
            fut = self._pending.pop(msg_id, None)
            if fut is not None and not fut.done():
                fut.set_exception(NotSent(f"stream @ {self.address} broke before sending"))
        # The batch being written when it failed is settled by the reader, which sees the
        # stream end: those may or may not have been delivered.

    async def _read(self) -> None:
        failure: GrpcrpcError = DeliveryError("stream closed by the server")
        try:
            while True:
                raw = await self._call.read()
                if raw is grpc.aio.EOF:
                    break
                self.heard = time.monotonic()
                try:
                    replies = tpb.ReplyBatch.FromString(raw).replies
                except Exception:  # DecodeError: one garbled batch must not take others down
                    continue
                pending = self._pending
                for reply in replies:
                    fut = pending.pop(reply.id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(reply)
        except grpc.RpcError as err:
            failure = map_rpc_error(err, f"stream @ {self.address}")
        except asyncio.CancelledError:
            failure = DeliveryError("client closed")
        finally:
            self.broken = True
            pending, self._pending = self._pending, {}
            error = broken_stream_error(self._failure or failure)
            for fut in pending.values():
                if not fut.done():
                    fut.set_exception(error)

    def fail(self, failure: BaseException) -> None:
        """Give up on the stream: what is still queued fails as `NotSent`, what was written as
        `broken_stream_error(failure)`; the next message opens a new stream."""
        self._failure = failure
        self.broken = True
        self._write_failed(failure, self._outbox.abandon())
        pending, self._pending = self._pending, {}
        error = broken_stream_error(failure)
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(error)
        self._call.cancel()

    async def close(self) -> None:
        self.broken = True
        self._outbox.close()
        self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


class _Part(detached.Part):
    """A detached fanout's envelope to one server, settled when its reply future is done;
    resent by a task after the backoff."""

    __slots__ = ("conn", "transport")

    def __init__(self, transport: AsyncTransport, conn: _Conn, endpoint: Endpoint,
                 fan: detached.Fanout, msg_id: str, data: bytes) -> None:
        super().__init__(endpoint, fan, msg_id, data)
        self.transport, self.conn = transport, conn

    async def send(self) -> None:
        """Queue it on the server's stream (again); a failure to queue settles it."""
        try:
            fut = await self.conn.stream().request(self.msg_id, self.data)
        except (NotSent, GrpcrpcError) as err:
            self.settle(None, err)
            return
        fut.add_done_callback(self._answered)

    def _answered(self, fut: asyncio.Future[ev.Reply]) -> None:
        if fut.cancelled():
            self.settle(None, ClientClosed("the transport is closed"))
        elif (error := fut.exception()) is not None:
            self.settle(None, error)
        else:
            self.settle(fut.result())

    def _release(self) -> None:
        self.conn.window.release()

    def _later(self, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, lambda: self.transport._spawn(self.send()))


class _Conn:
    def __init__(
        self, channel: grpc.aio.Channel, address: str, n: int,
        metadata: tuple[tuple[str, str], ...], max_bytes: int,
    ) -> None:
        self.channel = channel
        # Room for detached fanout envelopes unanswered on this connection.
        self.window = asyncio.Semaphore(detached.WINDOW)
        self.address = address
        self.fanout = channel.unary_unary(FANOUT_METHOD)
        self.unary = channel.unary_unary(UNARY_METHOD)
        self.probe = channel.unary_unary(PROBE_METHOD)
        self.liveness = Liveness()
        self._metadata = metadata
        self._max_bytes = max_bytes
        self._streams: list[_Stream | None] = [None] * max(1, n)
        self._next = itertools.count()

    def stream(self) -> _Stream:
        i = next(self._next) % len(self._streams)
        s = self._streams[i]
        if s is None or s.broken:
            s = self._streams[i] = _Stream(self.channel, self.address, self._metadata,
                                           self._max_bytes)
        return s

    def streams(self) -> list[_Stream | None]:
        return list(self._streams)

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self._streams if s is not None))
        await self.channel.close()


class AsyncTransport(TransportBase):
    """Connections from an asyncio process to every endpoint its resolver knows.

    Creating it needs no event loop: it connects on first use, and from then on belongs to the
    loop that used it first (gRPC's asyncio channels cannot move between loops).
    """

    def __init__(
        self,
        resolver: Resolver,
        options: TransportOptions | None = None,
        *,
        owns_resolver: bool = False,
    ) -> None:
        super().__init__(resolver, options, owns_resolver=owns_resolver)
        self._loop: asyncio.AbstractEventLoop | None = None  # the first user's
        self._conns: collections.OrderedDict[str, _Conn] = collections.OrderedDict()
        self._retiring: dict[str, _Conn] = {}
        self._creds = self.options.tls.credentials() if self.options.tls else None
        self._channel_options = channel_options(self.options)
        self._metadata = call_metadata(self.options) or ()
        self._tasks: set[asyncio.Task[None]] = set()
        self._watching = False
        self._detached = detached.Live()  # detached fanouts whose report is still due

    def _conn(self, address: str) -> _Conn:
        conn = self._conns.get(address)
        if conn is not None:
            return conn
        if self._closed:
            raise ClientClosed("the transport is closed")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if self._creds is not None:
            channel = grpc.aio.secure_channel(address, self._creds, self._channel_options)
        else:
            channel = grpc.aio.insecure_channel(address, self._channel_options)
        conn = self._conns[address] = _Conn(
            channel, address, self.options.streams_per_endpoint, self._metadata,
            self.options.max_message_size,
        )
        excess = len(self._conns) - self.options.max_channels
        for other in list(self._conns):
            if excess <= 0:
                break
            if self.balancer.outstanding(other) == 0 and other != address:
                self._spawn(self._conns.pop(other).close())
                excess -= 1
        if not self._watching and self.options.probe_after is not None:
            self._watching = True
            self._spawn(self._watch(self.options.probe_after))
        return conn

    # -- liveness: a frozen server ---------------------------------------------------------

    async def _watch(self, after: float) -> None:
        """Probe the connections whose messages wait in silence (see `Liveness`)."""
        tick = min(0.25, after / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for conn in (*self._conns.values(), *self._retiring.values()):
                if conn.liveness.due(conn.streams(), now, after):
                    conn.liveness.probing = True
                    self._spawn(self._probe(conn, now))

    async def _probe(self, conn: _Conn, started: float) -> None:
        code: grpc.StatusCode | None = None
        try:
            await conn.probe(b"", timeout=self.options.probe_timeout,
                             metadata=self._metadata or None)
        except grpc.RpcError as err:
            code = err.code()
        except BaseException:
            conn.liveness.probing = False  # cancelled with the transport: no verdict
            raise
        settle_probe(self, conn, started, code)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # Only ever called on the loop, after a first connection bound it.
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _retire(self, address: str) -> None:
        # Called from the resolver's thread: hand over to the loop.
        loop = self._loop
        if loop is None:
            return  # never used: no connection to close
        with contextlib.suppress(RuntimeError):  # a closed loop has nothing left to close
            loop.call_soon_threadsafe(self._retire_on_loop, address)

    def _retire_on_loop(self, address: str) -> None:
        conn = self._conns.pop(address, None)
        if conn is None:
            return
        if self.balancer.outstanding(address) == 0:
            self._spawn(conn.close())
        else:
            self._retiring[address] = conn

    def _done(self, address: str) -> None:
        self.balancer.end(address)
        if self._retiring and address in self._retiring and not self.balancer.outstanding(address):
            self._spawn(self._retiring.pop(address).close())

    async def request(
        self, target: Target, msg_id: str, data: bytes, timeout: float | None, what: str,
        retry: int | None = None, *, cast: bool = False,
    ) -> ev.Reply:
        """Send one envelope to one endpoint of `target`; the server's reply (for a `cast`,
        its acceptance, waited for at most `cast_accept_timeout`)."""
        check_size(data, self.options, what)
        attempts = Attempts(self, target, timeout, retry, cast=cast)
        while True:
            endpoint = attempts.next_endpoint()
            address = endpoint.address
            conn = self._conn(address)
            self.balancer.begin(address)
            try:
                if len(data) > BATCH_BYTES:  # alone, so a size limit refusing it fails it alone
                    reply = await self._unary(conn, data, attempts.wait(), what)
                else:
                    reply = await self._exchange(conn, msg_id, data, attempts.wait(), what)
            except NotSent as err:
                attempts.never_sent(endpoint, str(err))
                continue
            except MessagingTimeout as err:
                raise attempts.timed_out(endpoint, err) from None
            except Overloaded as err:  # refused before it ran (unary, or a stream at opening)
                attempts.overloaded(endpoint, str(err))
                continue
            finally:
                self._done(address)
            if attempts.accepted(endpoint, reply):
                return reply

    async def _exchange(self, conn: _Conn, msg_id: str, data: bytes, timeout: float | None,
                        what: str) -> ev.Reply:
        """One envelope out on one of `conn`'s streams, its reply back (or the reason not)."""
        stream = conn.stream()
        fut = await stream.request(msg_id, data)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            # The caller gave up: tell the server, so it can drop the work (and cancel the
            # calls that work made in turn).
            stream.forget(msg_id)
            stream.send_only(cancel_envelope(msg_id))
            raise MessagingTimeout(f"{what} @ {conn.address}: timed out") from None
        except asyncio.CancelledError:
            stream.forget(msg_id)
            stream.send_only(cancel_envelope(msg_id))
            raise

    async def _unary(self, conn: _Conn, data: bytes, timeout: float | None, what: str
                     ) -> ev.Reply:
        try:
            raw = await conn.unary(data, timeout=timeout, metadata=self._metadata or None)
        except grpc.RpcError as err:
            raise rpc_failure(err, f"{what} @ {conn.address}") from None
        return ev.parse_reply(raw)

    async def broadcast(self, target: Target, data: bytes, timeout: float | None, what: str
                        ) -> fanout.FanoutReport:
        """Hand a fanout cast to a broadcaster of the target's AZ; its delivery report.

        `NoEndpoints` when no broadcaster took it (none registered, or none reachable before
        anything was sent): the caller may then fan out itself without risk of duplicates.
        """
        request = fanout_request(data)
        check_size(request, self.options, what)
        attempts = Attempts(self, broadcaster_target(target, self.options.az), timeout)
        while True:
            endpoint = attempts.next_endpoint()
            try:
                report = await self.forward(endpoint, request, attempts.remaining(), what)
            except NotSent as err:
                attempts.never_sent(endpoint, str(err))
                continue
            attempts.succeeded(endpoint)
            return report

    async def forward(self, endpoint: Endpoint, request: bytes, timeout: float | None, what: str
                      ) -> fanout.FanoutReport:
        """Send a `FanoutRequest` to one broadcaster. `NotSent` if it provably never left."""
        address = endpoint.address
        conn = self._conn(address)
        self.balancer.begin(address)
        try:
            raw = await conn.fanout(request, timeout=timeout, metadata=self._metadata or None)
        except grpc.RpcError as err:
            raise rpc_failure(err, f"{what} @ {address}") from None
        finally:
            self._done(address)
        return parse_report(raw)

    async def fanout(
        self, endpoints: Sequence[Endpoint], msg_id: str, data: bytes, timeout: float | None,
        what: str, parallelism: int | None = None,
    ) -> FanoutReport:
        """Send one cast envelope to every endpoint, at most `parallelism` at once; who
        accepted it."""
        check_size(data, self.options, what)
        timeout = cast_wait(timeout, self.options)  # each server's acceptance
        limit = asyncio.Semaphore(parallelism) if parallelism else None

        async def one(endpoint: Endpoint) -> fanout.Failed | None:
            if limit is None:
                return await deliver(endpoint)
            async with limit:
                return await deliver(endpoint)

        async def deliver(endpoint: Endpoint) -> fanout.Failed | None:
            address = endpoint.address
            stream = self._conn(address).stream()
            self.balancer.begin(address)
            try:
                async with asyncio.timeout(timeout):
                    reply = await (await stream.request(msg_id, data))
                return fanout.failed_for(address, endpoint.server, reply)
            except TimeoutError:
                stream.forget(msg_id)
                return fanout.Failed(address, endpoint.server, "timed out")
            except NotSent as err:  # it could not be reached: skip it in picks for a while too
                self.balancer.ejections.eject(address)
                return fanout.Failed(address, endpoint.server, f"unreachable, not sent: {err}")
            except (DeliveryError, grpc.RpcError) as err:
                return fanout.Failed(address, endpoint.server, f"{type(err).__name__}: {err}")
            finally:
                self._done(address)

        results = await asyncio.gather(*(one(e) for e in endpoints))
        return fanout.report(len(endpoints), [f for f in results if f is not None])

    async def fanout_detached(self, endpoints: Sequence[Endpoint], msg_id: str, data: bytes,
                              timeout: float | None, what: str,
                              on_report: Callable[[FanoutReport], object]) -> None:
        """`fanout`, detached: returns once the envelope is queued for every server; the report
        goes to `on_report` (on the loop) when the last one answered
        (`grpcrpc.transport.detached`)."""
        check_size(data, self.options, what)
        timeout = cast_wait(timeout, self.options)  # each server's acceptance
        fan = detached.Fanout(len(endpoints), on_report, on_settled=self._done,
                              live=self._detached, timeout=timeout,
                              eject=self.balancer.ejections.eject)
        try:
            for endpoint in endpoints:
                self.balancer.begin(endpoint.address)
                try:
                    conn = self._conn(endpoint.address)
                    try:
                        async with asyncio.timeout(fan.left()):
                            await conn.window.acquire()
                    except TimeoutError:
                        raise fan.no_room(endpoint) from None
                except (NotSent, GrpcrpcError) as err:
                    fan.not_sent(endpoint, err)
                    continue
                fan.sending()
                await _Part(self, conn, endpoint, fan, msg_id, data).send()
        finally:
            fan.sent_all()

    async def close(self) -> None:
        """Close every stream and channel (messages in flight fail with `DeliveryError`), once
        the detached fanouts sent have been answered (waiting at most `cast_accept_timeout`)."""
        if self._closed:
            return
        until = time.monotonic() + (self.options.cast_accept_timeout or _CLOSE_WAIT)
        while self._detached.due and time.monotonic() < until:
            await asyncio.sleep(0.005)  # answers arrive on this loop: let them in
        if self._closed:
            return
        conns = list(self._conns.values()) + list(self._retiring.values())
        self._conns.clear()
        self._retiring.clear()
        self._close_base()
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
