"""Bridge mode's routing: which way each message goes while a fleet moves off RabbitMQ.

During a migration three kinds of process talk to each other:

| kind | transport_url | registered in etcd | consumes RabbitMQ |
|---|---|---|---|
| rabbit | `rabbit://...` | no | yes |
| bridge | `grpc://...` with `rabbit_transport_url` | yes, `"rabbit": true` | yes |
| grpc | `grpc://...` | yes, `"rabbit": false` | no |

A bridge process decides per message (`Router.decide`):

- a call or cast goes over gRPC when its target (the topic, or topic and server for a directed
  message) has a live registration; over RabbitMQ when it has none and had none lately (the
  target is a rabbit-only server, which consumes the same queues a bridge server does);
- a target that *just* left etcd is probably restarting, and may come back as a grpc-only
  process, which would never read a message left in its RabbitMQ queue: such a message waits
  (up to `bridge_restart_wait`, within its own budget) for the target to register again, or to
  be seen consuming its RabbitMQ queue (it came back rabbit-only or bridged), whichever first;
- a fanout is published on RabbitMQ (every rabbit and bridge server hears it there) and sent
  over gRPC to the registered servers that do *not* listen on RabbitMQ (`grpc_only`), so each
  server hears it exactly once. A grpc sender fans out over gRPC to every registered server, and a
  bridge server runs what it hears on either path: it is never sent one fanout on both.

>>> from grpcrpc.discovery.base import Endpoint, RoutingTable
>>> table = RoutingTable.build([Endpoint("127.0.0.1:1", "compute", "c1", rabbit=True),
...                             Endpoint("127.0.0.1:2", "compute", "c2")])
>>> presence = Presence(clock=lambda: 100.0)
>>> presence.update(table)
>>> router = Router(own_az="default", fallback_azs=(), restart_wait=30.0, clock=lambda: 100.0)
>>> router.decide(table, presence, "openstack", "compute", "c1")
'grpc'
>>> router.decide(table, presence, "openstack", "compute", "c9")
'rabbit'
>>> [e.server for e in grpc_only(table.endpoints)]
['c2']
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import oslo_messaging

from grpcrpc.deadline import effective_timeout, remaining_time
from grpcrpc.discovery.base import Endpoint, RoutingTable
from grpcrpc.exceptions import MessagingTimeout as GrpcTimeout
from grpcrpc.exceptions import NoEndpoints
from grpcrpc.target import Target
from grpcrpc.transport.aio import AsyncTransport
from grpcrpc.transport.sync import SyncTransport

__all__ = [
    "GRPC",
    "RABBIT",
    "WAIT",
    "BridgeAsyncTransport",
    "BridgeSender",
    "BridgeSyncTransport",
    "Path",
    "Presence",
    "Router",
    "grpc_only",
    "last_path",
    "queue_name",
]

Path = Literal["grpc", "rabbit", "wait"]
GRPC: Path = "grpc"
RABBIT: Path = "rabbit"
WAIT: Path = "wait"

_Key = tuple[str, str, str | None]  # (exchange, topic, server or None for the topic)


def grpc_only(endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    """The endpoints a bridge sender's gRPC fanout goes to: those not on RabbitMQ."""
    return [e for e in endpoints if not e.rabbit]


def queue_name(topic: str, server: str | None) -> str:
    """The RabbitMQ queue oslo's rabbit driver consumes for a target ('compute.host1').

    >>> queue_name("compute", "host1"), queue_name("compute", None)
    ('compute.host1', 'compute')
    """
    return f"{topic}.{server}" if server else topic


class Presence:
    """Which targets are registered now, and since when the ones that left are gone.

    Fed every routing table the resolver publishes (from its thread); read by senders. A
    target gone for longer than `horizon` is forgotten (the memory stays as small as the fleet).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, horizon: float = 300.0
                 ) -> None:
        self._clock = clock
        self._horizon = horizon
        self._lock = threading.Lock()
        self._present: set[_Key] = set()
        self._gone: dict[_Key, float] = {}

    def update(self, table: RoutingTable) -> None:
        present: set[_Key] = set()
        for e in table.endpoints:
            present.add((e.exchange, e.topic, None))
            present.add((e.exchange, e.topic, e.server))
        now = self._clock()
        with self._lock:
            for key in self._present - present:
                self._gone[key] = now
            for key in present:
                self._gone.pop(key, None)
            self._present = present
            if len(self._gone) > 64:
                self._gone = {k: t for k, t in self._gone.items() if now - t < self._horizon}

    def gone_for(self, exchange: str, topic: str, server: str | None) -> float | None:
        """Seconds since the target left etcd; None if it is there or was never seen."""
        with self._lock:
            left = self._gone.get((exchange, topic, server or None))
        return None if left is None else self._clock() - left


class Router:
    """The per-message decision of a bridge sender (no I/O; see the module docstring)."""

    def __init__(self, *, own_az: str, fallback_azs: Sequence[str], restart_wait: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.own_az = own_az
        self.fallback_azs = tuple(fallback_azs)
        self.restart_wait = restart_wait
        self._clock = clock

    def decide(self, table: RoutingTable, presence: Presence, exchange: str, topic: str,
               server: str | None) -> Path:
        """'grpc', 'rabbit', or 'wait' (the target just left etcd: it may be restarting)."""
        if table.candidates(topic=topic, exchange=exchange, own_az=self.own_az, server=server,
                            fallback_azs=self.fallback_azs):
            return GRPC
        gone = presence.gone_for(exchange, topic, server)
        if gone is not None and gone < self.restart_wait:
            return WAIT
        return RABBIT


class BridgeSyncTransport(SyncTransport):
    """A sync transport whose client-side fanouts skip the servers that listen on RabbitMQ
    (a bridge sender reaches those by publishing the fanout there)."""

    def fanout_targets(self, target: Target) -> Sequence[Endpoint]:
        return grpc_only(super().fanout_targets(target))


class BridgeAsyncTransport(AsyncTransport):
    """`BridgeSyncTransport` for the asyncio transport."""

    def fanout_targets(self, target: Target) -> Sequence[Endpoint]:
        return grpc_only(super().fanout_targets(target))


# -- the send loop ------------------------------------------------------------------------------

_local = threading.local()
_POLL = 0.1  # seconds between looks at a restarting target (its registration, its queue)


def last_path() -> str | None:
    """The path ('grpc', 'rabbit', 'both' for a fanout) of this thread's last bridge send."""
    return getattr(_local, "path", None)


class BridgeSender:
    """Sends oslo messages in bridge mode (see the module docstring); blocking, in the
    caller's thread (a green thread under eventlet: its waits are green sleeps).

    Args:
        rabbit: the process's `RabbitSide`.
        table: the current routing table (starts the resolver on first use).
        presence: fed by the resolver with every table.
        grpc_send: the grpc:// driver's own send, made to raise `NoEndpoints` at once instead
            of waiting for a server: `grpc_send(target, ctxt, message, call, timeout, retry,
            transport_options)`.
    """

    def __init__(self, *, router: Router, rabbit: Any, table: Callable[[], RoutingTable],
                 presence: Presence, grpc_send: Callable[..., Any], default_exchange: str,
                 cast_timeout: float) -> None:
        self.router = router
        self.rabbit = rabbit
        self._table = table
        self._presence = presence
        self._grpc_send = grpc_send
        self._exchange = default_exchange
        self._cast_timeout = cast_timeout
        self.counts = {"grpc": 0, "rabbit": 0, "both": 0}

    def send(self, target: Any, ctxt: Any, message: dict[str, Any], wait_for_reply: bool | None,
             timeout: float | None, call_monitor_timeout: float | None, retry: int | None,
             transport_options: Any) -> Any:
        call = bool(wait_for_reply)
        if target.fanout:
            return self._fanout(target, ctxt, message, retry, transport_options)
        exchange = target.exchange or self._exchange
        at_least_once = bool(getattr(transport_options, "at_least_once", False))
        budget = timeout if call else self._cast_timeout
        try:  # the deadline inherited from the message being served, on either path
            budget = effective_timeout(budget, remaining_time(),
                                       f"{target.topic}.{message.get('method')}")
        except GrpcTimeout as err:
            raise oslo_messaging.MessagingTimeout(str(err)) from None
        deadline = None if budget is None else time.monotonic() + budget
        server = target.server or None
        while True:
            path = self.router.decide(self._table(), self._presence, exchange, target.topic,
                                      server)
            if path == WAIT and (retry == 0 or at_least_once
                                 or self.rabbit.probe.consumers(queue_name(target.topic, server))):
                # Told not to wait, or the target is back on RabbitMQ (rabbit-only, or a bridge
                # server that has not registered yet).
                path = RABBIT
            remaining = None if deadline is None else deadline - time.monotonic()
            if path == GRPC:
                try:
                    result = self._grpc_send(target, ctxt, message, call, remaining, retry,
                                             transport_options)
                except NoEndpoints:
                    # Never sent: the target left between the look and the send, or refused
                    # every connection. Look again.
                    _sleep(_POLL, remaining)
                    continue
                self._note(GRPC)
                return result
            if path == RABBIT or (remaining is not None and remaining <= 0):
                if call and remaining is not None and remaining <= 0:
                    raise oslo_messaging.MessagingTimeout(
                        f"{target.topic}.{message.get('method')}: no server came back within "
                        f"{budget:g}s")
                self._note(RABBIT)
                # A cast whose waiting budget is spent goes to RabbitMQ too: its queue holds it,
                # as it did before the migration. A call keeps what is left of its timeout.
                rabbit_timeout = (max(remaining, 0.001) if call and remaining is not None
                                  else timeout)
                return self.rabbit.send(target, ctxt, message, call, rabbit_timeout,
                                        call_monitor_timeout, retry, transport_options)
            _sleep(_POLL, remaining)

    def _fanout(self, target: Any, ctxt: Any, message: dict[str, Any], retry: int | None,
                transport_options: Any) -> None:
        """RabbitMQ reaches its rabbit and bridge servers, gRPC the grpc-only ones (the
        transport's fanout targets are `grpc_only`)."""
        error: Exception | None = None
        try:
            self.rabbit.send(target, ctxt, message, False, None, None, retry, transport_options)
        except oslo_messaging.MessageDeliveryFailure as err:
            # oslo's fanout exchange goes away with the last queue bound to it: then nobody
            # listens for this topic on RabbitMQ any more, and there is nothing to deliver there.
            if self.rabbit.probe.exchange_exists(f"{target.topic}_fanout"):
                error = err
        self._grpc_send(target, ctxt, message, False, self._cast_timeout, retry,
                        transport_options)
        self._note("both")
        if error is not None:
            raise error

    def _note(self, path: str) -> None:
        _local.path = path
        self.counts[path] += 1


def _sleep(seconds: float, remaining: float | None) -> None:
    # Under eventlet, time.sleep is the green one: other green threads run meanwhile.
    time.sleep(seconds if remaining is None else max(0.0, min(seconds, remaining)))
