"""Fanout through broadcasters: exactly-once delivery, reports, failover, AZs, splitting."""

from __future__ import annotations

import asyncio
import collections
import pathlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

import grpcrpc
from grpcrpc import AsyncRPCClient, Endpoint, MemoryDiscovery, RPCServer, Target, TransportOptions
from grpcrpc.broadcaster import Broadcaster, BroadcasterOptions
from grpcrpc.transport.base import FANOUT_METHOD

HERE = pathlib.Path(__file__).parent


class Counter:
    """Counts each fanout message id it receives, per server."""

    def __init__(self, name: str, seen: collections.Counter[tuple[str, int]]) -> None:
        self.name = name
        self.seen = seen

    async def update(self, ctxt: Any, n: int) -> None:
        self.seen[(self.name, n)] += 1


@asynccontextmanager
async def servers(discovery: MemoryDiscovery, count: int, topic: str = "compute", az: str = "default",
                  prefix: str = "h") -> AsyncIterator[collections.Counter[tuple[str, int]]]:
    seen: collections.Counter[tuple[str, int]] = collections.Counter()
    started = []
    try:
        for i in range(count):
            s = RPCServer(Target(topic=topic, server=f"{prefix}{i}"), [Counter(f"{prefix}{i}", seen)],
                          registry=discovery, az=az)
            await s.start()
            started.append(s)
        yield seen
    finally:
        await asyncio.gather(*(s.stop(grace=1) for s in started))


@asynccontextmanager
async def broadcasters(discovery: MemoryDiscovery, count: int, az: str = "default",
                       options: BroadcasterOptions | None = None) -> AsyncIterator[list[Broadcaster]]:
    bs = [Broadcaster(discovery, registry=discovery, name=f"b-{az}-{i}", az=az, options=options)
          for i in range(count)]
    try:
        for b in bs:
            await b.start()
        yield bs
    finally:
        await asyncio.gather(*(b.stop(grace=1) for b in bs))


async def crash(b: Broadcaster) -> None:
    """Stop serving without withdrawing, as a killed process would leave its key behind."""
    await b.host.close(0)


async def until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_fifty_servers_each_receive_every_fanout_exactly_once() -> None:
    d = MemoryDiscovery()
    async with servers(d, 50) as seen, broadcasters(d, 1) as [b]:
        async with AsyncRPCClient(d, Target(topic="compute", fanout=True), timeout=10) as client:
            for n in range(3):
                report = await client.cast({}, "update", n=n)
                assert report == grpcrpc.FanoutReport(targets=50, delivered=50)
            await until(lambda: sum(seen.values()) == 150)
            assert set(seen.values()) == {1}
            assert {n for _, n in seen} == {0, 1, 2}
        assert b.fanouts == 3 and b.deliveries == 150


def test_sync_client_uses_the_broadcaster() -> None:
    async def setup_and_run() -> None:
        d = MemoryDiscovery()
        async with servers(d, 5) as seen, broadcasters(d, 1) as [b]:
            def sync_part() -> grpcrpc.FanoutReport | None:
                with grpcrpc.RPCClient(d, Target(topic="compute", fanout=True)) as client:
                    return client.cast({}, "update", n=1)
            report = await asyncio.to_thread(sync_part)
            assert report == grpcrpc.FanoutReport(targets=5, delivered=5)
            await until(lambda: len(seen) == 5)
            assert b.fanouts == 1
    asyncio.run(setup_and_run())


async def test_a_killed_server_is_reported_and_the_others_receive() -> None:
    d = MemoryDiscovery()
    proc = subprocess.Popen([sys.executable, str(HERE / "server_main.py"), "compute", "victim"],
                            stdout=subprocess.PIPE, text=True, cwd=HERE.parent.parent)
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().split()[1]
        d.announce(Endpoint(address, "compute", "victim"))
        async with servers(d, 10) as seen, broadcasters(d, 1):
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            async with AsyncRPCClient(d, Target(topic="compute", fanout=True), timeout=10) as c:
                report = await c.cast({}, "update", n=1)
            assert report is not None
            assert (report.targets, report.delivered) == (11, 10)
            assert [f.server for f in report.failures] == ["victim"]
            await until(lambda: len(seen) == 10)
    finally:
        proc.kill()
        proc.wait(10)


async def test_a_killed_broadcaster_is_skipped_and_fallback_is_configurable() -> None:
    d = MemoryDiscovery()
    async with servers(d, 4) as seen, broadcasters(d, 2) as (b1, b2):
        await crash(b1)
        async with AsyncRPCClient(d, Target(topic="compute", fanout=True), timeout=10,
                                  options=TransportOptions(balancer="round_robin")) as client:
            for n in range(4):
                report = await client.cast({}, "update", n=n)
                assert report is not None and report.delivered == 4
        assert b2.fanouts == 4
        await crash(b2)
        # No broadcaster reachable: the client delivers itself (nothing was sent to any).
        async with AsyncRPCClient(d, Target(topic="compute", fanout=True), timeout=10) as client:
            report = await client.cast({}, "update", n=9)
            assert report is not None and report.delivered == 4
        off = TransportOptions(client_fanout_fallback=False)
        async with AsyncRPCClient(d, Target(topic="compute", fanout=True), options=off) as client:
            with pytest.raises(grpcrpc.NoEndpoints, match="client fanout is off"):
                await client.cast({}, "update", n=10)
        await until(lambda: sum(seen.values()) == 20)
        assert set(seen.values()) == {1}


async def test_fanout_stays_in_the_callers_az() -> None:
    d = MemoryDiscovery()
    async with servers(d, 3, az="az1", prefix="a") as seen1, \
            servers(d, 4, az="az2", prefix="b") as seen2, \
            broadcasters(d, 1, az="az1") as [b1], broadcasters(d, 1, az="az2") as [b2]:
        opts = TransportOptions(az="az1", fallback_azs=("az2",))
        async with AsyncRPCClient(d, Target(topic="compute", fanout=True), options=opts) as c:
            report = await c.cast({}, "update", n=1)
            assert report is not None and report.targets == 3
            other = await c.prepare(az="az2").cast({}, "update", n=2)
            assert other is not None and other.targets == 4
        await until(lambda: len(seen1) == 3 and len(seen2) == 4)
        assert {n for _, n in seen1} == {1} and {n for _, n in seen2} == {2}
        assert (b1.fanouts, b2.fanouts) == (1, 1)
        # Client-side fanout obeys the same rule: fallback AZs are not for fanouts.
        direct = TransportOptions(az="az1", fallback_azs=("az2",), use_broadcaster=False)
        async with AsyncRPCClient(d, Target(topic="compute", fanout=True), options=direct) as c:
            report = await c.cast({}, "update", n=3)
            assert report is not None and report.targets == 3


async def test_large_topics_are_split_among_peers() -> None:
    d = MemoryDiscovery()
    opts = BroadcasterOptions(split_threshold=10)
    async with servers(d, 40) as seen, broadcasters(d, 3, options=opts) as bs:
        async with AsyncRPCClient(d, Target(topic="compute", fanout=True), timeout=10) as client:
            report = await client.cast({}, "update", n=1)
        assert report == grpcrpc.FanoutReport(targets=40, delivered=40)
        await until(lambda: len(seen) == 40)
        assert set(seen.values()) == {1}
        # The first broadcaster kept a share and each peer delivered one.
        assert sorted(b.deliveries for b in bs) == [12, 14, 14]  # chunks of ceil(40/3)
        # A peer that cannot be reached: its share is delivered by the parent instead.
        await crash(bs[2])
        async with AsyncRPCClient(d, Target(topic="compute", fanout=True), timeout=10,
                                  options=TransportOptions(balancer="round_robin")) as client:
            report = await client.cast({}, "update", n=2)
        assert report is not None and report.delivered == 40
        await until(lambda: len(seen) == 80)


async def test_bad_input_to_the_broadcaster() -> None:
    d = MemoryDiscovery()
    async with broadcasters(d, 1) as [b]:
        async with grpc.aio.insecure_channel(b.address) as channel:
            fanout = channel.unary_unary(FANOUT_METHOD)
            for payload in (b"\xff\xfe", b"", grpcrpc.envelope.Envelope(id="x").SerializeToString()):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await fanout(payload, timeout=5)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # A call (not a cast) cannot be fanned out.
        client = grpcrpc.AsyncRPCClient(d, Target(topic="x", fanout=True))
        env = grpcrpc.envelope.build_envelope("i", Target(topic="x"), "m", b"{}", b"{}")
        with pytest.raises(grpcrpc.InvalidEnvelope, match="must be a cast"):
            await client.transport.broadcast(Target(topic="x"), env.SerializeToString(), 5, "t")
        await client.close()
        assert b.fanouts == 0


async def test_fanout_never_falls_back_to_another_azs_broadcaster() -> None:
    """With its own AZ's broadcaster down, a client with fallback AZs fans out itself in its AZ;
    it never hands the fanout to another AZ's broadcaster."""
    d = MemoryDiscovery()
    async with servers(d, 2, az="az1", prefix="a") as seen1, \
            servers(d, 3, az="az2", prefix="b") as seen2, \
            broadcasters(d, 1, az="az1") as [b1], broadcasters(d, 1, az="az2") as [b2]:
        await b1.stop()  # az1 has no broadcaster registered at all
        opts = TransportOptions(az="az1", fallback_azs=("az2",))
        async with AsyncRPCClient(d, Target(topic="compute", fanout=True), options=opts) as c:
            report = await c.cast({}, "update", n=1)
        assert report is not None and report.targets == 2
        await until(lambda: len(seen1) == 2)
        assert not seen2 and b2.fanouts == 0
