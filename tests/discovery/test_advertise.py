"""What a server bound to every interface announces in etcd (real etcd, real server)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from grpcrpc import RPCClient, RPCServer, Target
from grpcrpc.discovery.etcd import EtcdConfig, EtcdRegistry
from grpcrpc.exceptions import NoAdvertiseAddress
from grpcrpc.server import ServerThread
from grpcrpc.testing.etcd import EtcdServer
from tests.discovery.conftest import Named, Stack, endpoint_of


def test_wildcard_bind_announces_loopback_when_etcd_is_on_loopback(
        etcd_server: EtcdServer, etcd_config: EtcdConfig, stack: Stack) -> None:
    registry = stack.registry(etcd_config)
    thread = ServerThread(RPCServer(Target(topic="wild", server="w1"), [Named("w1")],
                                    registry=registry, host="0.0.0.0", grace=0.5))
    thread.start()
    try:
        endpoint = endpoint_of(thread)
        assert endpoint.address.startswith("127.0.0.1:"), endpoint.address
        assert etcd_server.etcdctl("get", "--print-value-only",
                                   etcd_config.key(endpoint)).strip() == endpoint.to_json().decode()
        port = int(endpoint.address.rpartition(":")[2])
        socket.create_connection(("127.0.0.2", port), timeout=5).close()  # every interface
        resolver = stack.resolver(etcd_config)
        assert resolver.wait_for(lambda t: endpoint in t.endpoints, 5)
        with RPCClient(resolver, Target(topic="wild"), timeout=5) as client:
            assert client.call({}, "whoami") == "w1"
    finally:
        thread.stop()


async def test_no_dialable_address_fails_the_start_with_a_named_error() -> None:
    # etcd's name does not resolve: nothing tells which network the clients are on.
    registry = EtcdRegistry(EtcdConfig(["etcd.invalid:2379"], timeout=0.5), ttl=5)
    server = RPCServer(Target(topic="lost", server="l1"), [Named("l1")], registry=registry,
                       host="0.0.0.0")
    try:
        with pytest.raises(NoAdvertiseAddress, match="set advertise_host"):
            await server.start()
        assert server.endpoint is None and not server.host.started
        # An address given explicitly is announced as it is (registration goes on trying).
        explicit = RPCServer(Target(topic="lost", server="l2"), [Named("l2")],
                             registry=registry, host="0.0.0.0", advertise_host="192.0.2.10")
        await explicit.start()
        assert explicit.endpoint is not None
        assert explicit.endpoint.address.startswith("192.0.2.10:")
        await asyncio.wait_for(explicit.stop(grace=0), 30)
    finally:
        await asyncio.to_thread(registry.close)
