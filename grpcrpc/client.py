"""`RPCClient` (blocking) and `AsyncRPCClient` (asyncio): call, cast and fanout.

Both share `_ClientBase`, which holds everything that does no I/O: merging targets in
`prepare()`, version caps, building envelopes, turning replies into values or exceptions. The
twins add only the I/O, each over its own transport; there is no event loop behind the sync
client.

>>> from grpcrpc.discovery import StaticResolver
>>> client = RPCClient(StaticResolver([]), Target(topic="scheduler"), timeout=5)
>>> client.prepare(version="1.3").target.version
'1.3'
>>> client.can_send_version("2.0")
True
>>> client.close()
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable
from typing import Any, Self, TypeVar

from google.protobuf.message import Message

from grpcrpc import envelope as ev
from grpcrpc import tracing
from grpcrpc.deadline import effective_timeout, remaining_time
from grpcrpc.discovery.base import Resolver
from grpcrpc.exceptions import InvalidEnvelope, NoEndpoints, SerializationError, VersionCapError
from grpcrpc.fanout import FanoutReport
from grpcrpc.serializer import NoOpSerializer, Serializer
from grpcrpc.target import Target, parse_version, version_is_compatible
from grpcrpc.transport.aio import AsyncTransport
from grpcrpc.transport.base import TransportOptions
from grpcrpc.transport.sync import SyncTransport

__all__ = ["UNSET", "AsyncRPCClient", "FailureMapper", "RPCClient", "Unset"]

DEFAULT_TIMEOUT = 60.0

log = logging.getLogger("grpcrpc.client")


class Unset(enum.Enum):
    """The type of `UNSET`: "not given", as distinct from None (which means "no value")."""

    UNSET = "UNSET"


UNSET = Unset.UNSET
T = TypeVar("T")
M = TypeVar("M", bound=Message)
_Transport = TypeVar("_Transport", SyncTransport, AsyncTransport)

# Turns an endpoint's failure (a `REMOTE` wire `Failure`) into the exception the caller raises;
# None leaves it to grpcrpc (`RemoteError`, or the remote type when its module is allowed).
FailureMapper = Callable[[ev.Failure], BaseException | None]


def _pick(value: T | Unset, current: T) -> T:
    return current if value is UNSET else value


class _BlobArgs:
    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = True


class _ClientBase:
    """The I/O-free half of a client (shared by both twins)."""

    def __init__(
        self,
        target: Target,
        *,
        timeout: float | None,
        version_cap: str | None,
        serializer: Serializer | None,
        retry: int | None,
        allowed_remote_exmods: Iterable[str],
        failure_mapper: FailureMapper | None = None,
        fanout_reports: Callable[[FanoutReport], object] | None = None,
    ) -> None:
        if retry is not None and retry < 0:
            raise ValueError("retry must be >= 0 (or None for the transport's default)")
        if not target.topic:
            raise ValueError("a client target needs a topic")
        if version_cap is not None:
            parse_version(version_cap)
        if target.version is not None:
            parse_version(target.version)
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive (or None for no timeout)")
        self.target = target
        self.timeout = timeout
        self.version_cap = version_cap
        self.serializer = serializer or NoOpSerializer()
        # The default serializer changes nothing: skip its per-argument calls on the hot path.
        self._plain_entities = type(self.serializer) is NoOpSerializer
        self.retry = retry
        self.allowed_remote_exmods = frozenset(allowed_remote_exmods)
        self.failure_mapper = failure_mapper
        self.fanout_reports = fanout_reports
        self._wire_targets: dict[tuple[str, str], ev.WireTarget] = {}
        # Shared with prepared copies: off once a server that predates blobs refused blob args.
        self._blob_args = _BlobArgs()

    def _copy(self, **changes: Any) -> Self:
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        new._wire_targets = {}
        return new

    def _handed(self, report: FanoutReport) -> FanoutReport | None:
        """A broadcaster's report: to `fanout_reports` when the client has one (then None)."""
        if self.fanout_reports is None:
            return report
        self.fanout_reports(report)
        return None

    def _wire_target(self, exchange: str, own_az: str) -> ev.WireTarget:
        """The envelope's target, built once per client (targets are immutable)."""
        key = (exchange, own_az)
        wire = self._wire_targets.get(key)
        if wire is None:
            wire = self._wire_targets[key] = ev.wire_target(
                self.target, exchange, own_az if self.target.fanout else "")
        return wire

    def prepare(
        self,
        *,
        exchange: str | Unset | None = UNSET,
        topic: str | Unset | None = UNSET,
        namespace: str | Unset | None = UNSET,
        version: str | Unset | None = UNSET,
        server: str | Unset | None = UNSET,
        fanout: bool | Unset = UNSET,
        az: str | Unset | None = UNSET,
        timeout: float | Unset | None = UNSET,
        version_cap: str | Unset | None = UNSET,
        retry: int | Unset | None = UNSET,
    ) -> Self:
        """A new client with some settings changed; this one is left as it is.

        Only what is given changes: `prepare(timeout=None)` removes the timeout, while
        `prepare()` keeps it.
        """
        t = self.target
        target = Target(
            exchange=_pick(exchange, t.exchange),
            topic=_pick(topic, t.topic),
            namespace=_pick(namespace, t.namespace),
            version=_pick(version, t.version),
            server=_pick(server, t.server),
            fanout=_pick(fanout, t.fanout),
            az=_pick(az, t.az),
        )
        if not target.topic:
            raise ValueError("a client target needs a topic")
        if target.version is not None:
            parse_version(target.version)
        new_timeout = _pick(timeout, self.timeout)
        if new_timeout is not None and new_timeout <= 0:
            raise ValueError("timeout must be positive (or None for no timeout)")
        new_cap = _pick(version_cap, self.version_cap)
        if new_cap is not None:
            parse_version(new_cap)
        # The copy shares the transport but never owns it: closing a prepared client must not
        # close its parent's connections.
        return self._copy(
            target=target, timeout=new_timeout, version_cap=new_cap, retry=_pick(retry, self.retry),
            _owns_transport=False,
        )

    def can_send_version(self, version: str | Unset | None = UNSET) -> bool:
        """Whether the version cap allows sending `version` (default: the target's)."""
        v = self.target.version if version is UNSET else version
        if self.version_cap is None:
            return True
        return version_is_compatible(self.version_cap, v)

    def _dict_args(self, ctxt: Any, kwargs: dict[str, Any], *, call: bool = False) -> ev.Payload:
        if not self._plain_entities:
            s = self.serializer
            kwargs = {k: s.serialize_entity(ctxt, v) for k, v in kwargs.items()}
        if call and self._blob_args.on:
            # A call's long string arguments go as blobs, not JSON (see _refused_blobs).
            packed = ev.blob_args(kwargs)
            if packed is not None:
                return packed
        return ev.Payload(json=ev.encode_json(kwargs))

    def _refused_blobs(self, args: ev.Payload, reply: ev.Reply) -> ev.Payload | None:
        """When a server that predates blobs refused blob args (unrun), the same args as plain
        JSON to send again; this client (and its prepared copies) sends no more blob args."""
        if reply.WhichOneof("outcome") != "failure" or not ev.refused_blob_args(reply.failure):
            return None
        if args.WhichOneof("body") != "message" or args.message.TypeName() != ev.BLOB_ARGS:
            return None
        log.info("a server of %s does not read blob args: sending plain JSON from now on",
                 self.target.topic)
        self._blob_args.on = False
        return ev.plain_args(args)

    @staticmethod
    def _message_args(request: Message) -> ev.Payload:
        if not isinstance(request, Message):
            raise SerializationError(f"expected a protobuf message, got {type(request).__name__}")
        return ev.pack_message(request)

    def _timeout_now(self, method: str) -> float | None:
        """This message's timeout: the client's, cut to what remains of the deadline of the
        message being served, if any (`MessagingTimeout` when nothing remains: not sent)."""
        return effective_timeout(self.timeout, remaining_time(), self._what(method))

    def _envelope(
        self, ctxt: Any, method: str, args: ev.Payload, *, cast: bool, msg_id: str,
        exchange: str, headers: dict[str, str], timeout: float | None, own_az: str = "",
    ) -> bytes:
        if not method or not isinstance(method, str):
            raise ValueError("method must be a non-empty string")
        if not self.can_send_version():
            raise VersionCapError(
                f"version {self.target.version} of {method} is above the cap {self.version_cap}"
            )
        if not ctxt and type(ctxt) is dict:
            context = b"{}"
        else:
            try:
                context = ev.encode_json(self.serializer.serialize_context(ctxt))
            except TypeError as err:
                raise SerializationError(str(err)) from None
        env = ev.Envelope(
            id=msg_id,
            # A fanout names its AZ, so whichever broadcaster takes it delivers in that AZ.
            target=self._wire_target(exchange, own_az),
            method=method,
            cast=cast,
            # A fanout is a cast: a call on a fanout target goes to one server as a call.
            fanout=cast and self.target.fanout,
            context=context,
            timeout_ms=0 if timeout is None else ev.timeout_ms(timeout),
            blob_replies=True,  # this client reads a result's long strings as blobs
        )
        # Copied in, not passed to the constructor (which copies a large payload ~10x slower).
        env.args.CopyFrom(args)
        if headers:
            env.headers.update(headers)
        return env.SerializeToString()

    def _result(
        self, ctxt: Any, method: str, reply: ev.Reply, response_type: type[M] | None = None
    ) -> Any:
        kind = reply.WhichOneof("outcome")
        if kind == "result":
            payload = reply.result
            if response_type is not None:
                return ev.payload_to_message(payload, response_type, f"{method} result")
            if payload.WhichOneof("body") == "message":
                return ev.payload_to_python(payload, f"{method} result")
            value = ev.payload_value(payload, "result")
            return value if self._plain_entities else self.serializer.deserialize_entity(ctxt, value)
        if kind == "failure":
            failure = reply.failure
            if self.failure_mapper is not None and failure.code == ev.ErrorCode.REMOTE:
                mapped = self.failure_mapper(failure)
                if mapped is not None:
                    raise mapped
            raise ev.exception_from_failure(
                reply.failure, method, self.target.version or "", self.allowed_remote_exmods
            )
        if kind == "accepted":
            return None
        raise InvalidEnvelope(f"{method}: the server's reply carries no outcome")

    def _check_fallback(self, err: NoEndpoints) -> None:
        """No broadcaster took a fanout (so nothing was delivered): may the client fan out?"""
        transport: SyncTransport | AsyncTransport = self.transport  # type: ignore[attr-defined]
        if not transport.options.client_fanout_fallback:
            raise NoEndpoints(f"no broadcaster reachable and client fanout is off: {err}") from None
        log.debug("fanning out from the client: %s", err)

    def _what(self, method: str) -> str:
        return f"{self.target.topic}.{method}"

    def _span(self, kind: str, method: str, msg_id: str) -> Any:
        t = self.target
        return tracing.client_span(kind, t.topic or "", method, msg_id, server=t.server or "",
                                   az=t.az or "", version=t.version or "")

    def _kind(self, cast: bool) -> str:
        return "fanout" if cast and self.target.fanout else ("cast" if cast else "call")


def _transport_for(
    resolver_or_transport: Resolver | _Transport, cls: type[_Transport],
    options: TransportOptions | None,
) -> tuple[_Transport, bool]:
    if isinstance(resolver_or_transport, cls):
        if options is not None:
            raise ValueError("pass transport options to the transport, not to the client")
        return resolver_or_transport, False
    if isinstance(resolver_or_transport, Resolver):
        return cls(resolver_or_transport, options), True
    raise TypeError(f"expected a Resolver or a {cls.__name__}, got {type(resolver_or_transport)}")


class RPCClient(_ClientBase):
    """A blocking client: `call` waits for the answer, `cast` for the server's acceptance.

    Give it a `Resolver` (it then owns a `SyncTransport`) or a transport shared between clients.
    Thread-safe: one client serves any number of threads.

    Inside an endpoint, every call and cast waits at most what remains of the deadline of the
    message being served (`grpcrpc.remaining_time()`), and fails at once with
    `MessagingTimeout`, unsent, when nothing remains. `failure_mapper(failure)` may turn an
    endpoint's failure (the wire `Failure` of a `REMOTE` reply) into the exception to raise
    (None: grpcrpc's own mapping).

    With `fanout_reports`, a fanout cast does not wait for the servers: it returns None once
    its envelope is on its way to every server, and its `FanoutReport` goes to
    `fanout_reports(report)` (from another thread) when the last server has answered — the
    next fanout follows at once, and the servers get them in batches
    (`grpcrpc.transport.detached`). Without it, a fanout returns its report.

    >>> from grpcrpc.discovery import StaticResolver
    >>> client = RPCClient(StaticResolver([]), Target(topic="scheduler"))
    >>> # client.call({}, "select_destinations", spec={"vcpus": 2})
    >>> client.close()
    """

    def __init__(
        self,
        transport: Resolver | SyncTransport,
        target: Target,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        version_cap: str | None = None,
        serializer: Serializer | None = None,
        retry: int | None = None,
        allowed_remote_exmods: Iterable[str] = (),
        options: TransportOptions | None = None,
        failure_mapper: FailureMapper | None = None,
        fanout_reports: Callable[[FanoutReport], object] | None = None,
    ) -> None:
        super().__init__(
            target, timeout=timeout, version_cap=version_cap, serializer=serializer,
            retry=retry, allowed_remote_exmods=allowed_remote_exmods,
            failure_mapper=failure_mapper, fanout_reports=fanout_reports,
        )
        self.transport, self._owns_transport = _transport_for(transport, SyncTransport, options)
        self._new_id = ev.id_factory()

    def call(self, ctxt: Any, method: str, **kwargs: Any) -> Any:
        """Invoke `method` on one server of the target and return its result.

        Raises `MessagingTimeout` at the timeout, `RemoteError` (or the remote type, when its
        module is allowed) if the endpoint raised, or another `GrpcrpcError`.
        """
        return self._call(ctxt, method, self._dict_args(ctxt, kwargs, call=True), None)

    def call_message(self, ctxt: Any, method: str, request: Message, response_type: type[M]) -> M:
        """`call` with a protobuf request and response (what generated typed clients use)."""
        result: M = self._call(ctxt, method, self._message_args(request), response_type)
        return result

    def cast(self, ctxt: Any, method: str, **kwargs: Any) -> FanoutReport | None:
        """Send `method` one-way: returns once a server has accepted it (None), or, with
        `fanout=True`, once every server of the topic was tried (a `FanoutReport`; None once
        it is sent, when the client has `fanout_reports`).

        A server that does not accept it within the transport's `cast_accept_timeout` (5 s by
        default; within `timeout` in any case) fails it with `MessagingTimeout`, and a server
        found frozen with it in flight with `DeliveryError`: it may have arrived, so it is not
        sent again."""
        return self._cast(ctxt, method, self._dict_args(ctxt, kwargs))

    def cast_message(self, ctxt: Any, method: str, request: Message) -> FanoutReport | None:
        """`cast` with a protobuf request."""
        return self._cast(ctxt, method, self._message_args(request))

    def _call(self, ctxt: Any, method: str, args: ev.Payload, response_type: type[M] | None
              ) -> Any:
        t = self.transport
        msg_id = self._new_id()
        with self._span("call", method, msg_id) as headers:
            timeout = self._timeout_now(method)
            data = self._envelope(ctxt, method, args, cast=False, msg_id=msg_id,
                                  exchange=t.options.exchange, headers=headers, timeout=timeout)
            reply = t.request(self.target, msg_id, data, timeout, self._what(method), self.retry)
            plain = self._refused_blobs(args, reply)
            if plain is not None:
                data = self._envelope(ctxt, method, plain, cast=False, msg_id=msg_id,
                                      exchange=t.options.exchange, headers=headers,
                                      timeout=timeout)
                reply = t.request(self.target, msg_id, data, timeout, self._what(method),
                                  self.retry)
            return self._result(ctxt, method, reply, response_type)

    def _cast(self, ctxt: Any, method: str, args: ev.Payload) -> FanoutReport | None:
        msg_id = self._new_id()
        with self._span(self._kind(True), method, msg_id) as headers:
            return self._send_cast(ctxt, method, args, msg_id, headers)

    def _send_cast(self, ctxt: Any, method: str, args: ev.Payload, msg_id: str,
                   headers: dict[str, str]) -> FanoutReport | None:
        t = self.transport
        timeout = self._timeout_now(method)
        data = self._envelope(ctxt, method, args, cast=True, msg_id=msg_id,
                              exchange=t.options.exchange, headers=headers, timeout=timeout,
                              own_az=t.options.az)
        if self.target.fanout:
            what = self._what(method)
            on_report = self.fanout_reports
            if t.options.use_broadcaster:
                try:
                    report = t.broadcast(self.target, data, timeout, what)
                except NoEndpoints as err:
                    self._check_fallback(err)
                else:
                    return self._handed(report)
            if on_report is None:
                return t.fanout(t.fanout_targets(self.target), msg_id, data, timeout, what)
            t.fanout_detached(t.fanout_targets(self.target), msg_id, data, timeout, what,
                              on_report)
            return None
        reply = t.request(self.target, msg_id, data, timeout, self._what(method), self.retry,
                          cast=True)
        self._result(ctxt, method, reply)
        return None

    def close(self) -> None:
        """Close the transport if this client created it."""
        if self._owns_transport:
            self.transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncRPCClient(_ClientBase):
    """The asyncio twin of `RPCClient`: the same API, with `await`.

    It may be created anywhere, inside an event loop or not (at import time, in a
    constructor): it connects on first use, and is then bound to the loop that used it.
    `fanout_reports` is called on that loop.

    >>> import asyncio
    >>> from grpcrpc.discovery import StaticResolver
    >>> client = AsyncRPCClient(StaticResolver([]), Target(topic="scheduler"))
    >>> async def main():
    ...     # await client.call({}, "select_destinations", spec={"vcpus": 2})
    ...     await client.close()
    >>> asyncio.run(main())
    """

    def __init__(
        self,
        transport: Resolver | AsyncTransport,
        target: Target,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        version_cap: str | None = None,
        serializer: Serializer | None = None,
        retry: int | None = None,
        allowed_remote_exmods: Iterable[str] = (),
        options: TransportOptions | None = None,
        failure_mapper: FailureMapper | None = None,
        fanout_reports: Callable[[FanoutReport], object] | None = None,
    ) -> None:
        super().__init__(
            target, timeout=timeout, version_cap=version_cap, serializer=serializer,
            retry=retry, allowed_remote_exmods=allowed_remote_exmods,
            failure_mapper=failure_mapper, fanout_reports=fanout_reports,
        )
        self.transport, self._owns_transport = _transport_for(transport, AsyncTransport, options)
        self._new_id = ev.id_factory()

    async def call(self, ctxt: Any, method: str, **kwargs: Any) -> Any:
        """Invoke `method` on one server of the target and return its result."""
        return await self._call(ctxt, method, self._dict_args(ctxt, kwargs, call=True), None)

    async def call_message(
        self, ctxt: Any, method: str, request: Message, response_type: type[M]
    ) -> M:
        """`call` with a protobuf request and response (what generated typed clients use)."""
        result: M = await self._call(ctxt, method, self._message_args(request), response_type)
        return result

    async def cast(self, ctxt: Any, method: str, **kwargs: Any) -> FanoutReport | None:
        """Send `method` one-way (see `RPCClient.cast`)."""
        return await self._cast(ctxt, method, self._dict_args(ctxt, kwargs))

    async def cast_message(self, ctxt: Any, method: str, request: Message) -> FanoutReport | None:
        """`cast` with a protobuf request."""
        return await self._cast(ctxt, method, self._message_args(request))

    async def _call(
        self, ctxt: Any, method: str, args: ev.Payload, response_type: type[M] | None
    ) -> Any:
        t = self.transport
        msg_id = self._new_id()
        with self._span("call", method, msg_id) as headers:
            timeout = self._timeout_now(method)
            data = self._envelope(ctxt, method, args, cast=False, msg_id=msg_id,
                                  exchange=t.options.exchange, headers=headers, timeout=timeout)
            reply = await t.request(
                self.target, msg_id, data, timeout, self._what(method), self.retry
            )
            plain = self._refused_blobs(args, reply)
            if plain is not None:
                data = self._envelope(ctxt, method, plain, cast=False, msg_id=msg_id,
                                      exchange=t.options.exchange, headers=headers,
                                      timeout=timeout)
                reply = await t.request(
                    self.target, msg_id, data, timeout, self._what(method), self.retry
                )
            return self._result(ctxt, method, reply, response_type)

    async def _cast(self, ctxt: Any, method: str, args: ev.Payload) -> FanoutReport | None:
        msg_id = self._new_id()
        with self._span(self._kind(True), method, msg_id) as headers:
            return await self._send_cast(ctxt, method, args, msg_id, headers)

    async def _send_cast(self, ctxt: Any, method: str, args: ev.Payload, msg_id: str,
                         headers: dict[str, str]) -> FanoutReport | None:
        t = self.transport
        timeout = self._timeout_now(method)
        data = self._envelope(ctxt, method, args, cast=True, msg_id=msg_id,
                              exchange=t.options.exchange, headers=headers, timeout=timeout,
                              own_az=t.options.az)
        if self.target.fanout:
            what = self._what(method)
            on_report = self.fanout_reports
            if t.options.use_broadcaster:
                try:
                    report = await t.broadcast(self.target, data, timeout, what)
                except NoEndpoints as err:
                    self._check_fallback(err)
                else:
                    return self._handed(report)
            endpoints = t.fanout_targets(self.target)
            if on_report is None:
                return await t.fanout(endpoints, msg_id, data, timeout, what)
            await t.fanout_detached(endpoints, msg_id, data, timeout, what, on_report)
            return None
        reply = await t.request(
            self.target, msg_id, data, timeout, self._what(method), self.retry, cast=True
        )
        self._result(ctxt, method, reply)
        return None

    async def close(self) -> None:
        if self._owns_transport:
            await self.transport.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
