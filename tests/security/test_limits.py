"""One peer at its limits gets a named error; other peers are unaffected."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import grpcrpc
from grpcrpc import Limits, Target
from grpcrpc.testing import Cluster
from tests.conftest import wait_until


class Slow:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.running = 0
        self.lock = threading.Lock()

    def block(self, ctxt: Any) -> str:
        with self.lock:
            self.running += 1
        self.release.wait(30)
        return "done"

    def quick(self, ctxt: Any) -> str:
        return "quick"


def test_one_connection_at_its_limit_does_not_starve_another() -> None:
    slow = Slow()
    with Cluster() as cluster:
        cluster.serve(Target(topic="svc", server="s"), [slow],
                      limits=Limits(threads=8, queue=8, per_connection=3))
        greedy = cluster.client(Target(topic="svc"), timeout=30)  # one transport: one connection
        polite = cluster.client(Target(topic="svc"), timeout=30)  # another connection
        threads = [threading.Thread(target=greedy.call, args=({}, "block")) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: slow.running == 3, what="three calls running")
            with pytest.raises(grpcrpc.Overloaded, match="this connection's share"):
                greedy.call({}, "quick")
            assert polite.call({}, "quick") == "quick"
        finally:
            slow.release.set()
            for t in threads:
                t.join(10)
        assert greedy.call({}, "quick") == "quick"  # its share is back once calls finish


async def test_stream_in_flight_bound() -> None:
    """A stream with too many calls in flight gets OVERLOADED for the excess only."""
    import asyncio

    gate = asyncio.Event()

    class Waiter:
        async def wait(self, ctxt: Any) -> str:
            await gate.wait()
            return "ok"

    d = grpcrpc.MemoryDiscovery()
    server = grpcrpc.RPCServer(Target(topic="svc", server="s"), [Waiter()], registry=d,
                               limits=Limits(stream_in_flight=4, per_connection=100))
    await server.start()
    try:
        async with grpcrpc.AsyncRPCClient(d, Target(topic="svc"), timeout=10) as client:
            calls = [asyncio.ensure_future(client.call({}, "wait")) for _ in range(6)]
            try:
                deadline = asyncio.get_running_loop().time() + 10
                while sum(c.done() for c in calls) < 2:
                    assert asyncio.get_running_loop().time() < deadline, "no call was refused"
                    await asyncio.sleep(0.01)
                refused = [c.exception() for c in calls if c.done()]
                assert len(refused) == 2 and all(isinstance(e, grpcrpc.Overloaded) for e in refused)
            finally:
                gate.set()
                results = await asyncio.gather(*calls, return_exceptions=True)
            assert results.count("ok") == 4
    finally:
        await server.stop()


def test_streams_over_the_connection_limit_are_overloaded_never_lost() -> None:
    """More concurrent unary calls on one connection than the server's stream limit: each
    either succeeds or gets Overloaded (never processed), nothing in doubt."""
    class Echo:
        def echo(self, ctxt: Any, x: int) -> int:
            return x

    with Cluster() as cluster:
        cluster.serve(Target(topic="svc", server="s"), [Echo()],
                      limits=Limits(threads=8, queue=1000, per_connection=2000,
                                    streams_per_connection=20))
        client = cluster.client(Target(topic="svc"), timeout=30)
        outcomes: list[object] = []
        lock = threading.Lock()

        def work() -> None:
            for i in range(10):
                try:
                    result: object = client.call({}, "echo", x=i)
                except grpcrpc.GrpcrpcError as err:
                    result = err
                with lock:
                    outcomes.append(result)

        threads = [threading.Thread(target=work) for _ in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        errors = [o for o in outcomes if isinstance(o, Exception)]
        assert len(outcomes) == 1000
        assert all(isinstance(e, grpcrpc.Overloaded) for e in errors), errors[:3]
