"""The processes of the simulated region: `python -m bench.scale.worker KIND ARGS_JSON`.

Each worker prints one JSON line when it is ready, then answers JSON commands read from stdin,
one line each (`{"op": "status"}` → one JSON line back), and exits when stdin closes. Workers are
started with `subprocess` (never a fork after grpc is loaded).

Kinds:
- `hv`: a slice of hypervisors. Each is a compute `RPCServer` (own port, own server name, own
  `EtcdRegistry` and so its own lease and etcd connection) and two agent registrations (two more
  `EtcdRegistry` objects announcing the agent endpoints): 3 leases per hypervisor.
- `load`: a client process sending calls and casts to random computes by server name, counting
  failed, hung and accepted messages by key (the computes count what they received).
- `conductor`: a conductor and two schedulers (`RPCServer`s, registered in etcd).
- `broadcaster`: a `Broadcaster` with an etcd resolver of the computes and its peers.
- `fanout`: a client timing fanout casts to every compute through the broadcasters.
- `routing`: a client building the whole region's table, then watch delays under churn.
- `kacap`: lease keepalives as fast as etcd answers them (the cluster's capacity).
- `rabbit-servers` / `rabbit-load`: oslo.messaging `rabbit://` RPC servers and a caller.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import logging
import os
import random
import resource
import sys
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

from grpcrpc.transport.base import BROADCASTER_EXCHANGE, BROADCASTER_TOPIC

# Only the discovery logger speaks (counted below, never printed): a region of registries
# retrying after an outage would otherwise fill the harness's pipes.
logging.basicConfig(level=logging.CRITICAL)

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def raise_nofile() -> int:
    """Raise this process's open-file limit to the hard limit (every connection is a fd)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rotated(endpoints: list[str], i: int) -> list[str]:
    """Start each client at a different member, as clientv3's balancer spreads connections."""
    k = i % len(endpoints)
    return endpoints[k:] + endpoints[:k]


class RegistryLog(logging.Handler):
    """Counts what the registries tell: grants, failed attempts, registrations lost."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        msg = str(record.msg)
        if msg.startswith("granted etcd lease"):
            self.counts["grants"] += 1
        elif "retrying" in msg or "still failing" in msg:
            self.counts["failures"] += 1
        elif "granting a new lease" in msg:
            self.counts["lease_lost"] += 1
        elif msg.startswith("etcd registration is") and record.levelno >= logging.WARNING:
            self.counts["down"] += 1


def count_registry_logs() -> RegistryLog:
    handler = RegistryLog()
    logger = logging.getLogger("grpcrpc.discovery.etcd")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    return handler


# -- hypervisors --------------------------------------------------------------------------------

class Receipts:
    """What the computes of one process received, by message key."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.casts: collections.Counter[str] = collections.Counter()
        self.fanouts: collections.Counter[int] = collections.Counter()
        self.fanout_dups = 0


class Compute:
    """nova-compute's endpoints, reduced to what the harness checks."""

    def __init__(self, receipts: Receipts) -> None:
        self._r = receipts
        self._fanouts: set[int] = set()

    async def ping(self, ctxt: Any, key: str) -> str:
        self._r.calls[key] += 1
        return key

    async def build(self, ctxt: Any, key: str) -> None:
        self._r.casts[key] += 1

    async def update(self, ctxt: Any, n: int) -> None:
        if n in self._fanouts:
            self._r.fanout_dups += 1
        self._fanouts.add(n)
        self._r.fanouts[n] += 1


class Hypervisors:
    AGENTS = ("neutron-agent", "ceilometer-agent")

    def __init__(self, a: dict[str, Any]) -> None:
        from grpcrpc.discovery.etcd import EtcdConfig

        self.first, self.count, self.ttl = a["first"], a["count"], a["ttl"]
        self.endpoints: list[str] = a["endpoints"]
        self.config = EtcdConfig
        self.log = count_registry_logs()
        self.receipts = Receipts()
        self.servers: dict[str, Any] = {}
        self.computes: dict[str, Compute] = {}
        self.registries: dict[str, Any] = {}  # name -> the compute server's registry
        self.agents: list[Any] = []
        self.fanin: list[Any] = []
        self.restarts = 0

    def _registry(self, i: int) -> Any:
        from grpcrpc.discovery.etcd import EtcdRegistry

        return EtcdRegistry(self.config(rotated(self.endpoints, i), timeout=10.0), ttl=self.ttl)

    def _server(self, name: str, i: int) -> Any:
        from grpcrpc import Limits, RPCServer, Target

        registry = self._registry(i)
        self.registries[name] = registry
        compute = self.computes.setdefault(name, Compute(self.receipts))
        return RPCServer(Target(topic="compute", server=name), [compute], registry=registry,
                         limits=Limits(threads=1, queue=4), grace=5.0)

    async def start(self) -> dict[str, Any]:
        from grpcrpc import Endpoint

        names = [(f"hv{i:05d}", i) for i in range(self.first, self.first + self.count)]
        for k in range(0, len(names), 50):
            batch = [(n, self._server(n, i)) for n, i in names[k:k + 50]]
            await asyncio.gather(*(s.start() for _, s in batch))
            self.servers.update(batch)

        def announce_agents() -> None:
            for name, i in names:
                address = self.servers[name].address
                for j, topic in enumerate(self.AGENTS):
                    registry = self._registry(i + j + 1)
                    registry.announce(Endpoint(address, topic, name, instance=f"{topic}-{i}"))
                    self.agents.append(registry)

        await asyncio.to_thread(announce_agents)
        return {"started": len(self.servers), "pid": os.getpid()}

    def _all_registries(self) -> list[Any]:
        return [*self.registries.values(), *self.agents]

    async def op_status(self, c: dict[str, Any]) -> dict[str, Any]:
        regs = self._all_registries()
        return {"registered": sum(r.registered for r in regs), "registries": len(regs),
                "threads": threading.active_count(), "restarts": self.restarts,
                **self.log.counts}

    async def op_receipts(self, c: dict[str, Any]) -> dict[str, Any]:
        r = self.receipts
        return {"calls": dict(r.calls), "casts": dict(r.casts),
                "fanouts": {str(k): v for k, v in r.fanouts.items()}, "fanout_dups": r.fanout_dups}

    async def op_restart(self, c: dict[str, Any]) -> dict[str, Any]:
        """Restart the first `count` computes one after another: the new instance (new port,
        new lease) is serving and registered before the old one withdraws and drains."""
        started = time.monotonic()
        for name in list(self.servers)[: c["count"]]:
            old, old_registry = self.servers[name], self.registries[name]
            new = self._server(name, int(name[2:]) + self.restarts)
            await new.start()
            self.servers[name] = new
            await old.stop(c.get("grace", 5.0))
            await asyncio.to_thread(old_registry.close)
            self.restarts += 1
        return {"restarted": c["count"], "seconds": time.monotonic() - started}

    async def op_fanin_connect(self, c: dict[str, Any]) -> dict[str, Any]:
        """One client connection per compute to the conductor, each opened by one call."""
        from grpcrpc import AsyncRPCClient, Endpoint, StaticResolver, Target

        ep = Endpoint(c["address"], "conductor", "conductor0")
        self.fanin = [AsyncRPCClient(StaticResolver([ep]), Target(topic="conductor"), timeout=30)
                      for _ in self.servers]
        results = await asyncio.gather(*(cl.call({}, "report", host=n, seq=0)
                                         for cl, n in zip(self.fanin, self.servers, strict=True)),
                                       return_exceptions=True)
        return {"connected": sum(not isinstance(r, BaseException) for r in results)}

    async def op_fanin_load(self, c: dict[str, Any]) -> dict[str, Any]:
        """Calls to the conductor at `rate`/s from this process's clients, in turn."""
        lat: list[float] = []
        failed: collections.Counter[str] = collections.Counter()
        names = list(self.servers)

        async def one(k: int) -> None:
            t = time.perf_counter()
            try:
                await self.fanin[k % len(self.fanin)].call({}, "report", host=names[k % len(names)],
                                                           seq=k)
                lat.append(time.perf_counter() - t)
            except Exception as exc:
                failed[type(exc).__name__] += 1

        tasks = []
        start = time.monotonic()
        k = 0
        while time.monotonic() - start < c["seconds"]:
            tasks.append(asyncio.ensure_future(one(k)))
            k += 1
            await asyncio.sleep(max(0.0, start + k / c["rate"] - time.monotonic()))
        await asyncio.gather(*tasks)
        return {"latencies": lat, "failed": dict(failed)}

    async def op_fanin_close(self, c: dict[str, Any]) -> dict[str, Any]:
        await asyncio.gather(*(cl.close() for cl in self.fanin))
        self.fanin = []
        return {}

    async def close(self) -> None:
        await asyncio.gather(*(s.stop(0) for s in self.servers.values()))
        for r in self._all_registries():
            r.close()


# -- clients under continuous load ---------------------------------------------------------------

class Load:
    """Calls and casts to random computes by name, each with a key the computes record."""

    def __init__(self, a: dict[str, Any]) -> None:
        from grpcrpc import AsyncRPCClient, Target
        from grpcrpc.discovery.etcd import EtcdConfig, EtcdResolver

        self.id, self.computes, self.timeout = a["id"], a["computes"], a["timeout"]
        self.resolver = EtcdResolver(EtcdConfig(rotated(a["endpoints"], a["id"]), timeout=10.0),
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


# -- conductor, broadcasters, fanout client ----------------------------------------------------------

class Conductor:
    async def report(self, ctxt: Any, host: str, seq: int) -> int:
        return seq

    async def select_destinations(self, ctxt: Any, n: int) -> list[str]:
        return [f"hv{random.randrange(100):05d}" for _ in range(n)]


class Control:
    """conductor0 plus schedulers 0 and 1, registered in etcd."""

    def __init__(self, a: dict[str, Any]) -> None:
        from grpcrpc import Limits, RPCServer, Target
        from grpcrpc.discovery.etcd import EtcdConfig, EtcdRegistry

        self.registry = EtcdRegistry(EtcdConfig(a["endpoints"], timeout=10.0), ttl=a["ttl"])
        # Coroutine endpoints; the bounds are per connection, so 10,000 clients fit.
        limits = Limits(coroutines=8192)
        self.servers = [RPCServer(Target(topic="conductor", server="conductor0"), [Conductor()],
                                  registry=self.registry, limits=limits)]
        self.servers += [RPCServer(Target(topic="scheduler", server=f"scheduler{i}"),
                                   [Conductor()], registry=self.registry) for i in range(2)]

    async def start(self) -> dict[str, Any]:
        for s in self.servers:
            await s.start()
        return {"address": self.servers[0].address, "pid": os.getpid()}

    async def close(self) -> None:
        for s in self.servers:
            await s.stop(0)
        self.registry.close()


class BroadcasterProc:
    def __init__(self, a: dict[str, Any]) -> None:
        from grpcrpc.broadcaster import Broadcaster, BroadcasterOptions
        from grpcrpc.discovery.etcd import EtcdConfig, EtcdRegistry, EtcdResolver

        config = EtcdConfig(rotated(a["endpoints"], a["index"]), timeout=10.0)
        self.resolver = EtcdResolver(config, az="default", start_timeout=120, topics=[
            "compute", (BROADCASTER_EXCHANGE, BROADCASTER_TOPIC)])
        self.registry = EtcdRegistry(config, ttl=a["ttl"])
        self.broadcaster = Broadcaster(self.resolver, registry=self.registry, name=a["name"],
                                       options=BroadcasterOptions(split_threshold=a["split"],
                                                                  max_peers=a["peers"]))

    async def start(self) -> dict[str, Any]:
        await asyncio.to_thread(self.resolver.start)
        await self.broadcaster.start()
        return {"pid": os.getpid(), "table": len(self.resolver.table)}

    async def close(self) -> None:
        await self.broadcaster.stop()
        self.registry.close()
        self.resolver.close()


class FanoutClient:
    def __init__(self, a: dict[str, Any]) -> None:
        from grpcrpc import AsyncRPCClient, Target
        from grpcrpc.discovery.etcd import EtcdConfig, EtcdResolver

        self.resolver = EtcdResolver(EtcdConfig(a["endpoints"], timeout=10.0), az="default",
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
        from grpcrpc.discovery.etcd import EtcdConfig

        self.config = EtcdConfig(a["endpoints"], timeout=30.0)
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

        from grpcrpc.discovery.etcd import EtcdConfig, connect

        a = self.a
        clients = [connect(EtcdConfig(rotated(a["endpoints"], i), timeout=10.0))
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


# -- RabbitMQ -----------------------------------------------------------------------------------------

class RabbitServers:
    """`count` oslo.messaging RPC servers of topic `compute` on one rabbit:// transport."""

    def __init__(self, a: dict[str, Any]) -> None:
        import warnings

        import oslo_messaging
        from oslo_config import cfg

        warnings.simplefilter("ignore")
        self.transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=a["url"])
        self.receipts = Receipts()
        self.servers = [oslo_messaging.get_rpc_server(
            self.transport, oslo_messaging.Target(topic="compute", server=f"hv{i:05d}"),
            [SyncCompute(self.receipts)], executor="threading")
            for i in range(a["first"], a["first"] + a["count"])]

    async def start(self) -> dict[str, Any]:
        for s in self.servers:
            await asyncio.to_thread(s.start)
        return {"pid": os.getpid()}

    async def op_receipts(self, c: dict[str, Any]) -> dict[str, Any]:
        return {"calls": dict(self.receipts.calls), "casts": dict(self.receipts.casts)}

    async def close(self) -> None:
        for s in self.servers:
            s.stop()
        for s in self.servers:
            s.wait()
        self.transport.cleanup()


class SyncCompute:
    def __init__(self, receipts: Receipts) -> None:
        self._r = receipts
        self._lock = threading.Lock()

    def ping(self, ctxt: Any, key: str) -> str:
        with self._lock:
            self._r.calls[key] += 1
        return key

    def build(self, ctxt: Any, key: str) -> None:
        with self._lock:
            self._r.casts[key] += 1


class RabbitLoad:
    """Calls and casts through oslo.messaging's rabbit driver from `threads` threads."""

    def __init__(self, a: dict[str, Any]) -> None:
        import warnings

        import oslo_messaging
        from oslo_config import cfg

        warnings.simplefilter("ignore")
        self.a = a
        self.transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=a["url"])
        self.client = oslo_messaging.get_rpc_client(
            self.transport, oslo_messaging.Target(topic="compute"), timeout=a["timeout"])
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.ok: dict[str, list[str]] = {"call": [], "cast": []}
        self.failed: collections.Counter[str] = collections.Counter()
        self.hung = 0

    async def start(self) -> dict[str, Any]:
        return {}

    def _loop(self, t: int, rate: float) -> None:
        seq = 0
        start = time.monotonic()
        while not self.stop.is_set():
            kind = "call" if seq % 2 else "cast"
            key = f"r{t}:{seq}"
            server = f"hv{random.randrange(self.a['servers']):05d}"
            began = time.monotonic()
            try:
                target = self.client.prepare(server=server)
                if kind == "call":
                    target.call({}, "ping", key=key)
                else:
                    target.cast({}, "build", key=key)
                with self.lock:
                    self.ok[kind].append(key)
            except Exception as exc:
                with self.lock:
                    # oslo's own timeout is the deadline: past it by 5 s, the call hung.
                    if time.monotonic() - began > self.a["timeout"] + 5:
                        self.hung += 1
                    else:
                        self.failed[f"{kind} {type(exc).__name__}"] += 1
            seq += 1
            time.sleep(max(0.0, start + seq / rate - time.monotonic()))

    async def op_start(self, c: dict[str, Any]) -> dict[str, Any]:
        self._reset()
        self.stop.clear()
        per = c["rate"] / self.a["threads"]
        self.threads = [threading.Thread(target=self._loop, args=(t, per), daemon=True)
                        for t in range(self.a["threads"])]
        for th in self.threads:
            th.start()
        return {}

    async def op_stop(self, c: dict[str, Any]) -> dict[str, Any]:
        self.stop.set()
        deadline = time.monotonic() + self.a["timeout"] + 10
        for th in self.threads:
            await asyncio.to_thread(th.join, max(0.1, deadline - time.monotonic()))
        with self.lock:
            hung = self.hung + sum(th.is_alive() for th in self.threads)
            return {"ok": self.ok, "failed": dict(self.failed), "hung": hung}

    async def close(self) -> None:
        self.transport.cleanup()


KINDS: dict[str, Any] = {
    "hv": Hypervisors, "load": Load, "conductor": Control, "broadcaster": BroadcasterProc,
    "fanout": FanoutClient, "routing": Routing, "kacap": KeepaliveCapacity,
    "rabbit-servers": RabbitServers, "rabbit-load": RabbitLoad,
}


async def serve(kind: str, args: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, "")

    threading.Thread(target=read_stdin, daemon=True).start()
    worker = KINDS[kind](args)
    ready = await worker.start()
    print(json.dumps({"ready": True, "nofile": raise_nofile(), **ready}), flush=True)
    while line := await lines.get():
        command = json.loads(line)
        try:
            reply = await getattr(worker, f"op_{command['op']}")(command)
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
    await worker.close()


if __name__ == "__main__":
    raise_nofile()
    asyncio.run(serve(sys.argv[1], json.loads(sys.argv[2])))
