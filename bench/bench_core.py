"""grpcrpc against raw grpcio, side by side: sequential calls, 64 in flight, casts.

Both sides send the same JSON payload (`{"x": i}`), so the difference is grpcrpc's envelope,
routing and dispatch. The raw references: a unary echo handler (sync and grpc.aio clients), and a
one-way client stream into a counting handler for casts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import grpc
import grpc.aio

from bench.common import Series, busy_fraction, percentile, pin_client, print_table, run_async, server_process
from grpcrpc import AsyncRPCClient, Endpoint, RPCClient, StaticResolver, Target

ECHO = "/bench.Raw/Echo"
SINK = "/bench.Raw/Sink"


def _resolver(address: str) -> StaticResolver:
    return StaticResolver([Endpoint(address, "bench", "b1")])


# -- sequential, sync -------------------------------------------------------------------------

def raw_sync_seq(address: str, n: int) -> tuple[float, float]:
    with grpc.insecure_channel(address) as channel:
        echo = channel.unary_unary(ECHO)

        def one(i: int) -> None:
            json.loads(echo(json.dumps({"x": i}).encode(), timeout=10))

        return _timed_sync(one, n)


def rpc_sync_seq(address: str, n: int) -> tuple[float, float]:
    with RPCClient(_resolver(address), Target(topic="bench"), timeout=10) as client:
        return _timed_sync(lambda i: client.call({}, "echo", x=i), n)


def _timed_sync(one: Callable[[int], object], n: int) -> tuple[float, float]:
    for i in range(min(200, n)):
        one(i)
    lat = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        one(i)
        lat.append(time.perf_counter() - t)
    return percentile(lat, 0.5), n / (time.perf_counter() - start)


# -- asyncio: sequential and concurrent -------------------------------------------------------

async def _timed_async(one: Callable[[int], Awaitable[object]], n: int, concurrency: int
                       ) -> tuple[float, float]:
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
    return percentile(lat, 0.5), n / (time.perf_counter() - start)


def raw_aio(address: str, n: int, concurrency: int) -> tuple[float, float]:
    async def go() -> tuple[float, float]:
        async with grpc.aio.insecure_channel(address) as channel:
            echo = channel.unary_unary(ECHO)

            async def one(i: int) -> None:
                json.loads(await echo(json.dumps({"x": i}).encode(), timeout=10))

            return await _timed_async(one, n, concurrency)

    return run_async(go())


def rpc_aio(address: str, n: int, concurrency: int) -> tuple[float, float]:
    async def go() -> tuple[float, float]:
        async with AsyncRPCClient(_resolver(address), Target(topic="bench"), timeout=10) as client:
            return await _timed_async(lambda i: client.call({}, "echo", x=i), n, concurrency)

    return run_async(go())


# -- casts ------------------------------------------------------------------------------------

def raw_oneway(address: str, n: int) -> float:
    async def go() -> float:
        async with grpc.aio.insecure_channel(address) as channel:
            sink = channel.stream_unary(SINK)

            async def messages(count: int):  # type: ignore[no-untyped-def]
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--casts", type=int, default=20000)
    parser.add_argument("--smoke", action="store_true", help="tiny counts: checks it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.reps, args.calls, args.casts = 1, 50, 200
    pin_client()
    busy = busy_fraction()
    if busy > 0.15 and not args.smoke:
        print(f"warning: the machine was {busy:.0%} busy before the run; figures will be noisy")
    s: dict[str, Series] = {}

    def add(key: str, value: float) -> None:
        s.setdefault(key, Series()).values.append(value)

    n, c = args.calls, args.casts
    with server_process("raw") as raw, server_process("grpcrpc") as rpc:
        for rep in range(args.reps):
            print(f"repetition {rep + 1}/{args.reps} ...", flush=True)
            # Interleaved: each pair runs back to back, so drift hits both alike.
            for key, fn in (("raw", lambda: raw_sync_seq(raw, n)),
                            ("rpc", lambda: rpc_sync_seq(rpc, n))):
                p50, rate = fn()
                add(f"sync_seq_p50_{key}", p50)
                add(f"sync_seq_rate_{key}", rate)
            for key, fn in (("raw", lambda: raw_aio(raw, n, 1)), ("rpc", lambda: rpc_aio(rpc, n, 1))):
                p50, rate = fn()
                add(f"aio_seq_p50_{key}", p50)
                add(f"aio_seq_rate_{key}", rate)
            for key, fn in (("raw", lambda: raw_aio(raw, n * 3, 64)),
                            ("rpc", lambda: rpc_aio(rpc, n * 3, 64))):
                _, rate = fn()
                add(f"aio64_rate_{key}", rate)
            add("cast_raw", raw_oneway(raw, c))
            add("cast_rpc", rpc_cast(rpc, c))
    print()
    print_table([
        ("call sequential, sync: p50", "raw grpcio unary", s["sync_seq_p50_raw"], "ms", None, True),
        ("call sequential, sync: p50", "grpcrpc RPCClient", s["sync_seq_p50_rpc"], "ms",
         s["sync_seq_p50_raw"], True),
        ("call sequential, sync: rate", "raw grpcio unary", s["sync_seq_rate_raw"], "/s", None, False),
        ("call sequential, sync: rate", "grpcrpc RPCClient", s["sync_seq_rate_rpc"], "/s",
         s["sync_seq_rate_raw"], False),
        ("call sequential, asyncio: p50", "raw grpc.aio unary", s["aio_seq_p50_raw"], "ms", None, True),
        ("call sequential, asyncio: p50", "grpcrpc AsyncRPCClient", s["aio_seq_p50_rpc"], "ms",
         s["aio_seq_p50_raw"], True),
        ("call sequential, asyncio: rate", "raw grpc.aio unary", s["aio_seq_rate_raw"], "/s", None,
         False),
        ("call sequential, asyncio: rate", "grpcrpc AsyncRPCClient", s["aio_seq_rate_rpc"], "/s",
         s["aio_seq_rate_raw"], False),
        ("call, 64 in flight, asyncio", "raw grpc.aio unary", s["aio64_rate_raw"], "/s", None, False),
        ("call, 64 in flight, asyncio", "grpcrpc AsyncRPCClient", s["aio64_rate_rpc"], "/s",
         s["aio64_rate_raw"], False),
        ("cast throughput (consumed)", "raw one-way stream", s["cast_raw"], "/s", None, False),
        ("cast throughput (consumed)", "grpcrpc cast x256", s["cast_rpc"], "/s", s["cast_raw"],
         False),
    ])


if __name__ == "__main__":
    main()
