"""The broadcaster: a stateless service that amplifies fanout casts and reports delivery.

A client hands one fanout cast to a broadcaster of its AZ (registered like any server, under
topic `grpcrpc.broadcaster`); the broadcaster resolves every live server of the topic from its
own routing table, delivers to all of them concurrently (a bounded number at once, over its
envelope streams), and answers with a `FanoutReport`: targets, delivered (accepted), and each
failure with its reason. Scale out by running more broadcasters: clients pick among them like
among any endpoints. A topic larger than `split_threshold` is split among peer broadcasters of
the same AZ (a tree of depth one), so no single process sends to 10,000 servers; a peer that
cannot be reached gets its share delivered locally.

>>> import asyncio
>>> from grpcrpc.discovery import MemoryDiscovery
>>> async def main():
...     discovery = MemoryDiscovery()
...     async with Broadcaster(discovery, registry=discovery, name="b1") as broadcaster:
...         print(broadcaster.endpoint.topic)
>>> asyncio.run(main())
grpcrpc.broadcaster
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import grpc.aio

from grpcrpc import envelope as ev
from grpcrpc import fanout, tracing
from grpcrpc._errors import NOT_ACCEPTED
from grpcrpc.auth import RELAY, ServerAuth
from grpcrpc.credentials import ServerTLS
from grpcrpc.discovery.base import DEFAULT_AZ, Endpoint, Registry, Resolver
from grpcrpc.exceptions import GrpcrpcError, InvalidEnvelope, Unauthorized
from grpcrpc.generated.v1 import broadcaster_pb2 as bpb
from grpcrpc.host import ServiceHost, hostport
from grpcrpc.transport.aio import AsyncTransport
from grpcrpc.transport.base import (
    BROADCASTER_EXCHANGE,
    BROADCASTER_TOPIC,
    NotSent,
    TransportOptions,
    fanout_request,
)

__all__ = ["Broadcaster", "BroadcasterOptions"]

log = logging.getLogger("grpcrpc.broadcaster")

SERVICE_NAME = "grpcrpc.v1.Broadcaster"


@dataclass(frozen=True, slots=True)
class BroadcasterOptions:
    """How a broadcaster delivers.

    >>> BroadcasterOptions(split_threshold=1000).parallelism
    256
    """

    # Deliveries in flight at once (bounds the broadcaster's memory and sockets' queues).
    parallelism: int = 256
    # A topic with more servers than this is split among peer broadcasters.
    split_threshold: int = 500
    # At most this many peers take a share of one fanout.
    max_peers: int = 8
    # Per-delivery time limit when the caller's envelope carries none.
    default_timeout: float = 10.0


class Broadcaster:
    """The fanout amplifier service (see the module docstring).

    Args:
        resolver: where to find the servers of each topic (and peer broadcasters).
        registry: where to announce this broadcaster (None: nowhere; clients then need a
            static table that lists it).
        name: this broadcaster's server name (default: host name and pid).
        az: the AZ it serves; a fanout whose target names another AZ is delivered there.
        transport_options: TLS, token and limits for the connections to servers (the
            servers' ACLs must let this broadcaster's identity `fanout`).
        auth: who may ask for a fanout; the caller's right to `fanout` the topic is checked
            before anything is amplified, and a request that names its servers (a peer
            broadcaster's share of a split) needs the `relay` right too. Named servers are
            delivered to only if they are servers of the topic in this broadcaster's table.
    """

    def __init__(
        self,
        resolver: Resolver,
        *,
        registry: Registry | None = None,
        name: str | None = None,
        az: str = DEFAULT_AZ,
        host: str = "127.0.0.1",
        port: int = 0,
        port_range: tuple[int, int] | None = None,
        advertise_host: str | None = None,
        tls: ServerTLS | None = None,
        transport_options: TransportOptions | None = None,
        options: BroadcasterOptions | None = None,
        auth: ServerAuth | None = None,
    ) -> None:
        self.resolver = resolver
        self.auth = auth
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.az = az
        self.options = options or BroadcasterOptions()
        self._transport_options = transport_options or TransportOptions(az=az)
        self._transport: AsyncTransport | None = None
        self._stopping = False
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopped = asyncio.Event()
        # Counters for operators and tests: fanouts served, deliveries made by this process.
        self.fanouts = 0
        self.deliveries = 0
        self.host = ServiceHost(
            service_names=[SERVICE_NAME],
            handlers=[grpc.method_handlers_generic_handler(SERVICE_NAME, {
                "Fanout": grpc.unary_unary_rpc_method_handler(self._fanout_rpc),
            })],
            registry=registry,
            host=host,
            port=port,
            port_range=port_range,
            advertise_host=advertise_host,
            tls=tls,
            max_message_size=self._transport_options.max_message_size,
        )
        self.endpoint: Endpoint | None = None
        self._known_table: object = None  # the routing table `_known` was built from
        self._known: frozenset[str] = frozenset()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._transport = AsyncTransport(self.resolver, self._transport_options)

        def describe(host: str, port: int) -> Endpoint:
            return Endpoint(
                address=hostport(host, port), topic=BROADCASTER_TOPIC, server=self.name,
                exchange=BROADCASTER_EXCHANGE, az=self.az, instance=str(port), pid=os.getpid(),
                hostname=socket.gethostname(), started_at=time.time(),
                tls=self.host.tls is not None,
            )

        self.endpoint = await self.host.start(describe)
        log.info("broadcaster %s for az %s at %s", self.name, self.az, self.endpoint.address)

    async def stop(self, grace: float = 5.0) -> None:
        """Refuse new fanouts (callers resend them to another broadcaster), finish the ones
        under way for up to `grace` seconds, then close."""
        if not self.host.started or self._stopping:
            return
        self._stopping = True
        await self.host.withdraw()
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            log.warning("broadcaster stopping with %d fanout(s) unfinished", self._active)
        await self.host.close(0.2)
        if self._transport is not None:
            await self._transport.close()
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()

    @property
    def address(self) -> str:
        assert self.endpoint is not None, "not started"
        return self.endpoint.address

    async def __aenter__(self) -> Broadcaster:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- the service ----------------------------------------------------------------------

    async def _fanout_rpc(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if self._stopping:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"{NOT_ACCEPTED}: broadcaster {self.name} is stopping")
        try:
            request = bpb.FanoutRequest.FromString(raw)
            env = request.envelope
            ev.validate_envelope(env)
            if env.cancel or not env.cast:
                raise InvalidEnvelope("a fanout must be a cast")
        except InvalidEnvelope as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except Exception as err:  # DecodeError: not a FanoutRequest at all
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a fanout request: {err}")
        if self.auth is not None:
            identity = self.auth.identify(context.invocation_metadata() or (),
                                          context.auth_context())
            topic, method = env.target.topic, env.method
            # Naming the servers is a peer broadcaster's right (`relay`), not a caller's: the
            # list is otherwise a way to make this broadcaster dial where a caller chooses.
            for op in ("fanout", RELAY) if request.targets else ("fanout",):
                if not self.auth.allows(identity, op, topic, method):
                    log.warning("unauthorized: %s may not %s %s.%s (peer %s)",
                                identity or "unauthenticated caller", op, topic, method,
                                context.peer())
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not authorized")
        if len(request.targets) > len(self._servers_of(env)):
            # More than the topic has: not a split of it (and each would be reported back).
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "more fanout targets than the topic has servers")
        self._active += 1
        self._idle.clear()
        try:
            report = await self.deliver(request)
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()
        return report.to_pb().SerializeToString()

    async def deliver(self, request: bpb.FanoutRequest) -> fanout.FanoutReport:
        """Deliver one fanout: to the servers named, or to every server of the topic."""
        assert self._transport is not None
        self.fanouts += 1
        env = request.envelope
        env.fanout = True
        with tracing.broadcaster_span(env.headers, env.target.topic, env.method, env.id,
                                      self.az) as span:
            report = await self._deliver(request, env)
            tracing.record_fanout(span, report.targets, len(report.failures), env.target.topic)
        return report

    async def _deliver(self, request: bpb.FanoutRequest, env: ev.Envelope) -> fanout.FanoutReport:
        # Serialised once, after the broadcaster's span is in the headers: every delivery is
        # its child.
        data = env.SerializeToString()
        failures: list[fanout.Failed] = []
        registered = self._servers_of(env)
        targets = (self._named_targets(request, registered, failures) if request.targets
                   else list(registered))
        invalid = len(failures)
        timeout = env.timeout_ms / 1000 if env.timeout_ms else self.options.default_timeout
        what = f"fanout {env.target.topic}.{env.method}"
        shares = self._split(targets) if request.depth == 0 else [(None, targets)]
        results = await asyncio.gather(*(
            self._deliver_share(peer, share, env.id, data, timeout, what, request.depth)
            for peer, share in shares
        ))
        for report in results:
            failures.extend(report.failures)
        return fanout.report(len(targets) + invalid, failures)

    def _servers_of(self, env: ev.Envelope) -> tuple[Endpoint, ...]:
        """The servers of the envelope's topic (in its AZ) in this broadcaster's routing table."""
        return self.resolver.table.candidates(
            topic=env.target.topic,
            exchange=env.target.exchange or self._transport_options.exchange,
            own_az=self.az, az=env.target.az or None,
        )

    def _named_targets(self, request: bpb.FanoutRequest, registered: Sequence[Endpoint],
                       failures: list[fanout.Failed]) -> list[Endpoint]:
        """The servers a peer broadcaster named, as this broadcaster knows them: a name that is
        not a server of the topic in this broadcaster's own routing table is never dialled (it
        is reported as failed), so a target list cannot point it anywhere else."""
        by_address = {e.address: e for e in registered}
        topic = request.envelope.target.topic
        targets: list[Endpoint] = []
        for t in request.targets:
            endpoint = by_address.pop(t.address, None)
            if endpoint is None or (t.server and t.server != endpoint.server):
                failures.append(fanout.Failed(
                    t.address[:ev.MAX_NAME], t.server[:ev.MAX_NAME],
                    f"not a registered endpoint of {topic} (or named twice): not sent"))
            else:
                targets.append(endpoint)
        return targets

    def _registered(self, endpoints: Sequence[Endpoint]) -> tuple[list[Endpoint], list[Endpoint]]:
        """(registered, not) against the routing table as it is now: checked just before
        dialling, so this broadcaster's credentials go only to registered endpoints."""
        table = self.resolver.table
        if table is not self._known_table:
            self._known = frozenset(e.address for e in table.endpoints)
            self._known_table = table
        known = self._known
        ok = [e for e in endpoints if e.address in known]
        if len(ok) == len(endpoints):
            return ok, []
        return ok, [e for e in endpoints if e.address not in known]

    def _split(self, targets: list[Endpoint]) -> list[tuple[Endpoint | None, list[Endpoint]]]:
        """Shares of the target list: (None, mine) first, then one per peer broadcaster."""
        o = self.options
        if len(targets) <= o.split_threshold:
            return [(None, targets)]
        me = self.endpoint.address if self.endpoint else ""
        peers = [e for e in self.resolver.table.lookup(self.az, BROADCASTER_EXCHANGE,
                                                       BROADCASTER_TOPIC)
                 if e.address != me][: o.max_peers]
        n = min(1 + len(peers), math.ceil(len(targets) / o.split_threshold))
        if n <= 1:
            return [(None, targets)]
        size = math.ceil(len(targets) / n)
        chunks = [targets[i:i + size] for i in range(0, len(targets), size)]
        return [(None, chunks[0]), *zip(peers, chunks[1:], strict=False)]

    async def _deliver_share(
        self, peer: Endpoint | None, share: Sequence[Endpoint], msg_id: str, data: bytes,
        timeout: float, what: str, depth: int,
    ) -> fanout.FanoutReport:
        assert self._transport is not None
        if peer is not None and not self._registered([peer])[0]:
            peer = None  # withdrawn since the split: its share is delivered here
        if peer is not None:
            request = fanout_request(data, share, depth + 1)
            try:
                return await self._transport.forward(peer, request, timeout + 5.0, what)
            except NotSent:
                log.info("peer broadcaster %s unreachable: delivering its share here", peer.address)
            except (Unauthorized, InvalidEnvelope) as err:
                # Refused before it delivered anything (our identity lacks `relay` there, or
                # its table disagrees with ours): nothing can be duplicated by doing it here.
                log.warning("peer broadcaster %s refused a share (%s): delivering it here",
                            peer.address, err)
            except GrpcrpcError as err:
                # It may have delivered some of them: resending could duplicate, so report.
                return fanout.report(len(share), [
                    fanout.Failed(e.address, e.server, f"peer broadcaster {peer.server} failed: {err}")
                    for e in share
                ])
        dialled, gone = self._registered(share)
        self.deliveries += len(dialled)
        report = await self._transport.fanout(dialled, msg_id, data, timeout, what,
                                              parallelism=self.options.parallelism)
        if not gone:
            return report
        return fanout.report(len(share), [
            *report.failures,
            *(fanout.Failed(e.address, e.server, "no longer a registered endpoint: not sent")
              for e in gone),
        ])
