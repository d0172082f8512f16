"""Servers announced in a real etcd, found by clients through it: the whole discovery path."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpcrpc import RPCClient, Target, TransportOptions
from grpcrpc.discovery.etcd import EtcdConfig
from grpcrpc.testing.etcd import EtcdServer
from tests.conftest import wait_until
from tests.discovery.conftest import TTL, Stack, endpoint_of

ROOT = pathlib.Path(__file__).resolve().parents[2]

# A server in its own process, announced with an EtcdRegistry, so the test can SIGKILL it.
SERVER_SCRIPT = """
import asyncio, sys
from grpcrpc import RPCServer, Target
from grpcrpc.discovery.etcd import EtcdConfig, EtcdRegistry

class Echo:
    def whoami(self, ctxt):
        return "victim"

async def main():
    registry = EtcdRegistry(EtcdConfig([sys.argv[1]]), ttl=float(sys.argv[2]))
    server = RPCServer(Target(topic="victim", server="v1"), [Echo()], registry=registry)
    await server.start()
    print("ADDRESS", server.address, flush=True)
    await server.wait()

asyncio.run(main())
"""


def addresses(table: object) -> set[str]:
    return {e.address for e in getattr(table, "endpoints", ())}


def test_register_resolve_call(etcd_server: EtcdServer, etcd_config: EtcdConfig,
                               stack: Stack) -> None:
    registry = stack.registry(etcd_config)
    server = stack.server(registry, "scheduler", "s1")
    resolver = stack.resolver(etcd_config)
    endpoint = endpoint_of(server)
    assert resolver.wait_for(lambda t: endpoint in t.endpoints, 5)
    assert registry.registered

    with RPCClient(resolver, Target(topic="scheduler"), timeout=5) as client:
        assert client.call({}, "whoami") == "s1"
        assert client.call({}, "echo", value={"a": [1]}) == {"a": [1]}

    # The documented key, and a value a person can read.
    out = etcd_server.etcdctl("get", "--prefix", "/grpcrpc/").splitlines()
    key = f"/grpcrpc/v1/endpoints/default/openstack/scheduler/s1/{endpoint.instance}"
    assert out[0] == key
    value = json.loads(out[1])
    assert value["address"] == server.address
    assert value["topic"] == "scheduler" and value["server"] == "s1"
    assert value["pid"] == os.getpid() and value["az"] == "default"
    # The key is held by the registry's one lease.
    lease = etcd_server.etcdctl("lease", "timetolive", f"{registry.lease_id:x}", "--keys")
    assert key in lease


def test_clean_stop_removes_the_endpoint_at_once(etcd_config: EtcdConfig, stack: Stack) -> None:
    # A long TTL: the endpoint must go because it was withdrawn, not because its lease expired.
    registry = stack.registry(etcd_config, ttl=30)
    a = stack.server(registry, "compute", "a")
    b = stack.server(registry, "compute", "b")
    resolver = stack.resolver(etcd_config)
    assert resolver.wait_for(lambda t: len(t) == 2, 5)
    started = time.monotonic()
    a.stop()
    assert resolver.wait_for(lambda t: addresses(t) == {b.address}, 3)
    assert time.monotonic() - started < 3
    with RPCClient(resolver, Target(topic="compute"), timeout=5) as client:
        assert client.call({}, "whoami") == "b"


def test_killed_server_disappears_after_its_ttl(etcd_server: EtcdServer, etcd_config: EtcdConfig,
                                                stack: Stack) -> None:
    resolver = stack.resolver(etcd_config)
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, etcd_server.endpoint, str(TTL)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ADDRESS"), line
        address = line.split()[1]
        assert resolver.wait_for(lambda t: address in addresses(t), 5)
        with RPCClient(resolver, Target(topic="victim"), timeout=5) as client:
            assert client.call({}, "whoami") == "victim"
        killed = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # Nobody withdrew it: only the lease's expiry removes it, within about one TTL.
        assert resolver.wait_for(lambda t: address not in addresses(t), TTL + 4)
        assert time.monotonic() - killed > TTL / 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_two_azs_each_with_its_own_etcd(stack: Stack) -> None:
    with EtcdServer() as etcd1, EtcdServer() as etcd2:
        cfg1 = EtcdConfig([etcd1.endpoint], timeout=2.0)
        cfg2 = EtcdConfig([etcd2.endpoint], timeout=2.0)
        s1 = stack.server(stack.registry(cfg1), "compute", "h1", az="az1")
        s2 = stack.server(stack.registry(cfg2), "compute", "h2", az="az2")
        resolver = stack.resolver({"az1": cfg1, "az2": cfg2})
        assert resolver.prefixes == ["/grpcrpc/v1/endpoints/az1/", "/grpcrpc/v1/endpoints/az2/"]
        assert resolver.wait_for(lambda t: len(t) == 2, 5)
        table = resolver.table
        assert [e.address for e in table.lookup("az1", "openstack", "compute")] == [s1.address]
        assert [e.address for e in table.lookup("az2", "openstack", "compute")] == [s2.address]
        # Each etcd holds only its own AZ.
        assert "az2" not in etcd1.etcdctl("get", "--prefix", "/grpcrpc/", "--keys-only")
        for az, name in (("az1", "h1"), ("az2", "h2")):
            opts = TransportOptions(az=az)
            with RPCClient(resolver, Target(topic="compute"), options=opts, timeout=5) as c:
                assert c.call({}, "whoami") == name
        # A client in az1 falls back to az2 once az1 has nothing left.
        s1.stop()
        assert resolver.wait_for(lambda t: len(t) == 1, 5)
        opts = TransportOptions(az="az1", fallback_azs=("az2",))
        with RPCClient(resolver, Target(topic="compute"), options=opts, timeout=5) as c:
            assert c.call({}, "whoami") == "h2"
        stack.close()  # before the etcds go away


def test_etcd_outage_restart_and_wipe(etcd_server: EtcdServer, etcd_config: EtcdConfig,
                                      stack: Stack) -> None:
    registries = [stack.registry(etcd_config), stack.registry(etcd_config)]
    servers = [stack.server(r, "compute", f"h{i}") for i, r in enumerate(registries)]
    resolver = stack.resolver(etcd_config)
    everyone = {s.address for s in servers}
    assert resolver.wait_for(lambda t: addresses(t) == everyone, 5)
    client = RPCClient(resolver, Target(topic="compute"), timeout=5)
    try:
        # etcd down for five TTLs: calls keep flowing on the last table the whole time.
        etcd_server.stop()
        down = time.monotonic()
        answered = set()
        while time.monotonic() - down < 5 * TTL:
            answered.add(client.call({}, "whoami"))
            assert addresses(resolver.table) == everyone
        assert answered == {"h0", "h1"}
        assert not any(r.registered for r in registries)  # their leases are past due

        # Back from the same data dir: leases resume, a new server is seen by the same watch.
        etcd_server.start()
        wait_until(lambda: all(r.registered for r in registries), 10, "re-registration")
        late = stack.server(stack.registry(etcd_config), "compute", "late")
        assert resolver.wait_for(lambda t: addresses(t) == everyone | {late.address}, 10)
        everyone.add(late.address)

        # Back from an empty data dir: every registry grants a new lease and re-announces.
        leases = [r.lease_id for r in registries]
        etcd_server.wipe()
        wait_until(lambda: all(r.registered and r.lease_id not in leases for r in registries),
                   10, "re-registration after the wipe")
        fresh = stack.server(stack.registry(etcd_config), "compute", "fresh")
        everyone.add(fresh.address)
        assert resolver.wait_for(lambda t: addresses(t) == everyone, 10), resolver.table
        keys = etcd_server.etcdctl("get", "--prefix", "/grpcrpc/", "--keys-only").split()
        assert len(keys) == 4
        assert {client.call({}, "whoami") for _ in range(40)} == {"h0", "h1", "late", "fresh"}
    finally:
        client.close()


def test_health_follows_registration(etcd_server: EtcdServer, etcd_config: EtcdConfig,
                                     stack: Stack) -> None:
    """A lost lease makes the server's overall health NOT_SERVING until it is registered
    again; its service name keeps saying whether it accepts work (for liveness probes)."""
    registry = stack.registry(etcd_config)
    server = stack.server(registry, "compute", "h1")
    serving = health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def status(service: str = "") -> int:
            req = health_pb2.HealthCheckRequest(service=service)
            return int(stub.Check(req, timeout=5).status)

        wait_until(lambda: status() == serving, 5, "SERVING once registered")
        old = registry.lease_id
        assert old is not None
        etcd_server.stop()  # the lease lapses: no longer discoverable
        wait_until(lambda: status() != serving, 3 * TTL, "NOT_SERVING while unregistered")
        assert status("grpcrpc.v1.Transport") == serving
        etcd_server.start()
        wait_until(lambda: status() == serving, 5 * TTL, "SERVING again after re-registering")
