"""Detached fanouts (`RPCClient(fanout_reports=...)`): the cast returns once sent, the report
comes later; real servers over real sockets."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from grpcrpc import FanoutReport, Limits, Target, TransportOptions
from grpcrpc.discovery.base import Endpoint
from grpcrpc.testing import Cluster
from grpcrpc.testing._procs import free_port
from grpcrpc.transport import detached
from tests.conftest import wait_until

# Client-side fanout (no broadcaster is registered in these tests anyway).
DIRECT = TransportOptions(use_broadcaster=False)


class Counter:
    def __init__(self, delay: float = 0.0) -> None:
        self.seen: list[int] = []
        self.delay = delay
        self._lock = threading.Lock()

    def update(self, ctxt: Any, n: int) -> None:
        if self.delay:
            time.sleep(self.delay)  # a slow endpoint, so that casts pile up on the server
        with self._lock:
            self.seen.append(n)


class Reports:
    def __init__(self) -> None:
        self.got: list[FanoutReport] = []
        self._lock = threading.Lock()

    def __call__(self, report: FanoutReport) -> None:
        with self._lock:
            self.got.append(report)


@pytest.fixture
def counters() -> list[Counter]:
    return [Counter(), Counter(), Counter()]


@pytest.fixture
def cluster(counters: list[Counter]) -> Iterator[Cluster]:
    with Cluster() as c:
        for i, counter in enumerate(counters):
            c.serve(Target(topic="compute", server=f"c{i}"), [counter])
        yield c


def test_the_cast_returns_none_and_the_report_follows(cluster: Cluster,
                                                      counters: list[Counter]) -> None:
    reports = Reports()
    client = cluster.client(Target(topic="compute", fanout=True), DIRECT,
                            fanout_reports=reports)
    assert client.cast({}, "update", n=1) is None
    wait_until(lambda: reports.got, what="the report")
    assert reports.got == [FanoutReport(targets=3, delivered=3)]
    wait_until(lambda: all(c.seen == [1] for c in counters), what="every server got it")


def test_a_server_that_is_gone_is_in_the_report(cluster: Cluster,
                                                counters: list[Counter]) -> None:
    dead = Endpoint(f"127.0.0.1:{free_port()}", "compute", "ghost")
    cluster.discovery.announce(dead)
    reports = Reports()
    client = cluster.client(Target(topic="compute", fanout=True), DIRECT,
                            fanout_reports=reports)
    assert client.cast({}, "update", n=7) is None
    wait_until(lambda: reports.got, what="the report")
    [report] = reports.got
    assert (report.targets, report.delivered) == (4, 3)
    assert [f.server for f in report.failures] == ["ghost"]
    wait_until(lambda: all(c.seen == [7] for c in counters), what="the live ones got it")


# A server admitting 2 windows' worth per connection, with a slow endpoint: 6 windows' worth
# of fanouts sent back to back fill it, and it refuses some as OVERLOADED (unrun); those go
# again, so every server runs every fanout, once.
FLOOD = 6 * detached.WINDOW


@pytest.fixture
def slow() -> list[Counter]:
    return [Counter(delay=0.0005), Counter(delay=0.0005)]


@pytest.fixture
def full_cluster(slow: list[Counter]) -> Iterator[Cluster]:
    with Cluster() as cluster:
        for i, counter in enumerate(slow):
            cluster.serve(Target(topic="compute", server=f"s{i}"), [counter],
                          limits=Limits(per_connection=2 * detached.WINDOW, threads=2,
                                        queue=4 * detached.WINDOW))
        yield cluster


def test_a_full_server_gets_what_it_refused_again_each_exactly_once(
        full_cluster: Cluster, slow: list[Counter]) -> None:
    n, cluster = FLOOD, full_cluster
    reports = Reports()
    client = cluster.client(Target(topic="compute", fanout=True), DIRECT,
                            fanout_reports=reports)
    for i in range(n):
        assert client.cast({}, "update", n=i) is None
    wait_until(lambda: len(reports.got) == n, timeout=30, what="every report")
    assert [r for r in reports.got if not r.ok] == []
    wait_until(lambda: all(len(c.seen) == n for c in slow), timeout=30,
               what="every fanout on every server")
    assert all(sorted(c.seen) == list(range(n)) for c in slow)  # each exactly once


def test_close_waits_for_what_was_sent(cluster: Cluster, counters: list[Counter]) -> None:
    reports = Reports()
    client = cluster.client(Target(topic="compute", fanout=True), DIRECT,
                            fanout_reports=reports)
    for i in range(50):
        client.cast({}, "update", n=i)
    client.close()  # right away: the envelopes may still be queued
    assert len(reports.got) == 50 and all(r.ok for r in reports.got)
    wait_until(lambda: all(len(c.seen) == 50 for c in counters), what="all 50 everywhere")


async def test_asyncio_twin_returns_once_queued_and_reports_later(
        cluster: Cluster, counters: list[Counter]) -> None:
    dead = Endpoint(f"127.0.0.1:{free_port()}", "compute", "ghost")
    cluster.discovery.announce(dead)
    reports = Reports()
    client = cluster.async_client(Target(topic="compute", fanout=True), DIRECT,
                                  fanout_reports=reports)
    for i in range(100):
        assert await client.cast({}, "update", n=i) is None
    await client.close()  # waits for the reports due
    assert len(reports.got) == 100
    assert {(r.targets, r.delivered) for r in reports.got} == {(4, 3)}
    assert {f.server for r in reports.got for f in r.failures} == {"ghost"}
    wait_until(lambda: all(sorted(c.seen) == list(range(100)) for c in counters),
               what="every live server got every fanout, once")


async def test_asyncio_twin_resends_what_a_full_server_refused(
        full_cluster: Cluster, slow: list[Counter]) -> None:
    n, cluster = FLOOD, full_cluster
    reports = Reports()
    client = cluster.async_client(Target(topic="compute", fanout=True), DIRECT,
                                  fanout_reports=reports)
    for i in range(n):
        await client.cast({}, "update", n=i)
    await client.close()
    assert len(reports.got) == n and all(r.ok for r in reports.got)
    wait_until(lambda: all(sorted(c.seen) == list(range(n)) for c in slow), timeout=30,
               what="every fanout on every server, once")
