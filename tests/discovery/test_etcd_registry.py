"""EtcdRegistry against a real etcd: one lease, kept alive, replaced whenever it is lost."""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpcrpc.discovery.base import Endpoint
from grpcrpc.discovery.etcd import EtcdConfig, EtcdRegistry
from grpcrpc.testing.etcd import EtcdServer
from tests.conftest import wait_until
from tests.discovery.conftest import TTL, Stack


def ep(server: str, port: int = 5000, **kw: object) -> Endpoint:
    return Endpoint(f"127.0.0.1:{port}", "compute", server, **kw)  # type: ignore[arg-type]


def key_of(e: Endpoint) -> str:
    return f"/grpcrpc/v1/endpoints/{e.key_path}"


def stored_lease(etcd: EtcdServer, key: str) -> int | None:
    """The lease that holds `key` in etcd (None: no such key)."""
    out = json.loads(etcd.etcdctl("get", key, "-w", "json"))
    kvs = out.get("kvs") or []
    return int(kvs[0].get("lease", 0)) if kvs else None


def lease_alive(etcd: EtcdServer, lease: int) -> bool:
    out = json.loads(etcd.etcdctl("lease", "timetolive", f"{lease:x}", "-w", "json"))
    return int(out["ttl"]) > 0


class States:
    """Records what a registry's listener was told."""

    def __init__(self) -> None:
        self.seen: list[bool] = []
        self.lock = threading.Lock()

    def __call__(self, state: bool) -> None:
        with self.lock:
            self.seen.append(state)


def test_one_lease_for_every_key_and_a_clean_close(etcd_server: EtcdServer,
                                                   etcd_config: EtcdConfig) -> None:
    registry = EtcdRegistry(etcd_config, ttl=TTL)
    states = States()
    registry.add_listener(states)
    assert states.seen == [False]  # told at once, before anything was announced
    a, b = ep("a"), ep("b", instance="1")
    registry.announce(a)
    registry.announce(b)
    assert registry.registered
    wait_until(lambda: states.seen[:2] == [False, True], 5, "the listener told")
    lease = registry.lease_id
    assert lease is not None
    assert stored_lease(etcd_server, key_of(a)) == stored_lease(etcd_server, key_of(b)) == lease

    registry.withdraw(a)
    assert stored_lease(etcd_server, key_of(a)) is None
    assert stored_lease(etcd_server, key_of(b)) == lease
    assert registry.registered

    registry.close()
    assert states.seen[-1] is False
    assert stored_lease(etcd_server, key_of(b)) is None
    assert not lease_alive(etcd_server, lease)
    registry.close()  # idempotent


def test_operator_revokes_the_lease(etcd_server: EtcdServer, etcd_config: EtcdConfig,
                                    stack: Stack) -> None:
    registry = stack.registry(etcd_config)
    states = States()
    registry.add_listener(states)
    endpoint = ep("a")
    registry.announce(endpoint)
    old = registry.lease_id
    assert old is not None
    etcd_server.etcdctl("lease", "revoke", f"{old:x}")
    wait_until(lambda: registry.registered and registry.lease_id != old and states.seen[-1],
               3 * TTL, "re-registration under a new lease")
    new = registry.lease_id
    assert new is not None
    # The key is back, under the new lease, which is alive: never under the dead one.
    assert stored_lease(etcd_server, key_of(endpoint)) == new
    assert lease_alive(etcd_server, new) and not lease_alive(etcd_server, old)
    assert states.seen[:3] == [False, True, False] and states.seen[-1] is True


def test_withdraw_never_deletes_a_key_it_does_not_hold(etcd_server: EtcdServer,
                                                       etcd_config: EtcdConfig,
                                                       stack: Stack) -> None:
    first, second = stack.registry(etcd_config), stack.registry(etcd_config)
    endpoint = ep("same")
    first.announce(endpoint)
    second.announce(endpoint)  # e.g. a restarted process with a fixed instance name
    assert stored_lease(etcd_server, key_of(endpoint)) == second.lease_id
    first.withdraw(endpoint)
    assert stored_lease(etcd_server, key_of(endpoint)) == second.lease_id


def test_announce_while_etcd_is_down_registers_once_it_is_up(stack: Stack) -> None:
    with contextlib.closing(EtcdServer()) as etcd:  # ports chosen, not started
        config = EtcdConfig([etcd.endpoint], timeout=0.5)
        registry = stack.registry(config)
        endpoint = ep("early")
        registry.announce(endpoint)  # does not raise; keeps trying in the background
        assert not registry.registered
        etcd.start()
        assert registry.wait_registered(10)
        assert stored_lease(etcd, key_of(endpoint)) == registry.lease_id
        stack.close()


def test_fails_over_to_a_live_endpoint(etcd_server: EtcdServer, stack: Stack) -> None:
    with contextlib.closing(EtcdServer()) as dead:  # never started: connection refused
        config = EtcdConfig([dead.endpoint, etcd_server.endpoint], timeout=1.0)
        registries = [stack.registry(config) for _ in range(4)]  # each picks a random first
        for i, registry in enumerate(registries):
            registry.announce(ep(f"s{i}"))
        for registry in registries:
            assert registry.wait_registered(10)
        resolver = stack.resolver(config)
        assert resolver.wait_for(lambda t: len(t) == 4, 10)
        stack.close()


def test_expired_auth_token_is_renewed(etcd_server: EtcdServer, stack: Stack) -> None:
    etcd_server.enable_auth("root", "secret")
    config = EtcdConfig([etcd_server.endpoint], user="root", password="secret", timeout=2.0)
    registry = stack.registry(config)
    resolver = stack.resolver(config)
    endpoint = ep("authed")
    registry.announce(endpoint)
    assert resolver.wait_for(lambda t: len(t) == 1, 5)
    # Changing a password drops every token of the user: the registry's is now refused.
    # (Lease keepalives are not authenticated, so only a new grant or put notices.)
    for old, new in (("secret", "interim"), ("interim", "secret")):
        subprocess.run(["etcdctl", f"--endpoints={etcd_server.url}", f"--user=root:{old}",
                        "user", "passwd", "root", "--interactive=false"],
                       input=f"{new}\n".encode(), check=True, capture_output=True, timeout=10)
    old_lease = registry.lease_id
    assert old_lease is not None
    etcd_server.etcdctl("lease", "revoke", f"{old_lease:x}")
    wait_until(lambda: registry.registered and registry.lease_id != old_lease, 10,
               "re-registration with a new token")
    assert stored_lease(etcd_server, key_of(endpoint)) == registry.lease_id
    assert resolver.wait_for(lambda t: len(t) == 1, 5)


def test_tls_client_certificate_and_auth(stack: Stack) -> None:
    with contextlib.closing(EtcdServer(tls=True)) as etcd:
        etcd.start()
        etcd.enable_auth("root", "secret")
        config = EtcdConfig([f"https://{etcd.endpoint}"], ca_file=etcd.ca_file,
                            cert_file=etcd.cert_file, key_file=etcd.key_file,
                            user="root", password="secret", timeout=2.0)
        assert config.tls
        registry = stack.registry(config)
        resolver = stack.resolver(config)
        endpoint = ep("secure")
        registry.announce(endpoint)
        assert registry.registered
        assert resolver.wait_for(lambda t: endpoint in t.endpoints, 5)
        assert stored_lease(etcd, key_of(endpoint)) == registry.lease_id
        stack.close()


def test_unresponsive_etcd(etcd_server: EtcdServer, etcd_config: EtcdConfig,
                           stack: Stack) -> None:
    registry = stack.registry(etcd_config)
    states = States()
    registry.add_listener(states)
    endpoint = ep("a")
    registry.announce(endpoint)
    etcd_server.pause()  # connections stay open, nothing answers: a partition
    try:
        # Renewals time out; once the lease's TTL has passed unrenewed, it is reported lost.
        wait_until(lambda: not registry.registered, 3 * TTL, "registration reported lost")
    finally:
        etcd_server.resume()
    wait_until(lambda: registry.registered and states.seen[-1], 10, "registered again")
    assert states.seen[:3] == [False, True, False]
    lease = registry.lease_id
    assert lease is not None and lease_alive(etcd_server, lease)
    assert stored_lease(etcd_server, key_of(endpoint)) == lease


def test_moves_to_another_endpoint_when_its_etcd_dies(etcd_server: EtcdServer,
                                                      stack: Stack) -> None:
    # Two single-member etcds stand in for two members: when the one in use dies, requests
    # must go to the other (where the lease is unknown, so it is granted again there).
    with contextlib.closing(EtcdServer()) as other:
        other.start()
        etcds = [etcd_server, other]
        config = EtcdConfig([e.endpoint for e in etcds], timeout=1.0)
        registry = stack.registry(config)
        endpoint = ep("roamer")
        registry.announce(endpoint)
        in_use = next(e for e in etcds if stored_lease(e, key_of(endpoint)))
        spare = etcds[1 - etcds.index(in_use)]
        in_use.kill()
        wait_until(lambda: stored_lease(spare, key_of(endpoint)) == registry.lease_id, 15,
                   "re-registration on the other endpoint")
        assert registry.wait_registered(5)
        # A resolver given both endpoints ends up on the live one too.
        resolver = stack.resolver(config)
        assert resolver.wait_for(lambda t: endpoint in t.endpoints, 10)
        stack.close()


def test_least_privilege_roles_from_the_security_guide(etcd_server: EtcdServer,
                                                        stack: Stack) -> None:
    # docs/security.md: a server may write only its topic's prefix; clients only read.
    etcd_server.enable_auth("root", "rootpw")
    prefix = "/grpcrpc/v1/endpoints"
    for args in (
        ("role", "add", "reader"),
        ("role", "grant-permission", "reader", "--prefix=true", "read", f"{prefix}/"),
        ("user", "add", "reader:readerpw"), ("user", "grant-role", "reader", "reader"),
        ("role", "add", "compute-default"),
        ("role", "grant-permission", "compute-default", "--prefix=true", "readwrite",
         f"{prefix}/default/openstack/compute/"),
        ("user", "add", "compute:computepw"), ("user", "grant-role", "compute", "compute-default"),
    ):
        etcd_server.etcdctl(*args)
    base = EtcdConfig([etcd_server.endpoint], timeout=2.0)
    as_compute = EtcdConfig(base.endpoints, user="compute", password="computepw", timeout=2.0)
    as_reader = EtcdConfig(base.endpoints, user="reader", password="readerpw", timeout=2.0)
    registry = stack.registry(as_compute)
    endpoint = ep("c1")
    registry.announce(endpoint)
    assert registry.registered
    resolver = stack.resolver(as_reader)
    assert resolver.wait_for(lambda t: endpoint in t.endpoints, 5)
    registry.withdraw(endpoint)
    assert resolver.wait_for(lambda t: len(t) == 0, 5)
    registry.announce(endpoint)
    registry.close()  # revoking needs write access to the lease's keys: it has it
    assert resolver.wait_for(lambda t: len(t) == 0, 5)
    # Outside its prefix it cannot announce: it keeps trying, and says it is not registered.
    intruder = stack.registry(as_compute)
    intruder.announce(Endpoint("127.0.0.1:1", "scheduler", "fake"))
    assert not intruder.registered
    assert len(resolver.table) == 0


def test_announcing_another_key_is_not_an_outage(etcd_server: EtcdServer,
                                                 etcd_config: EtcdConfig, stack: Stack,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    # Several servers on one registry (an oslo transport's): each new announcement waits for
    # its first write, and the keys already held are no less registered meanwhile.
    registry = stack.registry(etcd_config)
    states = States()
    registry.add_listener(states)
    registry.announce(ep("first"))
    wait_until(lambda: states.seen == [False, True], 5, "the listener told 'up'")
    with caplog.at_level(logging.INFO, logger="grpcrpc.discovery.etcd"):
        for i in range(5):
            registry.announce(ep(f"more{i}", instance=str(i)))
            assert registry.registered
        registry.withdraw(ep("more0", instance="0"))
        registry.announce(ep("more0", instance="0"))  # back again, maybe before its delete
        assert registry.wait_registered(5)
    assert states.seen == [False, True]
    assert not [r for r in caplog.records if "registration is" in r.getMessage()]


def test_an_outage_is_still_told_while_a_key_waits(stack: Stack) -> None:
    with contextlib.closing(EtcdServer()) as etcd:
        etcd.start()
        registry = stack.registry(EtcdConfig([etcd.endpoint], timeout=0.5))
        registry.announce(ep("a"))
        assert registry.registered
        etcd.pause()  # answers nothing: the next key waits for its first write
        try:
            registry.announce(ep("b", instance="1"))  # returns after the timeout
            assert registry.registered  # "a" is still held (its lease has not run out)
            wait_until(lambda: not registry.registered, 3 * TTL + 5, "the lease to run out")
        finally:
            etcd.resume()
        assert registry.wait_registered(3 * TTL + 10)
        assert stored_lease(etcd, key_of(ep("b", instance="1"))) == registry.lease_id
        stack.close()


def test_sibling_servers_stay_serving_while_another_starts(etcd_config: EtcdConfig,
                                                           stack: Stack) -> None:
    registry = stack.registry(etcd_config)
    first = stack.server(registry, "compute", "host1")
    address = first.server.address
    statuses: list[int] = []
    watching = threading.Event()
    with grpc.insecure_channel(address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""))

        def follow() -> None:
            with contextlib.suppress(grpc.RpcError):  # cancelled at the end
                for reply in watch:
                    statuses.append(reply.status)
                    watching.set()

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        assert watching.wait(10)
        for i in range(3):  # what an oslo transport does: more servers on the same registry
            stack.server(registry, f"topic{i}", "host1")
        watch.cancel()
        reader.join(10)
    assert statuses and set(statuses) == {health_pb2.HealthCheckResponse.SERVING}, statuses
