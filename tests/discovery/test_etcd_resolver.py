"""EtcdResolver against a real etcd: paged listing, watching, compaction, poison, narrowing."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from grpcrpc.discovery import _etcd_client as ec
from grpcrpc.discovery._etcd_resolver import _Source
from grpcrpc.discovery.base import Endpoint, RoutingTable
from grpcrpc.discovery.etcd import DiscoveryUnavailable, EtcdConfig, EtcdResolver, connect
from grpcrpc.testing.etcd import EtcdServer
from tests.discovery.conftest import Stack

PREFIX = "/grpcrpc/v1/endpoints/"


def ep(server: str, topic: str = "compute", az: str = "default", port: int = 5000) -> Endpoint:
    return Endpoint(f"127.0.0.1:{port}", topic, server, az=az)


def servers(table: RoutingTable) -> set[str]:
    return {e.server for e in table.endpoints}


@pytest.fixture
def raw(etcd_config: EtcdConfig) -> Iterator[Any]:
    """A plain etcd client, to write what no registry would."""
    client = connect(etcd_config)
    yield client
    client.close()


def put(raw: Any, *endpoints: Endpoint) -> None:
    for e in endpoints:
        raw.put(PREFIX + e.key_path, e.to_json())


def test_lists_in_pages_then_follows_changes(raw: Any, etcd_config: EtcdConfig,
                                             stack: Stack) -> None:
    put(raw, *(ep(f"h{i:02}") for i in range(25)))
    resolver = stack.resolver(etcd_config, page_size=4)
    assert servers(resolver.table) == {f"h{i:02}" for i in range(25)}
    seen: list[RoutingTable] = []
    stack._exit.callback(resolver.subscribe(seen.append))
    put(raw, ep("new"))
    raw.delete(PREFIX + ep("h00").key_path)
    assert resolver.wait_for(lambda t: "new" in servers(t) and "h00" not in servers(t), 5)
    assert seen and seen[-1] is resolver.table
    # The table says which etcd revision it reflects.
    assert resolver.wait_for(lambda t: t.revision == raw.get_response("x").header.revision, 5)


def test_compacted_before_the_watch_starts(etcd_server: EtcdServer, raw: Any,
                                           etcd_config: EtcdConfig, stack: Stack,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    put(raw, ep("a"))
    real_list = _Source._list
    lists = []

    def list_then_compact(self: _Source, session: ec.Session) -> Any:
        result = real_list(self, session)
        lists.append(result[0])
        if len(lists) == 1:
            # Between the listing and the watch: changes, then compaction past them.
            put(raw, ep("b"))
            raw.delete(PREFIX + ep("a").key_path)
            etcd_server.etcdctl("compact", str(etcd_server.revision()))
        return result

    monkeypatch.setattr(_Source, "_list", list_then_compact)
    resolver = stack.resolver(etcd_config)
    assert resolver.wait_for(lambda t: servers(t) == {"b"}, 5), resolver.table
    assert len(lists) == 2
    put(raw, ep("c"))  # and the watch after the re-listing works
    assert resolver.wait_for(lambda t: servers(t) == {"b", "c"}, 5)


def test_compacted_between_pages(etcd_server: EtcdServer, raw: Any, etcd_config: EtcdConfig,
                                 stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    put(raw, *(ep(f"h{i}") for i in range(6)))
    real_page = ec.Session.range_page
    compacted = []

    def page(self: ec.Session, start: bytes, end: bytes, limit: int,
             revision: int | None) -> ec.Page:
        if revision is not None and not compacted:
            # The next page's revision is compacted away: etcd answers OUT_OF_RANGE.
            put(raw, ep("late"))
            raw.delete(PREFIX + ep("h0").key_path)
            etcd_server.etcdctl("compact", str(etcd_server.revision()))
            compacted.append(revision)
        return real_page(self, start, end, limit, revision)

    monkeypatch.setattr(ec.Session, "range_page", page)
    resolver = stack.resolver(etcd_config, page_size=2)
    expected = {f"h{i}" for i in range(1, 6)} | {"late"}
    assert resolver.wait_for(lambda t: servers(t) == expected, 5), resolver.table
    assert compacted


def test_poisoned_values_are_skipped(raw: Any, etcd_config: EtcdConfig, stack: Stack,
                                     caplog: pytest.LogCaptureFixture) -> None:
    base = PREFIX + "default/openstack/compute/"
    poison = {
        "garbage/0": b"not json {",
        "huge/0": json.dumps({**json.loads(ep("huge").to_json()), "pad": "x" * 5000}).encode(),
        "nested/0": b"[" * 2000 + b"]" * 2000,
        "types/0": b'{"address": 5, "topic": "compute", "server": "types"}',
        "mismatch/0": ep("someone-else").to_json(),
        "list/0": b"[1, 2]",
        "binary/0": b"\xff\xfe\x00",
    }
    for key, value in poison.items():
        raw.put(base + key, value)
    put(raw, ep("good"))
    with caplog.at_level(logging.WARNING, "grpcrpc.discovery.etcd"):
        resolver = stack.resolver(etcd_config)
        assert servers(resolver.table) == {"good"}
        # The same poison arriving through the watch, then a valid change after it.
        for key, value in poison.items():
            raw.put(base + "w" + key, value)
        raw.put(base + "good/0", b"overwritten with garbage")
        put(raw, ep("after"))
        assert resolver.wait_for(lambda t: servers(t) == {"after"}, 5), resolver.table
    skipped = [r for r in caplog.records if "skipping etcd key" in r.getMessage()]
    assert len(skipped) == 2 * len(poison) + 1  # one line each


def test_watches_only_the_azs_and_topics_asked_for(raw: Any, etcd_config: EtcdConfig,
                                                   stack: Stack) -> None:
    put(raw, ep("c1", az="az1"), ep("s1", topic="scheduler", az="az1"), ep("c2", az="az2"),
        ep("n1", topic="network", az="az1"))
    resolver = stack.resolver(etcd_config, az=["az1", "az2"], topics=["compute", "scheduler"])
    assert resolver.prefixes == [PREFIX + p for p in (
        "az1/openstack/compute/", "az1/openstack/scheduler/",
        "az2/openstack/compute/", "az2/openstack/scheduler/")]
    assert servers(resolver.table) == {"c1", "s1", "c2"}
    everything = stack.resolver(etcd_config, topics=[("openstack", "network")])
    assert everything.prefixes == [PREFIX]  # every AZ: filtered by topic after reading
    assert servers(everything.table) == {"n1"}


def test_start_without_etcd() -> None:
    with contextlib.closing(EtcdServer()) as etcd:  # ports chosen, never started
        config = EtcdConfig([etcd.endpoint], timeout=0.5)
        started = time.monotonic()
        resolver = EtcdResolver(config, start_timeout=1.0, max_backoff=0.5)
        with pytest.raises(DiscoveryUnavailable, match="did not answer"):
            resolver.start()
        assert time.monotonic() - started < 5
        resolver.close()


def test_start_empty_then_fill_in(stack: Stack) -> None:
    with contextlib.closing(EtcdServer()) as etcd:
        config = EtcdConfig([etcd.endpoint], timeout=0.5)
        resolver = stack.resolver(config, start_timeout=None)
        assert len(resolver.table) == 0
        etcd.start()
        # The writer is not under test: give it a timeout a loaded machine cannot miss.
        client = connect(EtcdConfig([etcd.endpoint], timeout=10))
        try:
            put(client, ep("later"))
        finally:
            client.close()
        assert resolver.wait_for(lambda t: servers(t) == {"later"}, 10)
        stack.close()



def test_pages_shrink_when_values_are_oversized(raw: Any, etcd_config: EtcdConfig, stack: Stack,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # A small receive limit stands in for etcd's 4 MiB response limit at a smaller scale.
    options = [(k, 64 * 1024 if k == "grpc.max_receive_message_length" else v)
               for k, v in ec._CHANNEL_OPTIONS]
    monkeypatch.setattr(ec, "_CHANNEL_OPTIONS", options)
    base = PREFIX + "default/openstack/compute/"
    for i in range(30):
        raw.put(f"{base}junk{i:02}/0", b"x" * 5000)  # 150 KB of junk: no page of 1000 fits
    put(raw, *(ep(f"h{i}") for i in range(5)))
    resolver = stack.resolver(etcd_config)
    assert servers(resolver.table) == {f"h{i}" for i in range(5)}


def test_wait_listed_without_a_start_timeout(stack: Stack) -> None:
    with contextlib.closing(EtcdServer()) as etcd:  # ports chosen, not started yet
        resolver = stack.resolver(EtcdConfig([etcd.endpoint], timeout=0.5), start_timeout=None)
        assert not resolver.wait_listed(0.3) and not resolver.listed
        assert resolver.errors() and resolver.errors()[0].startswith(etcd.endpoint)
        etcd.start()
        assert resolver.wait_listed(15) and resolver.listed and resolver.errors() == []

    other = EtcdResolver(EtcdConfig(["127.0.0.1:1"], timeout=0.5), start_timeout=None)
    other.start()
    waiter = threading.Thread(target=other.wait_listed, args=(None,))
    waiter.start()
    other.close()  # releases whoever waits
    waiter.join(10)
    assert not waiter.is_alive() and not other.listed
