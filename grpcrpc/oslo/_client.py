"""The client side: one resolver and one transport for every send of a process.

With plain threads, a send runs in the caller's thread over grpcrpc's sync transport (its
envelope streams hand replies to the caller directly); under eventlet it runs on the driver's
loop, which green threads wait on without blocking the hub.

oslo's semantics assume a broker that holds messages; here a message goes straight to a live
server, so the gaps are bridged by waiting, within the caller's time budget:

- no server registered for the target (yet) → wait for the routing table to change (a server
  starting or restarting registers within moments), then try again;
- the server refused the message without running it (overloaded, stopping, handed back) →
  back off briefly and try again (another server, or the same one later).

A fanout cast returns once it is on its way to every server, as a fanout through RabbitMQ's
exchange returns once published; who did not get it is logged when the last server has
answered (`grpcrpc.transport.detached`).

`retry=0` (oslo: "do not retry") and `at_least_once` (oslo: "fail if nobody can take it") fail
at once instead. Nothing is ever resent once it may have reached a server.

Discovery starts with the first send and keeps trying while etcd does not answer, as a server's
registration does; a send waits for etcd's first listing only within its own timeout, so a call
with `timeout=3` raises `MessagingTimeout` at 3 s whatever discovery is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from grpcrpc.client import AsyncRPCClient, RPCClient
from grpcrpc.discovery.base import RoutingTable
from grpcrpc.discovery.etcd import EtcdResolver
from grpcrpc.exceptions import GrpcrpcError, MessagingTimeout, NoEndpoints, Overloaded
from grpcrpc.fanout import FanoutReport
from grpcrpc.oslo._routing import BridgeAsyncTransport, BridgeSyncTransport
from grpcrpc.oslo._wire import PrimitiveSerializer, remote_failure
from grpcrpc.oslo.options import Settings
from grpcrpc.target import Target
from grpcrpc.transport.aio import AsyncTransport
from grpcrpc.transport.sync import SyncTransport

__all__ = ["Sender", "SyncSender", "log_fanout_report"]

log = logging.getLogger("grpcrpc.oslo")

# How often a send that waits for a server looks again even without news from etcd (an
# endpoint that refused connections may be back).
_RECHECK = 1.0
_MAX_BACKOFF = 1.0


class _Tries:
    """The retry decisions of one oslo send (no I/O, shared by both senders)."""

    def __init__(self, what: str, timeout: float | None, retry: int | None, at_least_once: bool,
                 clock: Callable[[], float]) -> None:
        self._what = what
        self._clock = clock
        self._deadline = None if timeout is None else clock() + timeout
        self._give_up_at_once = retry == 0
        self._at_least_once = at_least_once
        # oslo: None or -1 retries "forever" (within the time budget here); grpcrpc: how many
        # other endpoints to try when a connection cannot open.
        self.endpoints_retry = None if retry is None or retry < 0 else retry
        self._backoff = 0.05
        self._last: GrpcrpcError | None = None

    def remaining(self) -> float | None:
        """The budget left; the last error (or `MessagingTimeout`) once it is spent."""
        if self._deadline is None:
            return None
        remaining = self._deadline - self._clock()
        if remaining <= 0:
            raise self._last or MessagingTimeout(f"{self._what}: timed out")
        return remaining

    def after(self, err: NoEndpoints | Overloaded, remaining: float | None) -> tuple[bool, float]:
        """A send failed without delivering: (wait for the routing table to change?, how long
        at most) before the next try; raises `err` when oslo's options say not to retry."""
        self._last = err
        if isinstance(err, NoEndpoints):
            if self._at_least_once or self._give_up_at_once:
                raise err
            return True, _cap(remaining, _RECHECK)
        if self._give_up_at_once:
            raise err
        delay = _cap(remaining, self._backoff)
        self._backoff = min(self._backoff * 2, _MAX_BACKOFF)
        return False, delay


class Sender:
    """Sends oslo messages with grpcrpc; create it anywhere, use it on the driver's loop."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._resolver: EtcdResolver | None = None
        self._client: AsyncRPCClient | None = None
        self._listing: asyncio.Future[bool] | None = None  # etcd's first listing, once
        self._changed: asyncio.Event | None = None
        self._unsubscribe: Any = None

    async def _ensure(self, what: str, timeout: float | None) -> AsyncRPCClient:
        """The client, once etcd has been listed; waits for that at most `timeout`."""
        client = self._client
        if client is None:
            client = self._client = self._connect()
        listing = self._listing
        if listing is not None:
            if not listing.done():
                try:
                    async with asyncio.timeout(timeout):
                        await asyncio.shield(listing)
                except TimeoutError:
                    raise _not_listed(what, timeout, self._resolver) from None
            self._listing = None  # listed (or closed: the transport then says so)
        return client

    def _connect(self) -> AsyncRPCClient:
        resolver = _resolver(self._settings)
        resolver.start()  # at once: the listing goes on in the resolver's thread
        # One thread waits for it (released by close() too); sends wait on this future.
        self._listing = asyncio.ensure_future(asyncio.to_thread(resolver.wait_listed, None))
        loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()

        def on_table(table: RoutingTable) -> None:  # resolver thread
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._table_changed)

        self._unsubscribe = resolver.subscribe(on_table)
        self._resolver = resolver
        # Bridge mode: client-side fanouts skip the servers that hear them on RabbitMQ.
        transport_cls = BridgeAsyncTransport if self._settings.rabbit_url else AsyncTransport
        transport = transport_cls(resolver, self._settings.transport)
        # The placeholder topic is replaced by every send's prepare().
        return AsyncRPCClient(transport, Target(topic="oslo"), timeout=None,
                              serializer=PrimitiveSerializer(), failure_mapper=remote_failure)

    async def resolver(self) -> EtcdResolver:
        """The resolver this sender routes with, once it has listed etcd (started on first
        use; `MessagingTimeout` if etcd has not been listed within its timeout)."""
        await self._ensure("bridge routing", self._settings.etcd.timeout)
        assert self._resolver is not None
        return self._resolver

    def _table_changed(self) -> None:
        # Wake every send waiting for a server, and let later ones wait on a fresh event.
        if self._changed is not None:
            self._changed.set()
        self._changed = asyncio.Event()

    async def send(
        self, fields: dict[str, Any], ctxt: Any, method: str, args: dict[str, Any], *,
        call: bool, timeout: float | None, retry: int | None, at_least_once: bool,
    ) -> Any:
        """The call's result, or None (a cast; a fanout's report is logged when it is in)."""
        what = f"{fields['topic']}.{method}"
        tries = _Tries(what, timeout, retry, at_least_once, asyncio.get_running_loop().time)
        client = await self._ensure(what, timeout)
        while True:
            remaining = tries.remaining()
            prepared = client.prepare(**fields, timeout=remaining, retry=tries.endpoints_retry)
            if fields.get("fanout"):
                prepared.fanout_reports = functools.partial(log_fanout_report, what)
            changed = self._changed  # before trying, so a change during the try is not missed
            try:
                if call:
                    return await prepared.call(ctxt, method, **args)
                await prepared.cast(ctxt, method, **args)
                return None
            except (NoEndpoints, Overloaded) as err:
                wait_for_change, delay = tries.after(err, remaining)
                if wait_for_change:
                    await _wait(changed, delay)
                else:
                    await asyncio.sleep(delay)

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._client is not None:
            await self._client.transport.close()
            self._client = None
        if self._resolver is not None:
            await asyncio.to_thread(self._resolver.close)
            self._resolver = None
        if self._listing is not None:
            await asyncio.gather(self._listing, return_exceptions=True)  # released by close
            self._listing = None


class SyncSender:
    """`Sender` for plain threads: sends in the caller's thread, no loop in between."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._resolver: EtcdResolver | None = None
        self._client: RPCClient | None = None
        self._listed = False  # etcd's first listing is done: no send waits for it again
        self._ready = threading.Lock()
        self._changed = threading.Event()
        self._unsubscribe: Any = None

    def _ensure(self, what: str, timeout: float | None) -> RPCClient:
        """The client, once etcd has been listed; waits for that at most `timeout`."""
        client = self._client
        if client is None:
            client = self._connect()
        resolver = self._resolver
        if resolver is not None and not self._listed:
            if not resolver.wait_listed(timeout) and not resolver.listed:
                raise _not_listed(what, timeout, resolver)
            self._listed = True
        return client

    def _connect(self) -> RPCClient:
        with self._ready:
            if self._client is None:
                resolver = _resolver(self._settings)
                resolver.start()  # at once: the listing goes on in the resolver's thread
                self._unsubscribe = resolver.subscribe(self._table_changed)
                self._resolver = resolver
                transport_cls = (BridgeSyncTransport if self._settings.rabbit_url
                                 else SyncTransport)
                transport = transport_cls(resolver, self._settings.transport)
                # The placeholder topic is replaced by every send's prepare().
                self._client = RPCClient(transport, Target(topic="oslo"), timeout=None,
                                         serializer=PrimitiveSerializer(),
                                         failure_mapper=remote_failure)
            return self._client

    def resolver(self) -> EtcdResolver:
        """The resolver this sender routes with, once it has listed etcd (started on first
        use; `MessagingTimeout` if etcd has not been listed within its timeout)."""
        self._ensure("bridge routing", self._settings.etcd.timeout)
        assert self._resolver is not None
        return self._resolver

    def _table_changed(self, table: RoutingTable) -> None:  # resolver thread
        # Later sends wait on a fresh event; the ones waiting now wake.
        changed, self._changed = self._changed, threading.Event()
        changed.set()

    def send(
        self, fields: dict[str, Any], ctxt: Any, method: str, args: dict[str, Any], *,
        call: bool, timeout: float | None, retry: int | None, at_least_once: bool,
    ) -> Any:
        """The call's result, or None (a cast; a fanout's report is logged when it is in)."""
        what = f"{fields['topic']}.{method}"
        tries = _Tries(what, timeout, retry, at_least_once, time.monotonic)
        client = self._ensure(what, timeout)
        while True:
            remaining = tries.remaining()
            prepared = client.prepare(**fields, timeout=remaining, retry=tries.endpoints_retry)
            if fields.get("fanout"):
                prepared.fanout_reports = functools.partial(log_fanout_report, what)
            changed = self._changed  # before trying, so a change during the try is not missed
            try:
                if call:
                    return prepared.call(ctxt, method, **args)
                return prepared.cast(ctxt, method, **args)
            except (NoEndpoints, Overloaded) as err:
                wait_for_change, delay = tries.after(err, remaining)
                if wait_for_change:
                    changed.wait(delay)
                else:
                    time.sleep(delay)  # backing off before a retry, in the caller's own thread

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        with self._ready:
            client, self._client = self._client, None
            resolver, self._resolver = self._resolver, None
        if client is not None:
            client.transport.close()
        if resolver is not None:
            resolver.close()


def log_fanout_report(what: str, report: FanoutReport) -> None:
    """A warning for a fanout that did not reach every server (oslo's caller never hears)."""
    if not report.ok:
        log.warning("fanout %s reached %d of %d servers; not delivered to: %s", what,
                    report.delivered, report.targets,
                    "; ".join(f"{f.server or f.address} ({f.reason})" for f in report.failures))


def _resolver(s: Settings) -> EtcdResolver:
    # Watch the AZs this client may send to (its own, then the fallbacks): etcd delivers only
    # those events. No start timeout: it keeps trying, and each send waits within its own.
    return EtcdResolver(s.etcd, az=[s.az, *s.fallback_azs], start_timeout=None)


def _not_listed(what: str, timeout: float | None, resolver: EtcdResolver | None
                ) -> MessagingTimeout:
    return MessagingTimeout(f"{what}: timed out after {timeout or 0:g}s: discovery has not "
                            f"listed etcd yet ({_etcd_trouble(resolver)})")


def _etcd_trouble(resolver: EtcdResolver | None) -> str:
    errors = resolver.errors() if resolver is not None else []
    return "; ".join(errors) or "no answer"


def _cap(remaining: float | None, limit: float) -> float:
    return limit if remaining is None else max(0.0, min(remaining, limit))


async def _wait(event: asyncio.Event | None, timeout: float) -> None:
    if event is None:
        await asyncio.sleep(timeout)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
