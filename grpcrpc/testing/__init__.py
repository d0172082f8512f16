"""Join clients and real servers in one process, for service authors' own tests.

The shape of grpclib's `ChannelFor`: a real gRPC server on a loopback port, a client routed to
it through an in-process registry, both closed on exit.

>>> class Scheduler:
...     def select_destinations(self, ctxt, spec):
...         return ["host1"]
>>> with ClientFor(Target(topic="scheduler"), [Scheduler()]) as client:
...     client.call({}, "select_destinations", spec={})
['host1']

`Cluster` runs several servers (topics, server names, AZs) behind one `MemoryDiscovery`; the
pytest plugin (`grpcrpc.testing.pytest_plugin`, loaded automatically) provides it as the
`grpcrpc_cluster` fixture.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grpcrpc.client import AsyncRPCClient, RPCClient
from grpcrpc.discovery.static import MemoryDiscovery
from grpcrpc.server import RPCServer, ServerThread
from grpcrpc.target import Target
from grpcrpc.transport.base import TransportOptions

__all__ = ["AsyncClientFor", "ClientFor", "Cluster"]


class Cluster:
    """Servers in background threads, announced in one in-process registry.

    >>> class Echo:
    ...     def echo(self, ctxt, value):
    ...         return value
    >>> with Cluster() as cluster:
    ...     _ = cluster.serve(Target(topic="echo", server="a"), [Echo()])
    ...     cluster.client(Target(topic="echo")).call({}, "echo", value=1)
    1
    """

    def __init__(self) -> None:
        self.discovery = MemoryDiscovery()
        self.servers: list[ServerThread] = []
        self._clients: list[RPCClient] = []

    def serve(self, target: Target, endpoints: Sequence[Any] = (), **server_args: Any
              ) -> ServerThread:
        """Start a server for `target` (announced at once); returns its running thread."""
        server = RPCServer(target, endpoints, registry=self.discovery, **server_args)
        thread = ServerThread(server)
        thread.start()
        self.servers.append(thread)
        return thread

    def client(self, target: Target, options: TransportOptions | None = None,
               **client_args: Any) -> RPCClient:
        """A blocking client routed through this cluster's registry (closed with the cluster)."""
        client = RPCClient(self.discovery, target, options=options, **client_args)
        self._clients.append(client)
        return client

    def async_client(self, target: Target, options: TransportOptions | None = None,
                     **client_args: Any) -> AsyncRPCClient:
        """An asyncio client (bound to the loop that uses it first; close it yourself)."""
        return AsyncRPCClient(self.discovery, target, options=options, **client_args)

    def close(self) -> None:
        for client in self._clients:
            client.close()
        for thread in self.servers:
            thread.stop(grace=1.0)
        self._clients.clear()
        self.servers.clear()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ClientFor:
    """A blocking client joined to one real server serving `endpoints` for `target`."""

    def __init__(self, target: Target, endpoints: Sequence[Any], **client_args: Any) -> None:
        server_target = target.replace(server=target.server or "test", fanout=False)
        self._target = target.replace(server=None) if not target.server else target
        self._server_target = server_target
        self._endpoints = endpoints
        self._client_args = client_args
        self._cluster = Cluster()

    def __enter__(self) -> RPCClient:
        self._cluster.serve(self._server_target, self._endpoints)
        return self._cluster.client(self._target, **self._client_args)

    def __exit__(self, *exc_info: object) -> None:
        self._cluster.close()


class AsyncClientFor:
    """The asyncio twin of `ClientFor`: the server runs on the caller's loop.

    >>> import asyncio
    >>> class Echo:
    ...     async def echo(self, ctxt, value):
    ...         return value
    >>> async def main():
    ...     async with AsyncClientFor(Target(topic="echo"), [Echo()]) as client:
    ...         return await client.call({}, "echo", value=2)
    >>> asyncio.run(main())
    2
    """

    def __init__(self, target: Target, endpoints: Sequence[Any], **client_args: Any) -> None:
        self._discovery = MemoryDiscovery()
        self._server = RPCServer(
            target.replace(server=target.server or "test", fanout=False), endpoints,
            registry=self._discovery,
        )
        self._target = target
        self._client_args = client_args
        self._client: AsyncRPCClient | None = None

    async def __aenter__(self) -> AsyncRPCClient:
        await self._server.start()
        self._client = AsyncRPCClient(self._discovery, self._target, **self._client_args)
        return self._client

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client is not None:
            await self._client.close()
        await self._server.stop(grace=1.0)
