"""The sync transport: grpcio's blocking channels, no event loop.

Calls and casts go over envelope streams (`Batches`), as in the asyncio transport: each endpoint
gets `streams_per_endpoint` streams, opened lazily. A caller queues its envelope and blocks on a
lock of its own until the stream's reader thread hands it the reply (matched by message id) or
its time runs out. gRPC's writer thread sends everything queued since its last write as one
batch, so many threads share a stream cheaply. Measured here against one unary RPC per message,
a stream halves the sequential round trip (a new RPC costs the asyncio server far more than a
message on an open stream), and the hand-off to the reader thread costs less than that saves.

What may be resent follows the asyncio transport: envelopes still queued when a stream breaks,
or sent on a stream that never connected, provably never left (`NotSent`: another endpoint is
tried); envelopes handed to gRPC fail with `DeliveryError` (they may have been delivered). A
fanout from the client goes on each server's stream (as one unary RPC per server, to many), all
at once; it waits for every server's acceptance, or, detached (`on_report`), returns once sent
and reports later (`grpcrpc.transport.detached`).

A server that freezes keeps its connections open: one watcher thread per transport probes a
connection whose messages have waited `probe_after` seconds in silence, and fails them if the
probe goes unanswered (see `Liveness`).

>>> from grpcrpc.discovery import StaticResolver
>>> transport = SyncTransport(StaticResolver([]))
>>> transport.close()
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from grpcrpc import envelope as ev
from grpcrpc import fanout
from grpcrpc._errors import map_rpc_error, never_sent
from grpcrpc.discovery.base import Endpoint, Resolver
from grpcrpc.exceptions import (
    ClientClosed,
    GrpcrpcError,
    MessagingTimeout,
    Overloaded,
)
from grpcrpc.fanout import Failed, FanoutReport
from grpcrpc.target import Target
from grpcrpc.transport import detached
from grpcrpc.transport._sync_stream import Stream, Waiter
from grpcrpc.transport.base import (
    FANOUT_METHOD,
    PROBE_METHOD,
    UNARY_METHOD,
    Attempts,
    Liveness,
    NotSent,
    TransportBase,
    TransportOptions,
    broadcaster_target,
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
from grpcrpc.transport.batching import BATCH_BYTES

__all__ = ["SyncTransport"]

log = logging.getLogger("grpcrpc.transport")

# A client-side fanout to more servers than this sends unary RPCs instead of using streams.
STREAM_FANOUT_LIMIT = 64
# How long close() waits for detached fanouts' answers when casts have no acceptance bound.
_CLOSE_WAIT = 5.0
class _Part(detached.Part):
    """A detached fanout's envelope to one server, settled as a `Waiter` is (by the stream's
    reader thread, or by a unary RPC's completion); resent from a timer thread."""

    __slots__ = ("conn", "transport", "unary")

    def __init__(self, transport: SyncTransport, conn: _Conn, endpoint: Endpoint,
                 fan: detached.Fanout, msg_id: str, data: bytes, unary: bool) -> None:
        super().__init__(endpoint, fan, msg_id, data)
        self.transport, self.conn, self.unary = transport, conn, unary

    def settle_unary(self, future: Any) -> None:
        try:
            reply = self.transport._unary_result(future, None, self.conn, self.endpoint.address)
        except (NotSent, GrpcrpcError) as err:
            self.settle(None, err)
        else:
            self.settle(reply)

    def send(self) -> None:
        """Send it (again); a failure to send settles it."""
        try:
            if self.unary or len(self.data) > BATCH_BYTES:
                future = self.conn.unary.future(self.data, metadata=self.transport._metadata,
                                                timeout=self.fan.left())
                future.add_done_callback(self.settle_unary)
            else:
                self.conn.stream().request(self.msg_id, self.data, self)
        except ValueError as err:  # the channel was closed under us by close()
            self.settle(None, ClientClosed(f"{self.endpoint.address}: {err}"))
        except (NotSent, GrpcrpcError) as err:
            self.settle(None, err)

    def _release(self) -> None:
        self.conn.window.release()

    def _later(self, delay: float) -> None:
        timer = threading.Timer(delay, self.send)
        timer.daemon = True
        timer.start()


class _Conn:
    def __init__(self, channel: grpc.Channel, address: str, n: int,
                 metadata: tuple[tuple[str, str], ...] | None, max_bytes: int) -> None:
        self.channel = channel
        self.address = address
        # Bytes in, bytes out: parsing is ours, so a bad reply is a named error, not gRPC's.
        self.unary = channel.unary_unary(UNARY_METHOD)
        self.fanout = channel.unary_unary(FANOUT_METHOD)
        self.probe = channel.unary_unary(PROBE_METHOD)
        self.liveness = Liveness()
        self._metadata = metadata
        self._max_bytes = max_bytes
        self._streams: list[Stream | None] = [None] * max(1, n)
        # Room for detached fanout envelopes unanswered on this connection.
        self.window = threading.BoundedSemaphore(detached.WINDOW)
        self._next = itertools.count()
        self._lock = threading.Lock()

    def stream(self) -> Stream:
        i = next(self._next) % len(self._streams)
        s = self._streams[i]
        if s is None or s.broken:
            with self._lock:
                s = self._streams[i]
                if s is None or s.broken:
                    s = self._streams[i] = Stream(self.channel, self.address, self._metadata,
                                                   self._max_bytes)
        return s

    def streams(self) -> list[Stream | None]:
        return list(self._streams)

    def close(self) -> None:
        for s in self._streams:
            if s is not None:
                s.close()
        self.channel.close()


class SyncTransport(TransportBase):
    """Connections from a blocking process to every endpoint its resolver knows."""

    def __init__(
        self,
        resolver: Resolver,
        options: TransportOptions | None = None,
        *,
        owns_resolver: bool = False,
    ) -> None:
        super().__init__(resolver, options, owns_resolver=owns_resolver)
        self._conns: collections.OrderedDict[str, _Conn] = collections.OrderedDict()
        self._retiring: dict[str, _Conn] = {}
        self._creds = self.options.tls.credentials() if self.options.tls else None
        self._channel_options = channel_options(self.options)
        self._metadata = call_metadata(self.options)
        self._watching: threading.Event | None = None  # set to stop the watcher thread
        self._detached = detached.Live()  # detached fanouts whose report is still due

    def _conn(self, address: str) -> _Conn:
        conn = self._conns.get(address)
        if conn is not None:
            return conn
        with self._lock:
            if self._closed:
                raise ClientClosed("the transport is closed")
            conn = self._conns.get(address)
            if conn is None:
                if self._creds is not None:
                    channel = grpc.secure_channel(address, self._creds, self._channel_options)
                else:
                    channel = grpc.insecure_channel(address, self._channel_options)
                conn = self._conns[address] = _Conn(
                    channel, address, self.options.streams_per_endpoint, self._metadata,
                    self.options.max_message_size)
                self._evict_locked()
                if self._watching is None and self.options.probe_after is not None:
                    self._watching = threading.Event()
                    threading.Thread(target=self._watch, args=(self._watching,), daemon=True,
                                     name="grpcrpc-liveness").start()
        return conn

    # -- liveness: a frozen server ---------------------------------------------------------

    def _watch(self, stop: threading.Event) -> None:
        """Probe the connections whose messages wait in silence (see `Liveness`)."""
        after = self.options.probe_after
        assert after is not None
        tick = min(0.25, after / 4)
        while not stop.wait(tick):
            with self._lock:  # other threads add and drop connections
                conns = (*self._conns.values(), *self._retiring.values())
            now = time.monotonic()
            for conn in conns:
                if conn.liveness.due(conn.streams(), now, after):
                    self._probe(conn, now)

    def _probe(self, conn: _Conn, now: float) -> None:
        conn.liveness.probing = True
        try:
            future = conn.probe.future(b"", timeout=self.options.probe_timeout,
                                       metadata=self._metadata)
        except ValueError:  # the channel was closed under us by close()
            conn.liveness.probing = False
            return
        future.add_done_callback(lambda f: self._probed(conn, now, f))

    def _probed(self, conn: _Conn, started: float, future: Any) -> None:
        """gRPC's thread: the probe came back (or did not)."""
        settle_probe(self, conn, started, future.code())

    def _evict_locked(self) -> None:
        """Keep the pool bounded: close the oldest idle connections beyond the limit."""
        excess = len(self._conns) - self.options.max_channels
        for address in list(self._conns):
            if excess <= 0:
                break
            if self.balancer.outstanding(address) == 0:
                self._conns.pop(address).close()
                excess -= 1

    def _retire(self, address: str) -> None:
        with self._lock:
            conn = self._conns.pop(address, None)
            if conn is None:
                return
            if self.balancer.outstanding(address) == 0:
                conn.close()
            else:
                self._retiring[address] = conn

    def _done(self, address: str) -> None:
        self.balancer.end(address)
        if self._retiring and address in self._retiring and not self.balancer.outstanding(address):
            with self._lock:
                conn = self._retiring.pop(address, None)
            if conn is not None:
                conn.close()

    def request(
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
            self.balancer.begin(address)
            try:
                try:
                    reply = self._exchange(self._conn(address), msg_id, data,
                                           attempts.wait(), what)
                except NotSent as err:
                    attempts.never_sent(endpoint, str(err))
                    continue
                except MessagingTimeout as err:
                    raise attempts.timed_out(endpoint, err) from None
                except Overloaded as err:  # refused before it ran (a unary call)
                    attempts.overloaded(endpoint, str(err))
                    continue
            finally:
                self._done(address)
            if attempts.accepted(endpoint, reply):
                return reply

    def _exchange(self, conn: _Conn, msg_id: str, data: bytes, timeout: float | None,
                  what: str) -> ev.Reply:
        """One envelope out to `conn`, its reply back (or the reason not)."""
        return self._start(conn, msg_id, data, timeout, what)(timeout)

    def _start(self, conn: _Conn, msg_id: str, data: bytes, timeout: float | None,
               what: str = "", *, unary: bool = False) -> Callable[[float | None], ev.Reply]:
        """Send one envelope to `conn` with `timeout` to live: on one of its streams, or alone
        as a unary RPC when large (or `unary`). Returns the function that waits (at most its
        argument, in seconds) for the reply."""
        what = what or conn.address
        if unary or len(data) > BATCH_BYTES:
            try:
                future = conn.unary.future(data, timeout=timeout, metadata=self._metadata)
            except ValueError as err:  # the channel was closed under us by close()
                raise ClientClosed(f"{what}: {err}") from None
            return lambda timeout: self._unary_result(future, timeout, conn, what)
        try:
            stream = conn.stream()
        except ValueError as err:  # the channel was closed under us by close()
            raise ClientClosed(f"{what}: {err}") from None
        waiter = Waiter()
        stream.request(msg_id, data, waiter)

        def finish(timeout: float | None) -> ev.Reply:
            if not waiter.lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
                if stream.forget(msg_id) is waiter:
                    # Tell the server, so it can drop the work (and cancel the calls that work
                    # made in turn), as the asyncio transport does.
                    stream.send_only(cancel_envelope(msg_id))
                    raise MessagingTimeout(f"{what} @ {conn.address}: timed out")
                waiter.lock.acquire()  # settled just now: it is released at once
            if waiter.error is not None:
                raise waiter.error
            assert waiter.reply is not None
            return waiter.reply

        return finish

    def _unary_result(self, future: Any, timeout: float | None, conn: _Conn, what: str
                      ) -> ev.Reply:
        try:
            raw = future.result(timeout=timeout)
        except grpc.FutureTimeoutError:
            future.cancel()
            raise MessagingTimeout(f"{what} @ {conn.address}: timed out") from None
        except grpc.RpcError as err:
            raise rpc_failure(err, f"{what} @ {conn.address}") from None
        except grpc.FutureCancelledError:
            raise ClientClosed(f"{what}: cancelled") from None
        return ev.parse_reply(raw)

    def broadcast(self, target: Target, data: bytes, timeout: float | None, what: str
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
            address = endpoint.address
            conn = self._conn(address)
            self.balancer.begin(address)
            try:
                raw = conn.fanout(request, timeout=attempts.remaining(), metadata=self._metadata)
            except grpc.RpcError as err:
                if never_sent(err):
                    attempts.never_sent(endpoint, err.details() or "")
                    continue
                raise map_rpc_error(err, f"{what} @ {address}") from None
            except ValueError as err:  # a channel closed under us by close()
                raise ClientClosed(f"{what}: {err}") from None
            finally:
                self._done(address)
            attempts.succeeded(endpoint)
            return parse_report(raw)

    def fanout(
        self, endpoints: Sequence[Endpoint], msg_id: str, data: bytes, timeout: float | None,
        what: str,
    ) -> fanout.FanoutReport:
        """Send one cast envelope to every endpoint at once; who accepted it.

        To a few servers it goes on each one's stream (kept for the next message); to many,
        as one unary RPC each: a stream holds two threads here (its reader and gRPC's writer),
        which a client fanning out to a thousand servers should not start.
        """
        check_size(data, self.options, what)
        unary = len(endpoints) > STREAM_FANOUT_LIMIT
        timeout = cast_wait(timeout, self.options)  # each server's acceptance, all at once
        deadline = None if timeout is None else time.monotonic() + timeout
        sent: list[tuple[Endpoint, Callable[[float | None], ev.Reply]]] = []
        failures = []
        for endpoint in endpoints:
            self.balancer.begin(endpoint.address)
            try:
                sent.append((endpoint, self._start(self._conn(endpoint.address), msg_id, data,
                                                   timeout, unary=unary)))
            except (NotSent, GrpcrpcError) as err:
                failures.append(self._fanout_failure(endpoint, err))
                self._done(endpoint.address)
        for endpoint, finish in sent:
            reply = None
            error: BaseException | None = None
            try:
                left = None if deadline is None else deadline - time.monotonic()
                reply = finish(left)
            except (NotSent, GrpcrpcError) as err:
                error = err
            finally:
                self._done(endpoint.address)
            failed = (self._fanout_failure(endpoint, error) if error is not None
                      else fanout.failed_for(endpoint.address, endpoint.server, reply))
            if failed is not None:
                failures.append(failed)
        return fanout.report(len(endpoints), failures)

    def fanout_detached(self, endpoints: Sequence[Endpoint], msg_id: str, data: bytes,
                        timeout: float | None, what: str,
                        on_report: Callable[[FanoutReport], object]) -> None:
        """`fanout`, detached: returns once the envelope is on its way to every server; the
        report goes to `on_report` (from another thread) when the last one answered
        (`grpcrpc.transport.detached`)."""
        check_size(data, self.options, what)
        unary = len(endpoints) > STREAM_FANOUT_LIMIT
        timeout = cast_wait(timeout, self.options)  # each server's acceptance, all at once
        fan = detached.Fanout(len(endpoints), on_report, on_settled=self._done,
                              live=self._detached, timeout=timeout,
                              eject=self.balancer.ejections.eject)
        try:
            for endpoint in endpoints:
                self.balancer.begin(endpoint.address)
                try:
                    conn = self._conn(endpoint.address)
                    left = fan.left()
                    if not conn.window.acquire(timeout=-1 if left is None else left):
                        raise fan.no_room(endpoint)
                except (NotSent, GrpcrpcError) as err:
                    fan.not_sent(endpoint, err)
                    continue
                fan.sending()
                _Part(self, conn, endpoint, fan, msg_id, data, unary).send()
        finally:
            fan.sent_all()

    def _fanout_failure(self, endpoint: Endpoint, err: BaseException) -> Failed:
        return detached.part_failure(endpoint, err, self.balancer.ejections.eject)

    def close(self) -> None:
        """Close every connection (calls in flight fail with `ClientClosed`), once the detached
        fanouts sent have been answered (waiting at most `cast_accept_timeout`): what was sent
        before close() reaches its servers rather than dying in a queue."""
        if not self._closed:
            self._detached.wait_settled(self.options.cast_accept_timeout or _CLOSE_WAIT)
        with self._lock:
            if self._closed:
                return
            conns = list(self._conns.values()) + list(self._retiring.values())
            self._conns.clear()
            self._retiring.clear()
            self._close_base()
            if self._watching is not None:
                self._watching.set()
        for conn in conns:
            conn.close()
