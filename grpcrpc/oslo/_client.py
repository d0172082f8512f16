"""The client side, on the driver's loop: one resolver and one transport for every send.

oslo's semantics assume a broker that holds messages; here a message goes straight to a live
server, so the gaps are bridged by waiting, within the caller's time budget:

- no server registered for the target (yet) → wait for the routing table to change (a server
  starting or restarting registers within moments), then try again;
- the server refused the message without running it (overloaded, stopping, handed back) →
  back off briefly and try again (another server, or the same one later).

`retry=0` (oslo: "do not retry") and `at_least_once` (oslo: "fail if nobody can take it") fail
at once instead. Nothing is ever resent once it may have reached a server.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from grpcrpc.discovery.base import RoutingTable
from grpcrpc.discovery.etcd import EtcdResolver
from grpcrpc.exceptions import GrpcrpcError, MessagingTimeout, NoEndpoints, Overloaded
from grpcrpc.fanout import FanoutReport
from grpcrpc.oslo._wire import OsloAsyncClient, PrimitiveSerializer
from grpcrpc.oslo.options import Settings
from grpcrpc.target import Target
from grpcrpc.transport.aio import AsyncTransport

__all__ = ["Sender"]

# How often a send that waits for a server looks again even without news from etcd (an
# endpoint that refused connections may be back).
_RECHECK = 1.0
_MAX_BACKOFF = 1.0


class Sender:
    """Sends oslo messages with grpcrpc; create it anywhere, use it on the driver's loop."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._resolver: EtcdResolver | None = None
        self._client: OsloAsyncClient | None = None
        self._ready: asyncio.Lock | None = None
        self._changed: asyncio.Event | None = None
        self._unsubscribe: Any = None

    async def _ensure(self) -> OsloAsyncClient:
        if self._client is not None:
            return self._client
        if self._ready is None:
            self._ready = asyncio.Lock()
        async with self._ready:
            if self._client is None:
                self._client = await self._connect()
        return self._client

    async def _connect(self) -> OsloAsyncClient:
        s = self._settings
        # Watch the AZs this client may send to (its own, then the fallbacks): etcd delivers
        # only those events.
        resolver = EtcdResolver(s.etcd, az=[s.az, *s.fallback_azs],
                                start_timeout=max(2.0, 2 * s.etcd.timeout))
        await asyncio.to_thread(resolver.start)  # DiscoveryUnavailable if etcd never answers
        loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()

        def on_table(table: RoutingTable) -> None:  # resolver thread
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._table_changed)

        self._unsubscribe = resolver.subscribe(on_table)
        self._resolver = resolver
        transport = AsyncTransport(resolver, s.transport)
        # The placeholder topic is replaced by every send's prepare().
        return OsloAsyncClient(transport, Target(topic="oslo"), timeout=None,
                               serializer=PrimitiveSerializer())

    def _table_changed(self) -> None:
        # Wake every send waiting for a server, and let later ones wait on a fresh event.
        if self._changed is not None:
            self._changed.set()
        self._changed = asyncio.Event()

    async def send(
        self, fields: dict[str, Any], ctxt: Any, method: str, args: dict[str, Any], *,
        call: bool, timeout: float | None, retry: int | None, at_least_once: bool,
    ) -> Any:
        """The call's result, or None (a cast) or the `FanoutReport` (a fanout cast)."""
        client = await self._ensure()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        give_up_at_once = retry == 0
        # oslo: None or -1 retries "forever" (within the time budget here); grpcrpc: how many
        # other endpoints to try when a connection cannot open.
        endpoints_retry = None if retry is None or retry < 0 else retry
        backoff = 0.05
        last: GrpcrpcError | None = None
        while True:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise last or MessagingTimeout(f"{fields['topic']}.{method}: timed out")
            prepared = client.prepare(**fields, timeout=remaining, retry=endpoints_retry)
            changed = self._changed  # before trying, so a change during the try is not missed
            try:
                if call:
                    return await prepared.call(ctxt, method, **args)
                report: FanoutReport | None = await prepared.cast(ctxt, method, **args)
                return report
            except NoEndpoints as err:
                if at_least_once or give_up_at_once:
                    raise
                last = err
                await _wait(changed, _cap(remaining, _RECHECK))
            except Overloaded as err:
                if give_up_at_once:
                    raise
                last = err
                await asyncio.sleep(_cap(remaining, backoff))
                backoff = min(backoff * 2, _MAX_BACKOFF)

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._client is not None:
            await self._client.transport.close()
            self._client = None
        if self._resolver is not None:
            await asyncio.to_thread(self._resolver.close)
            self._resolver = None


def _cap(remaining: float | None, limit: float) -> float:
    return limit if remaining is None else max(0.0, min(remaining, limit))


async def _wait(event: asyncio.Event | None, timeout: float) -> None:
    if event is None:
        await asyncio.sleep(timeout)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
