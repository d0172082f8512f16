"""The simulated region: a 3-member etcd cluster (and `etcd grpc-proxy`), the hypervisor
processes, a conductor with schedulers, and the load clients. Parts share one region.

What differs from production, by construction: every process shares 2 cores and loopback; many
hypervisors live in one OS process (`--per-process`), so their registries share that process's
Python interpreter, gRPC core threads and GIL — each registry has its own lease, as a real
agent process would, but `per_connection` registries share one `EtcdConnection` (one channel and
one keepalive stream), where each agent process has its own. Through the proxy, the region
runs one `grpc-proxy` per `PROXY_CLIENTS` registrations (a process here may hold at most 20,000
fds, and a proxy holds one per client connection); each process is given all of them, in a rotated order, as
production clients would list their site's proxies.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bench.scale.procs import Worker, ask_all, close_all, metric, start_all
from grpcrpc.discovery.etcd import EtcdConfig, connect
from grpcrpc.testing.etcd import EtcdCluster, EtcdProxy

AGENT_TOPICS = ("compute", "neutron-agent", "ceilometer-agent")
PROXY_CLIENTS = 12_000  # client connections per grpc-proxy
# etcd 3.4's grpc-proxy GOAWAYs pings more often than every 5 minutes (docs/operations.md).
PROXY_KEEPALIVE_S = 300.0


@dataclass
class Options:
    hypervisors: int = 10_000
    per_process: int = 250
    per_connection: int = 25  # registrations sharing one etcd connection and keepalive stream
    ttl: int = 30
    proxy: bool = True
    via: str = "proxy"  # how the region's servers and clients reach etcd after part 1
    load_clients: int = 2
    load_rate: float = 100.0  # messages/s from all load clients together
    call_timeout: float = 10.0
    broadcasters: int = 4
    fanouts: int = 5
    fanin_rate: float = 500.0
    churn_rate: float = 100.0
    window: float = 20.0  # seconds of each steady-state measurement
    restarts: int = 1000
    rabbit_servers: int = 1000
    rabbit_per_process: int = 100
    etcd_dir: str | None = None  # where the members' data dirs go (default: the temp dir)
    smoke: bool = False
    parts: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def registrations(self) -> int:
        return self.hypervisors * len(AGENT_TOPICS)


class Region:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.cluster = EtcdCluster(3, data_root=opts.etcd_dir, extra_args=[
            "--auto-compaction-mode=periodic", "--auto-compaction-retention=1h"])
        self.proxies: list[EtcdProxy] = []
        self.hv: list[Worker] = []  # the compute processes
        self.agents: list[Worker] = []  # the agent processes (registrations only)
        self.load: list[Worker] = []
        self.control: Worker | None = None
        self._raw: Any = None
        self.mode = opts.via

    def start(self) -> Region:
        self.cluster.start()
        if self.opts.proxy:
            for _ in range(math.ceil(self.opts.registrations / PROXY_CLIENTS)):
                self.proxies.append(EtcdProxy(self.cluster.endpoints).start())
        self.config = EtcdConfig(self.cluster.endpoints, timeout=5.0)
        return self

    def etcd(self, mode: str | None = None) -> dict[str, Any]:
        """A worker's etcd arguments (`bench.scale.worker.etcd_config` reads them): the
        members, or the proxies with the ping interval they accept."""
        mode = mode or self.mode
        if mode == "proxy":
            assert self.proxies
            return {"endpoints": [p.endpoint for p in self.proxies],
                    "etcd_keepalive": PROXY_KEEPALIVE_S}
        return {"endpoints": list(self.cluster.endpoints)}

    def spawn_hypervisors(self, mode: str) -> list[Worker]:
        """Start every hypervisor process at once (a cold start); returns without waiting.
        Computes and agents run in separate processes, as they do on a hypervisor: the agents'
        registries never share an interpreter with the compute servers."""
        o = self.opts
        return [Worker("hv", first=first, count=min(o.per_process, o.hypervisors - first),
                       **self.etcd(mode), ttl=o.ttl, role=role, per_connection=o.per_connection)
                for first in range(0, o.hypervisors, o.per_process)
                for role in ("computes", "agents")]

    def adopt(self, workers: list[Worker]) -> None:
        """These hypervisor processes are the region's from now on."""
        self.hv = [w for w in workers if w.args["role"] == "computes"]
        self.agents = [w for w in workers if w.args["role"] == "agents"]

    def start_control_and_load(self) -> None:
        o = self.opts
        self.control = Worker("conductor", **self.etcd(), ttl=o.ttl)
        self.load = [Worker("load", id=i + 1, **self.etcd(), computes=o.hypervisors,
                            timeout=o.call_timeout) for i in range(o.load_clients)]
        start_all([self.control, *self.load])

    # -- what etcd holds -----------------------------------------------------------------

    def registered_keys(self) -> int | None:
        """How many hypervisor registrations etcd holds (None while it cannot say)."""
        try:
            if self._raw is None:
                self._raw = connect(self.config)
            total = 0
            for topic in AGENT_TOPICS:
                prefix = f"{self.config.az_prefix('default')}openstack/{topic}/".encode()
                resp = self._raw.get_range_response(prefix, _prefix_end(prefix),
                                                    count_only=True)
                total += int(resp.count)
            return total
        except Exception:  # etcd down or electing: "cannot say now" is the answer
            self._raw = None
            return None

    def member_pids(self) -> dict[str, int]:
        pids = {m.name: m.pid for m in self.cluster.members if m.pid}
        for i, proxy in enumerate(self.proxies, 1):
            if proxy.pid:
                pids[f"proxy{i}" if len(self.proxies) > 1 else "proxy"] = proxy.pid
        return pids

    def etcd_metric(self, name: str, **labels: str) -> dict[str, float]:
        out = {}
        for m in self.cluster.members:
            if m.running:
                out[m.name] = metric(m.metrics(), name, **labels)
        return out

    def hv_status(self, workers: list[Worker] | None = None) -> dict[str, int]:
        total: dict[str, int] = {}
        for s in ask_all(workers or [*self.hv, *self.agents], "status", timeout=120):
            for k, v in s.items():
                total[k] = total.get(k, 0) + int(v)
        return total

    def close(self) -> None:
        close_all([*self.load, *([self.control] if self.control else []), *self.hv,
                   *self.agents])
        if self._raw is not None:
            self._raw.close()
        for proxy in self.proxies:
            proxy.close()
        self.cluster.close()


def _prefix_end(prefix: bytes) -> bytes:
    from grpcrpc.discovery._etcd_client import prefix_end

    return prefix_end(prefix)


class Sampler:
    """Samples `read()` every `interval` seconds in a thread: a curve of (t, value)."""

    def __init__(self, read: Any, interval: float = 0.5) -> None:
        self.read, self.interval = read, interval
        self.curve: list[tuple[float, Any]] = []
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.curve.append((time.monotonic() - self.t0, self.read()))
            self._stop.wait(self.interval)

    def stop(self) -> list[tuple[float, Any]]:
        self._stop.set()
        self._thread.join()
        return self.curve


def wait_until(predicate: Any, timeout: float, interval: float = 0.25) -> float | None:
    """Seconds until `predicate()` held, or None if it did not within `timeout`."""
    t0 = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(interval)  # polling with a deadline


def deadline_for(opts: Options) -> float:
    """How long a region-wide step may take before it counts as failed: generous, by size."""
    return max(120.0, opts.registrations * 0.02, math.ceil(opts.ttl * 4))
