"""One peer at its limits gets a named error; other peers are unaffected."""

from __future__ import annotations

import threading
import time
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
    """More concurrent calls on one connection than the server's HTTP/2 stream limit: the
    limit is reached and never passed, and each call either succeeds (run once) or gets
    Overloaded (never run), nothing in doubt.

    A blocking client puts small messages on one stream per endpoint, so its calls are
    over 64 KiB here: each then goes as a unary RPC, one HTTP/2 stream per call in flight."""
    limit, callers = 20, 60

    class Hold:
        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.running = self.most = 0
            self.ran: list[int] = []
            self.release = threading.Event()

        def hold(self, ctxt: Any, x: int, blob: str) -> int:
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
                self.ran.append(x)
            self.release.wait(30)
            with self.lock:
                self.running -= 1
            return x

    ep = Hold()
    blob = "x" * 70_000
    with Cluster() as cluster:
        cluster.serve(Target(topic="svc", server="s"), [ep],
                      limits=Limits(threads=2 * callers, queue=1000, per_connection=2000,
                                    streams_per_connection=limit))
        client = cluster.client(Target(topic="svc"), timeout=30)
        outcomes: dict[int, object] = {}
        lock = threading.Lock()
        entered: list[int] = []

        def work(x: int) -> None:
            entered.append(x)
            try:
                result: object = client.call({}, "hold", x=x, blob=blob)
            except grpcrpc.GrpcrpcError as err:
                result = err
            with lock:
                outcomes[x] = result

        threads = [threading.Thread(target=work, args=(x,)) for x in range(callers)]
        for t in threads:
            t.start()
        # The limit is reached: as many calls run at once as the connection may have streams
        # (each holds its thread until released), with three times as many callers waiting.
        wait_until(lambda: len(entered) == callers and ep.running == limit, timeout=30,
                   what=f"{limit} calls running, every caller calling")
        # ... and holds: a limit is shown only by watching it a while (without one, all 60
        # run within milliseconds of being sent).
        watch_until = time.monotonic() + 0.5
        while time.monotonic() < watch_until:
            assert ep.running <= limit
            time.sleep(0.01)
        ep.release.set()
        for t in threads:
            t.join(60)
        assert len(outcomes) == callers
        assert ep.most == limit, "the connection had more streams open than its limit"
        errors = {x: o for x, o in outcomes.items() if isinstance(o, Exception)}
        assert all(isinstance(e, grpcrpc.Overloaded) for e in errors.values()), errors
        # Never lost, never twice: each answered call ran once, no refused one ran.
        assert sorted(ep.ran) == sorted(x for x, o in outcomes.items() if o == x)
