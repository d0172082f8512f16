"""Authorisation holes, attacked the way a hostile peer would: hand-built envelopes over raw
grpcio calls, capture servers for the broadcaster's outgoing connections. A legitimate grpcrpc
client keeps calling the attacked server throughout and must keep working."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

import grpcrpc
from grpcrpc import Limits, MemoryDiscovery, RPCClient, RPCServer, Target, TransportOptions
from grpcrpc.auth import ACL, ServerAuth, Tokens
from grpcrpc.broadcaster import Broadcaster, BroadcasterOptions
from grpcrpc.discovery.base import Endpoint
from tests.conftest import wait_until
from tests.security.raw import (
    CaptureServer,
    LegitLoad,
    Listeners,
    LoopThread,
    Raw,
    envelope,
    fanout_request,
    outcome,
)

CONDUCTOR = "conductor-token-0123456789"
BROADCASTER = "broadcaster-token-01234567"
TOKENS = Tokens({CONDUCTOR: "conductor", BROADCASTER: "broadcaster"})
# docs/security.md's example, plus a call the conductor may make on compute (the legitimate
# load) and the peer broadcasters' right to name a fanout's servers.
ACL_RULES = ACL.from_rules([
    {"identity": "conductor", "topics": ["scheduler"], "ops": ["call"]},
    {"identity": "conductor", "topics": ["compute"], "ops": ["cast", "fanout"]},
    {"identity": "conductor", "topics": ["compute"], "ops": ["call"], "methods": ["status"]},
    {"identity": "broadcaster", "topics": ["compute"], "ops": ["fanout", "relay"]},
])
AUTH = ServerAuth(tokens=TOKENS, acl=ACL_RULES)


class Compute:
    def __init__(self, name: str) -> None:
        self.name = name
        self.got: list[str] = []
        self.lock = threading.Lock()

    def secret(self, ctxt: Any) -> str:  # call-only: the broadcaster may never run it
        with self.lock:
            self.got.append("secret")
        return f"secret of {self.name}"

    def status(self, ctxt: Any) -> str:
        return "ok"

    def refresh(self, ctxt: Any) -> None:
        with self.lock:
            self.got.append("refresh")


@dataclass
class World:
    loop: LoopThread
    discovery: MemoryDiscovery
    apis: list[Compute]
    servers: list[RPCServer]
    broadcasters: list[Broadcaster] = field(default_factory=list)
    clients: list[RPCClient] = field(default_factory=list)

    def address(self, i: int) -> str:
        return self.servers[i].address

    def broadcaster(self, *, auth: ServerAuth | None = AUTH, name: str = "b1",
                    options: BroadcasterOptions | None = None) -> Broadcaster:
        b = Broadcaster(self.discovery, registry=self.discovery, name=name, auth=auth,
                        transport_options=TransportOptions(token=BROADCASTER), options=options)
        self.loop.run(b.start())
        self.broadcasters.append(b)
        return b

    def legit(self, server: str = "c0") -> LegitLoad:
        client = RPCClient(self.discovery, Target(topic="compute", server=server), timeout=5,
                           options=TransportOptions(token=CONDUCTOR, use_broadcaster=False))
        self.clients.append(client)
        return LegitLoad(lambda: client.call({}, "status"), "ok")

    def ran(self, what: str) -> int:
        return sum(api.got.count(what) for api in self.apis)


def _world(auth: ServerAuth | None) -> Iterator[World]:
    loop = LoopThread()
    d = MemoryDiscovery()
    apis = [Compute(f"c{i}") for i in range(3)]
    servers = [RPCServer(Target(topic="compute", server=f"c{i}"), [apis[i]], registry=d,
                         auth=auth, limits=Limits(threads=4)) for i in range(3)]
    for s in servers:
        loop.run(s.start())
    world = World(loop, d, apis, servers)
    try:
        yield world
    finally:
        for c in world.clients:
            c.close()
        for b in world.broadcasters:
            loop.run(b.stop(grace=1))
        for s in servers:
            loop.run(s.stop(grace=1))
        loop.close()


@pytest.fixture
def world() -> Iterator[World]:
    yield from _world(AUTH)


@pytest.fixture
def open_world() -> Iterator[World]:
    """The same servers with no authentication at all."""
    yield from _world(None)


# -- 1. a fanout right never grants a call ---------------------------------------------------

def _send(raw: Raw, how: str, env: Any) -> Any:
    if how == "unary":
        return raw.unary(env)
    replies = raw.stream([env]) if how == "stream" else raw.batches([[env]])
    assert len(replies) == 1
    return replies[0]


@pytest.mark.parametrize("how", ["unary", "stream", "batches"])
def test_a_fanout_right_never_runs_a_call(world: World, how: str) -> None:
    raw = Raw(world.address(0), BROADCASTER)
    try:
        with world.legit() as load:
            for i in range(20):
                reply = _send(raw, how, envelope(f"x{i}", "compute", "secret", fanout=True))
                assert outcome(reply) == "INVALID_ENVELOPE", reply
                assert "fanout envelope must be a cast" in reply.failure.message
                assert b"secret of" not in reply.SerializeToString()
            # The same right used as a call outright: refused by the ACL.
            assert outcome(_send(raw, how, envelope("c", "compute", "secret"))) == "UNAUTHORIZED"
            # What the right is for still works: a fanout delivery is a cast.
            reply = _send(raw, how, envelope("f", "compute", "refresh", cast=True, fanout=True))
            assert outcome(reply) == "accepted"
            wait_until(lambda: world.ran("refresh") == 1, what="the fanout delivery ran")
        load.check()
    finally:
        raw.close()
    assert world.ran("secret") == 0


def test_a_call_on_a_fanout_target_goes_as_a_call(world: World) -> None:
    """grpcrpc's own client never sets the fanout flag on a call (the server would refuse it)."""
    client = RPCClient(world.discovery, Target(topic="compute", server="c0", fanout=True),
                       timeout=5, options=TransportOptions(token=CONDUCTOR))
    world.clients.append(client)
    assert client.call({}, "status") == "ok"


# -- 2. the broadcaster dials registered servers only ------------------------------------------

def _capture() -> tuple[CaptureServer, Listeners]:
    return CaptureServer(), Listeners(20)


def test_a_caller_cannot_name_the_broadcasters_targets(world: World) -> None:
    """The conductor may fan out to compute, but naming servers is a peer broadcaster's right."""
    b = world.broadcaster()
    capture, listeners = _capture()
    raw = Raw(b.address, CONDUCTOR)
    try:
        with world.legit() as load:
            targets = [(capture.address, "c0"), *((a, "x") for a in listeners.addresses[:2])]
            request = fanout_request(envelope("f1", "compute", "refresh", cast=True), targets)
            with pytest.raises(grpc.RpcError) as caught:
                raw.fanout(request)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert caught.value.details() == "not authorized"
            # The same caller without a target list: delivered to every registered server.
            report = raw.fanout(fanout_request(envelope("f2", "compute", "refresh", cast=True)))
            assert (report.targets, report.delivered) == (3, 3)
        load.check()
    finally:
        raw.close()
    assert capture.seen == [] and listeners.accepted() == 0
    capture.close()
    listeners.close()


def test_a_peer_broadcasters_targets_reach_registered_servers_only(world: World) -> None:
    b = world.broadcaster()
    capture, listeners = _capture()
    raw = Raw(b.address, BROADCASTER)  # an identity the ACL lets `relay`
    try:
        with world.legit() as load:
            for bad in (capture.address, listeners.addresses[0]):
                targets = [(bad, "c0"),
                           (world.address(1), "c2"),  # a real server under another's name
                           (world.address(0), "c0")]
                report = raw.fanout(fanout_request(
                    envelope(f"f-{bad}", "compute", "refresh", cast=True), targets, depth=1))
                assert (report.targets, report.delivered) == (3, 1)
                assert sorted(f.address for f in report.failures) == sorted(
                    [bad, world.address(1)])
            assert all("not a registered endpoint" in f.reason for f in report.failures)
            # More targets than the topic has servers is not a split of it.
            many = [(a, "x") for a in listeners.addresses]
            with pytest.raises(grpc.RpcError) as caught:
                raw.fanout(fanout_request(envelope("f2", "compute", "refresh", cast=True), many))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        load.check()
        wait_until(lambda: world.apis[0].got == ["refresh"] * 2, what="c0 got the fanouts")
    finally:
        raw.close()
    assert capture.seen == [] and capture.credentials() == []
    assert listeners.accepted() == 0
    assert world.apis[1].got == [] and world.apis[2].got == []
    capture.close()
    listeners.close()


def test_without_auth_a_target_list_is_no_ssrf(open_world: World) -> None:
    b = open_world.broadcaster(auth=None)
    listeners = Listeners(20)
    raw = Raw(b.address)
    try:
        with open_world.legit() as load:
            for i in range(0, 18, 3):
                chunk = [(a, "x") for a in listeners.addresses[i:i + 3]]
                report = raw.fanout(fanout_request(
                    envelope(f"f{i}", "compute", "refresh", cast=True), chunk, depth=1))
                assert (report.targets, report.delivered) == (3, 0)
            with pytest.raises(grpc.RpcError) as caught:  # 1,000 closed ports: refused whole
                raw.fanout(fanout_request(envelope("g", "compute", "refresh", cast=True),
                                          [(f"127.0.0.1:{p}", "x") for p in range(2000, 3000)]))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        load.check()
    finally:
        raw.close()
    assert listeners.accepted() == 0
    assert b.deliveries == 0
    listeners.close()


def test_credentials_go_only_to_registered_endpoints_at_the_point_of_dialling(
        world: World) -> None:
    """A server withdrawn between choosing and dialling is not dialled (nor its address, were
    it reused by anyone else)."""
    from grpcrpc import fanout

    b = world.broadcaster()
    capture = CaptureServer()
    stranger = Endpoint(capture.address, "compute", "gone")
    env = envelope("f1", "compute", "refresh", cast=True, fanout=True)

    async def share() -> fanout.FanoutReport:
        return await b._deliver_share(None, [stranger], "f1", env.SerializeToString(), 5.0,
                                      "fanout compute.refresh", 1)

    report = world.loop.run(share())
    assert (report.targets, report.delivered) == (1, 0)
    assert "no longer a registered endpoint" in report.failures[0].reason
    assert capture.seen == []
    capture.close()


def test_peer_broadcasters_still_split_large_topics(world: World) -> None:
    opts = BroadcasterOptions(split_threshold=1)
    b1 = world.broadcaster(name="b1", options=opts)
    b2 = world.broadcaster(name="b2", options=opts)
    client = RPCClient(world.discovery, Target(topic="compute", fanout=True), timeout=10,
                       options=TransportOptions(token=CONDUCTOR))
    world.clients.append(client)
    report = client.cast({}, "refresh")
    assert report is not None and (report.targets, report.delivered) == (3, 3), report
    assert b1.deliveries + b2.deliveries == 3 and b1.deliveries and b2.deliveries
    wait_until(lambda: world.ran("refresh") == 3, what="every server got the fanout")


def test_a_peer_without_the_relay_right_gets_its_share_delivered_here(world: World) -> None:
    """An ACL written before `relay` existed: the peer refuses the share before delivering any
    of it, so the splitting broadcaster delivers it itself (once)."""
    old_acl = ServerAuth(tokens=TOKENS, acl=ACL.from_rules([
        {"identity": "conductor", "topics": ["compute"], "ops": ["fanout"]},
        {"identity": "broadcaster", "topics": ["compute"], "ops": ["fanout"]},
    ]))
    opts = BroadcasterOptions(split_threshold=1)
    b1 = world.broadcaster(name="b1", options=opts, auth=old_acl)
    b2 = world.broadcaster(name="b2", options=opts, auth=old_acl)
    client = RPCClient(world.discovery, Target(topic="compute", fanout=True), timeout=10,
                       options=TransportOptions(token=CONDUCTOR))
    world.clients.append(client)
    report = client.cast({}, "refresh")
    assert report is not None and (report.targets, report.delivered) == (3, 3), report
    assert b1.deliveries + b2.deliveries == 3 and 0 in (b1.deliveries, b2.deliveries)
    wait_until(lambda: world.ran("refresh") == 3, what="every server got the fanout")
    assert [api.got for api in world.apis] == [["refresh"]] * 3


# -- 8. trace headers cannot block the loop -------------------------------------------------

def test_huge_trace_headers_are_refused_before_anyone_parses_them(open_world: World) -> None:
    raw = Raw(open_world.address(0))
    spaces = " " * 8191
    try:
        with open_world.legit() as load:
            t0 = time.perf_counter()
            for round_ in range(5):
                batch = [envelope(f"b{round_}-{i}", "compute", "status",
                                  headers={"baggage": f"k=v,{spaces}x"}) for i in range(100)]
                replies = raw.batches([batch])
                assert [outcome(r) for r in replies] == ["INVALID_ENVELOPE"] * 100
            elapsed = time.perf_counter() - t0
            for headers in ({"tracestate": spaces + "a=b"}, {"x": "v" * 9000},
                            {f"h{i}": "v" * 4000 for i in range(5)}, {"k" * 300: "v"}):
                reply = raw.unary(envelope("h", "compute", "status", headers=headers))
                assert outcome(reply) == "INVALID_ENVELOPE", headers.keys()
            # Well-formed trace headers still go through.
            ok = raw.unary(envelope("ok", "compute", "status", headers={
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "baggage": "user=alice, tenant = t1", "tracestate": "vendor=x"}))
            assert outcome(ok) == "result"
        load.check()
    finally:
        raw.close()
    # 500 envelopes that each took OpenTelemetry ~43 ms to parse took > 20 s of loop time.
    assert elapsed < 10, elapsed


def test_malformed_trace_headers_cannot_fill_the_log(open_world: World,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Within the bounds, OpenTelemetry still warns about each malformed baggage it parses,
    quoting it: those warnings are thinned out, not one 8 KB line per envelope."""
    raw = Raw(open_world.address(0))
    try:
        with caplog.at_level("WARNING"), open_world.legit() as load:
            for r in range(4):
                batch = [envelope(f"j{r}-{i}", "compute", "status",
                                  headers={"baggage": "x" * 8000}) for i in range(50)]
                assert [outcome(x) for x in raw.batches([batch])] == ["result"] * 50
        load.check()
    finally:
        raw.close()
    otel = [r for r in caplog.records if r.name.startswith("opentelemetry")]
    assert len(otel) <= 1 and sum(len(r.getMessage()) for r in otel) < 1000


# -- the smaller holes ------------------------------------------------------------------------

def test_an_unauthenticated_caller_learns_nothing_from_routing(world: World) -> None:
    with world.legit() as load:
        for token in (None, "wrong-token-0123456789abcdef"):
            raw = Raw(world.address(0), token)
            try:
                for env in (envelope("m1", "compute", "status", server="elsewhere"),
                            envelope("m2", "compute", "status", exchange="other", az="az9"),
                            envelope("m3", "scheduler", "status")):
                    reply = raw.unary(env)
                    assert outcome(reply) == "UNAUTHORIZED"
                    data = reply.SerializeToString()
                    assert b"c0" not in data and b"az" not in data and b"openstack" not in data
            finally:
                raw.close()
    load.check()
    # An authorised caller still gets MISROUTED (its routing table is stale: it retries).
    raw = Raw(world.address(0), CONDUCTOR)
    try:
        assert outcome(raw.unary(envelope("m4", "compute", "status", server="c9"))) == "MISROUTED"
    finally:
        raw.close()


@pytest.mark.parametrize("what", ["id", "method", "topic", "exchange", "server", "az",
                                  "namespace", "version", "header name"])
def test_every_string_field_is_bounded_and_never_echoed(world: World, what: str) -> None:
    big = "x" * (1 << 20)
    env = envelope("e1", "compute", "status", server="elsewhere")
    if what == "id":
        env.id = big
    elif what == "method":
        env.method = big
    elif what == "header name":
        env.headers[big] = "v"
    elif what == "topic":
        env.target.topic = big
    else:
        setattr(env.target, what, big)
    raw = Raw(world.address(0), CONDUCTOR)
    try:
        with world.legit() as load:
            for _ in range(5):
                reply = raw.unary(env)
                assert outcome(reply) == "INVALID_ENVELOPE"
                assert len(reply.SerializeToString()) < 1024
        load.check()
    finally:
        raw.close()


def test_a_cancel_envelope_on_unary_is_a_named_error(world: World) -> None:
    raw = Raw(world.address(0), CONDUCTOR)
    try:
        reply = raw.unary(grpcrpc.envelope.Envelope(id="c1", cancel=True))
        assert outcome(reply) == "INVALID_ENVELOPE" and reply.id == "c1"
        assert "cancel" in reply.failure.message
    finally:
        raw.close()
