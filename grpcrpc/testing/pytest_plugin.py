"""pytest fixtures for services built on grpcrpc (loaded through the `pytest11` entry point).

```python
def test_scheduler(grpcrpc_cluster):
    grpcrpc_cluster.serve(Target(topic="scheduler", server="s1"), [SchedulerManager()])
    client = grpcrpc_cluster.client(Target(topic="scheduler"))
    assert client.call({}, "select_destinations", spec={}) == [...]
```
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from grpcrpc.testing import Cluster
from grpcrpc.testing.etcd import EtcdServer


@pytest.fixture
def grpcrpc_cluster() -> Iterator[Cluster]:
    """Servers and clients joined by an in-process registry; all stopped after the test."""
    with Cluster() as cluster:
        yield cluster


@pytest.fixture
def grpcrpc_etcd() -> Iterator[EtcdServer]:
    """A real etcd (Debian's `etcd`) on a free loopback port in a temporary directory."""
    with EtcdServer() as server:
        yield server
