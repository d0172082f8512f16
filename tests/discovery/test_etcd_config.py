"""The parts that need no etcd: EtcdConfig, the choice of watched prefixes, the retry backoff,
and the incremental routing tables."""

from __future__ import annotations

import random

import pytest

from grpcrpc.discovery._etcd_client import Backoff
from grpcrpc.discovery._etcd_resolver import _Tables, resolver_sources
from grpcrpc.discovery.base import Endpoint, InvalidEndpoint, RoutingTable
from grpcrpc.discovery.etcd import EtcdConfig, EtcdRegistry


def test_config_normalises_endpoints_and_prefix() -> None:
    cfg = EtcdConfig("http://10.0.0.1:2379/, 10.0.0.2:2379", prefix="/cloud/")
    assert cfg.endpoints == ("10.0.0.1:2379", "10.0.0.2:2379")
    assert cfg.tls is False
    assert cfg.endpoints_prefix == "/cloud/v1/endpoints/"
    assert cfg.key(Endpoint("10.0.0.5:1", "compute", "h1", az="az1", instance="7")) == (
        "/cloud/v1/endpoints/az1/openstack/compute/h1/7")
    assert EtcdConfig(["https://[::1]:2379"]).tls is True
    assert EtcdConfig(["10.0.0.1:2379"], ca_file="/ca.pem").tls is True
    assert hash(EtcdConfig(["a:1"])) == hash(EtcdConfig(("a:1",)))  # lists become tuples
    assert "secret" not in repr(EtcdConfig(user="u", password="secret"))


@pytest.mark.parametrize("kwargs", [
    {"endpoints": []},
    {"endpoints": ["no-port"]},
    {"endpoints": ["ftp://h:1"]},
    {"cert_file": "c.pem"},
    {"user": "u"},
    {"timeout": 0},
])
def test_config_rejects_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises((ValueError, InvalidEndpoint)):
        EtcdConfig(**kwargs)  # type: ignore[arg-type]


def test_sources_per_az_cluster_or_shared() -> None:
    az1, az2 = EtcdConfig(["a:1"]), EtcdConfig(["b:1"])
    sources, wanted = resolver_sources({"az1": az1, "az2": az2}, None, ["compute"], "openstack")
    assert sources == {az1: ["/grpcrpc/v1/endpoints/az1/openstack/compute/"],
                       az2: ["/grpcrpc/v1/endpoints/az2/openstack/compute/"]}
    assert wanted == {("openstack", "compute")}
    # Two AZs in one cluster: one connection, both prefixes.
    sources, _ = resolver_sources({"az1": az1, "az2": az1}, None, None, "openstack")
    assert sources == {az1: ["/grpcrpc/v1/endpoints/az1/", "/grpcrpc/v1/endpoints/az2/"]}
    sources, wanted = resolver_sources(az1, None, None, "openstack")
    assert sources == {az1: ["/grpcrpc/v1/endpoints/"]} and wanted is None
    with pytest.raises(ValueError):
        resolver_sources({"az1": az1}, "az1", None, "openstack")
    with pytest.raises(ValueError):
        resolver_sources({}, None, None, "openstack")


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    backoff = Backoff(base=0.1, cap=2.0)
    delays = [backoff.next() for _ in range(40)]
    assert all(0.05 <= d <= 2.0 for d in delays)
    assert max(delays[:3]) <= 0.4 and max(delays[10:]) > 1.0
    assert len({round(d, 6) for d in delays[10:]}) > 20  # not all clients in step
    backoff.reset()
    assert backoff.next() <= 0.1


def test_registry_arguments() -> None:
    with pytest.raises(ValueError):
        EtcdRegistry(EtcdConfig(), ttl=0.5)
    registry = EtcdRegistry(EtcdConfig(), ttl=10)
    assert not registry.registered and registry.lease_id is None
    registry.close()  # never started: nothing to do


def test_incremental_tables_match_a_full_build() -> None:
    rng = random.Random(7)
    tables = _Tables()
    state: dict[tuple[int, bytes], Endpoint] = {}
    for step in range(600):
        owner = (rng.randrange(2), str(rng.randrange(60)).encode())
        old = state.get(owner)
        new = None if rng.random() < 0.3 else Endpoint(
            f"10.0.0.{rng.randrange(1, 250)}:1", rng.choice(["compute", "scheduler"]),
            f"h{owner[1].decode()}", az=rng.choice(["az1", "az2", "az3"]),
            instance=str(owner[0]))
        if new is None:
            state.pop(owner, None)
        else:
            state[owner] = new
        tables.change(owner, old, new)
        if step % 7 == 0:
            got, want = tables.table(step), RoutingTable.build(state.values(), step)
            assert got.endpoints == want.endpoints
            for az in ("az1", "az2", "az3"):
                for topic in ("compute", "scheduler"):
                    assert got.lookup(az, "openstack", topic) == want.lookup(
                        az, "openstack", topic)
