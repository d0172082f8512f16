"""`RPCServer`: serves endpoints for a target over gRPC, announced through a registry.

The server is asyncio (`grpc.aio`); coroutine endpoints run on its loop, plain functions in a
bounded thread pool, so one server serves both kinds. Blocking programs run it with
`ServerThread`, which gives it a loop of its own.

>>> import asyncio
>>> class Ping:
...     def ping(self, ctxt, value):
...         return value
>>> async def main():
...     server = RPCServer(Target(topic="demo", server="host1"), [Ping()])
...     await server.start()
...     print(server.endpoint.topic)
...     await server.stop()
>>> asyncio.run(main())
demo
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from grpcrpc.auth import ServerAuth
from grpcrpc.credentials import ServerTLS
from grpcrpc.discovery.base import DEFAULT_AZ, DEFAULT_EXCHANGE, Endpoint, Registry
from grpcrpc.dispatcher import Dispatcher
from grpcrpc.exceptions import ServerError
from grpcrpc.host import ServiceHost, hostport
from grpcrpc.limits import Limits
from grpcrpc.serializer import NoOpSerializer, Serializer
from grpcrpc.servicer import EnvelopeServicer, Identity
from grpcrpc.target import Target, parse_version

__all__ = ["RPCServer", "ServerThread"]

log = logging.getLogger("grpcrpc.server")

SERVICE_NAME = "grpcrpc.v1.Transport"


class RPCServer:
    """Dispatches the messages for `target` (its topic and server name) to `endpoints`.

    Args:
        target: `topic` is required; `server` defaults to this host's name; `exchange` to
            "openstack".
        endpoints: objects whose public methods are callable as `method(ctxt, **kwargs)`;
            coroutine methods run on the loop, plain ones in the thread pool.
        dispatcher: instead of `endpoints`, a ready `Dispatcher` (or subclass) that finds the
            method for each message — for frameworks with dispatch rules of their own, such as
            the oslo.messaging driver, which hands every message to oslo's dispatcher.
        registry: where to announce the endpoint (None: announce nowhere, e.g. static tables).
        host, port: where to bind (port 0: an ephemeral port); `port_range=(lo, hi)` picks a
            free port in a range instead (firewalled hosts).
        advertise_host: the host clients should dial, when it differs from the bind host.
        limits: thread pool, queue and in-flight bounds, and the maximum message size.
        tls: server certificate (and client CA for mTLS).
        auth: who may call (bearer tokens, client certificates) and what (an ACL). None: any
            caller that reaches the port (a warning says so at start).
        grace: seconds `stop()` lets in-flight work finish.
        rabbit: announce that this server also consumes its RabbitMQ queues (the oslo
            driver's bridge mode), so that senders do not reach it twice.
    """

    def __init__(
        self,
        target: Target,
        endpoints: Sequence[Any] = (),
        *,
        dispatcher: Dispatcher | None = None,
        registry: Registry | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        port_range: tuple[int, int] | None = None,
        advertise_host: str | None = None,
        az: str = DEFAULT_AZ,
        limits: Limits | None = None,
        tls: ServerTLS | None = None,
        serializer: Serializer | None = None,
        grace: float = 5.0,
        instance: str | None = None,
        weight: int = 100,
        send_tracebacks: bool = True,
        auth: ServerAuth | None = None,
        rabbit: bool = False,
    ) -> None:
        if not target.topic:
            raise ValueError("a server target needs a topic")
        if target.version is not None:
            parse_version(target.version)
        if dispatcher is None:
            dispatcher = Dispatcher(endpoints, Target(namespace=None, version=None))
        elif endpoints:
            raise ValueError("give a server endpoints or a dispatcher, not both")
        self.target = target.replace(
            server=target.server or socket.gethostname(),
            exchange=target.exchange or DEFAULT_EXCHANGE,
        )
        self.registry = registry
        self.az = az
        self.limits = limits or Limits()
        self.grace = grace
        self.weight = weight
        self.rabbit = rabbit
        self._instance = instance
        self._servicer = EnvelopeServicer(
            Identity(self.target.exchange or "", self.target.topic or "",
                     self.target.server or "", az),
            dispatcher,
            serializer or NoOpSerializer(),
            self.limits,
            send_tracebacks=send_tracebacks,
            auth=auth,
        )
        if auth is None:
            log.warning("server %s/%s has no authentication: any caller that reaches its port "
                        "may call it", self.target.topic, self.target.server)
        self.host = ServiceHost(
            service_names=[SERVICE_NAME],
            handlers=[self._servicer.handlers()],
            registry=registry,
            host=host,
            port=port,
            port_range=port_range,
            advertise_host=advertise_host,
            tls=tls,
            max_message_size=self.limits.max_message_size,
            max_streams=self.limits.streams_per_connection,
            max_connections=self.limits.max_connections,
            handshake_timeout=self.limits.handshake_timeout,
            idle_timeout=self.limits.idle_timeout,
            max_age=self.limits.max_connection_age,
            max_age_grace=self.limits.max_connection_age_grace,
        )
        self.endpoint: Endpoint | None = None
        self._stopped = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind, start serving, and announce the endpoint. Raises `ServerError` if it cannot."""
        t = self.target

        def describe(host: str, port: int) -> Endpoint:
            return Endpoint(
                address=hostport(host, port),
                topic=t.topic or "",
                server=t.server or "",
                exchange=t.exchange or DEFAULT_EXCHANGE,
                az=self.az,
                instance=self._instance or f"{os.getpid()}-{port}",
                version=t.version or "",
                pid=os.getpid(),
                hostname=socket.gethostname(),
                started_at=time.time(),
                tls=self.host.tls is not None,
                weight=self.weight,
                rabbit=self.rabbit,
            )

        self.endpoint = await self.host.start(describe)
        log.info("serving %s/%s as %s at %s", t.exchange, t.topic, t.server, self.endpoint.address)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, withdraw from the registry, let in-flight work finish for `grace`
        seconds (default: the server's), then close. New messages meanwhile are refused with
        a "stopping" answer that lets callers send them elsewhere."""
        if not self.host.started:
            return
        if self._servicer.stopping:
            await self._stopped.wait()
            return
        grace = self.grace if grace is None else grace
        deadline = time.monotonic() + grace
        self._servicer.stopping = True
        await self.host.withdraw()
        drained = await self._servicer.drain(max(0.0, deadline - time.monotonic()))
        if not drained:
            log.warning("stopping with %d message(s) still running after %.1fs grace",
                        self._servicer.busy, grace)
        await self._servicer.close()
        await self.host.close(0.2 if drained else 0)
        self._stopped.set()

    async def wait(self) -> None:
        """Return when the server has stopped."""
        await self._stopped.wait()

    @property
    def stopping(self) -> bool:
        """Whether `stop()` has begun: new messages are refused from then on."""
        return self._servicer.stopping

    @property
    def busy(self) -> int:
        """Messages admitted and not finished yet (a cast counts until its endpoint returns)."""
        return self._servicer.busy

    @property
    def address(self) -> str:
        """The advertised `host:port` (after `start()`)."""
        if self.endpoint is None:
            raise ServerError("server not started")
        return self.endpoint.address

    async def __aenter__(self) -> RPCServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


class ServerThread:
    """Runs an `RPCServer` on an event loop in a background thread, for blocking programs.

    >>> class Ping:
    ...     def ping(self, ctxt):
    ...         return "pong"
    >>> with ServerThread(RPCServer(Target(topic="demo", server="h"), [Ping()])) as server:
    ...     print(server.address.startswith("127.0.0.1:"))
    True
    """

    def __init__(self, server: RPCServer) -> None:
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start the server; returns once it is serving (raises what `start()` raised)."""
        started: Future[None] = Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.server.start())
            except BaseException as exc:
                started.set_exception(exc)
                loop.close()
                return
            started.set_result(None)
            try:
                loop.run_until_complete(self.server.wait())
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"grpcrpc-server-{self.server.target.topic}",
                                        daemon=True)
        self._thread.start()
        started.result(timeout)

    def stop(self, grace: float | None = None, timeout: float = 60.0) -> None:
        """Stop the server (see `RPCServer.stop`) and join its thread."""
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self.server.stop(grace), self._loop)
        fut.result(timeout)
        self._thread.join(timeout)

    @property
    def address(self) -> str:
        return self.server.address

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
