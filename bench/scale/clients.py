"""Client-side processes of the region: load under faults, the fanout client, the routing
table and watch-delay probe, and the keepalive-capacity probe."""

from __future__ import annotations

import asyncio
import collections
import gc
import random
import threading
import time
import tracemalloc
from typing import Any

from bench.scale.worker import etcd_config
from grpcrpc.transport.base import BROADCASTER_EXCHANGE, BROADCASTER_TOPIC

# -- clients under continuous load ---------------------------------------------------------------

class Load:
    """Calls and casts to random computes by name, each with a key the computes record."""

    def __init__(self, a: dict[str, Any]) -> None:
        from grpcrpc import AsyncRPCClient, Target
        from grpcrpc.discovery.etcd import EtcdResolver

        self.id, self.computes, self.timeout = a["id"], a["computes"], a["timeout"]
        self.resolver = EtcdResolver(etcd_config(a, a["id"]),
                                     az="default", topics=["compute"], start_timeout=120)
        self.client = AsyncRPCClient(self.resolver, Target(topic="compute"), timeout=self.timeout)
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._seq = 0  # keys stay unique across the faults of one run
        self._reset()

    def _reset(self) -> None:
        self.ok: dict[str, list[str]] = {"call": [], "cast": []}
        self.failed: collections.Counter[str] = collections.Counter()
        self.hung = 0
        self.lat: list[float] = []

    async def start(self) -> dict[str, Any]:
        await asyncio.to_thread(self.resolver.start)
        return {"table": len(self.resolver.table)}

    async def _one(self, seq: int) -> None:
        kind = "call" if seq % 2 else "cast"
        key = f"{self.id}:{seq}"
        target = self.client.prepare(server=f"hv{random.randrange(self.computes):05d}")
        t = time.perf_counter()
        try:
            coro = (target.call({}, "ping", key=key) if kind == "call"
                    else target.cast({}, "build", key=key))
            # A message answers, fails or times out by its deadline; past it (+5 s) it hung.
            await asyncio.wait_for(coro, self.timeout + 5)
            self.ok[kind].append(key)
            self.lat.append(time.perf_counter() - t)
        except TimeoutError:
            self.hung += 1
        except Exception as exc:
            self.failed[f"{kind} {type(exc).__name__}"] += 1

    async def _run(self, rate: float) -> None:
        start, sent = time.monotonic(), 0
        while True:
            self._seq += 1
            task = asyncio.ensure_future(self._one(self._seq))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            sent += 1
            await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))

    async def op_start(self, c: dict[str, Any]) -> dict[str, Any]:
        self._reset()
        self._task = asyncio.ensure_future(self._run(c["rate"]))
        return {}

    async def op_stop(self, c: dict[str, Any]) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._inflight:
            await asyncio.wait(list(self._inflight))
        lat = sorted(self.lat)
        return {"ok": self.ok, "failed": dict(self.failed), "hung": self.hung,
                "p50": lat[len(lat) // 2] if lat else None,
                "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None}

    async def close(self) -> None:
        await self.client.close()
        self.resolver.close()


# -- fanout client ----------------------------------------------------------------------------------------

class FanoutClient:
    def __init__(self, a: dict[str, Any]) -> None:
        from grpcrpc import AsyncRPCClient, Target
        from grpcrpc.discovery.etcd import EtcdResolver

        self.resolver = EtcdResolver(etcd_config(a), az="default",
                                     start_timeout=120,
                                     topics=["compute", (BROADCASTER_EXCHANGE, BROADCASTER_TOPIC)])
        self.client = AsyncRPCClient(self.resolver, Target(topic="compute", fanout=True),
                                     timeout=60)

    async def start(self) -> dict[str, Any]:
        await asyncio.to_thread(self.resolver.start)
        return {"table": len(self.resolver.table)}

    async def op_fanout(self, c: dict[str, Any]) -> dict[str, Any]:
        t = time.perf_counter()
        report = await self.client.cast({}, "update", n=c["n"])
        elapsed = time.perf_counter() - t
        assert report is not None
        return {"seconds": elapsed, "targets": report.targets, "delivered": report.delivered,
                "failed": len(report.failures)}

    async def close(self) -> None:
        await self.client.close()
        self.resolver.close()


# -- routing table and watch delay ---------------------------------------------------------------------

def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Routing:
    def __init__(self, a: dict[str, Any]) -> None:
        self.config = etcd_config(a, timeout=30.0)
        self.expected = a["expected"]

    async def start(self) -> dict[str, Any]:
        return {}

    async def op_build(self, c: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(self._build)

    def _build(self) -> dict[str, Any]:
        from grpcrpc.discovery.etcd import EtcdResolver

        gc.collect()
        rss0 = rss_mib()
        t = time.perf_counter()
        resolver = EtcdResolver(self.config, start_timeout=120, page_size=2000)
        resolver.start()
        built = time.perf_counter() - t
        size = len(resolver.table)
        rss1 = rss_mib()
        resolver.close()
        tracemalloc.start()
        resolver = EtcdResolver(self.config, start_timeout=120, page_size=2000)
        resolver.start()
        held = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        resolver.close()
        return {"seconds": built, "endpoints": size, "rss_mib": rss1 - rss0,
                "python_mib": held / 2**20}

    async def op_churn(self, c: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(self._churn, c["rate"], c["seconds"])

    def _churn(self, rate: float, seconds: float) -> dict[str, Any]:
        """Registrations at `rate`/s (each replacing one from a second ago) while a resolver of
        the whole region watches; the delay is from the put to the endpoint in its table."""
        from grpcrpc import Endpoint
        from grpcrpc.discovery.etcd import EtcdResolver, connect

        raw = connect(self.config)
        lease = raw.lease(60)
        resolver = EtcdResolver(self.config, start_timeout=120, page_size=2000)
        resolver.start()
        put_at: dict[str, float] = {}
        delays: list[float] = []
        lock = threading.Lock()

        def seen(table: Any) -> None:
            now = time.perf_counter()
            with lock:
                for ep in table.lookup("default", "openstack", "churn"):
                    sent = put_at.pop(ep.server, None)
                    if sent is not None:
                        delays.append(now - sent)

        unsubscribe = resolver.subscribe(seen)
        start, i, keep = time.monotonic(), 0, int(rate)
        while time.monotonic() - start < seconds:
            ep = Endpoint(f"127.0.0.1:{10000 + i % 50000}", "churn", f"churn{i}", instance="0")
            with lock:
                put_at[ep.server] = time.perf_counter()
            raw.put(self.config.key(ep), ep.to_json(), lease=lease.id)
            if i >= keep:
                old = Endpoint("127.0.0.1:1", "churn", f"churn{i - keep}", instance="0")
                raw.delete(self.config.key(old))
            i += 1
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
        deadline = time.monotonic() + 10
        while put_at and time.monotonic() < deadline:
            time.sleep(0.05)  # the last changes' way to the watcher, with a deadline
        unsubscribe()
        resolver.close()
        raw.revoke_lease(lease.id)
        raw.close()
        delays.sort()
        return {"changes": i, "seen": len(delays), "missing": len(put_at),
                "p50": delays[len(delays) // 2] if delays else None,
                "p99": delays[min(len(delays) - 1, int(len(delays) * 0.99))] if delays else None,
                "max": delays[-1] if delays else None}

    async def close(self) -> None:
        pass


# -- keepalive capacity ---------------------------------------------------------------------------------

class KeepaliveCapacity:
    """`streams` LeaseKeepAlive streams (one connection each), each renewing its leases back to
    back with `window` requests outstanding: how many renewals per second the cluster answers."""

    def __init__(self, a: dict[str, Any]) -> None:
        self.a = a

    async def start(self) -> dict[str, Any]:
        return {}

    async def op_run(self, c: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(self._run, c["seconds"])

    def _run(self, seconds: float) -> dict[str, Any]:
        import queue

        from pyetcd import etcdrpc

        from grpcrpc.discovery.etcd import connect

        a = self.a
        clients = [connect(etcd_config(a, i))
                   for i in range(a["streams"])]
        answered = [0] * len(clients)
        stop = threading.Event()

        failed: list[str] = []

        def stream(k: int) -> None:
            try:
                renew(k)
            except Exception as exc:  # a probe that could not run is reported, not raised
                failed.append(f"stream {k}: {type(exc).__name__}: {exc}")

        def renew(k: int) -> None:
            client = clients[k]
            leases = [client.lease(60).id for _ in range(a["leases"])]
            credit: queue.SimpleQueue[None] = queue.SimpleQueue()
            for _ in range(a["window"]):
                credit.put(None)

            def requests() -> Any:
                i = 0
                while not stop.is_set():
                    credit.get()
                    yield etcdrpc.LeaseKeepAliveRequest(ID=leases[i % len(leases)])
                    i += 1

            call = client.leasestub.LeaseKeepAlive(requests(), metadata=client.metadata)
            for _ in call:
                answered[k] += 1
                credit.put(None)
                if stop.is_set():
                    break
            call.cancel()
            for lease in leases:
                client.revoke_lease(lease)

        threads = [threading.Thread(target=stream, args=(k,), daemon=True)
                   for k in range(len(clients))]
        for th in threads:
            th.start()
        time.sleep(1.0)  # warm-up: streams open and leases granted
        before, t0 = sum(answered), time.monotonic()
        time.sleep(seconds)
        done, t1 = sum(answered), time.monotonic()
        stop.set()
        for th in threads:
            th.join(10)
        for client in clients:
            client.close()
        return {"rate": (done - before) / (t1 - t0), "failed_streams": failed}

    async def close(self) -> None:
        pass

