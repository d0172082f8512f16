"""Registries sharing one `EtcdConnection` against a real etcd: one channel and one keepalive
stream for all their leases, each lease still kept, lost and replaced on its own."""

from __future__ import annotations

import re

import pytest

from grpcrpc.discovery.etcd import EtcdConfig, EtcdConnection, EtcdRegistry
from grpcrpc.testing.etcd import EtcdServer
from tests.conftest import wait_until
from tests.discovery.conftest import TTL, Stack
from tests.discovery.test_etcd_registry import ep, key_of, lease_alive, stored_lease

N = 12


def metric(etcd: EtcdServer, pattern: str) -> int:
    m = re.search(pattern + r" (\d+)", etcd.metrics())
    return int(m.group(1)) if m else 0


def keepalive_streams(etcd: EtcdServer) -> int:
    """How many LeaseKeepAlive streams etcd has seen opened."""
    return metric(etcd, r'grpc_server_started_total\{grpc_method="LeaseKeepAlive",'
                        r'grpc_service="etcdserverpb.Lease",grpc_type="bidi_stream"\}')


def renewals(etcd: EtcdServer) -> int:
    """How many lease renewals etcd has done."""
    return metric(etcd, r"etcd_debugging_lease_renewed_total")


def test_many_leases_one_keepalive_stream(etcd_server: EtcdServer, etcd_config: EtcdConfig,
                                          stack: Stack) -> None:
    connection = EtcdConnection(etcd_config, timeout=1.0)
    registries = [stack.registry(etcd_config, connection=connection) for _ in range(N)]
    for i, registry in enumerate(registries):
        registry.announce(ep(f"s{i}"))
    leases = [r.lease_id for r in registries]
    assert None not in leases and len(set(leases)) == N  # a lease each
    # Every lease renewed three times: all on one stream, none lost or replaced.
    start = renewals(etcd_server)
    wait_until(lambda: renewals(etcd_server) >= start + 3 * N, 6 * TTL, "renewals")
    assert [r.lease_id for r in registries] == leases
    assert all(r.registered for r in registries)
    assert all(lease_alive(etcd_server, lease) for lease in leases if lease)
    assert keepalive_streams(etcd_server) == 1
    # Closing one registry revokes its lease and leaves the connection to the others.
    registries[0].close()
    assert stored_lease(etcd_server, key_of(ep("s0"))) is None
    start = renewals(etcd_server)
    wait_until(lambda: renewals(etcd_server) >= start + 2 * (N - 1), 6 * TTL, "renewals")
    assert [r.lease_id for r in registries[1:]] == leases[1:]
    assert all(r.registered for r in registries[1:])
    assert keepalive_streams(etcd_server) == 1
    connection.close()


def test_a_revoked_lease_is_replaced_without_disturbing_the_others(
        etcd_server: EtcdServer, etcd_config: EtcdConfig, stack: Stack) -> None:
    connection = EtcdConnection(etcd_config, timeout=1.0)
    registries = [stack.registry(etcd_config, connection=connection) for _ in range(4)]
    for i, registry in enumerate(registries):
        registry.announce(ep(f"s{i}"))
    old = [r.lease_id for r in registries]
    assert None not in old
    etcd_server.etcdctl("lease", "revoke", f"{old[0]:x}")
    wait_until(lambda: registries[0].registered and registries[0].lease_id != old[0], 3 * TTL,
               "re-registration under a new lease")
    assert stored_lease(etcd_server, key_of(ep("s0"))) == registries[0].lease_id
    assert [r.lease_id for r in registries[1:]] == old[1:]
    assert all(r.registered for r in registries)
    connection.close()


def test_shared_leases_come_back_after_a_partition(etcd_server: EtcdServer,
                                                   etcd_config: EtcdConfig,
                                                   stack: Stack) -> None:
    # Every lease expires during the pause: the registries must not renew the expired ones on
    # the shared stream (etcd would hold it until it revoked each), but grant new ones.
    connection = EtcdConnection(etcd_config, timeout=1.0)
    registries = [stack.registry(etcd_config, connection=connection) for _ in range(6)]
    for i, registry in enumerate(registries):
        registry.announce(ep(f"s{i}"))
    old = {r.lease_id for r in registries}
    etcd_server.pause()
    try:
        wait_until(lambda: not any(r.registered for r in registries), 3 * TTL,
                   "registrations reported lost")
    finally:
        etcd_server.resume()
    wait_until(lambda: all(r.registered for r in registries), 10 * TTL, "all registered again")
    for i, registry in enumerate(registries):
        lease = registry.lease_id
        assert lease is not None and lease_alive(etcd_server, lease)
        assert stored_lease(etcd_server, key_of(ep(f"s{i}"))) == lease
    assert not ({r.lease_id for r in registries} & old)
    connection.close()


def test_a_connection_serves_only_its_own_config(etcd_config: EtcdConfig) -> None:
    other = EtcdConfig(etcd_config.endpoints, prefix="/elsewhere", timeout=2.0)
    with pytest.raises(ValueError, match="another etcd config"):
        EtcdRegistry(other, ttl=TTL, connection=EtcdConnection(etcd_config))


def test_requests_beyond_max_in_flight_wait_their_turn_then_fail_named(
        etcd_config: EtcdConfig) -> None:
    # One slot, held (as by a request etcd does not answer): the next request waits its turn
    # for its timeout, then fails with a named error — it never hangs, and never overtakes.
    from grpcrpc.discovery import _etcd_client as ec

    connection = EtcdConnection(etcd_config, timeout=0.5, max_in_flight=1)
    session = connection.session()
    assert session._slots is not None
    session._slots.acquire()
    try:
        with pytest.raises(ec.Unavailable, match=r"no turn for an etcd request within 0\.5s"):
            session.get(b"/k")
    finally:
        session._slots.release()
    assert session.get(b"/k") is None  # its turn now
    connection.close()
