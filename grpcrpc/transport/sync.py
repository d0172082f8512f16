"""The sync transport: grpcio's blocking channels, no event loop.

Each message is one unary RPC. Measured here, that is the lowest-latency path for a blocking
caller (a stream would add two thread hand-offs per message); gRPC's own deadline bounds every
call, and threads share channels without locks on the call path.

>>> from grpcrpc.discovery import StaticResolver
>>> transport = SyncTransport(StaticResolver([]))
>>> transport.close()
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import grpc

from grpcrpc import envelope as ev
from grpcrpc import fanout
from grpcrpc._errors import map_rpc_error, never_sent
from grpcrpc.discovery.base import Endpoint, Resolver
from grpcrpc.exceptions import ClientClosed
from grpcrpc.target import Target
from grpcrpc.transport.base import (
    FANOUT_METHOD,
    UNARY_METHOD,
    Attempts,
    TransportBase,
    TransportOptions,
    broadcaster_target,
    call_metadata,
    channel_options,
    check_size,
    fanout_request,
    parse_report,
)

__all__ = ["SyncTransport"]


class _Conn:
    __slots__ = ("channel", "fanout", "unary")

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        # Bytes in, bytes out: parsing is ours, so a bad reply is a named error, not gRPC's.
        self.unary = channel.unary_unary(UNARY_METHOD)
        self.fanout = channel.unary_unary(FANOUT_METHOD)


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
                conn = self._conns[address] = _Conn(channel)
                self._evict_locked()
        return conn

    def _evict_locked(self) -> None:
        """Keep the pool bounded: close the oldest idle connections beyond the limit."""
        excess = len(self._conns) - self.options.max_channels
        for address in list(self._conns):
            if excess <= 0:
                break
            if self.balancer.outstanding(address) == 0:
                self._conns.pop(address).channel.close()
                excess -= 1

    def _retire(self, address: str) -> None:
        with self._lock:
            conn = self._conns.pop(address, None)
            if conn is None:
                return
            if self.balancer.outstanding(address) == 0:
                conn.channel.close()
            else:
                self._retiring[address] = conn

    def _done(self, address: str) -> None:
        self.balancer.end(address)
        if self._retiring and address in self._retiring and not self.balancer.outstanding(address):
            with self._lock:
                conn = self._retiring.pop(address, None)
            if conn is not None:
                conn.channel.close()

    def request(
        self, target: Target, data: bytes, timeout: float | None, what: str,
        retry: int | None = None,
    ) -> ev.Reply:
        """Send one envelope to one endpoint of `target`; the server's reply."""
        check_size(data, self.options, what)
        attempts = Attempts(self, target, timeout, retry)
        while True:
            endpoint, raw = self._send(attempts, "unary", data, what)
            reply = ev.parse_reply(raw)
            if attempts.accepted(endpoint, reply):
                return reply

    def broadcast(self, target: Target, data: bytes, timeout: float | None, what: str
                  ) -> fanout.FanoutReport:
        """Hand a fanout cast to a broadcaster of the target's AZ; its delivery report.

        `NoEndpoints` when no broadcaster took it (none registered, or none reachable before
        anything was sent): the caller may then fan out itself without risk of duplicates.
        """
        request = fanout_request(data)
        check_size(request, self.options, what)
        attempts = Attempts(self, broadcaster_target(target, self.options.az), timeout)
        endpoint, raw = self._send(attempts, "fanout", request, what)
        attempts.succeeded(endpoint)
        return parse_report(raw)

    def _send(self, attempts: Attempts, rpc: str, data: bytes, what: str) -> tuple[Endpoint, bytes]:
        """Send to endpoints in turn until one takes the message (connection opened)."""
        while True:
            endpoint = attempts.next_endpoint()
            address = endpoint.address
            conn = self._conn(address)
            self.balancer.begin(address)
            try:
                call = conn.unary if rpc == "unary" else conn.fanout
                return endpoint, call(data, timeout=attempts.remaining(), metadata=self._metadata)
            except grpc.RpcError as err:
                if never_sent(err):
                    attempts.never_sent(endpoint, err.details() or "")
                    continue
                raise map_rpc_error(err, f"{what} @ {address}") from None
            except ValueError as err:  # a channel closed under us by close()
                raise ClientClosed(f"{what}: {err}") from None
            finally:
                self._done(address)

    def fanout(
        self, endpoints: Sequence[Endpoint], data: bytes, timeout: float | None, what: str
    ) -> fanout.FanoutReport:
        """Send one cast envelope to every endpoint at once; who accepted it."""
        check_size(data, self.options, what)
        pending = []
        for endpoint in endpoints:
            conn = self._conn(endpoint.address)
            self.balancer.begin(endpoint.address)
            pending.append((endpoint, conn.unary.future(data, timeout=timeout,
                                                        metadata=self._metadata)))
        failures = []
        for endpoint, future in pending:
            reply = None
            error = ""
            try:
                reply = ev.parse_reply(future.result())
            except grpc.RpcError as err:
                if never_sent(err):
                    self.balancer.ejections.eject(endpoint.address)
                    error = f"unreachable, not sent: {err.details()}"
                else:
                    error = str(map_rpc_error(err, endpoint.address))
            except Exception as err:  # InvalidEnvelope, a cancelled future
                error = f"{type(err).__name__}: {err}"
            finally:
                self._done(endpoint.address)
            failed = fanout.failed_for(endpoint.address, endpoint.server, reply, error)
            if failed is not None:
                failures.append(failed)
        return fanout.report(len(pending), failures)

    def close(self) -> None:
        """Close every connection (calls in flight fail with `ClientClosed`)."""
        with self._lock:
            if self._closed:
                return
            conns = list(self._conns.values()) + list(self._retiring.values())
            self._conns.clear()
            self._retiring.clear()
            self._close_base()
        for conn in conns:
            conn.channel.close()
