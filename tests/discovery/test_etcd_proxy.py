"""Discovery through `etcd grpc-proxy` (the same Debian binary), as a large region runs it. The
proxy keeps each lease alive itself (clientv3's KeepAlive, every TTL/3) and answers a client's
keepalive from its own renewals: registries through it must renew steadily, and keep their
lease when the cluster behind the proxy loses its leader."""

from __future__ import annotations

import logging
import time

import pytest

from grpcrpc.discovery.base import Endpoint
from grpcrpc.discovery.etcd import EtcdConfig
from grpcrpc.testing.etcd import EtcdCluster, EtcdProxy, EtcdServer
from tests.conftest import wait_until
from tests.discovery.conftest import Stack


def test_registry_through_the_proxy_never_lapses(
        etcd_server: EtcdServer, stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    with EtcdProxy([etcd_server.endpoint]) as proxy:
        config = EtcdConfig([proxy.endpoint], timeout=2.0)
        registries = [stack.registry(config, ttl=9) for _ in range(4)]
        for i, registry in enumerate(registries):
            registry.announce(Endpoint(f"127.0.0.1:{5000 + i}", "compute", f"h{i}"))
        wait_until(lambda: all(r.registered for r in registries), 10, "registered via the proxy")
        caplog.set_level(logging.DEBUG, logger="grpcrpc.discovery.etcd")
        caplog.clear()
        lapsed = 0
        end = time.monotonic() + 12.0  # four renewals per registry
        while time.monotonic() < end:
            lapsed += sum(not r.registered for r in registries)
            time.sleep(0.05)  # sampling the state over the window
        retries = [r.getMessage() for r in caplog.records
                   if "retrying" in r.msg or "still failing" in r.msg]
        # A renewal may time out on a loaded machine and be retried; none may lapse.
        assert lapsed == 0, (lapsed, retries)
        assert all(r.registered for r in registries)
        stack.close()


def test_cluster_elects_a_new_leader_and_the_proxy_follows(stack: Stack) -> None:
    with EtcdCluster(3) as cluster, EtcdProxy(cluster.endpoints) as proxy:
        registry = stack.registry(EtcdConfig([proxy.endpoint], timeout=2.0), ttl=6)
        registry.announce(Endpoint("127.0.0.1:5000", "compute", "h0"))
        assert registry.wait_registered(10)
        leader = cluster.leader()
        leader.kill()
        assert cluster.leader(timeout=30) is not leader
        lease = registry.lease_id
        assert lease is not None
        survivor = next(m for m in cluster.members if m is not leader)
        # Two renewals later the lease is still the same one, alive on the new leader.
        end = time.monotonic() + 4.0
        while time.monotonic() < end:
            assert registry.lease_id == lease
            time.sleep(0.1)  # sampling over the window
        assert "remaining" in survivor.etcdctl("lease", "timetolive", f"{lease:x}")
        assert registry.registered and registry.lease_id == lease
        stack.close()


def test_pings_the_proxy_refuses_drop_watches_and_keepalive_time_avoids_them(
        etcd_server: EtcdServer, stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    """etcd 3.4's grpc-proxy keeps gRPC-Go's 5-minute minimum between pings: a quiet watch that
    pings more often is cut with GOAWAY too_many_pings (and re-lists its whole tree). With the
    `keepalive_time` docs/operations.md gives for a proxy, the same watch stays up."""
    caplog.set_level(logging.INFO, logger="grpcrpc.discovery.etcd")

    def dropped() -> list[str]:
        return [r.getMessage() for r in caplog.records if "too_many_pings" in r.getMessage()]

    with EtcdProxy([etcd_server.endpoint]) as proxy:
        t0 = time.monotonic()
        pinging = stack.resolver(EtcdConfig([proxy.endpoint], timeout=2.0, keepalive_time=1.0))
        wait_until(dropped, 30, "the proxy to refuse 1 s pings")
        took = time.monotonic() - t0
        pinging.close()
        caplog.clear()
        quiet = stack.resolver(EtcdConfig([proxy.endpoint], timeout=2.0, keepalive_time=300))
        end = time.monotonic() + max(2 * took, 5.0)  # twice what the refusal took above
        while time.monotonic() < end:
            assert not dropped()
            time.sleep(0.1)  # sampling over the window
        # and the watch that stayed up still follows the registry
        registry = stack.registry(EtcdConfig([proxy.endpoint], timeout=2.0, keepalive_time=300))
        registry.announce(Endpoint("127.0.0.1:5000", "compute", "h0"))
        assert quiet.wait_for(lambda t: any(e.server == "h0" for e in t.endpoints), 10)
        assert not dropped()
        stack.close()
