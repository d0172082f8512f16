"""Discovery in etcd: servers announce endpoints under a lease, clients list and watch.

Layout: `<prefix>/v1/endpoints/<az>/<exchange>/<topic>/<server>/<instance>` → the endpoint's
JSON, so `etcdctl get --prefix /grpcrpc/` is readable by a person. An AZ either has its own etcd
cluster (give the resolver a mapping az → `EtcdConfig`) or shares one (a single config).

- `EtcdRegistry` (servers): one lease per registry, kept alive at TTL/3 by one daemon thread.
  Whatever happens to the lease (etcd restart, partition, wipe, `etcdctl lease revoke`), it
  retries forever with jittered backoff, grants a new lease and puts every key again.
- `EtcdConnection`: one channel and one keepalive stream that many registries of a process share
  (etcd's clientv3 shares one client the same way); by default each registry makes its own.
- `EtcdResolver` (clients): lists in pages at one revision, watches from the next, and keeps a
  `RoutingTable` in memory; a broken or compacted watch re-lists. While etcd is unreachable the
  last table stays, so calls keep flowing.

The code: `_etcd_client` and `_etcd_errors` (the only modules that import pyetcd; map its errors),
`_etcd_registry`, `_etcd_resolver`; this module holds the configuration and the public names.

>>> config = EtcdConfig(["10.0.0.1:2379", "10.0.0.2:2379"])
>>> config.endpoints_prefix
'/grpcrpc/v1/endpoints/'
>>> config.key(Endpoint("10.0.0.5:41234", "compute", "host1"))
'/grpcrpc/v1/endpoints/default/openstack/compute/host1/0'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from grpcrpc.discovery import _etcd_client as ec
from grpcrpc.discovery._etcd_client import Connection as EtcdConnection
from grpcrpc.discovery._etcd_client import DiscoveryUnavailable
from grpcrpc.discovery._etcd_registry import EtcdRegistry
from grpcrpc.discovery._etcd_resolver import EtcdResolver
from grpcrpc.discovery.base import Endpoint, InvalidEndpoint, split_address

__all__ = [
    "DiscoveryUnavailable",
    "EtcdConfig",
    "EtcdConnection",
    "EtcdRegistry",
    "EtcdResolver",
    "Registration",
    "connect",
    "list_registrations",
]


@dataclass(frozen=True, slots=True)
class EtcdConfig:
    """Where one etcd cluster is and how to talk to it.

    `endpoints` are `host:port` (an `http://` or `https://` scheme is accepted and dropped;
    `https` turns TLS on); requests fail over between them. TLS is on when `tls` is set, when
    a CA or client certificate is given, or with `https://` endpoints. `user`/`password` use
    etcd's authentication (the token is renewed whenever etcd stops accepting it).
    `timeout` bounds each request. `keepalive_time` is the seconds between HTTP/2 pings on a
    connection whose streams are silent (how a dead or partitioned etcd is noticed on a quiet
    watch); etcd members accept one every 5 s, but etcd 3.4's `grpc-proxy` answers pings more
    often than every 300 s with GOAWAY `too_many_pings`, dropping every stream of the
    connection, so through a proxy set it to 300 or more.

    >>> EtcdConfig("https://10.0.0.1:2379,10.0.0.2:2379", prefix="/az1/").endpoints
    ('10.0.0.1:2379', '10.0.0.2:2379')
    """

    endpoints: Sequence[str] = ("127.0.0.1:2379",)
    prefix: str = "/grpcrpc"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 5.0
    tls: bool | None = None
    keepalive_time: float = 10.0

    def __post_init__(self) -> None:
        raw = self.endpoints.split(",") if isinstance(self.endpoints, str) else self.endpoints
        endpoints, https = [], False
        for item in raw:
            address = item.strip().rstrip("/")
            scheme, sep, rest = address.partition("://")
            if sep:
                if scheme not in ("http", "https"):
                    raise ValueError(f"etcd endpoint {item!r}: scheme must be http or https")
                https, address = https or scheme == "https", rest
            split_address(address)
            endpoints.append(address)
        if not endpoints:
            raise ValueError("EtcdConfig needs at least one endpoint")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if (self.user is None) != (self.password is None):
            raise ValueError("user and password go together")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if self.keepalive_time < 1:
            raise ValueError("keepalive_time must be at least 1 second")
        tls = self.tls if self.tls is not None else bool(
            https or self.ca_file or self.cert_file)
        object.__setattr__(self, "endpoints", tuple(endpoints))
        object.__setattr__(self, "prefix", self.prefix.rstrip("/"))
        object.__setattr__(self, "tls", tls)

    @property
    def endpoints_prefix(self) -> str:
        """`<prefix>/v1/endpoints/`: everything the registry writes lives below it."""
        return f"{self.prefix}/v1/endpoints/"

    def az_prefix(self, az: str) -> str:
        return f"{self.endpoints_prefix}{az}/"

    def key(self, endpoint: Endpoint) -> str:
        """The etcd key of `endpoint`."""
        return self.endpoints_prefix + endpoint.key_path


def connect(config: EtcdConfig) -> Any:
    """A raw pyetcd client for `config`, for tools and benchmarks (grpcrpc itself never hands
    one out). Raises `DiscoveryUnavailable` if it cannot connect or authenticate."""
    try:
        return ec.make_client(config)
    except ec.EtcdFailure as exc:
        raise DiscoveryUnavailable(f"etcd {','.join(config.endpoints)}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Registration:
    """One key under the endpoints prefix, as an operator sees it.

    `endpoint` is None when the value is not a valid endpoint (`problem` says why);
    `lease_id` 0 means the key is under no lease and will never expire by itself.
    """

    key: str
    endpoint: Endpoint | None
    lease_id: int
    ttl_left: int  # seconds; -1 when etcd no longer has the lease
    problem: str = ""


def list_registrations(
    config: EtcdConfig, *, az: str | None = None, topic: str | None = None, page_size: int = 1000
) -> list[Registration]:
    """Everything registered (in one AZ, for one topic), with each lease's TTL left.

    For tools (`grpcrpc endpoints`, `grpcrpc doctor`); raises `DiscoveryUnavailable` when etcd
    cannot be read.
    """
    prefix = (config.az_prefix(az) if az else config.endpoints_prefix).encode()
    try:
        session = ec.Session(config)
    except ec.EtcdFailure as exc:
        raise DiscoveryUnavailable(f"etcd {','.join(config.endpoints)}: {exc}") from None
    try:
        rows: list[tuple[str, bytes, int]] = []
        start, end, revision = prefix, ec.prefix_end(prefix), None
        while True:
            page = session.range_page(start, end, page_size, revision)
            rows += [(k.decode(errors="replace"), v, lease)
                     for (k, v), lease in zip(page.kvs, page.leases, strict=True)]
            if not page.more or not page.kvs:
                break
            start, revision = page.kvs[-1][0] + b"\0", page.revision
        ttls = {lease: session.time_to_live(lease) for lease in {r[2] for r in rows} if lease}
    except ec.EtcdFailure as exc:
        raise DiscoveryUnavailable(f"etcd {','.join(config.endpoints)}: {exc}") from None
    finally:
        session.close()
    out = []
    for key, value, lease in rows:
        try:
            endpoint: Endpoint | None = Endpoint.from_json(value)
            problem = ""
        except InvalidEndpoint as exc:
            endpoint, problem = None, str(exc)
        if topic is not None and (endpoint is None or endpoint.topic != topic):
            continue
        if endpoint is not None and config.key(endpoint) != key:
            problem = f"the key does not match the value (value says {config.key(endpoint)})"
        out.append(Registration(key, endpoint, lease, ttls.get(lease, -1) if lease else -1,
                                problem))
    return out
