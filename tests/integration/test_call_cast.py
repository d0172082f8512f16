"""call, cast, directed and fanout messages between real clients and servers."""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import Any

import pytest

import grpcrpc
from grpcrpc import Target, TransportOptions
from grpcrpc.serializer import NoOpSerializer
from grpcrpc.testing import AsyncClientFor, ClientFor, Cluster
from grpcrpc.transport import sync as sync_transport
from tests.conftest import wait_until


class AppError(Exception):
    pass


class Compute:
    def __init__(self, name: str = "c") -> None:
        self.name = name
        self.received: list[tuple[str, Any]] = []
        self.lock = threading.Lock()

    def whoami(self, ctxt: dict[str, Any]) -> str:
        return self.name

    def build(self, ctxt: dict[str, Any], instance: str) -> None:
        with self.lock:
            self.received.append(("build", instance))

    async def update(self, ctxt: dict[str, Any], n: int) -> None:
        with self.lock:
            self.received.append(("update", n))

    def echo_context(self, ctxt: dict[str, Any]) -> dict[str, Any]:
        return ctxt

    def fail(self, ctxt: dict[str, Any], kind: str) -> None:
        if kind == "app":
            raise AppError("app says no")
        raise ValueError("bad value")


def test_sync_call_and_cast() -> None:
    compute = Compute()
    with ClientFor(Target(topic="compute"), [compute]) as client:
        assert client.call({}, "whoami") == "c"
        assert client.cast({}, "build", instance="i-1") is None
        wait_until(lambda: compute.received == [("build", "i-1")], what="cast dispatched")
        ctxt = {"user": "u", "roles": ["admin"], "nested": {"a": None}}
        assert client.call(ctxt, "echo_context") == ctxt


async def test_async_call_and_cast() -> None:
    compute = Compute()
    async with AsyncClientFor(Target(topic="compute"), [compute]) as client:
        assert await client.call({}, "whoami") == "c"
        assert await client.cast({}, "update", n=3) is None
        for _ in range(200):
            if compute.received:
                break
            await asyncio.sleep(0.01)
        assert compute.received == [("update", 3)]
        # Many calls in flight on one stream, each answered to its own caller.
        results = await asyncio.gather(*(client.call({"i": i}, "echo_context") for i in range(200)))
        assert [r["i"] for r in results] == list(range(200))


def test_remote_errors_sync() -> None:
    with ClientFor(Target(topic="compute"), [Compute()], allowed_remote_exmods=[__name__]) as c:
        with pytest.raises(AppError, match="app says no"):
            c.call({}, "fail", kind="app")
        with pytest.raises(ValueError, match="bad value"):  # builtins are always allowed
            c.call({}, "fail", kind="value")
    with ClientFor(Target(topic="compute"), [Compute()]) as c:
        with pytest.raises(grpcrpc.RemoteError) as info:
            c.call({}, "fail", kind="app")
        assert info.value.exc_type == "AppError"
        assert any("app says no" in line for line in info.value.traceback)


async def test_remote_errors_async() -> None:
    async with AsyncClientFor(Target(topic="compute"), [Compute()]) as client:
        with pytest.raises(grpcrpc.RemoteError, match="AppError"):
            await client.call({}, "fail", kind="app")
        with pytest.raises(grpcrpc.NoSuchMethod):
            await client.call({}, "nope")


def test_directed_messages_reach_only_the_named_server() -> None:
    with Cluster() as cluster:
        computes = {name: Compute(name) for name in ("h1", "h2", "h3")}
        for name, ep in computes.items():
            cluster.serve(Target(topic="compute", server=name), [ep])
        client = cluster.client(Target(topic="compute"))
        assert {client.call({}, "whoami") for _ in range(60)} == {"h1", "h2", "h3"}
        directed = client.prepare(server="h2")
        assert {directed.call({}, "whoami") for _ in range(20)} == {"h2"}
        for i in range(10):
            directed.cast({}, "build", instance=f"i{i}")
        wait_until(lambda: len(computes["h2"].received) == 10, what="directed casts")
        assert not computes["h1"].received and not computes["h3"].received
        with pytest.raises(grpcrpc.NoEndpoints, match="server nope"):
            client.prepare(server="nope").call({}, "whoami")


@pytest.mark.parametrize("stream_limit", [64, 2], ids=["on streams", "unary, many servers"])
def test_fanout_reaches_every_server_once_and_reports(
        stream_limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync_transport, "STREAM_FANOUT_LIMIT", stream_limit)
    with Cluster() as cluster:
        computes = [Compute(f"h{i}") for i in range(5)]
        for ep in computes:
            cluster.serve(Target(topic="compute", server=ep.name), [ep])
        cluster.serve(Target(topic="other", server="x"), [Compute("x")])
        client = cluster.client(Target(topic="compute"),
                                TransportOptions(use_broadcaster=False))
        report = client.prepare(fanout=True).cast({}, "update", n=7)
        assert report == grpcrpc.FanoutReport(targets=5, delivered=5)
        wait_until(lambda: all(c.received == [("update", 7)] for c in computes), what="fanout")
        streams = [s for conn in client.transport._conns.values() for s in conn._streams if s]
        assert len(streams) == (5 if stream_limit >= 5 else 0)
        empty = client.prepare(topic="nobody", fanout=True).cast({}, "update", n=1)
        assert empty == grpcrpc.FanoutReport(targets=0, delivered=0)


async def test_async_fanout_reports_unreachable_servers() -> None:
    discovery = grpcrpc.MemoryDiscovery()
    computes = [Compute(f"h{i}") for i in range(3)]
    servers = [grpcrpc.RPCServer(Target(topic="compute", server=c.name), [c], registry=discovery)
               for c in computes]
    for s in servers:
        await s.start()
    dead = grpcrpc.Endpoint("127.0.0.1:1", "compute", "dead")
    discovery.announce(dead)
    client = grpcrpc.AsyncRPCClient(discovery, Target(topic="compute", fanout=True), timeout=5)
    try:
        report = await client.cast({}, "update", n=1)
        assert report is not None and (report.targets, report.delivered) == (4, 3)
        assert [f.server for f in report.failures] == ["dead"]
        assert all(c.received == [("update", 1)] for c in computes)
    finally:
        await client.close()
        for s in servers:
            await s.stop()


class Versioned:
    target = Target(version="1.3")

    def api(self, ctxt: dict[str, Any]) -> str:
        return "1.x"


class VersionedTwo:
    target = Target(version="2.0")

    def api(self, ctxt: dict[str, Any]) -> str:
        return "2.x"


class Namespaced:
    target = Target(namespace="baremetal")

    def api(self, ctxt: dict[str, Any]) -> str:
        return "baremetal"


def test_namespace_and_version_dispatch() -> None:
    with ClientFor(Target(topic="api"), [Versioned(), VersionedTwo(), Namespaced()]) as client:
        assert client.prepare(version="1.1").call({}, "api") == "1.x"
        assert client.prepare(version="2.0").call({}, "api") == "2.x"
        assert client.prepare(namespace="baremetal").call({}, "api") == "baremetal"
        with pytest.raises(grpcrpc.UnsupportedVersion):
            client.prepare(version="1.4").call({}, "api")
        with pytest.raises(grpcrpc.UnsupportedVersion):
            client.prepare(namespace="nope").call({}, "api")
        with pytest.raises(grpcrpc.NoSuchMethod):
            client.prepare(version="2.0").call({}, "missing")


class Instance:
    def __init__(self, name: str) -> None:
        self.name = name


class InstanceSerializer(NoOpSerializer):
    """Turns Instance objects into tagged dicts and back (oslo's versioned-object shape)."""

    def serialize_entity(self, ctxt: Any, entity: Any) -> Any:
        if isinstance(entity, Instance):
            return {"__instance__": entity.name}
        return entity

    def deserialize_entity(self, ctxt: Any, entity: Any) -> Any:
        if isinstance(entity, dict) and "__instance__" in entity:
            return Instance(entity["__instance__"])
        return entity


class Renamer:
    def rename(self, ctxt: Any, instance: Instance) -> Instance:
        assert isinstance(instance, Instance)
        return Instance(instance.name + "-renamed")


def test_serializer_hook_on_both_sides() -> None:
    with Cluster() as cluster:
        cluster.serve(Target(topic="r", server="s"), [Renamer()], serializer=InstanceSerializer())
        client = cluster.client(Target(topic="r"), serializer=InstanceSerializer())
        result = client.call({}, "rename", instance=Instance("vm1"))
        assert isinstance(result, Instance) and result.name == "vm1-renamed"


def test_exchange_and_az_separate_servers() -> None:
    with Cluster() as cluster:
        cluster.serve(Target(topic="t", server="a", exchange="nova"), [Compute("nova-a")])
        cluster.serve(Target(topic="t", server="b"), [Compute("os-b")], az="az2")
        cluster.serve(Target(topic="t", server="c"), [Compute("os-c")])
        assert cluster.client(Target(topic="t", exchange="nova")).call({}, "whoami") == "nova-a"
        assert cluster.client(Target(topic="t")).call({}, "whoami") == "os-c"
        assert cluster.client(Target(topic="t", az="az2")).call({}, "whoami") == "os-b"
        fallback = cluster.client(Target(topic="t"), TransportOptions(az="az9", fallback_azs=("az2",)))
        assert fallback.call({}, "whoami") == "os-b"
        with pytest.raises(grpcrpc.NoEndpoints):
            cluster.client(Target(topic="t"), TransportOptions(az="az9")).call({}, "whoami")


def test_many_threads_share_one_client() -> None:
    with ClientFor(Target(topic="compute"), [Compute()]) as client:
        results: collections.Counter[str] = collections.Counter()
        lock = threading.Lock()

        def work() -> None:
            for _ in range(50):
                r = client.call({}, "whoami")
                with lock:
                    results[r] += 1

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == {"c": 400}


def test_closing_a_prepared_client_leaves_its_parent_working() -> None:
    with ClientFor(Target(topic="compute"), [Compute()]) as client:
        with client.prepare(timeout=3) as prepared:
            assert prepared.call({}, "whoami") == "c"
        assert client.call({}, "whoami") == "c"


def test_async_client_created_outside_an_event_loop() -> None:
    # A service builds its clients in a constructor or at import time, before any loop runs:
    # construction must not need one; the first call connects on the loop that makes it.
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    compute = Compute("outside")
    with Cluster() as cluster:
        cluster.serve(Target(topic="compute", server="a"), [compute])
        client = cluster.async_client(Target(topic="compute"), timeout=10)

        async def use() -> tuple[str, None]:
            try:
                return (await client.call({}, "whoami"),
                        await client.cast({}, "build", instance="i-9"))
            finally:
                await client.close()

        assert asyncio.run(use()) == ("outside", None)
        wait_until(lambda: compute.received == [("build", "i-9")], what="cast dispatched")


def test_async_client_closed_before_first_use() -> None:
    client = grpcrpc.AsyncRPCClient(grpcrpc.MemoryDiscovery(), Target(topic="compute"))
    asyncio.run(client.close())
