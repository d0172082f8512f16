"""The fixtures grpcrpc ships for its users' tests (README), used as a user would: by name,
with nothing imported but the public API (the plugin comes through its `pytest11` entry
point)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

import grpcrpc
from grpcrpc import RPCClient, RPCServer, ServerThread, Target
from grpcrpc.discovery.etcd import EtcdConfig, EtcdRegistry, EtcdResolver
from grpcrpc.testing import Cluster
from grpcrpc.testing.etcd import EtcdServer
from tests.conftest import wait_until


class SchedulerManager:
    target = Target(version="4.5")

    def __init__(self, name: str) -> None:
        self.name = name

    def select_destinations(self, ctxt: Any, spec: dict[str, Any]) -> list[str]:
        return [f"{self.name}:{spec['vcpus']}"]


def test_grpcrpc_cluster_serves_and_routes(grpcrpc_cluster: Cluster) -> None:
    grpcrpc_cluster.serve(Target(topic="scheduler", server="s1"), [SchedulerManager("s1")])
    grpcrpc_cluster.serve(Target(topic="scheduler", server="s2"), [SchedulerManager("s2")])
    client = grpcrpc_cluster.client(Target(topic="scheduler", version="4.0"), timeout=10)
    assert {client.call({}, "select_destinations", spec={"vcpus": 2})[0]
            for _ in range(30)} == {"s1:2", "s2:2"}
    assert client.prepare(server="s2").call({}, "select_destinations",
                                            spec={"vcpus": 1}) == ["s2:1"]
    # The cluster's registry is a real one: a version the endpoints do not serve is refused.
    newer = grpcrpc_cluster.client(Target(topic="scheduler", version="5.0"), timeout=10)
    try:
        newer.call({}, "select_destinations", spec={"vcpus": 1})
    except grpcrpc.UnsupportedVersion:
        pass
    else:
        raise AssertionError("version 5.0 was served by a 4.5 endpoint")


def test_grpcrpc_cluster_stops_everything_after_the_test() -> None:
    # What the fixture does on teardown, checked: no server or client is left running.
    with Cluster() as cluster:
        thread = cluster.serve(Target(topic="t", server="a"), [SchedulerManager("a")])
        client = cluster.client(Target(topic="t", version="4.0"), timeout=5)
        assert client.call({}, "select_destinations", spec={"vcpus": 1}) == ["a:1"]
    assert not cluster.servers and len(cluster.discovery.table) == 0
    host, port = thread.address.rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError):  # its port is closed
        socket.create_connection((host, int(port)), timeout=5).close()


def test_grpcrpc_etcd_is_a_real_etcd_for_discovery(grpcrpc_etcd: EtcdServer) -> None:
    assert grpcrpc_etcd.running
    config = EtcdConfig([grpcrpc_etcd.endpoint])
    registry = EtcdRegistry(config, ttl=5)
    resolver = EtcdResolver(config)
    resolver.start()
    server = ServerThread(RPCServer(Target(topic="scheduler", server="e1"),
                                    [SchedulerManager("e1")], registry=registry))
    server.start()
    try:
        wait_until(lambda: len(resolver.table) == 1, what="the server found through etcd")
        with RPCClient(resolver, Target(topic="scheduler", version="4.0"), timeout=10) as client:
            assert client.call({}, "select_destinations", spec={"vcpus": 4}) == ["e1:4"]
    finally:
        server.stop()
        registry.close()
        resolver.close()
