"""The Nova-shaped services the demo runs: the endpoints of nova-scheduler and nova-compute.

Plain dict-style endpoints, as an oslo.messaging service would write them: public methods take
the request context and keyword arguments. Each runs in its own process (`grpcrpc.demo.worker`).

>>> compute = ComputeManager("compute-az1-1", "az1")
>>> compute.build_and_run_instance({}, instance="vm-1", flavor="m1.small")
>>> compute.get_instances({})
['vm-1']
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from grpcrpc.target import Target

__all__ = ["COMPUTE_VERSION", "SCHEDULER_VERSION", "ComputeManager", "NoValidHost",
           "SchedulerManager"]

SCHEDULER_VERSION = "4.5"
COMPUTE_VERSION = "6.0"


class NoValidHost(Exception):
    """No compute of the AZ can take the instance (Nova's name for it)."""


class SchedulerManager:
    """nova-scheduler's RPC API: the part the conductor calls.

    `hosts()` returns the computes of this AZ that are registered right now: the scheduler
    reads them from its own etcd-backed routing table, so a compute that died and whose lease
    expired is never chosen.

    >>> SchedulerManager("s1", "az1", lambda: ["c1"]).select_destinations({}, spec={})
    [{'host': 'c1', 'az': 'az1', 'scheduler': 's1'}]
    """

    target = Target(version=SCHEDULER_VERSION)

    def __init__(self, name: str, az: str, hosts: Callable[[], Sequence[str]]) -> None:
        self.name = name
        self.az = az
        self._hosts = hosts

    def select_destinations(self, ctxt: dict[str, Any], spec: dict[str, Any],
                            num_instances: int = 1) -> list[dict[str, str]]:
        hosts = list(self._hosts())
        if not hosts:
            raise NoValidHost(f"no compute registered in {self.az}")
        # A stand-in for the filter and weigher pipeline: what matters here is the round trip.
        return [{"host": random.choice(hosts), "az": self.az, "scheduler": self.name}
                for _ in range(max(1, int(num_instances)))]


class ComputeManager:
    """nova-compute's RPC API: a cast to build, a fanout to refresh resources, two calls to
    look at the host.

    >>> import asyncio
    >>> asyncio.run(ComputeManager("c1", "az1").get_host_uptime({}))["host"]
    'c1'
    """

    target = Target(version=COMPUTE_VERSION)

    def __init__(self, host: str, az: str) -> None:
        self.host = host
        self.az = az
        self.started = time.monotonic()
        self.resource_updates = 0
        self._built: list[str] = []
        self._lock = threading.Lock()  # plain methods run in the server's thread pool

    def build_and_run_instance(self, ctxt: dict[str, Any], instance: str, flavor: str) -> None:
        """A cast: the conductor does not wait for the build, only for its acceptance."""
        with self._lock:
            self._built.append(instance)

    def get_instances(self, ctxt: dict[str, Any]) -> list[str]:
        with self._lock:
            return list(self._built)

    async def update_available_resource(self, ctxt: dict[str, Any]) -> None:
        """Fanned out to every compute of the AZ (a coroutine: runs on the server's loop)."""
        self.resource_updates += 1

    async def get_host_uptime(self, ctxt: dict[str, Any]) -> dict[str, Any]:
        return {"host": self.host, "az": self.az,
                "uptime": round(time.monotonic() - self.started, 1),
                "resource_updates": self.resource_updates}
