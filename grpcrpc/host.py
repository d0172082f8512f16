"""`ServiceHost`: the gRPC server lifecycle that `RPCServer` and the broadcaster share.

It binds (a port, port 0, or a free port in a range), serves the given handlers plus
`grpc.health.v1`, announces the endpoint in a registry, keeps health in step with registration
(SERVING only while registered and accepting), and stops in order: health NOT_SERVING and
withdraw first, then the owner drains, then the gRPC server closes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import resource
import socket
from collections.abc import Callable, Iterable, Sequence

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from grpcrpc import tracing
from grpcrpc.credentials import ServerTLS
from grpcrpc.discovery.base import Endpoint, Registry
from grpcrpc.exceptions import NoAdvertiseAddress, ServerError

__all__ = ["ServiceHost", "choose_advertise_host", "hostport", "raise_nofile_limit", "routes_toward"]

log = logging.getLogger("grpcrpc.server")

_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


# File descriptors a server process keeps for what is not a client connection (listeners,
# its own outgoing channels, etcd, log files, epoll and event fds of gRPC's threads).
FD_RESERVE = 256
# Calls gRPC core may hold for the server's loop to pick up (see `_connection_options`).
PENDING_CALLS = 5_000


def raise_nofile_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; returns the soft limit now.

    Every connection costs a file descriptor, and the usual soft limit (1,024) is reached by
    ~1,000 idle sockets: after that the server accepts nobody. The hard limit is what the
    operator allows (systemd's LimitNOFILE=, /etc/security/limits.conf).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as err:
            log.warning("cannot raise the file descriptor limit from %d to %d: %s", soft,
                        target, err)
    return int(soft)


def connection_cap(max_connections: int, nofile: int) -> int:
    """The connections a server may hold: `max_connections`, or fewer if the file descriptor
    limit leaves less room (then accepting more would starve everything else of fds)."""
    return max(16, min(max_connections, nofile - FD_RESERVE))


def hostport(host: str, port: int) -> str:
    """'::1', 80 -> '[::1]:80'."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


Routes = Callable[[str, int], Iterable[tuple[str, str]]]


def routes_toward(host: str, family: int = socket.AF_UNSPEC) -> list[tuple[str, str]]:
    """For each address `host` resolves to: (that address, this host's source address toward
    it), as the kernel's routing picks it. A connected UDP socket sends nothing: connecting it
    only chooses the route, the one the process's own connection to etcd takes."""
    try:
        infos = socket.getaddrinfo(host, 9, family, socket.SOCK_DGRAM)
    except OSError:  # the name does not resolve (here, now)
        return []
    routes = []
    for fam, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(fam, kind, proto) as sock:
                sock.connect(sockaddr)
                routes.append((str(sockaddr[0]), str(sock.getsockname()[0])))
        except OSError:  # no route to it from here
            continue
    return routes


def _loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _link_local(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_link_local
    except ValueError:
        return False


def choose_advertise_host(
    bind_host: str, reached_at: Sequence[str] | None, routes: Routes = routes_toward
) -> str:
    """The host a server bound to `bind_host` announces (when `advertise_host` is not set).

    A specific bind address is announced as it is. For a wildcard bind (`0.0.0.0`, `::`), the
    address this host uses toward the registry's datastore (`reached_at`, e.g. etcd's hosts):
    the hosts that read the registry are on that network. A loopback address only when etcd
    itself is on loopback (one host: its clients are too); a registry in this process
    (`reached_at == ()`) or none at all gets 127.0.0.1. Otherwise `NoAdvertiseAddress`, which
    says to set `advertise_host`. The hostname is not used: on Debian and Ubuntu it resolves
    to 127.0.1.1, which no other host can dial.

    >>> fake = {"10.0.0.7": [("10.0.0.7", "10.0.0.5")], "127.0.0.1": [("127.0.0.1", "127.0.0.1")]}
    >>> choose_advertise_host("0.0.0.0", ["10.0.0.7"], lambda h, f: fake[h])
    '10.0.0.5'
    >>> choose_advertise_host("0.0.0.0", ["127.0.0.1"], lambda h, f: fake[h])
    '127.0.0.1'
    >>> choose_advertise_host("192.168.1.9", ["10.0.0.7"], lambda h, f: fake[h])
    '192.168.1.9'
    """
    host = bind_host.strip("[]")
    if host not in _WILDCARDS:
        return host
    if reached_at is not None and not reached_at:
        return "127.0.0.1"
    # 0.0.0.0 listens on IPv4 only: an IPv6 source address would not reach it.
    family = socket.AF_UNSPEC if ":" in host else socket.AF_INET
    loopback = ""
    seen: list[str] = []
    for store in reached_at or ():
        found = list(routes(store, family))
        seen.append(f"{store} -> " + (", ".join(f"{dst} via {src}" for dst, src in found)
                                      or "unresolved or unroutable"))
        for dst, src in found:
            if _loopback(dst):
                loopback = loopback or src
            elif not _loopback(src) and not _link_local(src):
                return src
    if loopback:
        return loopback
    where = "; ".join(seen) if seen else "the registry does not say where its clients are"
    raise NoAdvertiseAddress(
        f"bind_host is {bind_host or '0.0.0.0'!r} (every address) and no address of this host "
        f"that other hosts can reach was found ({where}): set advertise_host to the address "
        f"clients should dial")


class ServiceHost:
    """One `grpc.aio` server: binding, health, registration. See the module docstring."""

    def __init__(
        self,
        *,
        service_names: Sequence[str],
        handlers: Sequence[grpc.GenericRpcHandler],
        registry: Registry | None,
        host: str = "127.0.0.1",
        port: int = 0,
        port_range: tuple[int, int] | None = None,
        advertise_host: str | None = None,
        tls: ServerTLS | None = None,
        max_message_size: int = 4 * 1024 * 1024,
        max_streams: int = 100,
        max_connections: int = 10_000,
        handshake_timeout: float = 10.0,
        idle_timeout: float = 300.0,
        max_age: float | None = None,
        max_age_grace: float = 30.0,
    ) -> None:
        if port_range is not None and not 0 < port_range[0] <= port_range[1] < 65536:
            raise ValueError(f"invalid port_range {port_range}")
        self.service_names = list(service_names)
        self.handlers = list(handlers)
        self.registry = registry
        self.host = host.strip("[]")
        self.port = port
        self.port_range = port_range
        self.advertise_host = advertise_host
        self.tls = tls
        self.max_message_size = max_message_size
        self.max_streams = max_streams
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.max_age = max_age
        self.max_age_grace = max_age_grace
        self.endpoint: Endpoint | None = None
        self._server: grpc.aio.Server | None = None
        self._health = HealthServicer()
        self._accepting = False
        self._remove_listener: Callable[[], None] = lambda: None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def started(self) -> bool:
        return self._server is not None

    async def start(self, make_endpoint: Callable[[str, int], Endpoint]) -> Endpoint:
        """Bind and serve; `make_endpoint(advertised_host, port)` describes what to announce."""
        if self._server is not None:
            raise ServerError("server already started")
        self._loop = asyncio.get_running_loop()
        # First: a server that cannot say where it is must not start at all.
        advertised = self.advertise_host or self.host
        if not self.advertise_host and self.host in _WILDCARDS:  # a lookup: off the loop
            reached_at = self.registry.reached_at() if self.registry is not None else ()
            advertised = await asyncio.to_thread(choose_advertise_host, self.host, reached_at)
        m = self.max_message_size
        server = grpc.aio.server(options=[*self._connection_options(),
            # A bind must fail honestly, not share a port with another process.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", m),
            ("grpc.max_send_message_length", m),
            # Keepalive enforcement: a peer pinging more often than every 5 s is told GOAWAY
            # after two strikes, so pings cannot be used to keep a server busy.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.http2.max_ping_strikes", 2),
            # One peer cannot open unbounded HTTP/2 streams on one connection.
            ("grpc.max_concurrent_streams", self.max_streams),
        ])
        server.add_generic_rpc_handlers(list(self.handlers))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        port = self._bind(server)
        await server.start()
        self._server = server
        self.endpoint = make_endpoint(advertised, port)
        self._accepting = True
        tracing.track_server(self, {"rpc.service": self.endpoint.topic,
                                    "grpcrpc.server": self.endpoint.server,
                                    "grpcrpc.az": self.endpoint.az})
        if self.registry is not None:
            self._remove_listener = self.registry.add_listener(self._on_registration)
            try:
                await asyncio.to_thread(self.registry.announce, self.endpoint)
            except Exception:
                await server.stop(0)
                self._server = None
                raise
        await self._set_health(self._serving())
        return self.endpoint

    def _connection_options(self) -> list[tuple[str, int]]:
        """Bounds on connections: how many, how long one may take to say anything (a socket
        that never speaks HTTP/2 is closed after `handshake_timeout`), how long one may sit
        with no call (`idle_timeout`: GOAWAY, the client reconnects when it needs to), and
        optionally how long one may live at all (`max_age`, then `max_age_grace` for what
        is still in flight)."""
        nofile = raise_nofile_limit()
        cap = connection_cap(self.max_connections, nofile)
        if cap < self.max_connections:
            log.warning("accepting at most %d connections, not %d: the file descriptor limit "
                        "is %d (raise the hard limit, e.g. systemd LimitNOFILE=)", cap,
                        self.max_connections, nofile)
        options = [
            ("grpc.max_allowed_incoming_connections", cap),
            ("grpc.server_handshake_timeout_ms", int(self.handshake_timeout * 1000)),
            ("grpc.max_connection_idle_ms", int(self.idle_timeout * 1000)),
            # Calls gRPC core holds before the server's loop picks them up. Over its default
            # (1,000) core cancels new calls server-wide with a bare CANCELLED, and clients
            # cannot tell that nothing was delivered: one peer's flood failed everyone's new
            # calls. Each connection holds at most `max_streams` of them.
            ("grpc.server.max_pending_requests", PENDING_CALLS),
            ("grpc.server.max_pending_requests_hard_limit", 2 * PENDING_CALLS),
        ]
        if self.max_age is not None:
            options += [("grpc.max_connection_age_ms", int(self.max_age * 1000)),
                        ("grpc.max_connection_age_grace_ms", int(self.max_age_grace * 1000))]
        return options

    def _bind(self, server: grpc.aio.Server) -> int:
        creds = self.tls.credentials() if self.tls else None

        def add(port: int) -> int:
            address = hostport(self.host or "0.0.0.0", port)
            try:
                if creds is not None:
                    return int(server.add_secure_port(address, creds))
                return int(server.add_insecure_port(address))
            except RuntimeError:
                return 0

        if self.port_range is None:
            bound = add(self.port)
            if not bound:
                raise ServerError(f"cannot bind {hostport(self.host, self.port)}")
            return bound
        lo, hi = self.port_range
        ports = list(range(lo, hi + 1))
        start = random.randrange(len(ports))  # servers on one host spread over the range
        for port in ports[start:] + ports[:start]:
            if add(port):
                return port
        raise ServerError(f"no free port in range {lo}-{hi} on {self.host}")

    def serving(self) -> bool:
        """Registered (if it has a registry) and accepting work."""
        return self._serving()

    def _serving(self) -> bool:
        registered = self.registry.registered if self.registry is not None else True
        return self._accepting and registered

    def _on_registration(self, registered: bool) -> None:
        # From the registry's thread: health is set on the server's loop.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            def update() -> None:
                loop.create_task(self._set_health(self._serving()))
            loop.call_soon_threadsafe(update)

    async def _set_health(self, serving: bool) -> None:
        """The whole server's status ("") is SERVING only while it accepts work and is
        registered; each service name reports only whether it accepts work. A liveness probe
        should check the service name: an etcd outage makes every server unregistered at
        once, and restarting them all then would turn a discovery outage into a data-path
        one."""
        def status(ok: bool) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
            return (health_pb2.HealthCheckResponse.SERVING if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING)

        await self._health.set("", status(serving))
        for name in self.service_names:
            await self._health.set(name, status(self._accepting))

    async def withdraw(self) -> None:
        """First step of stopping: NOT_SERVING, and out of the registry."""
        self._accepting = False
        await self._set_health(False)
        self._remove_listener()
        if self.registry is not None and self.endpoint is not None:
            try:
                await asyncio.to_thread(self.registry.withdraw, self.endpoint)
            except Exception:
                log.warning("could not withdraw %s from the registry", self.endpoint.address,
                            exc_info=True)

    async def close(self, grace: float) -> None:
        """Last step of stopping: close the gRPC server (open streams are cancelled)."""
        if self._server is not None:
            await self._server.stop(grace)
