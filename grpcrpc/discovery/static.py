"""Discovery with no datastore: a fixed table from code or a file, or an in-process table.

>>> resolver = StaticResolver([Endpoint("127.0.0.1:5000", "scheduler", "host1")])
>>> len(resolver.table)
1
"""

from __future__ import annotations

import json
import pathlib
import threading
from collections.abc import Iterable, Sequence

from grpcrpc.discovery.base import Endpoint, InvalidEndpoint, Registry, Resolver, RoutingTable

__all__ = ["MemoryDiscovery", "StaticResolver"]


class StaticResolver(Resolver):
    """A routing table that never changes: for fixed deployments, tools and tests."""

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        super().__init__()
        self._publish(RoutingTable.build(endpoints))

    @classmethod
    def from_file(cls, path: str | pathlib.Path) -> StaticResolver:
        """Read a JSON file: a list of endpoint objects (the same fields as in etcd).

        Raises `InvalidEndpoint` naming the entry that is wrong.
        """
        text = pathlib.Path(path).read_text()
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise InvalidEndpoint(f"{path}: not JSON: {exc}") from None
        if not isinstance(raw, list):
            raise InvalidEndpoint(f"{path}: expected a JSON list of endpoints")
        endpoints = []
        for i, item in enumerate(raw):
            if not isinstance(item, dict):
                raise InvalidEndpoint(f"{path}: entry {i} is not an object")
            try:
                endpoints.append(Endpoint.from_mapping(item))
            except InvalidEndpoint as exc:
                raise InvalidEndpoint(f"{path}: entry {i}: {exc}") from None
        return cls(endpoints)


class MemoryDiscovery(Registry, Resolver):
    """An in-process registry that is also a resolver: servers announce, clients see at once.

    Joins servers and clients in one process (tests, the demo, `grpcrpc.testing`).
    """

    def __init__(self) -> None:
        Resolver.__init__(self)
        self._lock = threading.Lock()
        self._endpoints: dict[str, Endpoint] = {}
        self._revision = 0

    def _key(self, endpoint: Endpoint) -> str:
        return endpoint.key_path

    def announce(self, endpoint: Endpoint) -> None:
        with self._lock:
            self._endpoints[self._key(endpoint)] = endpoint
            self._revision += 1
            table = RoutingTable.build(self._endpoints.values(), self._revision)
        self._publish(table)

    def reached_at(self) -> Sequence[str]:
        return ()  # in this process: so are its clients

    def withdraw(self, endpoint: Endpoint) -> None:
        with self._lock:
            if self._endpoints.pop(self._key(endpoint), None) is None:
                return
            self._revision += 1
            table = RoutingTable.build(self._endpoints.values(), self._revision)
        self._publish(table)
