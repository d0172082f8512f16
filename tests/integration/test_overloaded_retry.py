"""A message a server refuses as overloaded never ran: it goes to another server of the topic,
within the message's own budget, as a refused connection does; only when every server tried is
full does the caller get `Overloaded`. Real servers; the refusals come from their real limits."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from grpcrpc import Overloaded, Target
from grpcrpc.limits import Limits
from grpcrpc.testing import Cluster
from tests.conftest import wait_until


class Gate:
    """`hold` occupies a thread until the gate opens; `record` counts what arrived."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.open = threading.Event()
        self.holding = threading.Event()
        self.got: list[int] = []
        self.lock = threading.Lock()

    def hold(self, ctxt: Any) -> None:
        self.holding.set()
        self.open.wait(60)

    def record(self, ctxt: Any, n: int) -> str:
        with self.lock:
            self.got.append(n)
        return self.name


# A pool of one thread and no queue (the server-wide limit), or one message per connection.
LIMITS = {"pool": Limits(threads=1, queue=0), "per_connection": Limits(per_connection=1)}


@pytest.mark.parametrize("limit", sorted(LIMITS))
def test_overloaded_casts_and_calls_go_to_another_server(limit: str) -> None:
    busy, free = Gate("busy"), Gate("free")
    try:
        with Cluster() as cluster:
            cluster.serve(Target(topic="g", server="busy"), [busy], limits=LIMITS[limit])
            cluster.serve(Target(topic="g", server="free"), [free])
            client = cluster.client(Target(topic="g"), timeout=10)
            client.prepare(server="busy").cast({}, "hold")  # on this client's connection
            assert busy.holding.wait(10)
            # Equally idle from the client's side, so p2c sends every other one to `busy`.
            for n in range(10):
                assert client.cast({}, "record", n=n) is None
            assert [client.call({}, "record", n=n) for n in range(10, 14)] == ["free"] * 4
            wait_until(lambda: len(free.got) == 14, what="every cast run on the free server")
            busy.open.set()
            assert busy.got == [] and sorted(free.got) == list(range(14))  # each once
    finally:
        busy.open.set()


def test_every_server_overloaded_is_overloaded_not_no_endpoints() -> None:
    gates = [Gate("a"), Gate("b")]
    try:
        with Cluster() as cluster:
            for gate in gates:
                cluster.serve(Target(topic="full", server=gate.name), [gate],
                              limits=Limits(threads=1, queue=0))
            client = cluster.client(Target(topic="full"), timeout=10)
            for gate in gates:
                client.prepare(server=gate.name).cast({}, "hold")
                assert gate.holding.wait(10)
            with pytest.raises(Overloaded, match="2 of the 2 server"):
                client.cast({}, "record", n=1)
            with pytest.raises(Overloaded):
                client.call({}, "record", n=2)
            for gate in gates:
                gate.open.set()
            assert client.call({}, "record", n=3) in ("a", "b")
            assert gates[0].got + gates[1].got == [3]  # the refused ones never ran
    finally:
        for gate in gates:
            gate.open.set()


def test_async_client_retries_an_overloaded_cast_elsewhere() -> None:
    busy, free = Gate("busy"), Gate("free")
    try:
        with Cluster() as cluster:
            cluster.serve(Target(topic="ga", server="busy"), [busy],
                          limits=Limits(threads=1, queue=0))
            cluster.serve(Target(topic="ga", server="free"), [free])

            async def main() -> list[None]:
                client = cluster.async_client(Target(topic="ga"), timeout=10)
                try:
                    await client.prepare(server="busy").cast({}, "hold")
                    await asyncio.to_thread(busy.holding.wait, 10)
                    return [await client.cast({}, "record", n=n) for n in range(6)]
                finally:
                    await client.close()

            assert asyncio.run(main()) == [None] * 6
            wait_until(lambda: len(free.got) == 6, what="the casts run on the free server")
            assert busy.got == []
    finally:
        busy.open.set()
