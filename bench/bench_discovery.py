"""How discovery in etcd scales: listing, watch delay, and the keepalive load of many servers.

    .venv/bin/python bench/bench_discovery.py            # about two minutes on 2 cores

(a) a resolver building its table from 10,000 endpoints (median of several starts; memory with
    tracemalloc in a separate run, since tracing slows the code it measures);
(b) put → visible in a resolver's table, p50/p99 over 100 changes, for a resolver of the whole
    tree (10,000 endpoints: every change rebuilds a big table) and one watching one topic;
(c) lease keepalives per second reaching etcd from 1,000 real `EtcdRegistry` objects (one lease
    and one connection each, as 1,000 server processes would have) in a few worker processes,
    read from etcd's own counters over a window, next to the 1000 / (TTL/3) it should be.

Each part starts its own etcd (Debian's `etcd`, in a temp dir). Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from typing import Any

from bench.results import record
from grpcrpc.discovery.base import Endpoint, RoutingTable
from grpcrpc.discovery.etcd import EtcdConfig, EtcdRegistry, EtcdResolver, connect
from grpcrpc.testing.etcd import EtcdServer

ROOT = pathlib.Path(__file__).resolve().parents[1]
Row = tuple[str, str, str]


def endpoint(i: int, topic: str = "compute", az: str | None = None) -> Endpoint:
    return Endpoint(
        address=f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:{40000 + i % 20000}",
        topic=topic, server=f"compute-{i:05d}.example.org", az=az or f"az{i % 3}",
        instance=f"{100000 + i}-{40000 + i % 20000}", version="6.1", pid=100000 + i,
        hostname=f"compute-{i:05d}.example.org", started_at=1.7e9 + i,
    )


def fill(raw: Any, config: EtcdConfig, n: int, leases: int = 8) -> None:
    """Put n endpoints directly, 100 to a transaction (etcd allows 128 ops), under a few leases."""
    lease_ids = [raw.lease(3600).id for _ in range(leases)]
    ops = []
    for i in range(n):
        ep = endpoint(i)
        ops.append(raw.transactions.put(config.key(ep), ep.to_json(), lease=lease_ids[i % leases]))
        if len(ops) == 100 or i == n - 1:
            raw.transaction(compare=[], success=ops, failure=[])
            ops = []


def part_a(n: int, runs: int) -> list[Row]:
    rows: list[Row] = []
    with EtcdServer() as etcd:
        config = EtcdConfig([etcd.endpoint], timeout=30.0)
        raw = connect(config)
        started = time.perf_counter()
        fill(raw, config, n)
        rows.append((f"(a) put {n:,} endpoints (100 per txn)",
                     f"{time.perf_counter() - started:.2f} s", "setup, not the resolver"))
        for page in (1000, 5000):
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                resolver = EtcdResolver(config, page_size=page, start_timeout=60)
                resolver.start()
                times.append(time.perf_counter() - started)
                assert len(resolver.table) == n, resolver.table
                resolver.close()
            rows.append((f"(a) resolver start → table of {n:,}, pages of {page}",
                         f"{statistics.median(times) * 1000:.0f} ms",
                         f"min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f} ms, {runs} runs"))
        tracemalloc.start()
        resolver = EtcdResolver(config, start_timeout=60)
        resolver.start()
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        resolver.close()
        rows.append((f"(a) resolver memory, {n:,} endpoints", f"{current / 2**20:.1f} MiB",
                     f"peak while listing {peak / 2**20:.1f} MiB (tracemalloc)"))
        eps = [endpoint(i) for i in range(n)]
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        table = RoutingTable.build(eps, 1)
        table_bytes = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        started = time.perf_counter()
        for _ in range(5):
            RoutingTable.build(eps, 1)
        build_ms = (time.perf_counter() - started) / 5 * 1000
        rows.append(("(a) RoutingTable.build alone (endpoints exist)",
                     f"{build_ms:.1f} ms", f"index {table_bytes / 2**20:.2f} MiB, {len(table)} eps"))
        raw.close()
    return rows


def propagation(raw: Any, config: EtcdConfig, resolver: EtcdResolver, changes: int,
                topic: str, az: str) -> list[float]:
    delays: list[float] = []
    for i in range(changes):
        ep = endpoint(500_000 + i, topic=topic, az=az)
        seen = threading.Event()

        def check(table: RoutingTable, ep: Endpoint = ep, seen: threading.Event = seen) -> None:
            if ep in table.endpoints:
                seen.set()

        unsubscribe = resolver.subscribe(check)
        started = time.perf_counter()
        raw.put(config.key(ep), ep.to_json())
        if not seen.wait(10):
            raise RuntimeError(f"change {i} not seen within 10 s")
        delays.append(time.perf_counter() - started)
        unsubscribe()
    for i in range(changes):
        raw.delete(config.key(endpoint(500_000 + i, topic=topic, az=az)))
    return delays


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def part_b(n: int, changes: int) -> list[Row]:
    rows: list[Row] = []
    with EtcdServer() as etcd:
        config = EtcdConfig([etcd.endpoint], timeout=30.0)
        raw = connect(config)
        fill(raw, config, n)
        cases = [
            (f"whole tree ({n:,} endpoints)", None, None, "compute"),
            ("one topic in one AZ (narrow watch)", "az0", ["bench"], "bench"),
        ]
        for what, az, topics, topic in cases:
            resolver = EtcdResolver(config, az=az, topics=topics, start_timeout=60)
            resolver.start()
            propagation(raw, config, resolver, 10, topic, "az0")  # warm up
            delays = propagation(raw, config, resolver, changes, topic, "az0")
            resolver.close()
            rows.append((f"(b) put → in table, {what}",
                         f"p50 {pct(delays, 0.5) * 1000:.1f} ms",
                         f"p99 {pct(delays, 0.99) * 1000:.1f} ms, max "
                         f"{max(delays) * 1000:.1f} ms, {changes} changes"))
        raw.close()
    return rows


def metric(text: str, name: str, method: str | None = None) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (method is None or f'grpc_method="{method}"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def part_c(registries: int, processes: int, ttl: float, window: float) -> list[Row]:
    rows: list[Row] = []
    per = registries // processes
    with EtcdServer() as etcd:
        workers = [
            subprocess.Popen([sys.executable, "-m", "bench.bench_discovery", "--worker",
                              etcd.endpoint, str(per), str(ttl)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
            for _ in range(processes)
        ]
        try:
            for w in workers:
                assert w.stdout is not None
                line = w.stdout.readline()
                if not line.startswith("READY"):
                    raise RuntimeError(f"worker failed: {line!r}")
            time.sleep(ttl / 3 + 2)  # a benchmark window: every loop reaches its steady period
            before, t0 = etcd.metrics(), time.monotonic()
            time.sleep(window)
            after, t1 = etcd.metrics(), time.monotonic()
        finally:
            for w in workers:
                assert w.stdin is not None
                w.stdin.close()
            for w in workers:
                w.wait(60)
        span = t1 - t0

        def rate(name: str, method: str | None = None) -> float:
            return (metric(after, name, method) - metric(before, name, method)) / span

        expected = registries / (ttl / 3)
        rows.append((f"(c) keepalives/s, {registries:,} registries, TTL {ttl:g}s, computed",
                     f"{expected:.0f} /s", "registries / (TTL/3)"))
        rows.append(("(c) keepalives/s measured (etcd lease renewals)",
                     f"{rate('etcd_debugging_lease_renewed_total'):.0f} /s",
                     f"LeaseKeepAlive msgs {rate('grpc_server_msg_received_total', 'LeaseKeepAlive'):.0f}"
                     f"/s, streams {rate('grpc_server_started_total', 'LeaseKeepAlive'):.0f}/s, "
                     f"{span:.0f} s window, {processes} processes"))
        rows.append(("(c) etcd CPU for those keepalives",
                     f"{rate('process_cpu_seconds_total') * 100:.1f} % of a core",
                     f"RSS {metric(after, 'process_resident_memory_bytes') / 2**20:.0f} MiB with "
                     f"{registries:,} client connections"))
    return rows


def worker(etcd: str, count: int, ttl: float) -> None:
    """`count` registries, one endpoint each; exits (revoking every lease) when stdin closes."""
    config = EtcdConfig([etcd], timeout=30.0)
    registries = [EtcdRegistry(config, ttl=ttl) for _ in range(count)]
    for i, registry in enumerate(registries):
        registry.announce(endpoint(os.getpid() * 1000 + i, topic="keepalive"))
    if not all(r.wait_registered(60) for r in registries):
        print("NOT-REGISTERED", flush=True)
        return
    print("READY", flush=True)
    sys.stdin.read()
    for registry in registries:
        registry.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--endpoints", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--registries", type=int, default=1_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--ttl", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--worker", nargs=3, metavar=("ETCD", "COUNT", "TTL"))
    parser.add_argument("--smoke", action="store_true", help="tiny counts: checks it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.endpoints, args.runs, args.changes = 200, 1, 5
        args.registries, args.processes, args.window = 20, 1, 2.0
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), float(args.worker[2]))
        return
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.2f}; results on a busy machine mislead",
              file=sys.stderr)
    started = time.monotonic()
    rows = part_a(args.endpoints, args.runs)
    rows += part_b(args.endpoints, args.changes)
    rows += part_c(args.registries, args.processes, args.ttl, args.window)
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    print(f"\ngrpcrpc discovery bench — etcd 3.4, {os.cpu_count()} cores, "
          f"load {load:.2f}, {time.monotonic() - started:.0f} s")
    print("  ".join(h.ljust(w) for h, w in zip(("what", "result", "detail"), width, strict=True)))
    print("  ".join("-" * w for w in width))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, width, strict=True)))
    record("discovery", "table", [{"what": r[0], "result": r[1], "detail": r[2]} for r in rows])


if __name__ == "__main__":
    main()
