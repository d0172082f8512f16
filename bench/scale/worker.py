"""The processes of the simulated region: `python -m bench.scale.worker KIND ARGS_JSON`.

Each worker prints one JSON line when it is ready, then answers JSON commands read from stdin,
one line each (`{"op": "status"}` -> one JSON line back), and exits when stdin closes (or, on
Linux, when the harness dies). Workers are started with `subprocess`, never a fork after grpc is
loaded. The kinds live in `bench.scale.servers` (hypervisors, conductor, broadcasters),
`bench.scale.clients` (load, fanout, routing, keepalive probes) and `bench.scale.rabbit_procs`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import resource
import sys
import threading
from typing import Any

# Only the discovery logger speaks (counted below, never printed): a region of registries
# retrying after an outage would otherwise fill the harness's pipes.
logging.basicConfig(level=logging.CRITICAL)


def raise_nofile() -> int:
    """Raise this process's open-file limit to the hard limit (every connection is a fd)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rotated(endpoints: list[str], i: int) -> list[str]:
    """Start each client at a different member, as clientv3's balancer spreads connections."""
    k = i % len(endpoints)
    return endpoints[k:] + endpoints[:k]


def etcd_config(a: dict[str, Any], i: int = 0, timeout: float = 10.0) -> Any:
    """The `EtcdConfig` of a worker's `i`-th client, from the region's `etcd()` arguments."""
    from grpcrpc.discovery.etcd import EtcdConfig

    return EtcdConfig(rotated(a["endpoints"], i), timeout=timeout,
                      keepalive_time=a.get("etcd_keepalive", 10.0))


class RegistryLog(logging.Handler):
    """Counts what the registries tell: grants, failed attempts, registrations lost."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        msg = str(record.msg)
        if msg.startswith("granted etcd lease"):
            self.counts["grants"] += 1
        elif "retrying" in msg or "still failing" in msg:
            self.counts["failures"] += 1
        elif "granting a new lease" in msg:
            self.counts["lease_lost"] += 1
        elif msg.startswith("etcd registration is") and record.levelno >= logging.WARNING:
            self.counts["down"] += 1


def count_registry_logs() -> RegistryLog:
    handler = RegistryLog()
    logger = logging.getLogger("grpcrpc.discovery.etcd")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    return handler


def kinds() -> dict[str, Any]:
    from bench.scale import clients, rabbit_procs, servers

    return {
        "hv": servers.Hypervisors, "conductor": servers.Control,
        "broadcaster": servers.BroadcasterProc, "load": clients.Load,
        "fanout": clients.FanoutClient, "routing": clients.Routing,
        "kacap": clients.KeepaliveCapacity, "rabbit-servers": rabbit_procs.RabbitServers,
        "rabbit-load": rabbit_procs.RabbitLoad,
    }


async def serve(kind: str, args: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, "")

    threading.Thread(target=read_stdin, daemon=True).start()
    worker = kinds()[kind](args)
    ready = await worker.start()
    print(json.dumps({"ready": True, "nofile": raise_nofile(), **ready}), flush=True)
    while line := await lines.get():
        command = json.loads(line)
        try:
            reply = await getattr(worker, f"op_{command['op']}")(command)
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
    try:
        await asyncio.wait_for(worker.close(), 60)
    except TimeoutError:
        os._exit(1)  # a worker that cannot close in a minute must not outlive the run


def die_with_parent() -> None:
    """SIGKILL this worker when the harness dies (Linux), so a killed run leaves nothing."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the harness's close() still ends every worker it started


if __name__ == "__main__":
    die_with_parent()
    raise_nofile()
    asyncio.run(serve(sys.argv[1], json.loads(sys.argv[2])))
