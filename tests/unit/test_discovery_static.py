import json
import pathlib

import pytest

from grpcrpc.discovery import (
    Endpoint,
    InvalidEndpoint,
    MemoryDiscovery,
    RoutingTable,
    StaticResolver,
)
from grpcrpc.discovery.base import split_address


def ep(addr: str, topic: str = "compute", server: str = "h1", az: str = "az1", **kw: object) -> Endpoint:
    return Endpoint(addr, topic, server, az=az, **kw)  # type: ignore[arg-type]


def test_endpoint_json_roundtrip_and_key_path() -> None:
    e = ep("10.0.0.5:41234", version="1.3", pid=7, hostname="h1.example", tls=True)
    assert Endpoint.from_json(e.to_json()) == e
    assert e.key_path == "az1/openstack/compute/h1/0"
    assert json.loads(e.to_json())["address"] == "10.0.0.5:41234"


@pytest.mark.parametrize(
    "address", ["nohost", "host:", ":80", "host:99999", "::1:80", "[::1:80", "[zz]:80", "h:0"]
)
def test_bad_addresses_rejected(address: str) -> None:
    with pytest.raises(InvalidEndpoint):
        split_address(address)


def test_ipv6_address() -> None:
    assert split_address("[::1]:5000") == ("::1", 5000)


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"[1,2]",
        b'{"address": "127.0.0.1:1", "topic": "t"}',
        b'{"address": "127.0.0.1:1", "topic": "t", "server": "s", "pid": "7"}',
        b'{"address": "127.0.0.1:1", "topic": "t", "server": "a/b"}',
        b'{"address": "127.0.0.1:1", "topic": "", "server": "s"}',
        b'{"address": "127.0.0.1:1", "topic": "t", "server": "s", "tls": 1}',
        b'{"address": "127.0.0.1:1", "topic": "t", "server": "s", "pad": "' + b"x" * 5000 + b'"}',
    ],
)
def test_off_schema_values_rejected(value: bytes) -> None:
    with pytest.raises(InvalidEndpoint):
        Endpoint.from_json(value)


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    e = Endpoint.from_json(b'{"address": "127.0.0.1:1", "topic": "t", "server": "s", "new": 1}')
    assert e.server == "s"


def test_candidates_own_az_then_fallback_then_explicit() -> None:
    table = RoutingTable.build([
        ep("127.0.0.1:1", az="az1", server="a"),
        ep("127.0.0.1:2", az="az2", server="b"),
        ep("127.0.0.1:3", az="az2", server="c"),
    ])
    own = table.candidates(topic="compute", exchange="openstack", own_az="az1")
    assert [e.server for e in own] == ["a"]
    assert table.candidates(topic="compute", exchange="openstack", own_az="az3") == ()
    fb = table.candidates(topic="compute", exchange="openstack", own_az="az3", fallback_azs=["az2"])
    assert [e.server for e in fb] == ["b", "c"]
    explicit = table.candidates(topic="compute", exchange="openstack", own_az="az1", az="az2")
    assert [e.server for e in explicit] == ["b", "c"]
    directed = table.candidates(topic="compute", exchange="openstack", own_az="az1", az="az2",
                                server="c")
    assert [e.server for e in directed] == ["c"]
    assert table.candidates(topic="compute", exchange="other", own_az="az1") == ()


def test_static_resolver_from_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "endpoints.json"
    path.write_text(json.dumps([{"address": "127.0.0.1:5000", "topic": "t", "server": "s"}]))
    assert len(StaticResolver.from_file(path).table) == 1
    path.write_text(json.dumps([{"address": "bad", "topic": "t", "server": "s"}]))
    with pytest.raises(InvalidEndpoint, match="entry 0"):
        StaticResolver.from_file(path)
    path.write_text("{")
    with pytest.raises(InvalidEndpoint, match="not JSON"):
        StaticResolver.from_file(path)


def test_memory_discovery_publishes_snapshots() -> None:
    d = MemoryDiscovery()
    seen: list[int] = []
    d.subscribe(lambda t: seen.append(len(t)))
    before = d.table
    e = ep("127.0.0.1:1")
    d.announce(e)
    assert len(before) == 0 and len(d.table) == 1  # old snapshot untouched
    d.withdraw(e)
    d.withdraw(e)  # idempotent
    assert seen == [1, 0]
    assert d.wait_for(lambda t: len(t) == 0, timeout=0.1)
