"""Fixtures for discovery tests: a real etcd per test, and servers/registries/resolvers that are
always closed, in reverse order, whatever the test did."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from grpcrpc.discovery.base import DEFAULT_AZ, Endpoint
from grpcrpc.discovery.etcd import EtcdConfig, EtcdRegistry, EtcdResolver
from grpcrpc.server import RPCServer, ServerThread
from grpcrpc.target import Target
from grpcrpc.testing.etcd import EtcdServer

# Short enough to keep the suite fast, long enough for a loaded 2-core machine.
TTL = 2


@pytest.fixture
def etcd_server() -> Iterator[EtcdServer]:
    """A fresh etcd on free loopback ports, killed and removed after the test."""
    with EtcdServer() as server:
        yield server


@pytest.fixture
def etcd_config(etcd_server: EtcdServer) -> EtcdConfig:
    return EtcdConfig([etcd_server.endpoint], timeout=2.0)


class Named:
    """An endpoint object that says which server answered."""

    def __init__(self, name: str) -> None:
        self.name = name

    def whoami(self, ctxt: dict[str, Any]) -> str:
        return self.name

    def echo(self, ctxt: dict[str, Any], value: Any) -> Any:
        return value


class Stack:
    """What a test starts, closed at teardown (last started, first closed)."""

    def __init__(self) -> None:
        self._exit = contextlib.ExitStack()

    def registry(self, config: EtcdConfig, ttl: float = TTL, **kwargs: Any) -> EtcdRegistry:
        registry = EtcdRegistry(config, ttl=ttl, **kwargs)
        self._exit.callback(registry.close)
        return registry

    def resolver(self, config: EtcdConfig | dict[str, EtcdConfig], **kwargs: Any) -> EtcdResolver:
        kwargs.setdefault("max_backoff", 0.5)
        resolver = EtcdResolver(config, **kwargs)
        self._exit.callback(resolver.close)
        resolver.start()
        return resolver

    def server(self, registry: EtcdRegistry, topic: str, name: str,
               az: str = DEFAULT_AZ) -> ServerThread:
        thread = ServerThread(RPCServer(Target(topic=topic, server=name), [Named(name)],
                                        registry=registry, az=az, grace=0.5))
        thread.start()
        self._exit.callback(thread.stop)
        return thread

    def close(self) -> None:
        self._exit.close()


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack()
    try:
        yield s
    finally:
        s.close()


def endpoint_of(thread: ServerThread) -> Endpoint:
    endpoint = thread.server.endpoint
    assert endpoint is not None
    return endpoint
