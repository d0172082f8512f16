"""What the sync and asyncio transports share: options, channel settings, routing decisions.

A transport owns the connections of one process to the servers its resolver knows: it picks an
endpoint for each message, sends it, and tells the client what came back. It retries a message
on another endpoint only when the message provably never left (the connection could not open, or
the server answered that it did not accept it because it is stopping, is not the server named, or
is overloaded): that is the only way to never deliver anything twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc

from grpcrpc import envelope as ev
from grpcrpc._errors import map_rpc_error, never_sent, tls_refused
from grpcrpc.balancer import Balancer, Policy
from grpcrpc.credentials import ClientTLS
from grpcrpc.discovery.base import DEFAULT_AZ, DEFAULT_EXCHANGE, Endpoint, Resolver, RoutingTable
from grpcrpc.exceptions import (
    ClientClosed,
    DeliveryError,
    InvalidEnvelope,
    MessageTooLarge,
    MessagingTimeout,
    NoEndpoints,
    Overloaded,
    Unauthorized,
)
from grpcrpc.fanout import FanoutReport
from grpcrpc.generated.v1 import broadcaster_pb2 as bpb
from grpcrpc.target import Target

log = logging.getLogger("grpcrpc.transport")

__all__ = [
    "BATCHES_METHOD",
    "BROADCASTER_EXCHANGE",
    "BROADCASTER_TOPIC",
    "FANOUT_METHOD",
    "PROBE_METHOD",
    "STREAM_METHOD",
    "UNARY_METHOD",
    "Attempts",
    "Liveness",
    "TransportBase",
    "TransportOptions",
    "broadcaster_target",
    "broken_stream_error",
    "call_metadata",
    "cancel_envelope",
    "cast_wait",
    "channel_options",
    "check_size",
    "fanout_request",
    "parse_report",
    "probe_answered",
    "rpc_failure",
    "unresponsive",
]

BATCHES_METHOD = "/grpcrpc.v1.Transport/Batches"
STREAM_METHOD = "/grpcrpc.v1.Transport/Stream"
UNARY_METHOD = "/grpcrpc.v1.Transport/Unary"
FANOUT_METHOD = "/grpcrpc.v1.Broadcaster/Fanout"
# What probes a silent connection: every grpcrpc server (and broadcaster) serves gRPC health, and
# any answer at all, even an error status, proves the process on the other end is running.
PROBE_METHOD = "/grpc.health.v1.Health/Check"

# Broadcasters register like any server, under this topic and exchange, one set per AZ.
BROADCASTER_TOPIC = "grpcrpc.broadcaster"
BROADCASTER_EXCHANGE = "grpcrpc"

DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024

# Replies that mean "this server did not accept the message": safe to send it elsewhere.
NOT_ACCEPTED = frozenset({ev.ErrorCode.STOPPING, ev.ErrorCode.MISROUTED, ev.ErrorCode.OVERLOADED})

@dataclass(frozen=True, slots=True)
class TransportOptions:
    """Settings of a client transport.

    >>> TransportOptions(az="az1", fallback_azs=("az2",)).balancer
    'p2c'
    """

    az: str = DEFAULT_AZ
    fallback_azs: tuple[str, ...] = ()
    exchange: str = DEFAULT_EXCHANGE
    balancer: Policy = "p2c"
    max_message_size: int = DEFAULT_MAX_MESSAGE
    tls: ClientTLS | None = None
    # Endpoints tried for one message when connections fail before it is sent.
    connect_attempts: int = 3
    max_channels: int = 1024
    # Envelope streams per endpoint (asyncio transport): more streams, more parallel HTTP/2 flow.
    streams_per_endpoint: int = 1
    keepalive_ms: int = 20_000
    metadata: tuple[tuple[str, str], ...] = field(default=())
    # A bearer token presented to servers (gRPC metadata; never logged, never in a span).
    token: str | None = field(default=None, repr=False)
    # Fanouts go through a broadcaster of the AZ when one is registered ...
    use_broadcaster: bool = True
    # ... and when none is reachable, the client delivers to every server itself (else
    # NoEndpoints).
    client_fanout_fallback: bool = True
    # A server that freezes (SIGSTOP, a VM paused, swapping to death) keeps its TCP connections
    # open, so nothing fails by itself. A connection that has had messages in flight and heard
    # nothing for `probe_after` seconds is probed (a health check on the same connection); no
    # answer within `probe_timeout` fails what is in flight on it with DeliveryError (it may
    # have been delivered) and ejects the endpoint. None: no probing (gRPC keepalive only).
    probe_after: float | None = 1.0
    probe_timeout: float = 2.0
    # Seconds a cast (and each server of a client-side fanout) waits for the server it went to
    # to accept it, within its own timeout: past it the cast fails with MessagingTimeout (it
    # may have arrived) instead of blocking its caller. None: only the timeout bounds it.
    cast_accept_timeout: float | None = 5.0

    def __post_init__(self) -> None:
        for name in ("probe_after", "probe_timeout", "cast_accept_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive (or None)")

def call_metadata(opts: TransportOptions) -> tuple[tuple[str, str], ...] | None:
    """What every RPC of a transport carries: its metadata and the bearer token, if any."""
    md = tuple(opts.metadata)
    if opts.token:
        md += (("authorization", f"Bearer {opts.token}"),)
    return md or None


def channel_options(opts: TransportOptions) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", opts.max_message_size),
        ("grpc.max_receive_message_length", opts.max_message_size),
        # Notice a dead server on an idle connection without waiting for etcd's lease.
        ("grpc.keepalive_time_ms", opts.keepalive_ms),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        # Reconnect quickly after a server restart; our own ejection spaces out retries.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 5_000),
        # gRPC's retries stay on for their transparent part only (no retry policy is set): a
        # stream the server refused (REFUSED_STREAM, over its concurrent-stream limit) or that
        # never reached the wire is resent by gRPC itself, which cannot deliver anything twice.
        # A transport owns its connections: gRPC would otherwise share one TCP connection
        # among all channels of the process to an address, so closing a transport would not
        # close it, and per-connection limits on servers would lump unrelated clients together.
        ("grpc.use_local_subchannel_pool", 1),
    ]

class TransportBase:
    """Routing shared by both transports: candidates, choice, connection retirement."""

    def __init__(
        self, resolver: Resolver, options: TransportOptions | None = None, *, owns_resolver: bool
    ) -> None:
        self.resolver = resolver
        self.options = options or TransportOptions()
        self.balancer = Balancer(self.options.balancer)
        self._owns_resolver = owns_resolver
        self._lock = threading.Lock()
        self._closed = False
        self._known: set[str] = {e.address for e in resolver.table.endpoints}
        self._unsubscribe = resolver.subscribe(self._on_table)

    # -- routing --------------------------------------------------------------------------

    def candidates(self, target: Target, *, fallback: bool = True) -> tuple[Endpoint, ...]:
        """The endpoints `target` may go to: its AZ, else this client's, then (with `fallback`)
        the configured fallback AZs."""
        if not target.topic:
            raise NoEndpoints("the target has no topic")
        o = self.options
        return self.resolver.table.candidates(
            topic=target.topic,
            exchange=target.exchange or o.exchange,
            own_az=o.az,
            server=target.server,
            az=target.az,
            fallback_azs=o.fallback_azs if fallback else (),
        )

    def choose(self, target: Target, tried: frozenset[str], last: str = "") -> Endpoint:
        """An endpoint for the target not yet `tried`; `NoEndpoints` if there is none."""
        candidates = self.candidates(target)
        if not candidates:
            raise NoEndpoints(_describe(target, self.options))
        left = [e for e in candidates if e.address not in tried] if tried else candidates
        if not left:
            raise NoEndpoints(
                f"{_describe(target, self.options)}: could not connect to any of "
                f"{len(candidates)} endpoint(s) (last: {last})"
            )
        return self.balancer.pick(left)

    def fanout_targets(self, target: Target) -> Sequence[Endpoint]:
        """Every endpoint of the topic in the target's AZ (else this client's), for a client-side
        fanout. Fallback AZs do not apply: a fanout never leaves the AZ unless told to."""
        return self.candidates(target.replace(server=None), fallback=False)

    # -- connection lifecycle -------------------------------------------------------------

    def _on_table(self, table: RoutingTable) -> None:
        current = {e.address for e in table.endpoints}
        with self._lock:
            gone = self._known - current
            self._known = current
        self.balancer.ejections.forget(current)
        for address in gone:
            self._retire(address)

    def _retire(self, address: str) -> None:
        """An address left the table: close its connection once nothing is in flight on it."""
        raise NotImplementedError

    def _close_base(self) -> None:
        self._closed = True
        self._unsubscribe()
        if self._owns_resolver:
            self.resolver.close()


def broadcaster_target(target: Target, own_az: str) -> Target:
    """Where the broadcasters for a fanout to `target` are: the target's AZ, else the client's
    own — never a fallback AZ, since a fanout does not leave its AZ unless told to."""
    return Target(topic=BROADCASTER_TOPIC, exchange=BROADCASTER_EXCHANGE, az=target.az or own_az)


def fanout_request(envelope: bytes, targets: Sequence[Endpoint] = (), depth: int = 0) -> bytes:
    return bpb.FanoutRequest(
        envelope=ev.Envelope.FromString(envelope),
        targets=[bpb.FanoutTarget(address=e.address, server=e.server) for e in targets],
        depth=depth,
    ).SerializeToString()


def parse_report(data: bytes) -> FanoutReport:
    try:
        return FanoutReport.from_pb(ev.FanoutReport.FromString(data))
    except Exception as err:  # DecodeError and friends
        raise InvalidEnvelope(f"not a fanout report: {err}") from None


def _describe(target: Target, opts: TransportOptions) -> str:
    where = f"az {target.az}" if target.az else f"az {opts.az}" + (
        f" (or {', '.join(opts.fallback_azs)})" if opts.fallback_azs else ""
    )
    server = f" server {target.server}" if target.server else ""
    return (
        f"no endpoints for topic {target.topic}{server} in exchange "
        f"{target.exchange or opts.exchange}, {where}"
    )


def cast_wait(timeout: float | None, options: TransportOptions) -> float | None:
    """How long a cast waits for one server's acceptance: its timeout, capped by the bound.

    >>> options = TransportOptions(cast_accept_timeout=5.0)
    >>> cast_wait(60.0, options), cast_wait(2.0, options), cast_wait(None, options)
    (5.0, 2.0, 5.0)
    """
    bound = options.cast_accept_timeout
    if bound is None or (timeout is not None and timeout <= bound):
        return timeout
    return bound


class _Silent(Protocol):
    """What liveness needs of a stream: messages waiting on it, and when it last heard from
    the server (or, when it had nothing in flight, when it was last given a message)."""

    @property
    def in_flight(self) -> int: ...

    heard: float


S = TypeVar("S", bound=_Silent)


class Liveness:
    """When a connection's silence calls for a probe, and what an unanswered probe means
    (one per connection; no I/O, both transports drive it).

    gRPC's own keepalive cannot do this job: it is set per channel and pings whenever a call
    is open, and an envelope stream stays open while idle, so a ping every second or two would
    go over every idle connection too — and a server's ping policy (here 5 s between pings
    without data, two strikes) answers that with GOAWAY `too_many_pings`. A probe only where
    messages wait is cheap at any fleet size.

    >>> live = Liveness()
    >>> class S:
    ...     in_flight, heard = 1, 0.0
    >>> live.due([S()], now=0.5, after=1.0), live.due([S()], now=1.5, after=1.0)
    (False, True)
    >>> len(live.unanswered([S()], started=1.5))  # nothing heard since the probe went out
    1
    """

    __slots__ = ("answered", "probing")

    def __init__(self) -> None:
        self.probing = False
        self.answered = 0.0  # when the last probe was answered (monotonic)

    def due(self, streams: Iterable[_Silent | None], now: float, after: float) -> bool:
        """Whether a message has waited `after` seconds on a silent stream (and no probe is
        out already)."""
        if self.probing:
            return False
        answered = self.answered
        return any(s is not None and s.in_flight and now - max(s.heard, answered) > after
                   for s in streams)

    def unanswered(self, streams: Iterable[S | None], started: float) -> list[S]:
        """A probe sent at `started` went unanswered: the streams whose messages to fail. None
        if any stream heard from the server since (the process runs; the probe was unlucky)."""
        live = [s for s in streams if s is not None]
        if any(s.heard > started for s in live):
            return []
        return [s for s in live if s.in_flight]


def probe_answered(code: grpc.StatusCode | None) -> bool:
    """Whether a probe's outcome shows the server process running: any status but a deadline
    that passed. (A broken connection fails its streams by itself.)"""
    return code is not grpc.StatusCode.DEADLINE_EXCEEDED


def unresponsive(address: str, waited: float) -> DeliveryError:
    """What the messages on a connection that stopped answering hear."""
    return DeliveryError(f"stream @ {address}: the server did not answer a probe within "
                         f"{waited:.1f}s (frozen or unreachable)")


class _Failable(_Silent, Protocol):
    def fail(self, error: BaseException) -> None: ...


class _Probed(Protocol):
    """What settling a probe needs of a connection (either transport's)."""

    address: str
    liveness: Liveness

    def streams(self) -> Iterable[_Failable | None]: ...


def settle_probe(transport: TransportBase, conn: _Probed, started: float,
                 code: grpc.StatusCode | None) -> None:
    """A liveness probe sent at `started` came back with `code` (None: an answer). When it
    went unanswered and nothing was heard since, fail what waits on the connection as possibly
    delivered and keep new work away from it (both transports)."""
    conn.liveness.probing = False
    if probe_answered(code):
        conn.liveness.answered = time.monotonic()
        return
    silent = conn.liveness.unanswered(conn.streams(), started)
    if not silent:
        return
    waited = time.monotonic() - min(s.heard for s in silent)
    transport.balancer.ejections.eject(conn.address)
    log.warning("%s did not answer a probe within %.1fs with %d message(s) waiting: "
                "failing them as possibly delivered, ejecting it",
                conn.address, transport.options.probe_timeout, sum(s.in_flight for s in silent))
    for stream in silent:
        stream.fail(unresponsive(conn.address, waited))


class NotSent(Exception):
    """Internal: the message provably did not leave (the connection never opened)."""


def cancel_envelope(msg_id: str) -> bytes:
    """The control envelope telling a server that the caller of `msg_id` gave up."""
    return ev.Envelope(id=msg_id, cancel=True).SerializeToString()


def broken_stream_error(failure: BaseException) -> BaseException:
    """What the messages written on a stream that then broke hear: a failure that says nothing
    reached the server (never connected, not authorised, closed by this client) as it is;
    anything else leaves delivery in doubt."""
    if isinstance(failure, (NotSent, Unauthorized, ClientClosed)):
        return failure
    return DeliveryError(f"{failure}; the message may or may not have been delivered")


def rpc_failure(err: grpc.RpcError, what: str) -> Exception:
    """What a failed RPC means for its message: `NotSent` when it provably never left (another
    endpoint may take it), else the grpcrpc error for it."""
    if never_sent(err):
        return NotSent(err.details() or "")
    return map_rpc_error(err, what)


class Attempts:
    """The retry decisions for one message, shared by both transports (no I/O).

    ```
    attempts = Attempts(transport, target, timeout)
    while True:
        ep = attempts.next_endpoint()          # NoEndpoints / MessagingTimeout when out of tries
        ... send; on a connection that never opened: attempts.never_sent(ep, why); continue
        ...       on `Overloaded` (refused before it ran): attempts.overloaded(ep, why); continue
        ... on a reply: if attempts.accepted(ep, reply): return reply
    ```
    """

    __slots__ = ("_accept", "_by_accept", "_deadline", "_last", "_left", "_overloaded", "_refused",
                 "_target", "_transport", "_tried")

    def __init__(
        self, transport: TransportBase, target: Target, timeout: float | None,
        retry: int | None = None, *, cast: bool = False,
    ) -> None:
        self._transport = transport
        # A cast waits for each server's acceptance at most this long.
        self._accept = transport.options.cast_accept_timeout if cast else None
        self._by_accept = False
        self._target = target
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._tried: frozenset[str] = frozenset()
        # `retry` (the client's, oslo's word): how many other endpoints to try after the first.
        attempts = transport.options.connect_attempts if retry is None else retry + 1
        self._left = max(1, attempts)
        self._last = ""
        self._refused = 0  # connections refused by the TLS handshake
        self._overloaded = 0  # servers that refused the message as overloaded

    def remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return self._deadline - time.monotonic()

    def wait(self) -> float | None:
        """How long to wait for this attempt's reply: what is left of the timeout, for a cast
        at most its acceptance bound."""
        remaining = self.remaining()
        accept = self._accept
        self._by_accept = accept is not None and (remaining is None or remaining > accept)
        return accept if self._by_accept else remaining

    def timed_out(self, endpoint: Endpoint, err: MessagingTimeout) -> MessagingTimeout:
        """The error for a wait that ran out: the timeout's own, or — when the cast's
        acceptance bound ran out first — one that says so (and the endpoint is ejected: a
        server that takes seconds to accept a message is not one to send more to)."""
        if not self._by_accept:
            return err
        self._transport.balancer.ejections.eject(endpoint.address)
        return MessagingTimeout(
            f"{self._target.topic} @ {endpoint.address}: not accepted within {self._accept:g}s "
            f"(cast_accept_timeout); it may or may not have been delivered")

    def next_endpoint(self) -> Endpoint:
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            raise MessagingTimeout(f"{self._target.topic}: timed out before it could be sent")
        if self._left <= 0:
            self._raise_refused()
            self._raise_overloaded()
            raise NoEndpoints(
                f"{_describe(self._target, self._transport.options)}: no endpoint took the "
                f"message (last: {self._last})"
            )
        self._left -= 1
        try:
            return self._transport.choose(self._target, self._tried, self._last)
        except NoEndpoints:
            self._raise_refused()
            self._raise_overloaded()
            raise

    def _raise_refused(self) -> None:
        if self._refused and self._refused == len(self._tried):
            raise Unauthorized(
                f"{self._target.topic}: the TLS handshake was refused by {self._refused} "
                f"endpoint(s) (client certificate not accepted, or server not trusted); last: "
                f"{self._last}"
            )

    def _raise_overloaded(self) -> None:
        # Servers exist and are up, only busy: say so (oslo's sender backs off and retries).
        if self._overloaded:
            raise Overloaded(
                f"{self._target.topic}: {self._overloaded} of the {len(self._tried)} server(s) "
                f"tried refused the message as overloaded (it was not run); last: {self._last}"
            )

    def overloaded(self, endpoint: Endpoint, why: str) -> None:
        """`endpoint` refused the message before running it (its limits are full): try another
        within the same budget. No ejection: a busy server is not a broken one."""
        self._tried |= {endpoint.address}
        self._last = f"{endpoint.address}: {why}"
        self._overloaded += 1

    def never_sent(self, endpoint: Endpoint, why: str) -> None:
        """The connection to `endpoint` could not open: eject it and try another."""
        self._transport.balancer.ejections.eject(endpoint.address)
        self._tried |= {endpoint.address}
        self._last = f"{endpoint.address}: {why}"
        if self._transport.options.tls is not None and tls_refused(why):
            self._refused += 1

    def succeeded(self, endpoint: Endpoint) -> None:
        self._transport.balancer.ejections.restore(endpoint.address)

    def accepted(self, endpoint: Endpoint, reply: ev.Reply) -> bool:
        """False when the server refused the message without running it (try elsewhere)."""
        if reply.WhichOneof("outcome") == "failure" and reply.failure.code in NOT_ACCEPTED:
            code = reply.failure.code
            if code == ev.ErrorCode.OVERLOADED:
                self.overloaded(endpoint, reply.failure.message)
                return False
            if code == ev.ErrorCode.STOPPING:
                self._transport.balancer.ejections.eject(endpoint.address)
            self._tried |= {endpoint.address}
            self._last = f"{endpoint.address}: {reply.failure.message}"
            return False
        self._transport.balancer.ejections.restore(endpoint.address)
        return True


def check_size(data: bytes, options: TransportOptions, what: str) -> None:
    if len(data) > options.max_message_size:
        raise MessageTooLarge(
            f"{what}: message of {len(data)} bytes exceeds the limit of "
            f"{options.max_message_size} bytes; it was not sent"
        )
