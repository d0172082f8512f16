"""Typed contracts against dict-style calls: the same select_destinations, side by side.

The typed side is the generated `SchedulerClient` calling the generated servicer (protobuf messages
packed in `Any`); the dict side is `RPCClient.call` with the same data as keyword arguments (JSON)
to a dict-style endpoint. Both servers run in one process pinned to the server core
(`bench/typed_server.py`), the client on the client core; repetitions interleave dict/typed, and
the table gives median, spread and the typed/dict ratio.

    python -m bench.bench_typed [--reps 3] [--calls 3000] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench.common import SERVER_CORE, Series, busy_fraction, percentile, pin_client, print_table, run_async
from bench.typed_server import DICT_TOPIC
from grpcrpc import AsyncRPCClient, Endpoint, RPCClient, StaticResolver, Target
from grpcrpc.examples.nova import common_pb2, scheduler_pb2
from grpcrpc.examples.nova.scheduler_grpcrpc import AsyncSchedulerClient, SchedulerClient

REQUEST = scheduler_pb2.SelectDestinationsRequest(
    spec=scheduler_pb2.RequestSpec(flavor=common_pb2.Flavor(name="m1.small", vcpus=2, memory_mb=2048),
                                   image_ref="cirros", num_instances=1),
    instance_uuids=["6f1d0b1e-7c5e-4a38-9d1e-0d6c1a2b3c4d"],
)
KWARGS: dict[str, Any] = {
    "spec": {"flavor": {"name": "m1.small", "vcpus": 2, "memory_mb": 2048}, "image_ref": "cirros",
             "num_instances": 1},
    "instance_uuids": ["6f1d0b1e-7c5e-4a38-9d1e-0d6c1a2b3c4d"],
}
DICT_TARGET = Target(topic=DICT_TOPIC, exchange="nova", version="4.0")


@contextmanager
def servers() -> Iterator[tuple[str, str]]:
    """Start bench/typed_server.py on the server core; yields (typed address, dict address)."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.typed_server", str(SERVER_CORE)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if len(line) != 3 or line[0] != "ADDRESS":
            raise RuntimeError(f"typed_server did not start: {line}")
        yield line[1], line[2]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _resolver(typed: str, plain: str) -> StaticResolver:
    return StaticResolver([Endpoint(typed, "scheduler", "b1", exchange="nova"),
                           Endpoint(plain, DICT_TOPIC, "b1", exchange="nova")])


def _timed_sync(one: Callable[[], object], n: int) -> tuple[float, float]:
    for _ in range(min(200, n)):  # warm up connections and caches
        one()
    lat = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        one()
        lat.append(time.perf_counter() - t)
    return percentile(lat, 0.5), n / (time.perf_counter() - start)


async def _timed_async(one: Callable[[], Awaitable[object]], n: int, concurrency: int) -> float:
    for _ in range(min(200, n)):
        await one()
    left = iter(range(n))

    async def worker() -> None:
        for _ in left:
            await one()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - start)


def sync_seq(kind: str, addresses: tuple[str, str], n: int) -> tuple[float, float]:
    if kind == "typed":
        with SchedulerClient(_resolver(*addresses), timeout=10) as typed:
            return _timed_sync(lambda: typed.select_destinations({}, REQUEST), n)
    with RPCClient(_resolver(*addresses), DICT_TARGET, timeout=10) as plain:
        return _timed_sync(lambda: plain.call({}, "select_destinations", **KWARGS), n)


def aio_concurrent(kind: str, addresses: tuple[str, str], n: int, concurrency: int = 64) -> float:
    async def go() -> float:
        if kind == "typed":
            async with AsyncSchedulerClient(_resolver(*addresses), timeout=10) as typed:
                return await _timed_async(lambda: typed.select_destinations({}, REQUEST), n, concurrency)
        async with AsyncRPCClient(_resolver(*addresses), DICT_TARGET, timeout=10) as plain:
            return await _timed_async(lambda: plain.call({}, "select_destinations", **KWARGS), n,
                                      concurrency)

    return run_async(go())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--smoke", action="store_true", help="tiny counts: checks it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.reps, args.calls = 1, 50
    pin_client()
    busy = busy_fraction()
    if busy > 0.15 and not args.smoke:
        print(f"warning: the machine was {busy:.0%} busy before the run; figures will be noisy")
    s: dict[str, Series] = {}

    def add(key: str, value: float) -> None:
        s.setdefault(key, Series()).values.append(value)

    with servers() as addresses:
        # Check both sides answer the same before timing anything.
        with SchedulerClient(_resolver(*addresses), timeout=10) as typed, \
                RPCClient(_resolver(*addresses), DICT_TARGET, timeout=10) as plain:
            want = plain.call({}, "select_destinations", **KWARGS)
            got = typed.select_destinations({}, REQUEST)
            assert [h.service_host for h in got.destinations[0].hosts] == [
                h["service_host"] for h in want["destinations"][0]["hosts"]]
        for rep in range(args.reps):
            print(f"repetition {rep + 1}/{args.reps} ...", flush=True)
            # Interleaved: each pair runs back to back, so drift hits both alike.
            for kind in ("dict", "typed"):
                p50, rate = sync_seq(kind, addresses, args.calls)
                add(f"seq_p50_{kind}", p50)
                add(f"seq_rate_{kind}", rate)
            for kind in ("dict", "typed"):
                add(f"c64_{kind}", aio_concurrent(kind, addresses, args.calls * 3))
    print()
    print_table([
        ("call sequential, sync: p50", "dict RPCClient.call", s["seq_p50_dict"], "ms", None, True),
        ("call sequential, sync: p50", "typed SchedulerClient", s["seq_p50_typed"], "ms",
         s["seq_p50_dict"], True),
        ("call sequential, sync: rate", "dict RPCClient.call", s["seq_rate_dict"], "/s", None, False),
        ("call sequential, sync: rate", "typed SchedulerClient", s["seq_rate_typed"], "/s",
         s["seq_rate_dict"], False),
        ("call, 64 in flight, asyncio", "dict AsyncRPCClient", s["c64_dict"], "/s", None, False),
        ("call, 64 in flight, asyncio", "typed AsyncScheduler", s["c64_typed"], "/s", s["c64_dict"],
         False),
    ], section="typed")


if __name__ == "__main__":
    main()
