"""Bridge mode's RabbitMQ side: oslo.messaging's own rabbit driver, held by a grpc:// transport.

A process in bridge mode (`[oslo_messaging_grpc] rabbit_transport_url = rabbit://...`) keeps
the transport it had before the migration, made by `oslo_messaging.get_rpc_transport` from
that URL, and uses its driver as oslo's RPC server and client would: `listen` (the topic,
topic.server and fanout queues, consumed as before), `send` (calls with their reply queue,
casts, fanouts), notifications. So whatever arrives over RabbitMQ is answered over RabbitMQ,
with the rabbit driver's own timeouts, retries and remote-exception handling.

`BothListener` is an RPC server's listener in bridge mode: the RabbitMQ one and the gRPC one
feed the same oslo executor. `QueueProbe` asks RabbitMQ how many consumers and messages a
queue has (a passive `queue.declare`: no management plugin needed); the router uses it while a
target restarts, and `grpcrpc doctor --rabbit-url` to tell when a migration step is complete.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import oslo_messaging
from oslo_config import cfg
from oslo_messaging._drivers import base

__all__ = ["BothListener", "QueueProbe", "QueueStats", "RabbitSide"]

log = logging.getLogger("grpcrpc.oslo")

QueueStats = tuple[int, int]  # (messages ready, consumers)
_PROBE_CACHE = 0.2  # seconds a probe's answer is reused (many senders wait on one target)


class RabbitSide:
    """The rabbit transport of a bridge-mode process (created lazily by oslo: no connection
    is opened before the first send or listen)."""

    def __init__(self, conf: Any, url: str, allowed_remote_exmods: list[str] | None) -> None:
        self.url = url
        self.transport = oslo_messaging.get_rpc_transport(
            conf, url=url, allowed_remote_exmods=allowed_remote_exmods)
        # The driver itself, not the Transport wrapper: the grpc:// driver is already inside
        # oslo's Transport, which has checked the target and built the message.
        self.driver: Any = self.transport._driver
        self.probe = QueueProbe(url, _ssl_options(conf))

    def send(self, target: Any, ctxt: Any, message: dict[str, Any], wait_for_reply: bool,
             timeout: float | None, call_monitor_timeout: float | None, retry: int | None,
             transport_options: Any) -> Any:
        return self.driver.send(target, ctxt, message, wait_for_reply=wait_for_reply,
                                timeout=timeout, call_monitor_timeout=call_monitor_timeout,
                                retry=retry, transport_options=transport_options)

    def listen(self, target: Any, batch_size: int, batch_timeout: float | None) -> Any:
        return self.driver.listen(target, batch_size, batch_timeout)

    def send_notification(self, target: Any, ctxt: Any, message: Any, version: Any,
                          retry: int | None = None) -> Any:
        return self.driver.send_notification(target, ctxt, message, version, retry=retry)

    def listen_for_notifications(self, targets_and_priorities: Any, pool: Any, batch_size: int,
                                 batch_timeout: float | None) -> Any:
        return self.driver.listen_for_notifications(targets_and_priorities, pool, batch_size,
                                                    batch_timeout)

    def cleanup(self) -> None:
        self.probe.close()
        self.transport.cleanup()


class BothListener(base.Listener):  # type: ignore[misc]
    """An RPC server's listener in bridge mode: its RabbitMQ queues and its gRPC endpoint.

    Ordering is what keeps messages from being stranded: the RabbitMQ consumers exist before
    the gRPC endpoint is announced (the driver listens on RabbitMQ first), and stop before it is
    withdrawn, so that while a bridge server restarts a bridge sender never finds it
    unregistered yet consuming RabbitMQ (it would put a message in a queue that a grpc-only
    successor never reads).
    """

    def __init__(self, rabbit: Any, grpc: Any) -> None:
        super().__init__(grpc.batch_size, grpc.batch_timeout)
        self.rabbit = rabbit
        self.grpc = grpc

    @property
    def _poll_style_listener(self) -> Any:
        # The gRPC listener, where tools and tests read the server's address (as they do from
        # a pure grpc:// listener's adapter).
        return self.grpc._poll_style_listener

    def start(self, on_incoming_callback: Any) -> None:
        super().start(on_incoming_callback)
        self.rabbit.start(on_incoming_callback)
        self.grpc.start(on_incoming_callback)

    def stop(self) -> None:
        self.rabbit.stop()
        _cancel_consumers(self.rabbit)
        self.grpc.stop()
        super().stop()

    def cleanup(self) -> None:
        try:
            self.rabbit.cleanup()
        finally:
            self.grpc.cleanup()


def _cancel_consumers(adapter: Any) -> None:
    """Cancel a stopped rabbit listener's consumers at the broker now.

    oslo's rabbit listener, once stopped, only stops reading: its consumers stay registered
    until its connection closes (after the executor drained), and RabbitMQ keeps handing them
    messages meanwhile, which go back to the queue at the close. A bridge sender seeing the
    server gone from etcd but its queue still consumed would send there, and a grpc-only
    successor would never read it. The poll thread has ended, so the connection is idle; RPC
    requests were acknowledged when received, so nothing else needs it any more.
    """
    conn = getattr(getattr(adapter, "_poll_style_listener", None), "conn", None)
    reset = getattr(conn, "reset", None)
    if reset is None:
        return
    try:
        reset()
    except Exception as err:  # the broker is gone: its consumers went with the connection
        log.warning("could not cancel RabbitMQ consumers of a stopping server: %s", err)


def _ssl_options(conf: Any) -> Any:
    try:
        group = conf.oslo_messaging_rabbit
        if not group.ssl:
            return False
        ca = group.ssl_ca_file
    except (cfg.NoSuchOptError, AttributeError):
        return False
    return {"ca_certs": ca} if ca else True


class QueueProbe:
    """`stats(queue)` → (messages, consumers), or None when the queue does not exist; through
    a passive `queue.declare` on a connection of its own (thread-safe, cached briefly)."""

    def __init__(self, url: str, ssl: Any = False, timeout: float = 5.0) -> None:
        parsed = oslo_messaging.TransportURL.parse(cfg.ConfigOpts(), url)
        self._hosts = [h for h in parsed.hosts if h.hostname] or [_Host()]
        self._vhost = parsed.virtual_host or "/"
        self._ssl = ssl
        self._timeout = timeout
        self._lock = threading.Lock()
        self._conn: Any = None
        self._cache: dict[str, tuple[float, QueueStats | None]] = {}

    def _connection(self) -> Any:
        from kombu.connection import Connection

        if self._conn is None:
            first, *rest = self._hosts
            alternates = [_amqp_url(h, self._vhost) for h in rest]
            self._conn = Connection(  # type: ignore[no-untyped-call]
                hostname=first.hostname, port=first.port or 5672, userid=first.username or "guest",
                password=first.password or "guest", virtual_host=self._vhost, ssl=self._ssl,
                connect_timeout=self._timeout, alternates=alternates)
        return self._conn

    def _channel(self) -> Any:
        """A channel on the shared connection; a connection that cannot open one is dropped
        (the next call connects again). The caller holds the lock."""
        try:
            return self._connection().channel()
        except Exception:
            self._reset()
            raise

    def stats(self, queue: str) -> QueueStats | None:
        """`ConnectionError`-like kombu/amqp errors propagate when RabbitMQ is unreachable."""
        import amqp  # type: ignore[import-untyped]

        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(queue)
            if cached is not None and now - cached[0] < _PROBE_CACHE:
                return cached[1]
            channel = self._channel()
            try:
                ok = channel.queue_declare(queue=queue, passive=True)
                result: QueueStats | None = (int(ok.message_count), int(ok.consumer_count))
            except amqp.exceptions.NotFound:
                result = None  # the broker closed the channel with it
            except Exception:
                self._reset()
                raise
            else:
                _close(channel)
            if len(self._cache) > 1024:
                self._cache.clear()
            self._cache[queue] = (now, result)
            return result

    def exchange_exists(self, name: str) -> bool:
        """Whether the exchange exists (oslo's fanout exchanges vanish with their last queue)."""
        import amqp

        with self._lock:
            channel = self._channel()
            try:
                channel.exchange_declare(exchange=name, type="fanout", passive=True)
            except amqp.exceptions.NotFound:
                return False
            except Exception:
                self._reset()
                raise
            _close(channel)
            return True

    def consumers(self, queue: str) -> int:
        """How many consumers `queue` has (0 when it does not exist)."""
        stats = self.stats(queue)
        return 0 if stats is None else stats[1]

    def _reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            _close(conn)

    def close(self) -> None:
        with self._lock:
            self._reset()


class _Host:
    hostname = "localhost"
    port = 5672
    username = "guest"
    password = "guest"


def _amqp_url(host: Any, vhost: str) -> str:
    from urllib.parse import quote

    auth = f"{quote(host.username or 'guest', safe='')}:{quote(host.password or 'guest', safe='')}"
    return f"amqp://{auth}@{host.hostname}:{host.port or 5672}/{quote(vhost, safe='')}"


def _close(thing: Any) -> None:
    try:
        thing.close()
    except Exception as err:  # closing what already broke: nothing left to do but say so
        log.debug("closing %r: %s", thing, err)
