"""`GrpcDriver`: oslo.messaging's `grpc://` transport — RPC straight between services.

Registered as the `grpc` driver of the `oslo.messaging.drivers` entry point, so a service moves
off RabbitMQ by changing one line:

```ini
[DEFAULT]
transport_url = grpc://etcd1:2379,etcd2:2379,etcd3:2379/?az=nova
```

Calls, casts, directed casts and fanout casts keep oslo's API and meaning; contexts,
serializers and remote exceptions go through oslo's own code. What a broker did is done by
etcd (who is there: servers register under a lease) and by the connection itself (the reply
comes back on the request's HTTP/2 stream). Notifications need a broker: see
`send_notification`.

>>> from oslo_config import cfg
>>> import oslo_messaging
>>> transport = oslo_messaging.get_rpc_transport(                        # doctest: +SKIP
...     cfg.CONF, url="grpc://127.0.0.1:2379/")
>>> client = oslo_messaging.get_rpc_client(                              # doctest: +SKIP
...     transport, oslo_messaging.Target(topic="demo"))
>>> client.call({}, "ping")                                               # doctest: +SKIP
'pong'
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import oslo_messaging
from oslo_messaging._drivers import base
from oslo_messaging._drivers import common as rpc_common
from oslo_serialization import jsonutils

from grpcrpc import exceptions as gx
from grpcrpc.deadline import effective_timeout, remaining_time
from grpcrpc.discovery.base import EMPTY_TABLE, RoutingTable
from grpcrpc.discovery.etcd import DiscoveryUnavailable, EtcdRegistry
from grpcrpc.oslo import options
from grpcrpc.oslo._bridge import Bridge, Mailbox, ThreadWorld, current_world
from grpcrpc.oslo._client import Sender, SyncSender
from grpcrpc.oslo._rabbit import BothListener, RabbitSide
from grpcrpc.oslo._routing import BridgeSender, Presence, Router
from grpcrpc.oslo._wire import RemoteFailure, describe, target_fields
from grpcrpc.oslo.listener import (
    DirectListener,
    GrpcIncomingMessage,
    GrpcListener,
    Handoff,
    start_server,
)

__all__ = ["GrpcDriver", "GrpcDriverError", "NotificationsNotSupported"]

log = logging.getLogger("grpcrpc.oslo")


class GrpcDriverError(base.TransportDriverError):  # type: ignore[misc]
    """The grpc:// transport could not do what was asked (start a server, reach etcd)."""


class NotificationsNotSupported(GrpcDriverError, NotImplementedError):
    """Notifications are stored and forwarded by a broker, which grpc:// does not have."""

    def __init__(self) -> None:
        super().__init__(
            "The grpc:// transport carries RPC only: notifications need a broker. Set "
            "[oslo_messaging_notifications] transport_url = rabbit://... (or, to send none, "
            "[oslo_messaging_notifications] driver = noop).")


class GrpcDriver(base.BaseDriver):  # type: ignore[misc]
    """The oslo.messaging driver for `grpc://` URLs (see the module docstring)."""

    def __init__(self, conf: Any, url: Any, default_exchange: str | None = None,
                 allowed_remote_exmods: list[str] | None = None) -> None:
        raw_conf = conf
        conf = options.register(conf, url)
        super().__init__(conf, url, default_exchange, allowed_remote_exmods)
        try:
            self._settings = options.Settings.from_conf(conf, url, default_exchange)
        except (ValueError, OSError) as err:
            raise GrpcDriverError(f"invalid grpc:// transport settings: {err}") from None
        self._proc: _Process | None = None
        self._lock = threading.Lock()  # never held while waiting
        self._closed = False
        # Bridge mode (docs/oslo.md, "Moving a running cloud"): oslo's rabbit driver beside.
        self._rabbit: RabbitSide | None = None
        self._presence = Presence()
        self._bridge_sender: BridgeSender | None = None
        if self._settings.rabbit_url:
            self._rabbit = RabbitSide(raw_conf, self._settings.rabbit_url,
                                      self._allowed_remote_exmods)
            self._bridge_sender = BridgeSender(
                router=Router(own_az=self._settings.az, fallback_azs=self._settings.fallback_azs,
                              restart_wait=self._settings.restart_wait),
                rabbit=self._rabbit, table=self._table, presence=self._presence,
                grpc_send=self._send_grpc_now, default_exchange=default_exchange or "openstack",
                cast_timeout=self._settings.cast_timeout)

    def _process(self) -> _Process:
        """This process's loop, client and servers, made on first use. A child forked from a
        process that used the transport starts afresh: threads do not survive a fork."""
        if self._closed:
            raise GrpcDriverError("this transport was cleaned up")
        proc = self._proc
        if proc is None or proc.pid != os.getpid():
            with self._lock:
                proc = self._proc
                if proc is None or proc.pid != os.getpid():
                    proc = self._proc = _Process(self._settings)
        return proc

    # -- RPC ------------------------------------------------------------------------------

    def send(self, target: Any, ctxt: Any, message: dict[str, Any], wait_for_reply: bool | None = None,
             timeout: float | None = None, call_monitor_timeout: float | None = None,
             retry: int | None = None, transport_options: Any = None) -> Any:
        """A call (`wait_for_reply`) returns the result or raises what the endpoint raised;
        a cast returns once a server accepted it; a fanout once it is on its way to every
        server (who did not get it is logged when all have answered).

        `call_monitor_timeout` needs no heartbeat messages here: the caller's HTTP/2
        connection to the server is pinged every `keepalive_interval`, so a dead server or a
        partition fails the call within about that, and `timeout` bounds the rest.

        `timeout` is the call's deadline, and it is inherited: a call or cast made while an
        endpoint serves a message waits at most what that message's caller has left (and
        fails at once with `MessagingTimeout`, unsent, when nothing is left).
        """
        if self._bridge_sender is not None:
            return self._bridge_sender.send(target, ctxt, message, wait_for_reply, timeout,
                                            call_monitor_timeout, retry, transport_options)
        call = bool(wait_for_reply)
        budget = timeout if call else self._settings.cast_timeout
        return self._send_grpc(target, ctxt, message, call, budget, retry, transport_options)

    def _send_grpc_now(self, target: Any, ctxt: Any, message: dict[str, Any], call: bool,
                       budget: float | None, retry: int | None, transport_options: Any) -> Any:
        """Bridge mode's gRPC path: `NoEndpoints` at once when no server is registered (the
        router then decides again), instead of waiting for one."""
        return self._send_grpc(target, ctxt, message, call, budget, retry, transport_options,
                               wait_for_server=False)

    def _table(self) -> RoutingTable:
        try:
            return self._process().routing_table(self._presence)
        except (DiscoveryUnavailable, gx.MessagingTimeout) as err:
            # etcd unreachable before the first listing: nothing is known to be on gRPC, and
            # RabbitMQ still reaches whoever listens there (a later send tries etcd again).
            log.warning("bridge mode: etcd unreachable (%s): sending over RabbitMQ", err)
            return EMPTY_TABLE

    def _send_grpc(self, target: Any, ctxt: Any, message: dict[str, Any], call: bool,
                   budget: float | None, retry: int | None, transport_options: Any,
                   wait_for_server: bool = True) -> Any:
        proc = self._process()
        at_least_once = bool(getattr(transport_options, "at_least_once", False))
        fields = target_fields(target, message, self._default_exchange)
        fail_at_once = at_least_once or not wait_for_server
        args = message.get("args") or {}
        try:
            # Read here, in the caller's (green) thread: under eventlet the send runs on the
            # driver's loop, where the endpoint's ambient message is not.
            budget = effective_timeout(budget, remaining_time(),
                                       f"{describe(target)}.{message['method']}")
            if proc.sync_sender is not None:  # plain threads: send from this one
                result = proc.sync_sender.send(fields, ctxt, message["method"], args, call=call,
                                               timeout=budget, retry=retry,
                                               at_least_once=fail_at_once)
            else:
                result = proc.bridge.run(proc.sender.send(
                    fields, ctxt, message["method"], args, call=call, timeout=budget,
                    retry=retry, at_least_once=fail_at_once))
        except RemoteFailure as failure:
            raise rpc_common.deserialize_remote_exception(
                jsonutils.dumps(failure.data), self._allowed_remote_exmods) from None
        except gx.NoEndpoints as err:
            if not wait_for_server:
                raise
            raise self._oslo_error(err, target, message, call, budget, at_least_once) from None
        except gx.GrpcrpcError as err:
            raise self._oslo_error(err, target, message, call, budget, at_least_once) from None
        if call:
            return result
        return None

    def _oslo_error(self, err: gx.GrpcrpcError, target: Any, message: dict[str, Any],
                    call: bool, budget: float | None, at_least_once: bool) -> Exception:
        """The oslo.messaging exception a caller of the rabbit driver would have seen."""
        what = f"{describe(target)}.{message.get('method')}"
        within = f" within {budget:g}s" if budget else ""
        error: Exception
        if isinstance(err, gx.NoEndpoints):
            if at_least_once:
                error = oslo_messaging.MessageUndeliverable(
                    err, target.exchange or self._default_exchange, describe(target), message)
            elif call:
                error = oslo_messaging.MessagingTimeout(f"{what}: no server answered{within} ({err})")
            else:
                error = oslo_messaging.MessageDeliveryFailure(
                    f"{what}: no server accepted the cast{within} ({err})")
        elif isinstance(err, gx.MessagingTimeout):
            error = oslo_messaging.MessagingTimeout(f"{what}: {err}")
        elif isinstance(err, gx.Overloaded | gx.DeliveryError) and call:
            # As with a broker, a caller cannot know whether a call that got no answer ran.
            error = oslo_messaging.MessagingTimeout(f"{what}: no reply ({err})")
        elif isinstance(err, gx.RemoteError):
            error = oslo_messaging.RemoteError(err.exc_type, err.value, "\n".join(err.traceback))
        elif isinstance(err, gx.NoSuchMethod | gx.UnsupportedVersion):
            error = oslo_messaging.RemoteError(type(err).__name__, str(err), "")
        elif isinstance(err, DiscoveryUnavailable):
            error = oslo_messaging.MessageDeliveryFailure(f"{what}: etcd unreachable ({err})")
        else:
            error = oslo_messaging.MessageDeliveryFailure(f"{what}: {type(err).__name__}: {err}")
        return error

    def listen(self, target: Any, batch_size: int, batch_timeout: float | None) -> Any:
        """Serve `target` (topic and server): bind, announce in etcd, and return the listener
        that hands oslo's RPC server its messages."""
        proc = self._process()
        # Bridge mode: consume RabbitMQ before announcing the gRPC endpoint (see BothListener).
        rabbit = (self._rabbit.listen(target, batch_size, batch_timeout)
                  if self._rabbit is not None else None)
        # Plain threads: the loop hands messages to oslo's executor itself (no poll thread);
        # under eventlet the executor takes them only from a green thread, which polls.
        direct = isinstance(proc.world, ThreadWorld) and batch_size == 1
        box: Handoff | Mailbox[GrpcIncomingMessage] = (
            Handoff() if direct else Mailbox(proc.world))
        coro = start_server(self._settings, target, self._default_exchange or "openstack",
                            proc.registry(), box, proc.bridge.inbox)
        try:
            server, sink = proc.bridge.run(coro)
        except gx.GrpcrpcError as err:
            if rabbit is not None:
                rabbit.cleanup()
            raise GrpcDriverError(f"cannot serve {describe(target)}: {err}") from None
        listener: GrpcListener | DirectListener
        adapter: Any
        if isinstance(box, Handoff):
            listener = adapter = DirectListener(proc.bridge, server, sink,
                                                self._settings.stop_grace, batch_size,
                                                batch_timeout)
        else:
            listener = GrpcListener(proc.bridge, server, sink, self._settings.stop_grace)
            adapter = base.PollStyleListenerAdapter(listener, batch_size, batch_timeout)
        with self._lock:
            proc.listeners.append(listener)
        return adapter if rabbit is None else BothListener(rabbit, adapter)

    # -- notifications: not carried -------------------------------------------------------

    def send_notification(self, target: Any, ctxt: Any, message: Any, version: Any,
                          retry: int | None = None) -> None:
        if self._rabbit is not None:  # bridge mode: where they went before
            self._rabbit.send_notification(target, ctxt, message, version, retry=retry)
            return
        raise NotificationsNotSupported()

    def listen_for_notifications(self, targets_and_priorities: Any, pool: Any, batch_size: int,
                                 batch_timeout: float | None) -> Any:
        if self._rabbit is not None:
            return self._rabbit.listen_for_notifications(targets_and_priorities, pool,
                                                         batch_size, batch_timeout)
        raise NotificationsNotSupported()

    # -- lifecycle ------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Stop this transport's servers (if their owners did not), close its connections,
        revoke its etcd lease (its endpoints disappear at once) and stop its loop."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            proc, self._proc = self._proc, None
        if proc is not None and proc.pid == os.getpid():
            proc.close()
        if self._rabbit is not None:
            self._rabbit.cleanup()


class _Process:
    """What a transport holds in one process: the loop, the client, the servers and their
    etcd lease (one per transport, so usually one per process, shared by its servers)."""

    def __init__(self, settings: options.Settings) -> None:
        self.pid = os.getpid()
        self.settings = settings
        self.world = current_world()
        self.bridge = Bridge(self.world, "transport")
        # Plain threads block in gRPC's sync transport themselves; green threads must not (the
        # hub would stall), so under eventlet sends run on the loop and green threads wait.
        self.sync_sender = SyncSender(settings) if isinstance(self.world, ThreadWorld) else None
        self.sender = Sender(settings)
        self.listeners: list[GrpcListener | DirectListener] = []
        self._registry: EtcdRegistry | None = None
        self._lock = threading.Lock()
        self._watched: Presence | None = None

    def routing_table(self, presence: Presence) -> RoutingTable:
        """The client's routing table (connecting to etcd on first use), with `presence`
        fed every table from then on (bridge mode)."""
        if self.sync_sender is not None:
            resolver = self.sync_sender.resolver()
        else:
            resolver = self.bridge.run(self.sender.resolver())
        if self._watched is None:
            with self._lock:
                if self._watched is None:
                    resolver.subscribe(presence.update)
                    presence.update(resolver.table)
                    self._watched = presence
        return resolver.table

    def registry(self) -> EtcdRegistry:
        with self._lock:
            if self._registry is None:
                self._registry = EtcdRegistry(self.settings.etcd, ttl=self.settings.lease_ttl)
            return self._registry

    def close(self) -> None:
        with self._lock:
            listeners, self.listeners = self.listeners, []
            registry, self._registry = self._registry, None
        for listener in listeners:
            listener.cleanup()
        try:
            if self.sync_sender is not None:
                self.sync_sender.close()
            self.bridge.run(self.sender.close(), timeout=30)
        except Exception:
            log.warning("closing the grpc:// client failed", exc_info=True)
        if registry is not None:
            self.bridge.blocking(registry.close)
        self.bridge.close()
