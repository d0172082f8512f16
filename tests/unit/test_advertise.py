"""Which address a server bound to every interface announces: pure choice logic, with the
routing table faked (the real lookup, `routes_toward`, is checked against loopback only)."""

from __future__ import annotations

import socket
from collections.abc import Iterable

import pytest

from grpcrpc.exceptions import NoAdvertiseAddress, ServerError
from grpcrpc.host import choose_advertise_host, routes_toward


class Routing:
    """A fake kernel routing table: etcd host -> [(its address, our source address)]."""

    def __init__(self, table: dict[str, list[tuple[str, str]]]) -> None:
        self.table = table
        self.asked: list[tuple[str, int]] = []

    def __call__(self, host: str, family: int) -> Iterable[tuple[str, str]]:
        self.asked.append((host, family))
        return self.table.get(host, [])


def test_a_specific_bind_address_is_announced_as_it_is() -> None:
    routing = Routing({})
    assert choose_advertise_host("10.1.2.3", ["etcd1"], routing) == "10.1.2.3"
    assert choose_advertise_host("127.0.0.1", ["10.0.0.7"], routing) == "127.0.0.1"
    assert choose_advertise_host("[fd00::5]", ["etcd1"], routing) == "fd00::5"
    assert routing.asked == []


def test_wildcard_announces_the_address_toward_a_remote_etcd() -> None:
    # Debian's hostname lookup says 127.0.1.1; the route toward etcd says what others can dial.
    routing = Routing({"etcd1.example": [("10.0.0.7", "10.0.0.5")]})
    assert choose_advertise_host("0.0.0.0", ["etcd1.example"], routing) == "10.0.0.5"
    assert routing.asked == [("etcd1.example", socket.AF_INET)]  # 0.0.0.0 listens on IPv4


def test_wildcard_ipv6_bind_accepts_any_family() -> None:
    routing = Routing({"etcd1": [("fd00::7", "fd00::5")]})
    assert choose_advertise_host("::", ["etcd1"], routing) == "fd00::5"
    assert routing.asked == [("etcd1", socket.AF_UNSPEC)]


def test_loopback_only_when_etcd_itself_is_on_loopback() -> None:
    routing = Routing({"127.0.0.1": [("127.0.0.1", "127.0.0.1")],
                       "localhost": [("::1", "::1"), ("127.0.0.1", "127.0.0.1")]})
    assert choose_advertise_host("0.0.0.0", ["127.0.0.1"], routing) == "127.0.0.1"
    assert choose_advertise_host("::", ["localhost"], routing) == "::1"


def test_a_reachable_address_wins_over_a_loopback_etcd_member() -> None:
    routing = Routing({"127.0.0.1": [("127.0.0.1", "127.0.0.1")],
                       "etcd2": [("10.0.0.8", "10.0.0.5")]})
    assert choose_advertise_host("0.0.0.0", ["127.0.0.1", "etcd2"], routing) == "10.0.0.5"


def test_loopback_or_link_local_toward_a_remote_etcd_is_refused() -> None:
    routing = Routing({"etcd1": [("10.0.0.7", "127.0.0.1")],
                       "etcd2": [("fe80::7", "fe80::5%eth0")]})
    with pytest.raises(NoAdvertiseAddress, match="set advertise_host") as info:
        choose_advertise_host("::", ["etcd1", "etcd2"], routing)
    assert "etcd1 -> 10.0.0.7 via 127.0.0.1" in str(info.value)
    assert isinstance(info.value, ServerError)


def test_an_etcd_that_does_not_resolve_is_a_named_error() -> None:
    with pytest.raises(NoAdvertiseAddress, match=r"etcd\.invalid -> unresolved.*advertise_host"):
        choose_advertise_host("0.0.0.0", ["etcd.invalid"], Routing({}))


def test_a_registry_that_does_not_say_where_it_is_needs_advertise_host() -> None:
    with pytest.raises(NoAdvertiseAddress, match="does not say where"):
        choose_advertise_host("0.0.0.0", None, Routing({}))


def test_an_in_process_registry_or_none_gets_loopback() -> None:
    routing = Routing({})
    assert choose_advertise_host("0.0.0.0", (), routing) == "127.0.0.1"
    assert choose_advertise_host("", (), routing) == "127.0.0.1"
    assert routing.asked == []


def test_routes_toward_loopback_and_unresolvable_names() -> None:
    assert routes_toward("127.0.0.1", socket.AF_INET) == [("127.0.0.1", "127.0.0.1")]
    assert routes_toward("name.that.does.not.resolve.invalid") == []
