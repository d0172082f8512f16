"""oslo.messaging's RPC API over grpc://, between processes, with a real etcd.

The client side runs in this (plain-threads) process through `get_rpc_transport` and
`get_rpc_client`; servers are `tests.oslo.server_main` processes built with `get_rpc_server`.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import oslo_messaging
import pytest
from oslo_config import cfg

from grpcrpc.broadcaster import Broadcaster
from grpcrpc.discovery.etcd import EtcdConfig, EtcdRegistry, EtcdResolver
from grpcrpc.oslo import NotificationsNotSupported
from grpcrpc.testing.etcd import EtcdServer
from tests.conftest import wait_until
from tests.oslo.conftest import ENV, ROOT, ServerProcess, grpc_url, start_servers
from tests.oslo.endpoints import MODULE, AppError, Endpoint

MakeTransport = Callable[..., Any]


@pytest.fixture
def transport(etcd: EtcdServer) -> Iterator[MakeTransport]:
    """`transport(**query)`: an RPC transport to the test etcd, cleaned up after the test."""
    made: list[Any] = []

    def make(allowed: tuple[str, ...] = (), **query: Any) -> Any:
        t = oslo_messaging.get_rpc_transport(cfg.CONF, url=grpc_url(etcd, **query),
                                             allowed_remote_exmods=list(allowed))
        made.append(t)
        return t

    yield make
    for t in made:
        t.cleanup()


def client(transport: Any, topic: str, **kwargs: Any) -> Any:
    return oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic=topic),
                                         **kwargs)


def topic() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def recorded(c: Any, server: str) -> list[Any]:
    return list(c.prepare(server=server).call({}, "get_recorded"))


def test_call_and_cast_between_processes(etcd: EtcdServer, transport: MakeTransport,
                                         servers: list[ServerProcess]) -> None:
    t = topic()
    start_servers(servers, grpc_url(etcd), t, ["s1"])
    c = client(transport(), t, timeout=10)

    value = {"nested": [1, "two", {"three": 3.0}], "none": None}
    assert c.call({}, "echo", value=value) == value
    assert c.call({}, "whoami") == "s1"
    ctxt = {"user_id": "u1", "roles": ["admin"], "request_id": "req-1"}
    assert c.call(ctxt, "context") == ctxt
    # Values jsonutils would convert (the rabbit driver sends them the same way).
    assert c.call({}, "echo", value={1, 2}) in ([1, 2], [2, 1])

    assert c.cast({}, "record", value="cast-1") is None
    wait_until(lambda: recorded(c, "s1") == ["cast-1"], 10, "the cast to arrive")


def test_directed_cast_reaches_only_its_server(etcd: EtcdServer, transport: MakeTransport,
                                               servers: list[ServerProcess]) -> None:
    t = topic()
    start_servers(servers, grpc_url(etcd), t, ["s1", "s2"])
    c = client(transport(), t, timeout=10)
    assert {c.prepare(server=s).call({}, "whoami") for s in ("s1", "s2")} == {"s1", "s2"}

    for i in range(5):
        c.prepare(server="s2").cast({}, "record", value=i)
    wait_until(lambda: recorded(c, "s2") == [0, 1, 2, 3, 4], 10, "casts to s2")
    assert recorded(c, "s1") == []


def test_fanout_cast_reaches_every_server(etcd: EtcdServer, transport: MakeTransport,
                                          servers: list[ServerProcess]) -> None:
    t = topic()
    names = ["s1", "s2", "s3"]
    start_servers(servers, grpc_url(etcd), t, names)
    # No broadcaster is running: the client delivers to every server itself.
    c = client(transport(), t, timeout=10)
    c.prepare(fanout=True).cast({}, "record", value="all")
    for name in names:
        wait_until(lambda n=name: recorded(c, n) == ["all"], 10, f"the fanout at {name}")


@pytest.fixture
def broadcaster(etcd: EtcdServer) -> Iterator[Broadcaster]:
    """A broadcaster announced in etcd, on its own loop in a thread."""
    config = EtcdConfig([etcd.endpoint])
    registry = EtcdRegistry(config, ttl=5)
    resolver = EtcdResolver(config)
    resolver.start()
    loop = asyncio.new_event_loop()
    b = Broadcaster(resolver, registry=registry, name="b1")
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(b.start())
        ready.set()
        loop.run_until_complete(b.wait())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30)
    yield b
    asyncio.run_coroutine_threadsafe(b.stop(), loop).result(30)
    thread.join(30)
    resolver.close()
    registry.close()


def test_fanout_through_a_broadcaster(etcd: EtcdServer, transport: MakeTransport,
                                      servers: list[ServerProcess],
                                      broadcaster: Broadcaster) -> None:
    t = topic()
    start_servers(servers, grpc_url(etcd), t, ["s1", "s2"])
    c = client(transport(), t, timeout=10)
    c.prepare(fanout=True).cast({}, "record", value="via-b1")
    for name in ("s1", "s2"):
        wait_until(lambda n=name: recorded(c, n) == ["via-b1"], 10, f"the fanout at {name}")
    assert broadcaster.fanouts == 1


def test_remote_exceptions(etcd: EtcdServer, transport: MakeTransport,
                           servers: list[ServerProcess]) -> None:
    t = topic()
    start_servers(servers, grpc_url(etcd), t, ["s1"])

    # An allowed module: the exception comes back as its own type, kwargs and all.
    allowed = client(transport(allowed=(MODULE,)), t, timeout=10)
    with pytest.raises(AppError) as info:
        allowed.call({}, "fail", code=7)
    assert info.value.kwargs == {"code": 7, "server": "s1"}
    assert "application failed with code 7" in str(info.value)
    assert "Traceback" in str(info.value)  # the remote traceback, as oslo shows it

    # Not allowed: oslo's RemoteError, naming the remote type.
    plain = client(transport(), t, timeout=10)
    with pytest.raises(oslo_messaging.RemoteError) as remote:
        plain.call({}, "fail", code=7)
    assert remote.value.exc_type == "AppError"
    with pytest.raises(oslo_messaging.RemoteError) as forbidden:
        plain.call({}, "forbidden")
    assert forbidden.value.exc_type == "Forbidden"
    # oslo's own dispatcher decides about methods and versions, as with rabbit.
    with pytest.raises(oslo_messaging.RemoteError) as missing:
        plain.call({}, "no_such_method")
    assert missing.value.exc_type == "NoSuchMethod"
    with pytest.raises(oslo_messaging.RemoteError) as version:
        plain.prepare(version="2.0").call({}, "whoami")
    assert version.value.exc_type == "UnsupportedVersion"
    assert plain.call({}, "whoami") == "s1"  # and the server carries on


def test_timeouts_and_refusals(etcd: EtcdServer, transport: MakeTransport,
                               servers: list[ServerProcess]) -> None:
    t = topic()
    start_servers(servers, grpc_url(etcd), t, ["s1"])
    tr = transport()
    c = client(tr, t, timeout=10)

    started = time.monotonic()
    with pytest.raises(oslo_messaging.MessagingTimeout):
        c.prepare(timeout=1).call({}, "sleep", seconds=5)
    assert 0.9 < time.monotonic() - started < 4

    # No server at all: a call waits for one until its timeout, as with a broker.
    started = time.monotonic()
    with pytest.raises(oslo_messaging.MessagingTimeout):
        client(tr, topic(), timeout=1).call({}, "whoami")
    assert 0.9 < time.monotonic() - started < 4

    # retry=0 and at_least_once say "do not wait".
    started = time.monotonic()
    with pytest.raises(oslo_messaging.MessageDeliveryFailure):
        client(tr, topic(), retry=0).cast({}, "record", value=1)
    mandatory = oslo_messaging.TransportOptions(at_least_once=True)
    with pytest.raises(oslo_messaging.MessageUndeliverable):
        client(tr, topic(), timeout=30, transport_options=mandatory).call({}, "whoami")
    assert time.monotonic() - started < 2

    # A long call with a short call_monitor_timeout and a huge timeout completes: liveness
    # comes from the connection, not from heartbeat messages (oslo's test_monitor_long_call).
    assert c.prepare(timeout=3600, call_monitor_timeout=1).call({}, "sleep", seconds=2) == "s1"


def test_call_waits_for_a_server_that_starts_later(etcd: EtcdServer, transport: MakeTransport,
                                                   servers: list[ServerProcess]) -> None:
    t = topic()
    c = client(transport(), t, timeout=60)
    result: list[Any] = []
    caller = threading.Thread(target=lambda: result.append(c.call({}, "whoami")))
    caller.start()
    start_servers(servers, grpc_url(etcd), t, ["late"])
    caller.join(60)
    assert result == ["late"]


class Callers:
    """Threads calling `echo` in a loop, counting answers and keeping every error."""

    def __init__(self, c: Any, n: int) -> None:
        self.c = c
        self.answers = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(n)]

    def _run(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                assert self.c.call({}, "echo", value=[i, n]) == [i, n]
                with self._lock:
                    self.answers += 1
            except Exception as err:
                self.errors.append(err)
            n += 1

    def __enter__(self) -> Callers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def test_server_restart_during_calls(etcd: EtcdServer, transport: MakeTransport,
                                     servers: list[ServerProcess]) -> None:
    t = topic()
    url = grpc_url(etcd)
    [first] = start_servers(servers, url, t, ["s1"])
    c = client(transport(), t, timeout=30)
    with Callers(c, 4) as callers:
        wait_until(lambda: callers.answers >= 50, 20, "calls before the restart")
        # A graceful restart: in-flight calls finish, new ones wait for the new process.
        assert first.stop() == 0
        before = callers.answers
        start_servers(servers, url, t, ["s1"])
        wait_until(lambda: callers.answers >= before + 50, 20, "calls after the restart")
    assert callers.errors == []


def test_server_killed_during_a_call(etcd: EtcdServer, transport: MakeTransport,
                                     servers: list[ServerProcess]) -> None:
    t = topic()
    url = grpc_url(etcd)
    [victim] = start_servers(servers, url, t, ["s1"])
    c = client(transport(), t, timeout=120)
    errors: list[BaseException] = []

    def long_call() -> None:
        try:
            c.call({}, "sleep", seconds=60)
        except Exception as err:
            errors.append(err)

    caller = threading.Thread(target=long_call)
    caller.start()
    victim.wait_line("SLEEPING", 10)
    started = time.monotonic()
    victim.kill()
    caller.join(30)
    # The broken connection fails the call at once, not after its 120 s timeout.
    assert len(errors) == 1 and isinstance(errors[0], oslo_messaging.MessagingTimeout)
    assert time.monotonic() - started < 10
    # A new process takes over; the dead one's lease may not have expired yet, and calls
    # route around its refused address meanwhile.
    start_servers(servers, url, t, ["s1"])
    assert c.call({}, "whoami") == "s1"


def test_notifications_say_what_to_configure(etcd: EtcdServer) -> None:
    t = oslo_messaging.get_notification_transport(cfg.CONF, url=grpc_url(etcd))
    try:
        with pytest.raises(NotificationsNotSupported, match=r"\[oslo_messaging_notifications\]"):
            t._driver.send_notification(oslo_messaging.Target(topic="notifications"), {}, {},
                                        2.0)
        with pytest.raises(NotificationsNotSupported):
            t._driver.listen_for_notifications(
                [(oslo_messaging.Target(topic="notifications"), "info")], None, 1, None)
    finally:
        t.cleanup()


FORK_SCRIPT = """
import os, sys
import oslo_messaging
from oslo_config import cfg

url, topic = sys.argv[1:3]
# As a WSGI or API service does: the transport is made in the parent, used in the workers.
transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
client = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic=topic), timeout=10)
pid = os.fork()
if pid == 0:
    ok = client.call({}, "echo", value="child") == "child"
    transport.cleanup()
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert client.call({}, "echo", value="parent") == "parent"
transport.cleanup()
print("FORK-OK", flush=True)
"""


def test_transport_made_before_a_fork_works_in_the_child(
        etcd: EtcdServer, servers: list[ServerProcess]) -> None:
    t = topic()
    url = grpc_url(etcd)
    start_servers(servers, url, t, ["s1"])
    done = subprocess.run([sys.executable, "-c", FORK_SCRIPT, url, t], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=60, check=False)
    assert "FORK-OK" in done.stdout, done.stderr[-3000:]


def test_servers_can_require_a_token_and_an_acl(etcd: EtcdServer, transport: MakeTransport,
                                               servers: list[ServerProcess],
                                               tmp_path: pathlib.Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("conductor conductor-token-0123456789\napi api-token-0123456789ab\n")
    acl = tmp_path / "acl.json"
    acl.write_text(json.dumps([{"identity": "conductor"},
                               {"identity": "api", "ops": ["call"], "methods": ["whoami"]}]))
    t = topic()
    start_servers(servers, grpc_url(etcd, auth_tokens_file=tokens, auth_acl_file=acl), t, ["s1"])

    conductor = client(transport(auth_token="conductor-token-0123456789"), t, timeout=5)
    assert conductor.call({}, "echo", value=1) == 1
    api = client(transport(auth_token="api-token-0123456789ab"), t, timeout=5)
    assert api.call({}, "whoami") == "s1"
    with pytest.raises(oslo_messaging.MessageDeliveryFailure, match="Unauthorized"):
        api.call({}, "echo", value=1)  # not in its ACL
    with pytest.raises(oslo_messaging.MessageDeliveryFailure, match="Unauthorized"):
        client(transport(), t, timeout=5).call({}, "whoami")  # no token at all


def test_no_cast_accepted_by_a_stopping_server_is_lost(etcd: EtcdServer,
                                                       transport: MakeTransport) -> None:
    """Casts keep coming while a server stops (oslo's stop, wait, cleanup), three times: every
    cast the client was told was accepted runs, once. (A server that handed oslo's executor
    its last message before it stopped admitting new ones dropped what it accepted between.)"""
    t = topic()
    endpoints = {name: Endpoint(name) for name in ("s1", "s2")}
    delivered: list[Any] = []

    def serve(name: str) -> Any:
        server = oslo_messaging.get_rpc_server(
            transport(), oslo_messaging.Target(topic=t, server=name), [endpoints[name]],
            executor="threading")
        server.start()
        return server

    s2 = serve("s2")
    c = client(transport(), t, timeout=30)
    accepted: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def cast(i: int) -> None:
        n = 0
        while not stop.is_set():
            value = f"{i}-{n}"
            try:
                c.cast({}, "record", value=value)
                accepted.append(value)
            except Exception as err:
                errors.append(err)
            n += 1

    casters = [threading.Thread(target=cast, args=(i,)) for i in range(4)]
    try:
        for thread in casters:
            thread.start()
        for _ in range(3):
            s1 = serve("s1")
            wait_until(lambda: c.prepare(server="s1").call({}, "whoami") == "s1", 20, "s1")
            seen = len(endpoints["s1"].get_recorded({}))
            wait_until(lambda s=seen: len(endpoints["s1"].get_recorded({})) >= s + 100, 20,
                       "casts reaching s1")
            s1.stop()
            s1.wait()
            delivered += endpoints["s1"].get_recorded({})
            endpoints["s1"].recorded.clear()
    finally:
        stop.set()
        for thread in casters:
            thread.join(30)
        s2.stop()
        s2.wait()
    delivered += endpoints["s2"].get_recorded({})
    assert errors == []
    missing = set(accepted) - set(delivered)
    assert not missing, f"{len(missing)} of {len(accepted)} accepted casts never ran"
    assert len(delivered) == len(set(delivered)), "a cast ran twice"
