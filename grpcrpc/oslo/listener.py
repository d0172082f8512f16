"""The server side: a grpcrpc `RPCServer` whose one endpoint hands every message to oslo.

```
envelope ─► grpcrpc servicer ─► CatchAllDispatcher ─► Sink.deliver (a coroutine on the loop)
                                                          │ GrpcIncomingMessage into the Mailbox
oslo's poll thread ◄── GrpcListener.poll() ◄──────────────┘
oslo's executor: dispatch to the endpoint, then message.reply(result | failure)
                                                          │ back to the loop (call_soon_threadsafe)
grpcrpc servicer ◄── Sink.deliver returns / raises ◄───────┘ and answers the caller
```

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
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from oslo_messaging._drivers import base
from oslo_messaging._drivers import common as rpc_common

from grpcrpc import envelope as ev
from grpcrpc.deadline import Incoming, current_message, set_current_message
from grpcrpc.discovery.base import Registry
from grpcrpc.exceptions import Overloaded
from grpcrpc.limits import Limits
from grpcrpc.oslo._bridge import Bridge, Mailbox, Pending
from grpcrpc.oslo._wire import CatchAllDispatcher, PrimitiveSerializer, oslo_message, remote_exception
from grpcrpc.oslo.options import Settings
from grpcrpc.server import RPCServer
from grpcrpc.target import Target

__all__ = ["GrpcIncomingMessage", "GrpcListener", "start_server"]

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


class Sink:
    """The driver's single endpoint: queues every message for oslo and awaits its reply."""

    def __init__(self, mailbox: Mailbox[GrpcIncomingMessage], name: str) -> None:
        self._mailbox = mailbox
        self._name = name
        self._new_id = ev.id_factory()  # for a message not dispatched by grpcrpc's server

    async def deliver(self, namespace: str | None, version: str | None, method: str,
                      ctxt: dict[str, Any], **args: Any) -> Any:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[_Outcome] = loop.create_future()

        def settle(outcome: _Outcome) -> None:  # from oslo's threads, once
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                loop.call_soon_threadsafe(_resolve, done, outcome)

        # The envelope being dispatched (grpcrpc's servicer makes it ambient around us).
        served = current_message() or Incoming(self._new_id(), method, cast=False, deadline=None)
        incoming = GrpcIncomingMessage(ctxt, oslo_message(namespace, version, method, args),
                                       served, settle)
        if not self._mailbox.put(incoming):
            # Not dispatched, so the caller may safely send it to another server.
            raise Overloaded(f"{self._name} is stopping")
        kind, value = await done
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
                       registry: Registry | None, mailbox: Mailbox[GrpcIncomingMessage]
                       ) -> RPCServer:
    """Start serving `target` (an oslo Target with topic and server) on the running loop."""
    name = f"{target.topic}.{target.server}"
    sink = Sink(mailbox, name)
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
    return server


class GrpcListener(base.PollStyleListener):  # type: ignore[misc]
    """What oslo's RPC server polls. Stopping is in two steps, as oslo does it:

    - `stop()`: withdraw from etcd and refuse new messages (callers go elsewhere); `poll()`
      still hands out what was accepted, then returns nothing.
    - `cleanup()` (after oslo's executor finished): wait for the gRPC server to close; any
      message nobody polled is handed back to its caller as not dispatched.
    """

    def __init__(self, bridge: Bridge, server: RPCServer,
                 mailbox: Mailbox[GrpcIncomingMessage], grace: float) -> None:
        super().__init__()
        self.server = server
        self._bridge = bridge
        self._mailbox = mailbox
        self._grace = grace
        self._stopping: Pending[None] | None = None

    @base.batch_poll_helper  # type: ignore[untyped-decorator]
    def poll(self, timeout: float | None = None) -> GrpcIncomingMessage | None:
        return self._mailbox.get(timeout)

    @property
    def address(self) -> str:
        return self.server.address

    def stop(self) -> None:
        self._mailbox.stop()
        if self._stopping is None:
            self._stopping = self._bridge.submit(self.server.stop(self._grace))

    def cleanup(self) -> None:
        self.stop()
        assert self._stopping is not None
        try:
            self._stopping.wait(self._grace + 10.0)
        except TimeoutError:
            log.warning("gRPC server %s did not stop within %.0fs", self.address, self._grace)
        except Exception:
            log.exception("stopping gRPC server %s failed", self.address)
        for incoming in self._mailbox.close():
            incoming.requeue()
