"""The driver with nothing configured but etcd: `transport_url = grpc://<etcd>/`.

Its servers bind every interface (`bind_host = 0.0.0.0`) and must announce an address the
clients can dial: here, where etcd is on loopback, the loopback address; never the hostname's
127.0.1.1 that Debian and Ubuntu resolve it to (the choice for a remote etcd is unit-tested in
tests/unit/test_advertise.py).
"""

from __future__ import annotations

import json
import socket
import uuid

import oslo_messaging
from oslo_config import cfg

from grpcrpc.testing.etcd import EtcdServer
from tests.oslo.conftest import ServerProcess, start_servers


def test_default_url_binds_everywhere_and_announces_a_dialable_address(
        etcd: EtcdServer, servers: list[ServerProcess]) -> None:
    url = f"grpc://{etcd.endpoint}/"
    topic = f"t-{uuid.uuid4().hex[:8]}"
    (server,) = start_servers(servers, url, topic, ["s1"])
    host, _, port = server.address.rpartition(":")
    assert host == "127.0.0.1", server.address

    stored = [json.loads(line) for line in etcd.etcdctl(
        "get", "--prefix", "--print-value-only", "/grpcrpc/v1/endpoints/").splitlines()
        if topic in line]
    assert [e["address"] for e in stored] == [server.address]
    # Bound to the wildcard, not to loopback only: another local address reaches it too.
    socket.create_connection(("127.0.0.2", int(port)), timeout=5).close()

    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
    try:
        client = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic=topic),
                                               timeout=10)
        assert client.call({}, "whoami") == "s1"
    finally:
        transport.cleanup()
    assert server.stop() == 0
