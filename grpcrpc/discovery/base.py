"""What discovery is, independent of where endpoints are stored.

An `Endpoint` is one listening server worker. A `Registry` announces a server's endpoints; a
`Resolver` keeps a `RoutingTable`, an immutable snapshot that it swaps atomically whenever the set
changes, so that sync and asyncio clients read it without locks and the call path never touches
the datastore.

>>> ep = Endpoint(address="127.0.0.1:5000", topic="compute", server="host1")
>>> table = RoutingTable.build([ep])
>>> [e.server for e in table.candidates(topic="compute", exchange="openstack", own_az="default")]
['host1']
"""

from __future__ import annotations

import abc
import ipaddress
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from grpcrpc import tracing

__all__ = [
    "DEFAULT_AZ",
    "DEFAULT_EXCHANGE",
    "Endpoint",
    "InvalidEndpoint",
    "Registry",
    "Resolver",
    "RoutingTable",
    "split_address",
]

DEFAULT_AZ = "default"
DEFAULT_EXCHANGE = "openstack"

# Bounds on what a registry value may hold: a value outside them is rejected, never half-used.
_MAX_VALUE_BYTES = 4096
_MAX_NAME = 253


class InvalidEndpoint(ValueError):
    """An endpoint value that does not follow the schema (bad address, missing topic, too large)."""


def split_address(address: str) -> tuple[str, int]:
    """'10.0.0.5:41234' -> ('10.0.0.5', 41234); '[::1]:80' -> ('::1', 80).

    >>> split_address("[::1]:8080")
    ('::1', 8080)
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidEndpoint(f"address {address!r} is not host:port")
    if host.startswith("["):
        if not host.endswith("]"):
            raise InvalidEndpoint(f"address {address!r} has an unclosed IPv6 bracket")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise InvalidEndpoint(f"address {address!r}: {exc}") from None
    elif ":" in host:
        raise InvalidEndpoint(f"address {address!r}: an IPv6 host needs brackets")
    num = int(port)
    if not 0 < num < 65536:
        raise InvalidEndpoint(f"address {address!r}: port out of range")
    if len(host) > _MAX_NAME:
        raise InvalidEndpoint("address host name too long")
    return host, num


def _name(value: Any, what: str, *, required: bool = True) -> str:
    if not isinstance(value, str):
        raise InvalidEndpoint(f"{what} must be a string")
    if required and not value:
        raise InvalidEndpoint(f"{what} must not be empty")
    if len(value) > _MAX_NAME or "/" in value or any(ord(c) < 32 for c in value):
        raise InvalidEndpoint(f"{what} {value[:40]!r} is too long or has '/' or control characters")
    return value


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One listening server worker: where to reach it and what it serves.

    `instance` tells apart several workers of one server (processes, ports). The JSON form is what
    the etcd registry stores, readable with `etcdctl get --prefix /grpcrpc/`.

    >>> Endpoint.from_json(Endpoint("127.0.0.1:1", "t", "s").to_json()).address
    '127.0.0.1:1'
    """

    address: str
    topic: str
    server: str
    exchange: str = DEFAULT_EXCHANGE
    az: str = DEFAULT_AZ
    instance: str = "0"
    version: str = ""
    pid: int = 0
    hostname: str = ""
    started_at: float = field(default_factory=time.time)
    tls: bool = False
    weight: int = 100
    # The server also consumes its RabbitMQ queues (the oslo driver's bridge mode): senders
    # use this to reach every server of a mixed fleet exactly once (docs/oslo.md).
    rabbit: bool = False

    def __post_init__(self) -> None:
        split_address(self.address)
        for what in ("topic", "server", "exchange", "az", "instance"):
            _name(getattr(self, what), what)
        if not 0 <= self.weight <= 10_000:
            raise InvalidEndpoint("weight must be within 0..10000")

    @property
    def key_path(self) -> str:
        """`<az>/<exchange>/<topic>/<server>/<instance>`: the registry key below its prefix."""
        return f"{self.az}/{self.exchange}/{self.topic}/{self.server}/{self.instance}"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Endpoint:
        """Parse and validate a stored value; raises `InvalidEndpoint` on anything off-schema."""
        if len(data) > _MAX_VALUE_BYTES:
            raise InvalidEndpoint(f"endpoint value of {len(data)} bytes exceeds {_MAX_VALUE_BYTES}")
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise InvalidEndpoint(f"endpoint value is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise InvalidEndpoint("endpoint value is not a JSON object")
        return cls.from_mapping(raw)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Endpoint:
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in raw.items() if k in known}
        for key in ("address", "topic", "server"):
            if key not in kwargs:
                raise InvalidEndpoint(f"endpoint value has no {key!r}")
        types: dict[str, tuple[type, ...]] = {
            "pid": (int,), "weight": (int,), "started_at": (int, float), "tls": (bool,),
            "rabbit": (bool,),
            "version": (str,), "hostname": (str,), "address": (str,),
        }
        for key, allowed in types.items():
            if key in kwargs and (
                not isinstance(kwargs[key], allowed)
                or (bool not in allowed and isinstance(kwargs[key], bool))
            ):
                raise InvalidEndpoint(f"endpoint field {key!r} has the wrong type")
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise InvalidEndpoint(str(exc)) from None


_Index = dict[tuple[str, str, str], tuple[Endpoint, ...]]


class RoutingTable:
    """An immutable snapshot of the endpoints a client knows, indexed by (az, exchange, topic).

    Resolvers build a new table on every change and swap it in with one assignment; readers
    keep whichever table they picked up for the length of one routing decision.
    """

    __slots__ = ("_by_topic", "endpoints", "revision")

    def __init__(self, endpoints: tuple[Endpoint, ...], index: _Index, revision: int) -> None:
        self.endpoints = endpoints
        self._by_topic = index
        self.revision = revision

    @classmethod
    def build(cls, endpoints: Iterable[Endpoint], revision: int = 0) -> RoutingTable:
        eps = tuple(sorted(set(endpoints), key=lambda e: (e.az, e.exchange, e.topic, e.key_path)))
        index: dict[tuple[str, str, str], list[Endpoint]] = {}
        for ep in eps:
            index.setdefault((ep.az, ep.exchange, ep.topic), []).append(ep)
        return cls(eps, {k: tuple(v) for k, v in index.items()}, revision)

    def lookup(self, az: str, exchange: str, topic: str) -> tuple[Endpoint, ...]:
        return self._by_topic.get((az, exchange, topic), ())

    def candidates(
        self,
        *,
        topic: str,
        exchange: str,
        own_az: str,
        server: str | None = None,
        az: str | None = None,
        fallback_azs: Sequence[str] = (),
    ) -> tuple[Endpoint, ...]:
        """The endpoints a message may go to, from the first AZ that has any.

        A target naming its AZ gets that AZ only; otherwise the client's own AZ, then each
        fallback AZ in order. `server` narrows to one server's workers.
        """
        azs = (az,) if az else (own_az, *fallback_azs)
        for zone in azs:
            eps = self._by_topic.get((zone, exchange, topic), ())
            if server:
                eps = tuple(e for e in eps if e.server == server)
            if eps:
                return eps
        return ()

    def __len__(self) -> int:
        return len(self.endpoints)

    def __repr__(self) -> str:
        return f"<RoutingTable {len(self.endpoints)} endpoints, revision {self.revision}>"


EMPTY_TABLE = RoutingTable((), {}, 0)


class Resolver(abc.ABC):  # noqa: B024 - subclasses override what they need
    """Keeps a routing table current. Thread-safe; the table is read without locks.

    Lifecycle: `start()` (may block until the first table is built), then read `table` as often
    as needed, `subscribe()` to hear of changes, and `close()` once.
    """

    def __init__(self) -> None:
        self._table = EMPTY_TABLE
        self._listeners: list[Callable[[RoutingTable], None]] = []
        self._changed = threading.Condition()
        tracing.track_resolver(self)

    @property
    def table(self) -> RoutingTable:
        """The current snapshot (never None; empty before the first listing)."""
        return self._table

    def start(self) -> None:  # noqa: B027 - optional hook
        """Begin resolving. Default: nothing to start."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Stop resolving and release what `start()` took."""

    def subscribe(self, callback: Callable[[RoutingTable], None]) -> Callable[[], None]:
        """Call `callback(table)` after every change (from the resolver's thread); returns an
        unsubscribe function. Callbacks must be quick and must not raise."""
        with self._changed:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._changed:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return unsubscribe

    def wait_for(self, predicate: Callable[[RoutingTable], bool], timeout: float) -> bool:
        """Block until `predicate(table)` holds or `timeout` passes; returns whether it held."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self._table), timeout)

    def _publish(self, table: RoutingTable) -> None:
        """Swap in a new snapshot and tell the listeners (for implementations)."""
        with self._changed:
            self._table = table
            listeners = list(self._listeners)
            self._changed.notify_all()
        for callback in listeners:
            callback(table)


class Registry(abc.ABC):
    """Announces a server's endpoints so that resolvers find them.

    `announce()` and `withdraw()` are idempotent. `registered` says whether every announced
    endpoint is currently visible; a server's health follows it.
    """

    @abc.abstractmethod
    def announce(self, endpoint: Endpoint) -> None:
        """Make `endpoint` discoverable (and keep it so until withdrawn or closed)."""

    @abc.abstractmethod
    def withdraw(self, endpoint: Endpoint) -> None:
        """Stop announcing `endpoint` and remove it from the registry now."""

    @property
    def registered(self) -> bool:
        return True

    def reached_at(self) -> Sequence[str] | None:
        """The hosts of the datastore that clients read this registry's endpoints from: an
        address announced here must be reachable from the network they are on. `()` when the
        registry lives in this process (its clients do too), None when unknown."""
        return None

    def add_listener(self, callback: Callable[[bool], None]) -> Callable[[], None]:
        """Call `callback(registered)` now and whenever `registered` changes (from the
        registry's own thread); returns a function that removes the listener. A registry that
        cannot lose its registration (in-process, static) calls it only now."""
        callback(self.registered)
        return lambda: None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Withdraw everything and release resources."""
