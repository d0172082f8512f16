"""Shared benchmark plumbing: core pinning, server processes, idle check, statistics, tables.

These machines are shared and their speed drifts, so every figure is taken side by side in one
run: client and server pinned to separate cores, repetitions interleaved A/B/A/B, and the table
reports the median and spread of the repetitions and ratios to the reference.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

HERE = pathlib.Path(__file__).resolve().parent
CLIENT_CORE = 0
SERVER_CORE = 1


def pin_client() -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {CLIENT_CORE})


def busy_fraction(interval: float = 0.5) -> float:
    """How busy the machine's cores were over `interval` (from /proc/stat)."""
    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    t1, i1 = read()
    time.sleep(interval)
    t2, i2 = read()
    return 1.0 - (i2 - i1) / max(1, t2 - t1)


@contextmanager
def server_process(kind: str, *args: str) -> Iterator[str]:
    """Start `bench/servers.py KIND` pinned to the server core; yields its address."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "servers.py"), kind, str(SERVER_CORE), *args],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if not line or line[0] != "ADDRESS":
            raise RuntimeError(f"server {kind} did not start: {line}")
        yield line[1]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def percentile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, int(q * len(s)))]


@dataclass
class Series:
    """Repetitions of one measure for one system."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def spread(self) -> float:
        """(max - min) / median, as a fraction."""
        if len(self.values) < 2 or not self.median:
            return 0.0
        return (max(self.values) - min(self.values)) / self.median


def fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value * 1000:.3f} ms"
    if value >= 10_000:
        return f"{value / 1000:.1f} k/s"
    return f"{value:.0f} /s"


Row = tuple[str, str, Series, str, "Series | None", bool]


def print_table(rows: list[Row], section: str | None = None) -> None:
    """rows: (scenario, system, series, unit, reference series or None, lower_is_better).
    With `section`, the rows also go into the results JSON (bench/results.py)."""
    if section is not None:
        from bench.results import record

        record(section, "table", [
            {"scenario": sc, "system": sy, "median": se.median, "spread": se.spread,
             "values": se.values, "unit": unit,
             "ratio": se.median / ref.median if ref is not None and ref.median else None}
            for sc, sy, se, unit, ref, _ in rows])
    print(f"{'scenario':34} {'system':22} {'median':>12} {'spread':>7} {'vs ref':>8}")
    print("-" * 87)
    for scenario, system, series, unit, ref, _lower in rows:
        ratio = f"{series.median / ref.median:.2f}x" if ref is not None and ref.median else ""
        print(f"{scenario:34} {system:22} {fmt(series.median, unit):>12} "
              f"{series.spread * 100:6.1f}% {ratio:>8}")


_loop: asyncio.AbstractEventLoop | None = None


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on this process's one benchmark loop. grpc.aio binds its poller to a loop:
    a new loop per measurement (asyncio.run) leaves callbacks aimed at closed loops."""
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
    return _loop.run_until_complete(coro)


async def call_profile(call: Callable[[int], Awaitable[object]], n: int) -> dict[str, float]:
    """Warm up, then: sequential p50 and calls/s over `n` calls, and calls/s with 64 in flight
    over 3n calls."""
    for i in range(200):
        await call(i)
    lat = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        await call(i)
        lat.append(time.perf_counter() - t)
    seq = n / (time.perf_counter() - start)
    counter = iter(range(n * 3))

    async def worker() -> None:
        for i in counter:
            await call(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(64)))
    return {"p50": percentile(lat, 0.5), "seq": seq, "c64": n * 3 / (time.perf_counter() - start)}
