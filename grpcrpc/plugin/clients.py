"""The typed clients that generated modules subclass: `ContractClient` and `AsyncContractClient`.

Each wraps an `RPCClient` (or `AsyncRPCClient`) aimed at its contract's topic. A generated method
checks the request type, refuses a method whose `since` version is above the client's
`version_cap` before sending, and sends the envelope with that version, so an older server answers
`UnsupportedVersion` instead of guessing. What does no I/O is shared by the twins in `_TypedClient`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Generic, Self, TypedDict, TypeVar, Unpack

from google.protobuf.message import Message

from grpcrpc.client import DEFAULT_TIMEOUT, AsyncRPCClient, RPCClient
from grpcrpc.discovery.base import Resolver
from grpcrpc.exceptions import InvalidEnvelope, SerializationError, VersionCapError
from grpcrpc.fanout import FanoutReport
from grpcrpc.plugin.contract import Contract
from grpcrpc.serializer import Serializer
from grpcrpc.target import Target
from grpcrpc.transport.aio import AsyncTransport
from grpcrpc.transport.base import TransportOptions
from grpcrpc.transport.sync import SyncTransport

__all__ = ["AsyncContractClient", "ContractClient", "PrepareOptions"]

M = TypeVar("M", bound=Message)
C = TypeVar("C", RPCClient, AsyncRPCClient)


class PrepareOptions(TypedDict, total=False):
    """What `prepare()` of a typed client may change (namespace and version are the contract's)."""

    exchange: str | None
    topic: str
    server: str | None
    az: str | None
    timeout: float | None
    version_cap: str | None
    retry: int | None


class _TypedClient(Generic[C]):
    """The I/O-free half of a typed client, shared by the blocking and asyncio bases."""

    contract: ClassVar[Contract]
    #: True for the generated `...FanoutClient` classes: every message goes to every server.
    fanout: ClassVar[bool] = False
    rpc: C
    # Per `since` version: a client prepared with it, or None when the version cap forbids it.
    _by_version: dict[str, C | None]
    _owns: bool

    def _bind(self, rpc: C, owns: bool) -> None:
        self.rpc = rpc
        self._owns = owns
        # Made once per client (prepare() makes a new one), so a call pays no prepare() and no
        # version parsing beyond the core's own.
        self._by_version = {
            v: rpc.prepare(version=v) if rpc.can_send_version(v) else None
            for v in {m.since for m in self.contract.methods}
        }

    @classmethod
    def _wrap(cls, rpc: C) -> Self:
        """A typed client over a prepared `rpc`; it shares, and never closes, the transport."""
        new = cls.__new__(cls)
        new._bind(rpc, owns=False)
        return new

    def _target_for(self, name: str, request: Message) -> C:
        spec = self.contract.by_name[name]
        if not isinstance(request, spec.request):
            raise SerializationError(
                f"{self.contract.topic}.{name} takes a {spec.request.DESCRIPTOR.full_name}, "
                f"got {type(request).__name__}"
            )
        client = self._by_version[spec.since]
        if client is None:
            raise VersionCapError(
                f"{self.contract.topic}.{name} needs API version {spec.since}, above this "
                f"client's version_cap {self.rpc.version_cap}: not sent"
            )
        return client

    def prepare(self, **changes: Unpack[PrepareOptions]) -> Self:
        """A new client with some settings changed (only those given); this one is unchanged.

        The new client shares this one's transport: close the client you constructed, not the
        prepared ones (closing a prepared one does nothing). The generated clients of services
        with fanout methods add `fanout=True`, which returns the service's typed fanout client.
        """
        return self._wrap(self.rpc.prepare(**changes))

    def can_send_version(self, version: str) -> bool:
        """Whether this client's `version_cap` allows `version` (e.g. to fall back, as nova does)."""
        return self.rpc.can_send_version(version)

    @classmethod
    def _client_target(cls, exchange: str | None, topic: str | None, server: str | None,
                       az: str | None) -> Target:
        c = cls.contract
        return c.client_target(exchange=exchange or c.exchange, topic=topic or c.topic, server=server,
                               az=az, fanout=cls.fanout)


class ContractClient(_TypedClient[RPCClient]):
    """Base of the generated blocking clients: wraps an `RPCClient` aimed at the contract.

    Give it a `Resolver` (it then owns its transport) or a `SyncTransport` shared with other
    clients; the other arguments are `RPCClient`'s, plus `server`/`az` to direct every message.

        client = SchedulerClient(resolver, timeout=10)
        reply = client.select_destinations(ctxt, scheduler_pb2.SelectDestinationsRequest(...))
        client.prepare(server="compute1")  # a new typed client, directed to one server
    """

    def __init__(
        self,
        transport: Resolver | SyncTransport,
        *,
        exchange: str | None = None,
        topic: str | None = None,
        server: str | None = None,
        az: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        version_cap: str | None = None,
        serializer: Serializer | None = None,
        retry: int | None = None,
        allowed_remote_exmods: Iterable[str] = (),
        options: TransportOptions | None = None,
    ) -> None:
        target = self._client_target(exchange, topic, server, az)
        self._bind(RPCClient(
            transport, target, timeout=timeout, version_cap=version_cap, serializer=serializer,
            retry=retry, allowed_remote_exmods=allowed_remote_exmods, options=options,
        ), owns=True)

    def _call(self, ctxt: Any, name: str, request: Message, response_type: type[M]) -> M:
        return self._target_for(name, request).call_message(ctxt, name, request, response_type)

    def _cast(self, ctxt: Any, name: str, request: Message) -> None:
        self._target_for(name, request).cast_message(ctxt, name, request)

    def _fanout(self, ctxt: Any, name: str, request: Message) -> FanoutReport:
        return _report(self._target_for(name, request).cast_message(ctxt, name, request), name)

    def close(self) -> None:
        """Close the transport if this client created it (prepared clients leave it open)."""
        if self._owns:
            self.rpc.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncContractClient(_TypedClient[AsyncRPCClient]):
    """Base of the generated asyncio clients: the twin of `ContractClient`, with `await`.

        async with AsyncSchedulerClient(resolver, timeout=10) as client:
            reply = await client.select_destinations(ctxt, request)
    """

    def __init__(
        self,
        transport: Resolver | AsyncTransport,
        *,
        exchange: str | None = None,
        topic: str | None = None,
        server: str | None = None,
        az: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        version_cap: str | None = None,
        serializer: Serializer | None = None,
        retry: int | None = None,
        allowed_remote_exmods: Iterable[str] = (),
        options: TransportOptions | None = None,
    ) -> None:
        target = self._client_target(exchange, topic, server, az)
        self._bind(AsyncRPCClient(
            transport, target, timeout=timeout, version_cap=version_cap, serializer=serializer,
            retry=retry, allowed_remote_exmods=allowed_remote_exmods, options=options,
        ), owns=True)

    async def _call(self, ctxt: Any, name: str, request: Message, response_type: type[M]) -> M:
        return await self._target_for(name, request).call_message(ctxt, name, request, response_type)

    async def _cast(self, ctxt: Any, name: str, request: Message) -> None:
        await self._target_for(name, request).cast_message(ctxt, name, request)

    async def _fanout(self, ctxt: Any, name: str, request: Message) -> FanoutReport:
        return _report(await self._target_for(name, request).cast_message(ctxt, name, request), name)

    async def close(self) -> None:
        """Close the transport if this client created it (prepared clients leave it open)."""
        if self._owns:
            await self.rpc.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _report(report: FanoutReport | None, name: str) -> FanoutReport:
    # A fanout client's target always has fanout=True, so the core answers with a report.
    if report is None:
        raise InvalidEnvelope(f"{name}: a fanout cast returned no delivery report")
    return report
