"""Discovery: servers announce endpoints (`Registry`); clients keep a routing table (`Resolver`).

`grpcrpc.discovery.static` has fixed and in-process tables; `grpcrpc.discovery.etcd` keeps them in
etcd under leases.
"""

from grpcrpc.discovery.base import (
    DEFAULT_AZ,
    DEFAULT_EXCHANGE,
    Endpoint,
    InvalidEndpoint,
    Registry,
    Resolver,
    RoutingTable,
)
from grpcrpc.discovery.static import MemoryDiscovery, StaticResolver

__all__ = [
    "DEFAULT_AZ",
    "DEFAULT_EXCHANGE",
    "Endpoint",
    "InvalidEndpoint",
    "MemoryDiscovery",
    "Registry",
    "Resolver",
    "RoutingTable",
    "StaticResolver",
]
