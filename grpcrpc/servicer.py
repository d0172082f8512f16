"""The generic servicer: every topic and method, read from the envelope, on one gRPC service.

For each envelope: parse and validate it, check it is meant for this server, find the endpoint
method, admit it (or answer OVERLOADED at once: never a silent drop, never an unbounded queue),
then run it — coroutines on the loop, plain functions in a bounded thread pool — and reply. A cast
is answered `accepted` as soon as it is admitted; what its endpoint does is never reported back.
Bad input of any kind gets a failure reply and the next envelope is served.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc.aio
from google.protobuf.message import Message

from grpcrpc import envelope as ev
from grpcrpc import tracing
from grpcrpc._ratelog import RateLimitedLog
from grpcrpc.admission import FairPool
from grpcrpc.auth import ServerAuth
from grpcrpc.deadline import Incoming, reset_current_message, set_current_message
from grpcrpc.dispatcher import Dispatcher, Handler
from grpcrpc.exceptions import GrpcrpcError, InvalidEnvelope, NoSuchMethod, UnsupportedVersion
from grpcrpc.generated.v1 import transport_pb2 as tpb
from grpcrpc.limits import Limits
from grpcrpc.serializer import NoOpSerializer, Serializer
from grpcrpc.transport.batching import BATCH_BYTES, Outbox, count_batch

__all__ = ["EnvelopeServicer", "Identity", "Limits"]



@dataclass(frozen=True, slots=True)
class _Ticket:
    """An admitted envelope's claim on the server's bounds, released when it finishes."""

    handler: Handler
    peer: str


_Accepted = tuple["ev.Envelope | None", "_Ticket | None", "ev.Reply | None"]

log = logging.getLogger("grpcrpc.server")
_OUTCOME = "outcome"
# A batch is handled in slices of this many envelopes, yielding to the loop in between, so
# one large batch cannot hold the server's loop (and every other peer) while it is handled.
_BATCH_SLICE = 64


@dataclass(frozen=True, slots=True)
class Identity:
    """What a server is, to check that an envelope is meant for it."""

    exchange: str
    topic: str
    server: str
    az: str


class _Expired(Exception):
    """A call's deadline passed before its endpoint finished (while it waited for a thread, or
    while its coroutine ran): nobody waits for its answer."""


class EnvelopeServicer:
    """Handles the `grpcrpc.v1.Transport` methods for one `RPCServer`."""

    def __init__(
        self,
        identity: Identity,
        dispatcher: Dispatcher,
        serializer: Serializer,
        limits: Limits,
        *,
        send_tracebacks: bool = True,
        auth: ServerAuth | None = None,
    ) -> None:
        self.identity = identity
        self.auth = auth
        self._admission = limits.admission()
        # Refusals a peer can cause at will are logged at a bounded rate (one 4 MB batch of
        # unauthenticated envelopes once wrote 37 MB of warnings).
        self._refusals = RateLimitedLog(log)
        self.dispatcher = dispatcher
        self.serializer = serializer
        # The default serializer changes nothing: skip its per-value calls on the hot path.
        self._plain_entities = type(serializer) is NoOpSerializer
        self.limits = limits
        self.send_tracebacks = send_tracebacks
        self.stopping = False
        self._pool = FairPool(limits.threads, f"grpcrpc-{identity.topic}")
        self._busy = 0  # envelopes admitted and not finished (calls and casts)
        self._idle = asyncio.Event()
        self._idle.set()
        self._casts: set[asyncio.Task[None]] = set()

    # -- gRPC method handlers -------------------------------------------------------------

    def handlers(self) -> grpc.GenericRpcHandler:
        # Raw bytes in and out: parsing is ours, so garbage gets a named error reply.
        return grpc.method_handlers_generic_handler(
            "grpcrpc.v1.Transport",
            {
                "Batches": grpc.stream_stream_rpc_method_handler(self.batches),
                "Stream": grpc.stream_stream_rpc_method_handler(self.stream),
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            },
        )

    async def unary(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        identity, peer = self._identify(context), context.peer()
        if self._unauthenticated(identity, peer):
            return self._encode(ev.reply_failure("", ev.ErrorCode.UNAUTHORIZED, "not authorized"))
        env, ticket, reply = self._accept(raw, identity, peer)
        if reply is None:
            if env is None or ticket is None:
                # A cancel envelope: on Unary there is nothing in flight it could name (cancel
                # the RPC instead), so it is an error rather than an empty OK.
                reply = ev.reply_failure(env.id if env is not None else "",
                                         ev.ErrorCode.INVALID_ENVELOPE,
                                         "a cancel envelope means nothing on Unary")
            else:
                reply = await self._run(env, ticket)
        return self._encode(reply)

    async def stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> None:
        await self._serve_stream(requests, context, batched=False)

    async def batches(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> None:
        await self._serve_stream(requests, context, batched=True)

    async def _serve_stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext, *, batched: bool
    ) -> None:
        """One envelope stream: calls run concurrently (matched by id), replies go out through
        an outbox that coalesces them (`batched`) or sends one per message."""
        calls: dict[str, asyncio.Task[None]] = {}
        # Read while the call lives: grpc.aio's context.peer() on a finished call crashes the
        # process (a segfault, seen when a client cancelled its stream under a pending write).
        identity, peer = self._identify(context), context.peer()
        if self._unauthenticated(identity, peer):
            # Before reading a byte of it: a stream with no valid credentials costs nothing.
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "not authorized")

        def write_failed(error: BaseException, unsent: list[None]) -> None:
            log.debug("stream to %s broke while replying: %s", peer, error)

        admission = self._admission
        outbox: Outbox[None] = Outbox(
            context.write, BATCH_BYTES, write_failed, batched=batched,
            on_unsent=lambda delta: admission.unsent_changed(peer, delta))

        def send(reply: ev.Reply) -> None:
            if not outbox.failed:  # the caller is gone: it sees the broken stream
                outbox.put(self._encode(reply))

        async def call_and_reply(env: ev.Envelope, ticket: _Ticket) -> None:
            try:
                send(await self._run(env, ticket))
            except asyncio.CancelledError:
                pass  # the caller cancelled it: it wants no reply
            finally:
                calls.pop(env.id, None)

        loop = asyncio.get_running_loop()

        async def handle(env: ev.Envelope) -> None:
            ticket, reply = self._admit(env, identity, peer)
            if reply is None:
                if ticket is None:  # a cancel envelope
                    task = calls.get(env.id)
                    if task is not None:
                        task.cancel()
                    return
                if env.cast:
                    reply = await self._run(env, ticket)
                elif env.id in calls:
                    self._release(ticket)
                    reply = ev.reply_failure(env.id, ev.ErrorCode.INVALID_ENVELOPE,
                                             "duplicate message id in flight")
                elif len(calls) >= self.limits.stream_in_flight:
                    self._release(ticket)
                    reply = self._overloaded(env, "stream")
                else:
                    calls[env.id] = loop.create_task(call_and_reply(env, ticket))
                    return
            send(reply)

        async def room() -> None:
            # Backpressure: while the peer has not taken what it was sent, read no more of it.
            if outbox.unsent > self.limits.stream_unsent_bytes:
                await outbox.drained(self.limits.stream_unsent_bytes)
            await admission.room(peer)

        reader = aiter(requests)
        try:
            while True:
                await room()
                try:
                    raw = await anext(reader)
                except StopAsyncIteration:
                    break
                if batched:
                    envelopes, failure = self._parse_batch(raw)
                    if failure is not None:
                        send(failure)
                        continue
                else:
                    env, failure = self._parse(raw)
                    if env is None:
                        send(failure or ev.reply_failure("", ev.ErrorCode.INVALID_ENVELOPE, "?"))
                        continue
                    envelopes = [env]
                for i, env in enumerate(envelopes):
                    if i and not i % _BATCH_SLICE:
                        await asyncio.sleep(0)  # let the other peers' work run
                        await room()
                    await handle(env)
        finally:
            # The caller half-closed (or went away): finish what it is still waiting for.
            if calls:
                await asyncio.gather(*calls.values(), return_exceptions=True)
            await outbox.flush()

    # -- accepting ------------------------------------------------------------------------

    def _identify(self, context: grpc.aio.ServicerContext) -> str | None:
        if self.auth is None:
            return None
        return self.auth.identify(context.invocation_metadata() or (), context.auth_context())

    def _accept(self, raw: bytes, identity: str | None, peer: str) -> _Accepted:
        """Parse, validate, route, authorise and admit one envelope.

        Returns (envelope, ticket, None) when it is admitted (the caller must `_run` it, which
        releases the ticket), or (envelope-or-None, None, reply) to send at once.
        """
        env, failure = self._parse(raw)
        if failure is not None:
            return None, None, failure
        assert env is not None
        ticket, reply = self._admit(env, identity, peer)
        return env, ticket, reply

    def _unauthenticated(self, identity: str | None, peer: str) -> bool:
        """True (and a rate-limited log line) for a caller with no valid credentials on a
        server that requires them: refused before anything it sent is parsed."""
        if self.auth is None or identity is not None:
            return False
        self._refusals.warning("unauthenticated",
                               "unauthorized: unauthenticated caller refused (peer %s)", peer)
        return True

    def _parse_batch(self, raw: bytes) -> tuple[list[ev.Envelope], ev.Reply | None]:
        """The envelopes of one `Batches` message, counted before anything is parsed."""
        limit = self.limits.batch_envelopes
        try:
            count = count_batch(raw, limit)
        except ValueError as err:
            return [], ev.reply_failure("", ev.ErrorCode.INVALID_ENVELOPE,
                                        f"not an envelope batch: {err}")
        if count > limit:
            return [], ev.reply_failure("", ev.ErrorCode.INVALID_ENVELOPE,
                                        f"a batch of more than {limit} envelopes")
        try:
            return list(tpb.EnvelopeBatch.FromString(raw).envelopes), None
        except Exception as err:  # DecodeError: not a batch at all
            return [], ev.reply_failure("", ev.ErrorCode.INVALID_ENVELOPE,
                                        f"not an envelope batch: {err}")

    @staticmethod
    def _parse(raw: bytes) -> tuple[ev.Envelope | None, ev.Reply | None]:
        try:
            return ev.Envelope.FromString(raw), None
        except Exception as err:  # DecodeError and friends: not an envelope at all
            return None, ev.reply_failure(
                "", ev.ErrorCode.INVALID_ENVELOPE, f"not a grpcrpc envelope: {err}"
            )

    def _admit(
        self, env: ev.Envelope, identity: str | None, peer: str
    ) -> tuple[_Ticket | None, ev.Reply | None]:
        """Validate, route, authorise and admit a parsed envelope: (ticket, None) when admitted,
        (None, reply) to answer at once, (None, None) for a cancel envelope."""
        lim = self.limits
        try:
            ev.validate_envelope(env, max_name=lim.max_name,
                                 max_header_value=lim.max_header_value,
                                 max_header_bytes=lim.max_header_bytes)
        except InvalidEnvelope as err:
            # Never echo an oversized id: the reply would be as large as the attack.
            msg_id = env.id if len(env.id) <= lim.max_name else ""
            return None, ev.reply_failure(msg_id, ev.ErrorCode.INVALID_ENVELOPE, str(err))
        if env.cancel:
            return None, None
        t = env.target
        # Authorise before anything else answers: a caller that may not send this learns
        # nothing about the server (not its name, exchange or AZ from MISROUTED, nor whether
        # it is stopping). The operation is what will run: a call unless it is a cast.
        if self.auth is not None:
            op = ev.operation(env)
            if not self.auth.allows(identity, op, t.topic, env.method):
                # Who and what, for the operator; nothing that helps the caller.
                self._refusals.warning(
                    "unauthorized", "unauthorized: %s may not %s %s.%s (peer %s)",
                    identity or "unauthenticated caller", op, t.topic, env.method, peer)
                return None, ev.reply_failure(env.id, ev.ErrorCode.UNAUTHORIZED,
                                                   "not authorized")
        if self.stopping:
            return None, ev.reply_failure(env.id, ev.ErrorCode.STOPPING, "server is stopping")
        misrouted = self._misrouted(t)
        if misrouted:
            return None, ev.reply_failure(env.id, ev.ErrorCode.MISROUTED, misrouted)
        try:
            handler = self.dispatcher.lookup(t.namespace, t.version, env.method)
        except NoSuchMethod as err:
            return None, ev.reply_failure(env.id, ev.ErrorCode.NO_SUCH_METHOD, str(err))
        except UnsupportedVersion as err:
            return None, ev.reply_failure(env.id, ev.ErrorCode.UNSUPPORTED_VERSION, str(err))
        full = self._admission.admit(peer, is_async=handler.is_async)
        if full:
            return None, self._overloaded(env, full)
        self._busy += 1
        self._idle.clear()
        return _Ticket(handler, peer), None

    def _misrouted(self, t: ev.WireTarget) -> str:
        me = self.identity
        if t.topic != me.topic or (t.exchange and t.exchange != me.exchange):
            return f"this server serves {me.exchange}/{me.topic}, not {t.exchange}/{t.topic}"
        if t.server and t.server != me.server:
            return f"this is server {me.server}, not {t.server}"
        if t.az and t.az != me.az:
            return f"this server is in az {me.az}, not {t.az}"
        return ""

    def _overloaded(self, env: ev.Envelope, what: str) -> ev.Reply:
        self._refusals.warning("overloaded", "overloaded: %s full, refusing %s.%s", what,
                               env.target.topic, env.method)
        if env.cast:
            tracing.record_cast(self.identity.topic, accepted=False)
        return ev.reply_failure(env.id, ev.ErrorCode.OVERLOADED, f"server overloaded ({what} full)")

    # -- running --------------------------------------------------------------------------

    async def _run(self, env: ev.Envelope, ticket: _Ticket) -> ev.Reply:
        """Run an admitted envelope (releasing its ticket); a cast is only started."""
        incoming = Incoming.received(env.id, env.method, cast=env.cast, timeout_ms=env.timeout_ms)
        try:
            ctxt, args, kwargs = self._decode(env, ticket.handler)
        except Exception as err:
            self._release(ticket)
            return ev.Reply(id=env.id, failure=self._failure(err))
        if env.cast:
            task = asyncio.get_running_loop().create_task(
                self._cast(env, ticket, ctxt, args, kwargs, incoming)
            )
            self._casts.add(task)
            task.add_done_callback(self._casts.discard)
            tracing.record_cast(self.identity.topic, accepted=True)
            return ev.Reply(id=env.id, accepted=True)
        me = self.identity
        with tracing.server_span(env.headers, me.topic, env.method, env.id, cast=False,
                                 server=me.server, az=me.az) as span:
            try:
                result = await self._invoke(ticket, ctxt, args, kwargs, incoming)
            except _Expired as expired:
                tracing.mark_failed(span, "Expired", str(expired))
                return ev.reply_failure(env.id, ev.ErrorCode.EXPIRED, str(expired))
            except Exception as err:
                log.info("%s.%s raised %s: %s", env.target.topic, env.method,
                         type(err).__name__, err, exc_info=log.isEnabledFor(logging.DEBUG))
                tracing.mark_failed(span, type(err).__name__, str(err))
                return ev.Reply(id=env.id, failure=self._failure(err))
            try:
                payload = self._result_payload(env, ctxt, result)
            except Exception as err:
                tracing.mark_failed(span, "SerializationError", str(err))
                return ev.reply_failure(
                    env.id, ev.ErrorCode.SERIALIZATION,
                    f"{env.method} returned a result that cannot be serialised: {err}",
                )
            reply = ev.Reply(id=env.id)
            reply.result.CopyFrom(payload)  # the constructor copies a large payload ~10x slower
            return reply

    def _result_payload(self, env: ev.Envelope, ctxt: Any, result: Any) -> ev.Payload:
        """Answer in the caller's form: typed to a typed caller, JSON to a dict-style one."""
        if isinstance(result, Message):
            if env.args.WhichOneof("body") == "message":
                return ev.pack_message(result)
            return ev.json_payload(ev.message_to_python(result), blobs=env.blob_replies)
        if not self._plain_entities:
            result = self.serializer.serialize_entity(ctxt, result)
        # Long strings of the result as blobs, to a caller that reads them.
        return ev.json_payload(result, blobs=env.blob_replies)

    async def _cast(
        self, env: ev.Envelope, ticket: _Ticket, ctxt: Any, args: tuple[Any, ...],
        kwargs: dict[str, Any], incoming: Incoming,
    ) -> None:
        me = self.identity
        with tracing.server_span(env.headers, me.topic, env.method, env.id, cast=True,
                                 fanout=env.fanout, server=me.server, az=me.az) as span:
            try:
                await self._invoke(ticket, ctxt, args, kwargs, incoming)
            except asyncio.CancelledError:
                log.warning("cast %s.%s cancelled at shutdown", env.target.topic, env.method)
                tracing.mark_failed(span, "CancelledError", "cancelled at shutdown")
            except Exception as err:
                # Nobody hears of a cast's failure but the server's log (oslo semantics).
                log.exception("cast %s.%s failed", env.target.topic, env.method)
                tracing.mark_failed(span, type(err).__name__, str(err))

    def _decode(
        self, env: ev.Envelope, handler: Handler
    ) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        """The context and the endpoint's arguments: (request,) for a typed endpoint, keyword
        arguments for a dict-style one — whichever form the caller sent."""
        raw = env.context
        raw_ctxt = ev.decode_json(raw, "context") if raw and raw != b"{}" else {}
        if not isinstance(raw_ctxt, dict):
            raise InvalidEnvelope("context must be a JSON object")
        ctxt = self.serializer.deserialize_context(raw_ctxt)
        if handler.request_type is not None:
            return ctxt, (ev.payload_to_message(env.args, handler.request_type, "args"),), {}
        payload = env.args
        if payload.WhichOneof("body") == "message":
            args = ev.payload_to_python(payload, "args")
        else:  # JSON, or no arguments at all
            args = ev.payload_value(payload, "args")
            if args is None:  # no arguments at all
                args = {}
        if not isinstance(args, dict):
            raise InvalidEnvelope("args must be a JSON object")
        if self._plain_entities:
            return ctxt, (), args
        return ctxt, (), {k: self.serializer.deserialize_entity(ctxt, v) for k, v in args.items()}

    def _failure(self, err: BaseException) -> ev.Failure:
        return ev.failure_from_exception(
            err, with_traceback=self.send_tracebacks and not isinstance(err, GrpcrpcError)
        )

    async def _invoke(
        self, ticket: _Ticket, ctxt: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
        incoming: Incoming,
    ) -> Any:
        """Run the endpoint with `incoming` as the ambient message: a coroutine on the loop,
        cancelled when its caller's deadline passes; a function in the pool, skipped there if
        the deadline passes while it queues (a thread cannot be stopped: the deadline its
        nested calls inherit is what ends its work)."""
        handler = ticket.handler
        token = set_current_message(incoming)
        try:
            if handler.is_async:
                try:
                    return await self._run_async(handler, ctxt, args, kwargs, incoming)
                finally:
                    self._release(ticket)
            return await self._run_in_pool(ticket, ctxt, args, kwargs, incoming.deadline)
        finally:
            reset_current_message(token)

    @staticmethod
    async def _run_async(handler: Handler, ctxt: Any, args: tuple[Any, ...],
                         kwargs: dict[str, Any], incoming: Incoming) -> Any:
        left = incoming.remaining()
        if left is None:
            return await handler.func(ctxt, *args, **kwargs)
        deadline = asyncio.timeout(left)
        try:
            async with deadline:
                return await handler.func(ctxt, *args, **kwargs)
        except TimeoutError:
            if not deadline.expired():
                raise  # the endpoint's own timeout, not its caller's deadline
            raise _Expired("deadline passed while running") from None

    async def _run_in_pool(self, ticket: _Ticket, ctxt: Any, args: tuple[Any, ...],
                           kwargs: dict[str, Any], deadline: float | None) -> Any:
        handler = ticket.handler
        loop = asyncio.get_running_loop()
        try:
            # The thread runs in a copy of this task's context: the trace and the message being
            # served (its deadline) follow the call into plain-function endpoints.
            cf = self._pool.submit(ticket.peer, contextvars.copy_context().run, _run_sync,
                                   handler.func, ctxt, args, kwargs, deadline)
        except RuntimeError:  # the pool was shut down under us
            self._release(ticket)
            raise
        done: asyncio.Future[Any] = loop.create_future()

        def finished(cf: concurrent.futures.Future[Any]) -> None:  # in the pool's thread
            # Release when the thread is really done, not when an awaiting caller is cancelled:
            # the thread keeps its slot until the function returns.
            try:
                loop.call_soon_threadsafe(self._finished_in_pool, ticket, cf, done)
            except RuntimeError:  # the loop is closed: the server stopped and nobody waits
                log.debug("%s finished after its server stopped; its outcome is dropped",
                          handler.name)

        def abandoned(done: asyncio.Future[Any]) -> None:
            if done.cancelled():
                cf.cancel()  # still queued: it never runs (a running thread is left to finish)

        done.add_done_callback(abandoned)
        cf.add_done_callback(finished)
        return await done

    def _finished_in_pool(self, ticket: _Ticket, cf: concurrent.futures.Future[Any],
                          done: asyncio.Future[Any]) -> None:
        self._release(ticket)
        if done.done():
            return
        if cf.cancelled():
            done.cancel()
        elif (error := cf.exception()) is not None:
            done.set_exception(error)
        else:
            done.set_result(cf.result())

    def _release(self, ticket: _Ticket) -> None:
        self._admission.release(ticket.peer, is_async=ticket.handler.is_async)
        self._busy -= 1
        if self._busy == 0:
            self._idle.set()

    def _encode(self, reply: ev.Reply) -> bytes:
        data = reply.SerializeToString()
        if len(data) > self.limits.max_message_size:
            data = ev.reply_failure(
                reply.id, ev.ErrorCode.SERIALIZATION,
                f"reply of {len(data)} bytes exceeds the limit of "
                f"{self.limits.max_message_size} bytes",
            ).SerializeToString()
        return data

    # -- lifecycle ------------------------------------------------------------------------

    async def drain(self, timeout: float | None) -> bool:
        """Wait until everything admitted has finished; False if `timeout` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        """Cancel what is left (after `drain`) and stop the thread pool."""
        for task in list(self._casts):
            task.cancel()
        await asyncio.gather(*self._casts, return_exceptions=True)
        self._pool.shutdown()

    @property
    def busy(self) -> int:
        return self._busy


def _run_sync(
    func: Callable[..., Any], ctxt: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
    deadline: float | None,
) -> Any:
    if deadline is not None and time.monotonic() > deadline:
        raise _Expired("deadline passed while queued")
    return func(ctxt, *args, **kwargs)
