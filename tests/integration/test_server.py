"""Server options and lifecycle: binding, advertising, draining, safe retries, health, TLS."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import socket
import subprocess
import threading
import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import grpcrpc
from grpcrpc import (
    ClientTLS,
    Endpoint,
    Limits,
    RPCServer,
    ServerThread,
    ServerTLS,
    Target,
    TransportOptions,
)
from grpcrpc import envelope as ev
from grpcrpc.dispatcher import Dispatcher, Handler
from grpcrpc.testing import Cluster
from grpcrpc.transport.base import UNARY_METHOD
from tests.conftest import wait_until


class Named:
    def __init__(self, name: str) -> None:
        self.name = name
        self.release = threading.Event()
        self.started = threading.Event()
        self.ran = 0  # whoami calls this server ran

    def whoami(self, ctxt: Any) -> str:
        self.ran += 1
        return self.name

    def slow(self, ctxt: Any) -> str:
        self.started.set()
        self.release.wait(30)
        return self.name


def _free_range(n: int) -> tuple[int, int]:
    """A run of n consecutive ports that are free right now."""
    for base in range(42000, 60000, 97):
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base, base + n - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def test_port_range_picks_free_ports_and_fails_clearly() -> None:
    lo, hi = _free_range(2)
    with Cluster() as cluster:
        a = cluster.serve(Target(topic="t", server="a"), [Named("a")], port_range=(lo, hi))
        b = cluster.serve(Target(topic="t", server="b"), [Named("b")], port_range=(lo, hi))
        ports = {int(a.address.rsplit(":", 1)[1]), int(b.address.rsplit(":", 1)[1])}
        assert ports == {lo, hi}
        with pytest.raises(grpcrpc.ServerError, match=f"no free port in range {lo}-{hi}"):
            cluster.serve(Target(topic="t", server="c"), [Named("c")], port_range=(lo, hi))
        client = cluster.client(Target(topic="t"))
        assert {client.call({}, "whoami") for _ in range(20)} == {"a", "b"}


def test_bind_failure_is_a_server_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(grpcrpc.ServerError, match="cannot bind"):
            ServerThread(RPCServer(Target(topic="t", server="x"), [Named("x")], port=port)).start()


def test_advertise_address_and_ipv6() -> None:
    with Cluster() as cluster:
        s = cluster.serve(Target(topic="t", server="a"), [Named("a")], host="0.0.0.0",
                          advertise_host="127.0.0.1")
        assert s.address.startswith("127.0.0.1:")
        assert cluster.client(Target(topic="t")).call({}, "whoami") == "a"
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    with Cluster() as cluster:
        try:
            s = cluster.serve(Target(topic="t", server="v6"), [Named("v6")], host="::1")
        except grpcrpc.ServerError:
            pytest.skip("::1 not available")
        assert s.address.startswith("[::1]:")
        assert cluster.client(Target(topic="t")).call({}, "whoami") == "v6"


def test_stop_drains_in_flight_and_new_calls_go_elsewhere() -> None:
    with Cluster() as cluster:
        slow, other = Named("slow"), Named("other")
        s1 = cluster.serve(Target(topic="t", server="slow"), [slow])
        cluster.serve(Target(topic="t", server="other"), [other])
        client = cluster.client(Target(topic="t"), timeout=30)
        result: list[str] = []
        caller = threading.Thread(
            target=lambda: result.append(client.prepare(server="slow").call({}, "slow")))
        caller.start()
        wait_until(slow.started.is_set, what="slow call started")
        stopper = threading.Thread(target=s1.stop, kwargs={"grace": 20})
        stopper.start()
        # While it drains, the stopping server is gone from discovery: calls go to the other.
        wait_until(lambda: len(cluster.discovery.table) == 1, what="withdrawn")
        assert {client.call({}, "whoami") for _ in range(10)} == {"other"}
        slow.release.set()
        caller.join(10)
        stopper.join(10)
        assert result == ["slow"], "the in-flight call was not drained"


def test_stopping_server_answer_is_retried_elsewhere() -> None:
    """A server that refuses because it is stopping never ran the message: safe to resend.

    A real `stop()`: a call still running keeps the server draining (its port open, answering
    "stopping"), while a client with a stale table still sends to it."""
    with Cluster() as cluster:
        a, b = Named("a"), Named("b")
        sa = cluster.serve(Target(topic="t", server="a"), [a])
        cluster.serve(Target(topic="t", server="b"), [b])
        stale = grpcrpc.StaticResolver(list(cluster.discovery.table.endpoints))
        # Taking turns sends a message to the stopping server whenever it is not ejected.
        with grpcrpc.RPCClient(stale, Target(topic="t"), timeout=30,
                               options=TransportOptions(balancer="round_robin")) as client:
            result: list[str] = []
            caller = threading.Thread(
                target=lambda: result.append(client.prepare(server="a").call({}, "slow")))
            caller.start()
            wait_until(a.started.is_set, what="a call running on a")
            stopper = threading.Thread(target=sa.stop, kwargs={"grace": 20})
            stopper.start()
            wait_until(lambda: len(cluster.discovery.table) == 1, what="a withdrawn, draining")
            assert [client.call({}, "whoami") for _ in range(10)] == ["b"] * 10
            # Only a "stopping" answer ejects a server whose port still answers.
            assert client.transport.balancer.ejections.is_ejected(sa.address)
            a.release.set()
            caller.join(10)
            stopper.join(10)
        assert a.ran == 0 and b.ran == 10
        assert result == ["a"], "the call running on the stopping server was not drained"


def test_a_queued_call_whose_deadline_passed_is_dropped_not_run_late() -> None:
    """docs/architecture.md: "a call whose budget expired while it waited in the server's
    queue is dropped there, not run late". A one-thread pool is kept busy while calls wait
    behind it and their budgets run out; then the thread frees up."""

    class OneThread:
        def __init__(self) -> None:
            self.started, self.release = threading.Event(), threading.Event()
            self.late_runs: list[str] = []

        def block(self, ctxt: Any) -> str:
            self.started.set()
            self.release.wait(30)
            return "blocked"

        def late(self, ctxt: Any, kind: str) -> str:
            self.late_runs.append(kind)
            return "ran late"

        def mark(self, ctxt: Any) -> str:
            return "mark"

    with Cluster() as cluster:
        ep = OneThread()
        server = cluster.serve(Target(topic="t", server="one"), [ep],
                               limits=Limits(threads=1, queue=8))
        client = cluster.client(Target(topic="t"), timeout=30)
        blocker = threading.Thread(target=client.call, args=({}, "block"))
        blocker.start()
        wait_until(ep.started.is_set, what="the only thread busy")
        # A client's call queued behind it: its caller gives up at its deadline (and tells the
        # server so).
        with pytest.raises(grpcrpc.MessagingTimeout):
            client.prepare(timeout=0.5).call({}, "late", kind="client")
        # A caller that never says anything more: only the deadline in its envelope (0.5 s)
        # can stop the work. It waits for the answer, however late.
        raw = ev.build_envelope("raw-1", Target(topic="t"), "late", b'{"kind": "raw"}', b"{}",
                                timeout_ms=500).SerializeToString()
        answer: list[ev.Reply] = []
        with grpc.insecure_channel(server.address) as channel:
            unary = channel.unary_unary(UNARY_METHOD)
            waiter = threading.Thread(target=lambda: answer.append(
                ev.parse_reply(unary(raw, timeout=30))))
            started = time.monotonic()
            waiter.start()
            wait_until(lambda: time.monotonic() > started + 0.7, what="the raw call's budget")
            ep.release.set()
            waiter.join(10)
        # Queued after both: when it has run, the only thread has passed them.
        assert client.call({}, "mark") == "mark"
        blocker.join(10)
        assert ep.late_runs == [], "a call whose caller's budget had run out ran late"
        assert answer and answer[0].failure.code == ev.ErrorCode.EXPIRED, answer


def test_connection_refused_is_retried_on_another_endpoint() -> None:
    with Cluster() as cluster:
        cluster.serve(Target(topic="t", server="live"), [Named("live")])
        live = cluster.discovery.table.endpoints[0]
        dead = Endpoint("127.0.0.1:1", "t", "dead")
        resolver = grpcrpc.StaticResolver([dead, live])
        with grpcrpc.RPCClient(resolver, Target(topic="t"),
                               options=TransportOptions(balancer="round_robin")) as client:
            assert [client.call({}, "whoami") for _ in range(10)] == ["live"] * 10
            assert client.transport.balancer.ejections.is_ejected(dead.address)
            refused = r"could not connect to any of 1 .*Connection refused"
            with pytest.raises(grpcrpc.NoEndpoints, match=refused):
                client.prepare(server="dead").call({}, "whoami")


async def test_async_connection_refused_is_retried() -> None:
    server = RPCServer(Target(topic="t", server="live"), [Named("live")])
    await server.start()
    assert server.endpoint is not None
    resolver = grpcrpc.StaticResolver([Endpoint("127.0.0.1:1", "t", "dead"), server.endpoint])
    try:
        async with grpcrpc.AsyncRPCClient(resolver, Target(topic="t"), options=TransportOptions(
                balancer="round_robin")) as client:
            assert [await client.call({}, "whoami") for _ in range(6)] == ["live"] * 6
    finally:
        await server.stop()


def test_health_follows_the_server() -> None:
    server = ServerThread(RPCServer(Target(topic="t", server="h"), [Named("h")]))
    server.start()
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "grpcrpc.v1.Transport"):
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        server.stop()


async def test_health_is_not_serving_while_draining() -> None:
    named = Named("h")
    server = RPCServer(Target(topic="t", server="h"), [named])
    await server.start()
    client = grpcrpc.AsyncRPCClient(grpcrpc.StaticResolver([server.endpoint]),  # type: ignore[list-item]
                                    Target(topic="t"))
    call = asyncio.ensure_future(client.call({}, "slow"))
    while not named.started.is_set():
        await asyncio.sleep(0.01)
    stop = asyncio.ensure_future(server.stop(grace=10))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(500):
            resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            if resp.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.01)
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
    named.release.set()
    assert await call == "h"
    await stop
    await client.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a client
    certificate from another CA."""
    d = tmp_path_factory.mktemp("certs")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    for ca in ("ca", "rogue"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={ca}",
            "-keyout", f"{ca}.key", "-out", f"{ca}.pem")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ca in (("server", "ca"), ("client", "ca"), ("intruder", "rogue")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem")
    return d


def test_tls_and_mtls(certs: pathlib.Path) -> None:
    c = str(certs)
    with Cluster() as cluster:
        cluster.serve(Target(topic="tls", server="s"), [Named("tls")],
                      tls=ServerTLS(f"{c}/server.pem", f"{c}/server.key"))
        cluster.serve(Target(topic="mtls", server="s"), [Named("mtls")],
                      tls=ServerTLS(f"{c}/server.pem", f"{c}/server.key", f"{c}/ca.pem"))
        assert all(e.tls for e in cluster.discovery.table.endpoints)
        tls = TransportOptions(tls=ClientTLS(ca_file=f"{c}/ca.pem"))
        assert cluster.client(Target(topic="tls"), tls).call({}, "whoami") == "tls"
        mtls = TransportOptions(tls=ClientTLS(f"{c}/ca.pem", f"{c}/client.pem", f"{c}/client.key"))
        assert cluster.client(Target(topic="mtls"), mtls, timeout=5).call({}, "whoami") == "mtls"
        # No client certificate, or one from an untrusted CA: refused, and the server goes on.
        for opts in (tls, TransportOptions(tls=ClientTLS(f"{c}/ca.pem", f"{c}/intruder.pem",
                                                         f"{c}/intruder.key"))):
            with pytest.raises((grpcrpc.NoEndpoints, grpcrpc.DeliveryError, grpcrpc.Unauthorized)):
                cluster.client(Target(topic="mtls"), opts, timeout=5).call({}, "whoami")
        # A plaintext client cannot talk to a TLS server.
        with pytest.raises((grpcrpc.NoEndpoints, grpcrpc.DeliveryError)):
            cluster.client(Target(topic="tls"), timeout=5).call({}, "whoami")
        assert cluster.client(Target(topic="mtls"), mtls, timeout=5).call({}, "whoami") == "mtls"


def test_missing_tls_files_are_a_clear_error(tmp_path: pathlib.Path) -> None:
    server = RPCServer(Target(topic="t", server="s"), [Named("s")],
                       tls=ServerTLS(str(tmp_path / "nope.pem"), str(tmp_path / "nope.key")))
    with pytest.raises(grpcrpc.ServerError, match="cannot read server certificate"):
        ServerThread(server).start()


def test_server_argument_validation() -> None:
    with pytest.raises(ValueError, match="topic"):
        RPCServer(Target(), [Named("x")])
    with pytest.raises(ValueError, match="port_range"):
        RPCServer(Target(topic="t"), [Named("x")], port_range=(10, 5))
    with pytest.raises(ValueError, match="at least one endpoint"):
        RPCServer(Target(topic="t"), [])
    with pytest.raises(ValueError, match="endpoints or a dispatcher, not both"):
        RPCServer(Target(topic="t"), [Named("x")], dispatcher=Dispatcher([Named("y")]))


def test_a_server_takes_a_ready_dispatcher() -> None:
    """What the oslo driver does: every method goes to one place, by the dispatcher's rules."""

    class Everything(Dispatcher):
        def lookup(self, namespace: str | None, version: str | None, method: str) -> Handler:
            return Handler(lambda ctxt, **kw: [method, namespace, kw], False, None, method)

    with Cluster() as cluster:
        cluster.serve(Target(topic="t", server="s"), dispatcher=Everything([Named("unused")]))
        client = cluster.client(Target(topic="t", namespace="ns"), timeout=10)
        assert client.call({}, "anything", x=1) == ["anything", "ns", {"x": 1}]


def test_stop_while_a_thread_endpoint_runs_drops_its_outcome_cleanly(
        caplog: pytest.LogCaptureFixture) -> None:
    """The thread outlives its server (the grace passed): when it finishes, the loop is closed.
    Its outcome is dropped; nothing calls into the closed loop (it used to: `RuntimeError:
    Event loop is closed` from the pool's completion callback)."""
    slow = Named("slow")
    done = threading.Event()

    class Slow:
        def slow(self, ctxt: Any) -> str:
            try:
                return slow.slow(ctxt)
            finally:
                done.set()

    server = ServerThread(RPCServer(Target(topic="t", server="s"), [Slow()], grace=0.1))
    server.start()
    client = grpcrpc.RPCClient(grpcrpc.StaticResolver([Endpoint(server.address, "t", "s")]),
                               Target(topic="t"), timeout=30)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.call({}, "slow")
        except grpcrpc.GrpcrpcError as err:
            errors.append(err)

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(slow.started.is_set, what="the endpoint started")
    with caplog.at_level(logging.DEBUG):
        server.stop()  # grace 0.1 s: the thread is still running when the loop closes
        assert not done.is_set()
        slow.release.set()
        assert done.wait(10)
        caller.join(10)
        wait_until(lambda: any("dropped" in r.getMessage() for r in caplog.records), 5,
                   "the dropped outcome to be logged")
    assert [type(e) for e in errors] == [grpcrpc.DeliveryError]  # the stream broke with the stop
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    client.close()


def test_retry_zero_tries_only_one_endpoint() -> None:
    with Cluster() as cluster:
        cluster.serve(Target(topic="t", server="live"), [Named("live")])
        live = cluster.discovery.table.endpoints[0]
        resolver = grpcrpc.StaticResolver([Endpoint("127.0.0.1:1", "t", "dead"), live])
        opts = TransportOptions(balancer="round_robin")
        with grpcrpc.RPCClient(resolver, Target(topic="t"), options=opts, retry=0) as client:
            outcomes = set()
            for _ in range(4):
                try:
                    outcomes.add(client.call({}, "whoami"))
                except grpcrpc.NoEndpoints:
                    outcomes.add("refused")
            assert outcomes == {"live", "refused"}
