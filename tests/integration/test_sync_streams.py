"""The sync transport's envelope streams: many threads on one stream, each gets its own reply;
a timeout, an oversized envelope or a close fails the one call it concerns, not the stream."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import grpcrpc
from grpcrpc import Limits, Target
from grpcrpc.testing import Cluster
from grpcrpc.transport.batching import BATCH_BYTES


class Service:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()

    async def echo(self, ctxt: Any, value: Any = None) -> Any:
        return value

    def hold(self, ctxt: Any) -> str:
        """Wait (in the server's thread pool) until the test releases it."""
        self.started.set()
        self.release.wait(30)
        return "released"


@pytest.fixture
def service() -> Service:
    return Service()


@pytest.fixture
def cluster(service: Service) -> Iterator[Cluster]:
    with Cluster() as c:
        c.serve(Target(topic="svc", server="s1"), [service],
                limits=Limits(max_message_size=256 * 1024))
        yield c


def _streams(client: grpcrpc.RPCClient) -> list[Any]:
    conns = list(client.transport._conns.values())
    return [s for conn in conns for s in conn._streams if s is not None]


def test_threads_sharing_a_stream_each_get_their_own_reply(cluster: Cluster) -> None:
    client = cluster.client(Target(topic="svc"))
    wrong: list[tuple[str, Any]] = []
    errors: list[BaseException] = []

    def work(tid: int) -> None:
        try:
            for i in range(100):
                value = f"{tid}-{i}"
                got = client.call({}, "echo", value=value)
                if got != value:
                    wrong.append((value, got))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not wrong
    streams = _streams(client)
    assert len(streams) == 1 and streams[0].in_flight == 0


def test_a_timeout_fails_that_call_and_the_stream_serves_on(
        cluster: Cluster, service: Service) -> None:
    client = cluster.client(Target(topic="svc"), timeout=0.3)
    with pytest.raises(grpcrpc.MessagingTimeout):
        client.call({}, "hold")
    stream = _streams(client)[0]
    assert client.call({}, "echo", value=1) == 1
    assert _streams(client) == [stream] and not stream.broken and stream.in_flight == 0
    service.release.set()


def test_an_oversized_envelope_fails_alone(cluster: Cluster, service: Service) -> None:
    client = cluster.client(Target(topic="svc"), timeout=30)
    held: list[Any] = []
    holder = threading.Thread(target=lambda: held.append(client.call({}, "hold")))
    holder.start()
    assert service.started.wait(10)
    # Over the server's limit (not the client's): it goes as a unary RPC of its own, so the
    # server refusing it cannot break the stream the held call waits on.
    assert BATCH_BYTES < 256 * 1024
    with pytest.raises(grpcrpc.MessageTooLarge):
        client.call({}, "echo", value="x" * (512 * 1024))
    service.release.set()
    holder.join(10)
    assert held == ["released"]


def test_close_fails_calls_in_flight_with_client_closed(
        cluster: Cluster, service: Service) -> None:
    client = grpcrpc.RPCClient(cluster.discovery, Target(topic="svc"), timeout=30)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            client.call({}, "hold")
        except BaseException as err:
            outcome.append(err)

    caller = threading.Thread(target=call)
    caller.start()
    assert service.started.wait(10)
    client.close()
    caller.join(10)
    assert not caller.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], grpcrpc.ClientClosed)
    service.release.set()
