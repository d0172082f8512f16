"""Bad input of every kind gets a named error, and the server serves the next request."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import grpcrpc
from grpcrpc import Limits, Target
from grpcrpc import envelope as ev
from grpcrpc.testing import Cluster
from grpcrpc.transport.base import STREAM_METHOD, UNARY_METHOD
from tests.conftest import wait_until

HERE = pathlib.Path(__file__).parent


class EndpointFailure(Exception):
    pass


class Service:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.cancelled = threading.Event()

    def echo(self, ctxt: Any, value: Any = None) -> Any:
        return value

    def block(self, ctxt: Any, seconds: float) -> str:
        self.started.set()
        self.release.wait(seconds)
        return "done"

    async def ablock(self, ctxt: Any, seconds: float) -> str:
        self.started.set()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return "done"

    def raises(self, ctxt: Any) -> None:
        raise EndpointFailure("endpoint failed")

    def big(self, ctxt: Any, n: int) -> str:
        return "x" * n

    def unserialisable(self, ctxt: Any) -> object:
        return object()


@pytest.fixture
def service() -> Service:
    return Service()


@pytest.fixture
def cluster(service: Service) -> Iterator[Cluster]:
    with Cluster() as c:
        c.serve(Target(topic="svc", server="s1"), [service],
                limits=Limits(threads=2, queue=1, max_message_size=256 * 1024))
        yield c


def _address(cluster: Cluster) -> str:
    return cluster.servers[0].address


def _still_serving(cluster: Cluster) -> None:
    assert cluster.client(Target(topic="svc")).call({}, "echo", value="alive") == "alive"


def _raw_unary(address: str, data: bytes) -> ev.Reply:
    with grpc.insecure_channel(address) as channel:
        return ev.parse_reply(channel.unary_unary(UNARY_METHOD)(data, timeout=5))


@pytest.mark.parametrize("data", [b"\xff\xfe\xfd", b"\x0a\x05abc", os.urandom(64)])
def test_bytes_that_are_not_an_envelope(cluster: Cluster, data: bytes) -> None:
    reply = _raw_unary(_address(cluster), data)
    assert reply.failure.code == ev.ErrorCode.INVALID_ENVELOPE
    _still_serving(cluster)


def test_garbage_on_the_stream_gets_an_error_and_the_stream_goes_on(cluster: Cluster) -> None:
    good = ev.build_envelope("ok1", Target(topic="svc"), "echo", b'{"value": 1}', b"{}",
                             exchange="openstack").SerializeToString()
    with grpc.insecure_channel(_address(cluster)) as channel:
        replies = list(channel.stream_stream(STREAM_METHOD)(iter([b"\xff\xfe", good]), timeout=5))
    parsed = [ev.parse_reply(r) for r in replies]
    assert parsed[0].failure.code == ev.ErrorCode.INVALID_ENVELOPE
    assert parsed[1].id == "ok1" and parsed[1].result.json == b"1"


@pytest.mark.parametrize(
    ("env", "code"),
    [
        (ev.Envelope(id="x"), ev.ErrorCode.INVALID_ENVELOPE),  # no method, no target
        (ev.Envelope(id="x", method="echo"), ev.ErrorCode.INVALID_ENVELOPE),  # no target
        (ev.Envelope(method="echo", target=ev.WireTarget(topic="svc")), ev.ErrorCode.INVALID_ENVELOPE),
        (ev.Envelope(id="x", method="echo", target=ev.WireTarget(topic="svc", version="v1")),
         ev.ErrorCode.INVALID_ENVELOPE),
        (ev.Envelope(id="x", method="echo", target=ev.WireTarget(topic="svc"),
                     args=ev.Payload(json=b"[1,2]")), ev.ErrorCode.INVALID_ENVELOPE),
        (ev.Envelope(id="x", method="echo", target=ev.WireTarget(topic="svc"),
                     args=ev.Payload(json=b"{nope")), ev.ErrorCode.INVALID_ENVELOPE),
        (ev.Envelope(id="x", method="echo", target=ev.WireTarget(topic="svc"), context=b"[]"),
         ev.ErrorCode.INVALID_ENVELOPE),
        (ev.Envelope(id="x", method="echo", target=ev.WireTarget(topic="other")),
         ev.ErrorCode.MISROUTED),
        (ev.Envelope(id="x", method="echo", target=ev.WireTarget(topic="svc", server="s9")),
         ev.ErrorCode.MISROUTED),
        (ev.Envelope(id="x", method="nope", target=ev.WireTarget(topic="svc")),
         ev.ErrorCode.NO_SUCH_METHOD),
        (ev.Envelope(id="x", method="echo", target=ev.WireTarget(topic="svc", version="2.0")),
         ev.ErrorCode.UNSUPPORTED_VERSION),
        (ev.Envelope(id="x", method="echo", target=ev.WireTarget(topic="svc", namespace="ns")),
         ev.ErrorCode.UNSUPPORTED_VERSION),
    ],
)
def test_malformed_envelopes(cluster: Cluster, env: ev.Envelope, code: int) -> None:
    reply = _raw_unary(_address(cluster), env.SerializeToString())
    assert reply.failure.code == code, reply
    _still_serving(cluster)


def test_unknown_method_wrong_namespace_wrong_version(cluster: Cluster) -> None:
    client = cluster.client(Target(topic="svc"))
    with pytest.raises(grpcrpc.NoSuchMethod):
        client.call({}, "missing")
    with pytest.raises(grpcrpc.NoSuchMethod):
        client.call({}, "_private")
    with pytest.raises(grpcrpc.UnsupportedVersion):
        client.prepare(namespace="other").call({}, "echo")
    with pytest.raises(grpcrpc.UnsupportedVersion):
        client.prepare(version="1.9").call({}, "echo")
    with pytest.raises(grpcrpc.NoSuchMethod):
        client.cast({}, "missing")  # a cast to nothing is refused, not silently dropped
    _still_serving(cluster)


def test_oversized_payloads(cluster: Cluster) -> None:
    client = cluster.client(Target(topic="svc"))
    # Over the client's own limit: refused before sending.
    with pytest.raises(grpcrpc.MessageTooLarge, match="not sent"):
        client.call({}, "echo", value="x" * (5 * 1024 * 1024))
    # Within the client's limit but over the server's: the server refuses it.
    with pytest.raises(grpcrpc.MessageTooLarge):
        client.call({}, "echo", value="x" * (512 * 1024))
    # A result over the server's limit: a named error instead of a broken stream.
    with pytest.raises(grpcrpc.SerializationError, match="exceeds the limit"):
        client.call({}, "big", n=300 * 1024)
    with pytest.raises(grpcrpc.SerializationError, match="cannot be serialised"):
        client.call({}, "unserialisable")
    _still_serving(cluster)


async def test_oversized_on_the_async_stream(cluster: Cluster) -> None:
    client = cluster.async_client(Target(topic="svc"))
    try:
        with pytest.raises(grpcrpc.SerializationError, match="exceeds the limit"):
            await client.call({}, "big", n=300 * 1024)
        assert await client.call({}, "echo", value=1) == 1  # same stream, still fine
    finally:
        await client.close()


def test_endpoint_that_raises(cluster: Cluster) -> None:
    with pytest.raises(grpcrpc.RemoteError, match="EndpointFailure"):
        cluster.client(Target(topic="svc")).call({}, "raises")
    _still_serving(cluster)


def test_endpoint_blocking_past_the_deadline(cluster: Cluster, service: Service) -> None:
    client = cluster.client(Target(topic="svc"), timeout=0.5)
    start = time.monotonic()
    with pytest.raises(grpcrpc.MessagingTimeout):
        client.call({}, "block", seconds=30)
    elapsed = time.monotonic() - start
    assert 0.45 < elapsed < 3.0
    service.release.set()
    _still_serving(cluster)


async def test_async_timeout_and_cancel(cluster: Cluster, service: Service) -> None:
    client = cluster.async_client(Target(topic="svc"), timeout=0.5)
    try:
        start = time.monotonic()
        with pytest.raises(grpcrpc.MessagingTimeout):
            await client.call({}, "ablock", seconds=30)
        assert time.monotonic() - start < 3.0
        # A cancelled call: the server cancels the coroutine, the stream keeps working.
        service.started.clear()
        task = asyncio.ensure_future(client.prepare(timeout=30).call({}, "ablock", seconds=30))
        for _ in range(500):
            if service.started.is_set():
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(500):
            if service.cancelled.is_set():
                break
            await asyncio.sleep(0.01)
        assert service.cancelled.is_set()
        assert await client.call({}, "echo", value="next") == "next"
    finally:
        await client.close()


def test_overloaded_pool_refuses_at_once(cluster: Cluster, service: Service) -> None:
    client = cluster.client(Target(topic="svc"), timeout=30)
    # threads=2, queue=1: three blocking calls fill the server, the fourth is refused.
    threads = [threading.Thread(target=client.call, args=({}, "block"), kwargs={"seconds": 30})
               for _ in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: service.started.is_set(), what="blocking call started")
    try:
        def refused() -> bool:
            try:
                client.prepare(timeout=2).call({}, "block", seconds=0)
            except grpcrpc.Overloaded:
                return True
            return False

        wait_until(refused, timeout=10, what="Overloaded")
        with pytest.raises(grpcrpc.Overloaded):
            client.cast({}, "block", seconds=0)
    finally:
        service.release.set()
        for t in threads:
            t.join(10)
    _still_serving(cluster)


@pytest.mark.parametrize("method", ["hang", "ahang"])
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_server_killed_mid_call(method: str, flavour: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "server_main.py"), "victim", "v1"],
        stdout=subprocess.PIPE, text=True, cwd=HERE.parent.parent,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[0] == "ADDRESS", line
        resolver = grpcrpc.StaticResolver([grpcrpc.Endpoint(line[1], "victim", "v1")])
        outcome: list[BaseException] = []

        def caller() -> None:
            try:
                if flavour == "sync":
                    with grpcrpc.RPCClient(resolver, Target(topic="victim"), timeout=30) as c:
                        c.call({}, method)
                else:
                    async def go() -> None:
                        async with grpcrpc.AsyncRPCClient(resolver, Target(topic="victim"),
                                                          timeout=30) as c:
                            await c.call({}, method)
                    asyncio.run(go())
            except BaseException as err:
                outcome.append(err)

        thread = threading.Thread(target=caller)
        start = time.monotonic()
        thread.start()
        assert proc.stdout.readline().strip() == "IN-CALL"
        proc.send_signal(signal.SIGKILL)
        thread.join(20)
        assert not thread.is_alive(), "the call hung after its server died"
        assert time.monotonic() - start < 20
        assert len(outcome) == 1 and isinstance(outcome[0], grpcrpc.DeliveryError), outcome
    finally:
        proc.kill()
        proc.wait(10)
