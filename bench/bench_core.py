"""grpcrpc against raw grpcio, side by side: sequential calls, 64 in flight, casts.

Both sides send the same JSON payload (`{"x": i}`), so the difference is grpcrpc's envelope,
routing and dispatch. The raw references: a unary echo handler (sync and grpc.aio clients), and a
one-way client stream into a counting handler for casts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import grpc.aio

from bench.common import (
    Series,
    busy_fraction,
    percentile,
    pin_client,
    print_table,
    run_async,
    server_process,
)
from bench.results import record
from grpcrpc import AsyncRPCClient, Endpoint, RPCClient, StaticResolver, Target

ECHO = "/bench.Raw/Echo"
ECHO_JSON = "/bench.Raw/EchoJson"
SINK = "/bench.Raw/Sink"


def _resolver(address: str) -> StaticResolver:
    return StaticResolver([Endpoint(address, "bench", "b1")])


# -- sync: sequential or N threads ------------------------------------------------------------

Lat = tuple[list[float], float]  # latencies, calls/s


def _timed_sync(one: Callable[[int], object], n: int, threads: int) -> Lat:
    for i in range(min(200, n)):
        one(i)
    lat: list[float] = []
    counter = iter(range(n))
    lock = threading.Lock()

    def worker() -> None:
        mine = []
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            t = time.perf_counter()
            one(i)
            mine.append(time.perf_counter() - t)
        with lock:
            lat.extend(mine)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return lat, n / (time.perf_counter() - start)


def raw_sync(address: str, n: int, threads: int, payload: object) -> Lat:
    with grpc.insecure_channel(address) as channel:
        echo = channel.unary_unary(ECHO)
        return _timed_sync(lambda i: json.loads(echo(json.dumps({"x": payload}).encode(),
                                                      timeout=30)), n, threads)


def rpc_sync(address: str, n: int, threads: int, payload: object) -> Lat:
    with RPCClient(_resolver(address), Target(topic="bench"), timeout=30) as client:
        return _timed_sync(lambda i: client.call({}, "echo", x=payload), n, threads)


# -- asyncio: sequential or N in flight --------------------------------------------------------

async def _timed_async(one: Callable[[int], Awaitable[object]], n: int, concurrency: int) -> Lat:
    for i in range(min(200, n)):
        await one(i)
    lat: list[float] = []
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            t = time.perf_counter()
            await one(i)
            lat.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat, n / (time.perf_counter() - start)


def raw_aio(address: str, n: int, concurrency: int, payload: object, method: str = ECHO) -> Lat:
    async def go() -> Lat:
        async with grpc.aio.insecure_channel(address) as channel:
            echo = channel.unary_unary(method)

            async def one(i: int) -> None:
                json.loads(await echo(json.dumps({"x": payload}).encode(), timeout=30))

            return await _timed_async(one, n, concurrency)

    return run_async(go())


def rpc_aio(address: str, n: int, concurrency: int, payload: object) -> Lat:
    async def go() -> Lat:
        async with AsyncRPCClient(_resolver(address), Target(topic="bench"), timeout=30) as client:
            return await _timed_async(lambda i: client.call({}, "echo", x=payload), n, concurrency)

    return run_async(go())


# -- casts ------------------------------------------------------------------------------------

def raw_oneway(address: str, n: int) -> float:
    async def go() -> float:
        async with grpc.aio.insecure_channel(address) as channel:
            sink = channel.stream_unary(SINK)

            async def messages(count: int) -> AsyncIterator[bytes]:
                for i in range(count):
                    yield json.dumps({"x": i}).encode()

            await sink(messages(200), timeout=60)
            start = time.perf_counter()
            got = int(await sink(messages(n), timeout=120))
            elapsed = time.perf_counter() - start
            assert got == n, (got, n)
            return n / elapsed

    return run_async(go())


def rpc_cast(address: str, n: int, in_flight: int = 256) -> float:
    """Casts with `in_flight` outstanding; the rate counts only casts the server consumed."""
    async def go() -> float:
        async with AsyncRPCClient(_resolver(address), Target(topic="bench"), timeout=30) as client:
            before = await client.call({}, "count")
            counter = iter(range(n))

            async def worker() -> None:
                for i in counter:
                    await client.cast({}, "consume", x=i)

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(in_flight)))
            while await client.call({}, "count") - before < n:
                await asyncio.sleep(0.001)
            return n / (time.perf_counter() - start)

    return run_async(go())


def host_states(size: int) -> list[dict[str, object]]:
    """About `size` bytes of JSON shaped like nova's host states: many small values."""
    one = {"host": "compute-00000", "nodename": "node-00000", "free_ram_mb": 65536,
           "free_disk_gb": 2048, "vcpus_used": 12, "aggregates": ["az1", "ssd"],
           "metrics": {"cpu.percent": 37.5, "numa": [0, 1]}}
    count = max(1, size // len(json.dumps(one)))
    return [{**one, "host": f"compute-{i:05d}", "nodename": f"node-{i:05d}"} for i in range(count)]


SYSTEMS = {
    "raw grpcio sync": raw_sync, "grpcrpc RPCClient": rpc_sync,
    "raw grpc.aio": raw_aio, "grpcrpc AsyncRPCClient": rpc_aio,
}
RAW_OF = {"grpcrpc RPCClient": "raw grpcio sync", "grpcrpc AsyncRPCClient": "raw grpc.aio"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--casts", type=int, default=20000)
    parser.add_argument("--smoke", action="store_true", help="tiny counts: checks it runs")
    args = parser.parse_args(argv)
    concurrency = (1, 8, 64, 256)
    payloads = (100, 10_000, 100_000, 1_000_000)  # 100 KB: nova's larger RPC payloads
    # Structured payloads (nova's host states, request specs: many small values, no long
    # string) of about these sizes; the raw server decodes and re-encodes them, as any real one.
    structured = (100_000, 1_000_000)
    if args.smoke:
        args.reps, args.calls, args.casts = 1, 40, 200
        concurrency, payloads, structured = (1, 8), (100,), (10_000,)
    pin_client()
    busy = busy_fraction()
    if busy > 0.15 and not args.smoke:
        print(f"warning: the machine was {busy:.0%} busy before the run; figures will be noisy")
    rate: dict[tuple[str, int], Series] = {}
    p99: dict[tuple[str, int], Series] = {}
    p50: dict[tuple[str, int], Series] = {}
    size_rate: dict[tuple[str, int], Series] = {}
    size_p50: dict[tuple[str, int], Series] = {}
    struct_rate: dict[tuple[str, int], Series] = {}
    casts: dict[str, Series] = {"raw": Series(), "rpc": Series()}
    latencies: dict[str, list[float]] = {}
    n = args.calls
    small = "x" * 20
    with server_process("raw") as raw, server_process("grpcrpc") as rpc:
        for rep in range(args.reps):
            print(f"repetition {rep + 1}/{args.reps} ...", flush=True)
            # Interleaved: each system runs right after its reference, so drift hits both alike.
            for c in concurrency:
                for system, fn in SYSTEMS.items():
                    address = rpc if system.startswith("grpcrpc") else raw
                    lat, r = fn(address, n if c < 64 else n * 3, c, small)
                    rate.setdefault((system, c), Series()).values.append(r)
                    p50.setdefault((system, c), Series()).values.append(percentile(lat, 0.5))
                    p99.setdefault((system, c), Series()).values.append(percentile(lat, 0.99))
                    if c == 1:
                        latencies[system] = lat
            for size in payloads:
                body = "x" * size
                count = max(20, n // 10) if size >= 1_000_000 else n
                for system in ("raw grpc.aio", "grpcrpc AsyncRPCClient"):
                    address = rpc if system.startswith("grpcrpc") else raw
                    lat, r = SYSTEMS[system](address, count, 1, body)
                    size_rate.setdefault((system, size), Series()).values.append(r)
                    size_p50.setdefault((system, size), Series()).values.append(percentile(lat, 0.5))
            for size in structured:
                body = host_states(size)
                count = max(20, n // 10) if size >= 1_000_000 else max(50, n // 3)
                _, r = raw_aio(raw, count, 1, body, ECHO_JSON)
                struct_rate.setdefault(("raw grpc.aio", size), Series()).values.append(r)
                _, r = rpc_aio(rpc, count, 1, body)
                struct_rate.setdefault(("grpcrpc AsyncRPCClient", size), Series()).values.append(r)
            casts["raw"].values.append(raw_oneway(raw, args.casts))
            casts["rpc"].values.append(rpc_cast(rpc, args.casts))
    rows = []
    for system in SYSTEMS:
        ref = RAW_OF.get(system)
        rows.append(("call sequential: p50", system, p50[(system, 1)], "ms",
                     p50[(ref, 1)] if ref else None, True))
    for c in concurrency:
        for system in SYSTEMS:
            ref = RAW_OF.get(system)
            label = "threads" if system in ("raw grpcio sync", "grpcrpc RPCClient") else "in flight"
            rows.append((f"call x{c} {label}: rate", system, rate[(system, c)], "/s",
                         rate[(ref, c)] if ref else None, False))
            rows.append((f"call x{c} {label}: p99", system, p99[(system, c)], "ms",
                         p99[(ref, c)] if ref else None, True))
    for size in payloads:
        for system in ("raw grpc.aio", "grpcrpc AsyncRPCClient"):
            ref = RAW_OF.get(system)
            rows.append((f"call {size} B payload: rate", system, size_rate[(system, size)], "/s",
                         size_rate[(ref, size)] if ref else None, False))
    for size in structured:
        ref_series = struct_rate[("raw grpc.aio", size)]
        rows.append((f"call {size} B structured: rate", "raw grpc.aio (decodes)", ref_series, "/s",
                     None, False))
        rows.append((f"call {size} B structured: rate", "grpcrpc AsyncRPCClient",
                     struct_rate[("grpcrpc AsyncRPCClient", size)], "/s", ref_series, False))
    rows.append(("cast throughput (consumed)", "raw one-way stream", casts["raw"], "/s", None, False))
    rows.append(("cast throughput (consumed)", "grpcrpc cast x256", casts["rpc"], "/s", casts["raw"],
                 False))
    print()
    print_table(rows, section="core")
    record("core", "sweep", {system: {str(c): {"rate": rate[(system, c)].median,
                                               "p99": p99[(system, c)].median}
                                      for c in concurrency} for system in SYSTEMS})
    record("core", "latencies", latencies)


if __name__ == "__main__":
    main()
