"""The server side: a grpcrpc `RPCServer` whose one endpoint hands every message to oslo.

```
envelope ─► grpcrpc servicer ─► CatchAllDispatcher ─► Sink.deliver (a coroutine on the loop)
                                                          │ GrpcIncomingMessage to oslo
oslo's executor ◄── plain threads: the loop submits it (`Handoff`, `DirectListener`)
                    eventlet: a green poll thread reads the `Mailbox` (`GrpcListener.poll`)
oslo's executor: dispatch to the endpoint, then message.reply(result | failure)
                                                          │ back to the loop (`LoopInbox`)
grpcrpc servicer ◄── Sink.deliver returns / raises ◄───────┘ and answers the caller
```

With plain threads (oslo's `threading` executor) the loop hands each message to oslo's executor
itself, as a driver may (`Listener.start(on_incoming_callback)`): oslo's poll-style adapter
would add a poll thread between the two, one more cold thread wake-up per message on the
server's core. Replies come back through a `LoopInbox`, which wakes the loop once for all the
replies that arrive while it is busy. Under eventlet the executor submits green threads, which
only a green thread may do, so there oslo's adapter polls the mailbox.

A call's gRPC request stays open until oslo replies, so the reply goes back on the connection the
request came in on; there is no reply queue. oslo's `msg_id` is the envelope id a trace shows, and
the envelope's deadline follows the message into oslo's executor: `acknowledge()`, which oslo
calls in the thread (or green thread) that then runs the endpoint, makes the message ambient
there, so the endpoint's own calls and casts inherit its caller's deadline
(`grpcrpc.remaining_time()`). A cast is answered "accepted" when it is queued,
and its result is dropped, as oslo's casts are. The listener is a `PollStyleListener`, so
oslo's threading and eventlet executors both drive it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from oslo_messaging._drivers import base
from oslo_messaging._drivers import common as rpc_common

from grpcrpc import envelope as ev
from grpcrpc.deadline import Incoming, current_message, set_current_message
from grpcrpc.discovery.base import Registry
from grpcrpc.exceptions import Overloaded
from grpcrpc.limits import Limits
from grpcrpc.oslo._bridge import Bridge, LoopInbox, Mailbox, Pending
from grpcrpc.oslo._wire import CatchAllDispatcher, PrimitiveSerializer, oslo_message, remote_exception
from grpcrpc.oslo.options import Settings
from grpcrpc.server import RPCServer
from grpcrpc.target import Target

__all__ = ["DirectListener", "GrpcIncomingMessage", "GrpcListener", "Handoff", "start_server"]

log = logging.getLogger("grpcrpc.oslo")

_Outcome = tuple[str, Any]  # ("result", value) | ("failure", (data, traceback)) | ("requeue", None)


class GrpcIncomingMessage(base.RpcIncomingMessage):  # type: ignore[misc]
    """One request, as oslo's RPC server sees it. `reply()` completes the caller's gRPC call.

    `acknowledge()` has nothing to send: the server already holds the call (or has told the
    caster it was accepted). oslo calls it in the thread that then dispatches the message, so it
    makes the message ambient there (its id and its caller's deadline, which nested calls
    inherit) until `reply()`. `requeue()` hands a call back unanswered as "overloaded", so the
    caller sends it to another server. `heartbeat()` has nothing to do either: the open HTTP/2
    connection, pinged every `keepalive_interval`, is what tells the caller the server lives.
    """

    def __init__(self, ctxt: dict[str, Any], message: dict[str, Any], incoming: Incoming,
                 settle: Callable[[_Outcome], None]) -> None:
        super().__init__(ctxt, message, incoming.id)
        self.incoming = incoming
        self._settle = settle

    def acknowledge(self) -> None:
        set_current_message(self.incoming)

    def _done(self) -> None:
        # oslo's worker thread goes on to other messages: this one is no longer ambient there.
        # (Set, not reset: oslo may reply from a context other than the one it acknowledged in.)
        if current_message() is self.incoming:
            set_current_message(None)

    def requeue(self) -> None:
        self._done()
        self._settle(("requeue", None))

    def heartbeat(self) -> None:
        pass

    def reply(self, reply: Any = None, failure: Any = None) -> None:
        self._done()
        if failure:
            # oslo's own serialisation, as the rabbit driver does; the traceback object goes
            # along so that the caller sees the real frames.
            data = json.loads(rpc_common.serialize_remote_exception(failure))
            self._settle(("failure", (data, failure[2])))
        else:
            self._settle(("result", reply))


class _Box(Protocol):
    """Where the sink puts a message for oslo: a `Mailbox` (polled) or a `Handoff`."""

    def put(self, item: GrpcIncomingMessage) -> bool: ...

    def stop(self) -> None: ...

    def close(self) -> list[GrpcIncomingMessage]: ...


class Sink:
    """The driver's single endpoint: hands every message to oslo and awaits its reply."""

    def __init__(self, box: _Box, inbox: LoopInbox, name: str) -> None:
        self.box = box
        self._inbox = inbox
        self._name = name
        self._new_id = ev.id_factory()  # for a message not dispatched by grpcrpc's server
        self._held = 0  # messages in oslo's hands, not answered yet (loop thread only)

    async def hold_all_admitted(self, server: RPCServer, timeout: float) -> bool:
        """Once `server` refuses new messages: wait until every message it admitted before is
        in oslo's hands (False if `timeout` passed first). Only then may the box close: a cast
        is answered "accepted" when it is admitted, so one the box refused would be lost."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not server.stopping or server.busy > self._held:
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.001)
        return True

    async def deliver(self, namespace: str | None, version: str | None, method: str,
                      ctxt: dict[str, Any], **args: Any) -> Any:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[_Outcome] = loop.create_future()
        post = self._inbox.post

        def settle(outcome: _Outcome) -> None:  # from oslo's threads, once
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                post(_resolve, done, outcome)

        # The envelope being dispatched (grpcrpc's servicer makes it ambient around us).
        served = current_message() or Incoming(self._new_id(), method, cast=False, deadline=None)
        incoming = GrpcIncomingMessage(ctxt, oslo_message(namespace, version, method, args),
                                       served, settle)
        if not self.box.put(incoming):
            # Not dispatched, so the caller may safely send it to another server.
            raise Overloaded(f"{self._name} is stopping")
        self._held += 1
        try:
            kind, value = await done
        finally:
            self._held -= 1
        if kind == "result":
            return value
        if kind == "failure":
            data, tb = value
            raise remote_exception(data, tb)
        raise Overloaded(f"{self._name} handed the message back")


def _resolve(done: asyncio.Future[_Outcome], outcome: _Outcome) -> None:
    if not done.done():  # cancelled meanwhile (the caller gave up), or replied twice
        done.set_result(outcome)


async def start_server(settings: Settings, target: Any, exchange: str,
                       registry: Registry | None, box: _Box, inbox: LoopInbox
                       ) -> tuple[RPCServer, Sink]:
    """Start serving `target` (an oslo Target with topic and server) on the running loop;
    messages go into `box`, oslo's replies come back through `inbox`."""
    sink = Sink(box, inbox, f"{target.topic}.{target.server}")
    server = RPCServer(
        Target(topic=target.topic, server=target.server, exchange=target.exchange or exchange),
        dispatcher=CatchAllDispatcher(sink),
        registry=registry,
        host=settings.bind_host,
        port_range=settings.port_range,
        advertise_host=settings.advertise_host,
        az=settings.az,
        # No thread pool: the sink is a coroutine; oslo's executor does the work.
        limits=Limits(threads=1, queue=0, coroutines=settings.max_in_flight,
                      stream_in_flight=settings.max_in_flight,
                      max_message_size=settings.max_message_size),
        tls=settings.server_tls,
        auth=settings.server_auth,
        serializer=PrimitiveSerializer(),
        grace=settings.stop_grace,
        rabbit=settings.rabbit_url is not None,  # bridge mode: it consumes RabbitMQ too
    )
    await server.start()
    return server, sink


# How long a stopping listener waits for the messages its server admitted to reach oslo: they
# are on their way through the loop, which takes milliseconds unless the process is starved.
_HOLD_ADMITTED_S = 5.0


class _Serving:
    """The gRPC server behind a listener, stopped as oslo stops a listener (in two steps)."""

    def __init__(self, bridge: Bridge, server: RPCServer, sink: Sink, grace: float) -> None:
        self.server = server
        self._bridge = bridge
        self._sink = sink
        self._box = sink.box
        self._grace = grace
        self._stopping: Pending[None] | None = None

    def stop(self) -> None:
        # First the server refuses new messages (callers send them elsewhere); what it
        # admitted before goes to oslo; only then does the box close.
        try:
            if self._stopping is None:
                self._stopping = self._bridge.submit(self.server.stop(self._grace))
                self._hold_admitted()
        finally:
            self._box.stop()

    def _hold_admitted(self) -> None:
        held = self._bridge.submit(self._sink.hold_all_admitted(self.server, _HOLD_ADMITTED_S))
        try:
            held_all = held.wait(_HOLD_ADMITTED_S + 1.0)
        except TimeoutError:
            held_all = False
        if not held_all:
            log.warning("gRPC server %s: messages admitted before it stopped did not reach oslo "
                        "within %.0fs", self.server.address, _HOLD_ADMITTED_S)

    def cleanup(self) -> None:
        self.stop()
        assert self._stopping is not None
        try:
            self._stopping.wait(self._grace + 10.0)
        except TimeoutError:
            log.warning("gRPC server %s did not stop within %.0fs", self.server.address,
                        self._grace)
        except Exception:
            log.exception("stopping gRPC server %s failed", self.server.address)
        for incoming in self._box.close():
            incoming.requeue()


class GrpcListener(base.PollStyleListener):  # type: ignore[misc]
    """What oslo's RPC server polls (under eventlet). Stopping is in two steps, as oslo does it:

    - `stop()`: withdraw from etcd and refuse new messages (callers go elsewhere); `poll()`
      still hands out what was accepted, then returns nothing.
    - `cleanup()` (after oslo's executor finished): wait for the gRPC server to close; any
      message nobody polled is handed back to its caller as not dispatched.
    """

    def __init__(self, bridge: Bridge, server: RPCServer, sink: Sink, grace: float) -> None:
        super().__init__()
        self.server = server
        assert isinstance(sink.box, Mailbox)
        self._mailbox: Mailbox[GrpcIncomingMessage] = sink.box
        self._serving = _Serving(bridge, server, sink, grace)

    @base.batch_poll_helper  # type: ignore[untyped-decorator]
    def poll(self, timeout: float | None = None) -> GrpcIncomingMessage | None:
        return self._mailbox.get(timeout)

    @property
    def address(self) -> str:
        return self.server.address

    def stop(self) -> None:
        self._serving.stop()

    def cleanup(self) -> None:
        self._serving.cleanup()


class Handoff:
    """Messages from the loop thread straight into oslo's `on_incoming_callback` (which, with
    oslo's `threading` executor, only queues the message for the executor's threads).

    Messages that arrive before oslo starts the listener wait here and go first; after `stop()`
    the callback is never called again (oslo's rule) and `put` says False, so the message is
    handed back to its caller, who sends it to another server.
    """

    def __init__(self) -> None:
        # Held while the callback queues a message, so that `stop()` returning means no
        # callback is running or will run.
        self._lock = threading.Lock()
        self._callback: Callable[[list[GrpcIncomingMessage]], object] | None = None
        self._early: collections.deque[GrpcIncomingMessage] = collections.deque()
        self._stopping = False

    def start(self, callback: Callable[[list[GrpcIncomingMessage]], object]) -> None:
        with self._lock:
            if self._stopping:
                return
            while self._early:
                incoming = self._early.popleft()
                if not self._hand(callback, incoming):
                    incoming.requeue()
            self._callback = callback

    def put(self, incoming: GrpcIncomingMessage) -> bool:
        with self._lock:
            if self._stopping:
                return False
            callback = self._callback
            if callback is None:
                self._early.append(incoming)
                return True
            return self._hand(callback, incoming)

    @staticmethod
    def _hand(callback: Callable[[list[GrpcIncomingMessage]], object],
              incoming: GrpcIncomingMessage) -> bool:
        try:
            callback([incoming])
        except Exception as err:  # oslo's executor refused it (shut down): it never ran
            log.warning("oslo's executor refused message %s (%s: %s); handed back to its "
                        "caller", incoming.msg_id, type(err).__name__, err)
            return False
        return True

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._callback = None

    def close(self) -> list[GrpcIncomingMessage]:
        """Stop; the messages oslo never got (the caller hands them back)."""
        with self._lock:
            self._stopping = True
            self._callback = None
            left = list(self._early)
            self._early.clear()
        return left


class DirectListener(base.Listener):  # type: ignore[misc]
    """The listener for oslo's `threading` executor: the driver's loop hands each message to
    oslo itself (`Handoff`), with no poll thread in between. Stops as `GrpcListener` does."""

    def __init__(self, bridge: Bridge, server: RPCServer, sink: Sink, grace: float,
                 batch_size: int, batch_timeout: float | None) -> None:
        super().__init__(batch_size, batch_timeout)
        self.server = server
        assert isinstance(sink.box, Handoff)
        self._handoff = sink.box
        self._serving = _Serving(bridge, server, sink, grace)

    @property
    def _poll_style_listener(self) -> DirectListener:
        # Where tools and tests read the server's address, as from a poll-style adapter.
        return self

    @property
    def address(self) -> str:
        return self.server.address

    def start(self, on_incoming_callback: Callable[[list[GrpcIncomingMessage]], object]
              ) -> None:
        super().start(on_incoming_callback)
        self._handoff.start(on_incoming_callback)

    def stop(self) -> None:
        self._serving.stop()
        super().stop()

    def cleanup(self) -> None:
        self._serving.cleanup()
