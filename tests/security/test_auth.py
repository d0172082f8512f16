"""Authenticated callers and per-topic access control, against real servers."""

from __future__ import annotations

import asyncio
import pathlib
import threading
from typing import Any

import pytest

import grpcrpc
from grpcrpc import ClientTLS, MemoryDiscovery, RPCServer, ServerTLS, Target, TransportOptions
from grpcrpc.auth import ACL, ServerAuth, Tokens
from grpcrpc.broadcaster import Broadcaster
from grpcrpc.testing import Cluster

TOKENS = Tokens({
    "conductor-token-0123456789": "conductor",
    "compute-token-0123456789ab": "compute",
    "broadcaster-token-01234567": "broadcaster",
})
ACL_RULES = ACL.from_rules([
    {"identity": "conductor", "topics": ["scheduler"], "ops": ["call"]},
    {"identity": "conductor", "topics": ["compute"], "ops": ["cast", "fanout"]},
    {"identity": "compute", "topics": ["scheduler"], "ops": ["cast"],
     "methods": ["update_*"]},
    {"identity": "broadcaster", "topics": ["compute"], "ops": ["fanout"]},
])


class Api:
    def __init__(self) -> None:
        self.got: list[str] = []
        self.lock = threading.Lock()

    def select(self, ctxt: Any) -> str:
        return "host1"

    def update_stats(self, ctxt: Any) -> None:
        with self.lock:
            self.got.append("update_stats")

    def reset(self, ctxt: Any) -> None:
        with self.lock:
            self.got.append("reset")

    async def refresh(self, ctxt: Any) -> None:
        with self.lock:
            self.got.append("refresh")


def token(t: str | None) -> TransportOptions:
    return TransportOptions(token=t)


def test_no_token_and_wrong_token_are_unauthorized_and_the_server_goes_on() -> None:
    with Cluster() as cluster:
        cluster.serve(Target(topic="scheduler", server="s"), [Api()], auth=ServerAuth(tokens=TOKENS))
        for bad in (None, "wrong-token-0123456789abcdef", "conductor-token-012345678"):
            with pytest.raises(grpcrpc.Unauthorized, match="not authorized"):
                cluster.client(Target(topic="scheduler"), token(bad)).call({}, "select")
        ok = cluster.client(Target(topic="scheduler"), token("conductor-token-0123456789"))
        assert ok.call({}, "select") == "host1"


async def test_async_client_with_token() -> None:
    d = MemoryDiscovery()
    server = RPCServer(Target(topic="scheduler", server="s"), [Api()], registry=d,
                       auth=ServerAuth(tokens=TOKENS))
    await server.start()
    try:
        async with grpcrpc.AsyncRPCClient(d, Target(topic="scheduler"),
                                          options=token("conductor-token-0123456789")) as c:
            assert await c.call({}, "select") == "host1"
        async with grpcrpc.AsyncRPCClient(d, Target(topic="scheduler")) as c:
            with pytest.raises(grpcrpc.Unauthorized):
                await c.call({}, "select")
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("who", "op", "topic", "method", "allowed"),
    [
        ("conductor", "call", "scheduler", "select", True),
        ("conductor", "cast", "scheduler", "update_stats", False),
        ("conductor", "call", "compute", "select", False),
        ("conductor", "cast", "compute", "reset", True),
        ("conductor", "fanout", "compute", "refresh", True),
        ("compute", "cast", "scheduler", "update_stats", True),
        ("compute", "cast", "scheduler", "reset", False),
        ("compute", "call", "scheduler", "select", False),
        ("compute", "fanout", "compute", "refresh", False),
    ],
)
def test_acl_matrix(who: str, op: str, topic: str, method: str, allowed: bool) -> None:
    tokens = {"conductor": "conductor-token-0123456789", "compute": "compute-token-0123456789ab"}
    auth = ServerAuth(tokens=TOKENS, acl=ACL_RULES)
    with Cluster() as cluster:
        api = Api()
        cluster.serve(Target(topic="scheduler", server="s"), [api], auth=auth)
        cluster.serve(Target(topic="compute", server="c"), [api], auth=auth)
        opts = TransportOptions(token=tokens[who], use_broadcaster=False)
        client = cluster.client(Target(topic=topic), opts)
        if op == "fanout":
            client = client.prepare(fanout=True)

        def act() -> Any:
            return client.call({}, method) if op == "call" else client.cast({}, method)

        if not allowed and op == "fanout":
            report = act()
            assert report.delivered == 0 and "UNAUTHORIZED" in report.failures[0].reason
        elif not allowed:
            with pytest.raises(grpcrpc.Unauthorized):
                act()
        else:
            result = act()
            assert result is None or result == "host1" or result.delivered == 1


async def test_fanout_through_a_broadcaster_needs_the_right() -> None:
    d = MemoryDiscovery()
    api = Api()
    servers = [RPCServer(Target(topic="compute", server=f"c{i}"), [api], registry=d,
                         auth=ServerAuth(tokens=TOKENS, acl=ACL_RULES)) for i in range(3)]
    broadcaster = Broadcaster(d, registry=d, name="b", auth=ServerAuth(tokens=TOKENS, acl=ACL_RULES),
                              transport_options=token("broadcaster-token-01234567"))
    for s in servers:
        await s.start()
    await broadcaster.start()
    try:
        async with grpcrpc.AsyncRPCClient(d, Target(topic="compute", fanout=True),
                                          options=token("conductor-token-0123456789")) as c:
            report = await c.cast({}, "refresh")
            assert report is not None and (report.targets, report.delivered) == (3, 3)
        # compute may not fanout: refused by the broadcaster, before any amplification.
        async with grpcrpc.AsyncRPCClient(d, Target(topic="compute", fanout=True),
                                          options=token("compute-token-0123456789ab")) as c:
            with pytest.raises(grpcrpc.Unauthorized):
                await c.cast({}, "refresh")
        assert broadcaster.fanouts == 1
        for _ in range(200):
            if len(api.got) == 3:
                break
            await asyncio.sleep(0.01)
        assert api.got == ["refresh"] * 3
    finally:
        await broadcaster.stop()
        for s in servers:
            await s.stop()


def test_broadcaster_identity_needs_the_servers_acl() -> None:
    """Servers accept fanouts from a broadcaster only where their ACL lets its identity."""
    async def go() -> None:
        d = MemoryDiscovery()
        strict = ACL.from_rules([{"identity": "conductor", "ops": ["fanout"]}])
        server = RPCServer(Target(topic="compute", server="c"), [Api()], registry=d,
                           auth=ServerAuth(tokens=TOKENS, acl=strict))
        b = Broadcaster(d, registry=d, name="b", auth=ServerAuth(tokens=TOKENS, acl=ACL_RULES),
                        transport_options=token("broadcaster-token-01234567"))
        await server.start()
        await b.start()
        try:
            async with grpcrpc.AsyncRPCClient(d, Target(topic="compute", fanout=True),
                                              options=token("conductor-token-0123456789")) as c:
                report = await c.cast({}, "refresh")
            assert report is not None and report.delivered == 0
            assert "UNAUTHORIZED" in report.failures[0].reason
        finally:
            await b.stop()
            await server.stop()
    asyncio.run(go())


def _mtls_client(cluster: Cluster, certs: pathlib.Path, name: str, ca: str = "ca") -> Any:
    tls = ClientTLS(str(certs / f"{ca}.pem"), str(certs / f"{name}.pem"), str(certs / f"{name}.key"))
    return cluster.client(Target(topic="scheduler"), TransportOptions(tls=tls), timeout=5)


def test_mtls_identity_from_the_certificate(certs: pathlib.Path) -> None:
    acl = ACL.from_rules([{"identity": "conductor.nova", "topics": ["scheduler"], "ops": ["call"]}])
    tls = ServerTLS(str(certs / "server.pem"), str(certs / "server.key"), str(certs / "ca.pem"))
    with Cluster() as cluster:
        cluster.serve(Target(topic="scheduler", server="s"), [Api()], tls=tls,
                      auth=ServerAuth(mtls=True, acl=acl))
        assert _mtls_client(cluster, certs, "conductor").call({}, "select") == "host1"
        with pytest.raises(grpcrpc.Unauthorized):  # right cert, wrong operation
            _mtls_client(cluster, certs, "conductor").cast({}, "select")
        for name in ("intruder", "expired"):  # untrusted CA, expired: the handshake is refused
            with pytest.raises(grpcrpc.Unauthorized, match="TLS handshake was refused"):
                _mtls_client(cluster, certs, name).call({}, "select")
        with pytest.raises(grpcrpc.Unauthorized, match="TLS handshake"):  # server not trusted
            _mtls_client(cluster, certs, "conductor", ca="rogue").call({}, "select")
        assert _mtls_client(cluster, certs, "conductor").call({}, "select") == "host1"


def test_tokens_file_and_bad_rules(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# identity token\nconductor conductor-token-0123456789\n")
    assert Tokens.from_file(path).identity("conductor-token-0123456789") == "conductor"
    path.write_text("conductor short\n")
    with pytest.raises(ValueError, match="at least 16"):
        Tokens.from_file(path)
    with pytest.raises(ValueError, match="unknown operation"):
        ACL.from_rules([{"identity": "x", "ops": ["delete"]}])
    with pytest.raises(ValueError, match="needs 'identity'"):
        ACL.from_rules([{"topics": ["x"]}])
    with pytest.raises(ValueError, match="needs tokens, mtls"):
        ServerAuth()


def test_token_never_in_repr_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    secret = "conductor-token-0123456789"
    assert secret not in repr(TransportOptions(token=secret))
    with Cluster() as cluster:
        cluster.serve(Target(topic="scheduler", server="s"), [Api()], auth=ServerAuth(
            tokens=TOKENS, acl=ACL.from_rules([])))
        with caplog.at_level("DEBUG", logger="grpcrpc"), pytest.raises(grpcrpc.Unauthorized):
            cluster.client(Target(topic="scheduler"), token(secret)).call({}, "select")
    assert "conductor may not call scheduler.select" in caplog.text
    assert secret not in caplog.text
