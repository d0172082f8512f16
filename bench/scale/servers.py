"""Server-side processes of the region: hypervisors (a compute `RPCServer` and two agent
registrations each, every one with its own `EtcdRegistry`), the conductor with two schedulers,
and broadcasters."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import random
import threading
import time
from typing import Any

from bench.scale.worker import count_registry_logs, etcd_config
from grpcrpc.transport.base import BROADCASTER_EXCHANGE, BROADCASTER_TOPIC

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
        self.args = a
        self.first, self.count, self.ttl = a["first"], a["count"], a["ttl"]
        self.role = a.get("role", "all")  # "computes", "agents" or both
        # Registrations one process starts at once. Production's agents start on their own
        # hosts' cores; here every waiting etcd call is a thread that grpc's blocking API wakes
        # 5-10 times a second on the same 2 cores, so an unpaced process starves etcd itself.
        self.pace = a.get("pace", 50)
        self.per_connection = a.get("per_connection", 1)
        self.connections: dict[int, Any] = {}
        self.log = count_registry_logs()
        self.receipts = Receipts()
        self.servers: dict[str, Any] = {}
        self.computes: dict[str, Compute] = {}
        self.registries: dict[str, Any] = {}  # name -> the compute server's registry
        self.agents: list[Any] = []
        self.fanin: list[Any] = []
        self.restarts = 0

    def _registry(self, i: int) -> Any:
        """Registration `i`'s registry, on the shared connection of its group of
        `per_connection` (1: a connection of its own, as an agent process has)."""
        from grpcrpc.discovery.etcd import EtcdConnection, EtcdRegistry

        if self.per_connection <= 1:
            return EtcdRegistry(etcd_config(self.args, i), ttl=self.ttl)
        group = i // self.per_connection
        connection = self.connections.get(group)
        if connection is None:
            connection = self.connections[group] = EtcdConnection(
                etcd_config(self.args, group), timeout=min(10.0, max(1.0, self.ttl / 3)))
        return EtcdRegistry(connection.config, ttl=self.ttl, connection=connection)

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
        t0 = time.monotonic()
        if self.role != "agents":
            for k in range(0, len(names), self.pace):
                batch = [(n, self._server(n, i)) for n, i in names[k:k + self.pace]]
                await asyncio.gather(*(s.start() for _, s in batch))
                self.servers.update(batch)
        t1 = time.monotonic()
        if self.role == "computes":
            return {"started": len(self.servers), "pid": os.getpid(), "servers_s": t1 - t0}

        def announce(name: str, i: int, j: int, topic: str) -> None:
            registry = self._registry(i + j + 1)
            self.agents.append(registry)
            # An agent's endpoint nobody calls: the compute's address when it is here.
            server = self.servers.get(name)
            address = server.address if server else f"127.0.0.1:{20000 + i % 40000}"
            # Returns once stored, or after the config's timeout (it keeps trying after).
            registry.announce(Endpoint(address, topic, name, instance=f"{topic}-{i}"))

        # Agents are processes of their own in production: they start at once, not in turn.
        with concurrent.futures.ThreadPoolExecutor(self.pace) as pool:
            for f in [pool.submit(announce, name, i, j, topic) for name, i in names
                      for j, topic in enumerate(self.AGENTS)]:
                f.result()
        return {"started": len(self.servers), "pid": os.getpid(),
                "servers_s": t1 - t0, "agents_s": time.monotonic() - t1}

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
        for connection in self.connections.values():
            connection.close()


# -- conductor and broadcasters -------------------------------------------------------------------------

class Conductor:
    async def report(self, ctxt: Any, host: str, seq: int) -> int:
        return seq

    async def select_destinations(self, ctxt: Any, n: int) -> list[str]:
        return [f"hv{random.randrange(100):05d}" for _ in range(n)]


class Control:
    """conductor0 plus schedulers 0 and 1, registered in etcd."""

    def __init__(self, a: dict[str, Any]) -> None:
        from grpcrpc import Limits, RPCServer, Target
        from grpcrpc.discovery.etcd import EtcdRegistry

        self.registry = EtcdRegistry(etcd_config(a), ttl=a["ttl"])
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
        from grpcrpc.discovery.etcd import EtcdRegistry, EtcdResolver

        config = etcd_config(a, a["index"])
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
