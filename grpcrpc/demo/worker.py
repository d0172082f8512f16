"""One process of the demo's cloud: `python -m grpcrpc.demo.worker ROLE NAME`.

ROLE is `scheduler`, `compute` or `broadcaster`. Everything else comes from the environment,
the way an operator configures any grpcrpc process: `GRPCRPC_ETCD_ENDPOINTS`, `GRPCRPC_AZ`,
`GRPCRPC_LEASE_TTL` (docs/configuration.md), and OpenTelemetry's own `OTEL_*` variables
(`OTEL_EXPORTER_OTLP_ENDPOINT` and friends) for `grpcrpc.tracing.configure()`. A broadcaster is
the `grpcrpc broadcaster` command itself, run with tracing on.

The process stops cleanly (withdrawn from etcd first, spans flushed) on SIGTERM or SIGINT, and
also when its standard input reaches end of file: the demo holds the other end of that pipe,
so a demo that dies, however it dies, takes its workers with it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from grpcrpc.config import Config

__all__ = ["ROLES", "SERVICE_NAMES", "main"]

ROLES = ("scheduler", "compute", "broadcaster")
# OpenTelemetry service names: what the trace tree shows for each role.
SERVICE_NAMES = {"scheduler": "nova-scheduler", "compute": "nova-compute",
                 "broadcaster": "grpcrpc-broadcaster"}

log = logging.getLogger("grpcrpc.demo.worker")


def _stop_when_parent_goes() -> None:
    """SIGTERM ourselves when stdin closes: the parent died or let go of us."""
    def watch() -> None:
        # os.read on the raw descriptor, not sys.stdin: a daemon thread blocked inside a
        # buffered reader makes the interpreter abort at exit when it tries to close it.
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="demo-parent-watch", daemon=True).start()


async def _serve(role: str, name: str, cfg: Config) -> None:
    from grpcrpc.demo.services import COMPUTE_VERSION, SCHEDULER_VERSION, ComputeManager, SchedulerManager
    from grpcrpc.discovery.etcd import EtcdRegistry, EtcdResolver
    from grpcrpc.server import RPCServer
    from grpcrpc.target import Target

    registry = EtcdRegistry(cfg.etcd_config(), ttl=cfg.lease_ttl)
    resolver: EtcdResolver | None = None
    endpoint: Any
    if role == "scheduler":
        # The scheduler's view of live computes is its own routing table of its AZ.
        resolver = EtcdResolver(cfg.etcd_config(), az=cfg.az, topics=["compute"], max_backoff=1.0)
        await asyncio.to_thread(resolver.start)
        table_of = resolver

        def hosts() -> list[str]:
            return sorted({e.server for e in table_of.table.lookup(cfg.az, cfg.exchange, "compute")})

        endpoint, version = SchedulerManager(name, cfg.az, hosts), SCHEDULER_VERSION
    else:
        endpoint, version = ComputeManager(name, cfg.az), COMPUTE_VERSION
    server = RPCServer(Target(topic=role, server=name, version=version), [endpoint],
                       registry=registry, grace=2.0, **cfg.server_args())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        print(f"{role} {name} serving in {cfg.az} at {server.address}", flush=True)
        await stop.wait()
    finally:
        await server.stop()
        await asyncio.to_thread(registry.close)  # revokes the lease: the keys go at once
        if resolver is not None:
            resolver.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grpcrpc.demo.worker",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("name")
    parser.add_argument("--verbose", action="store_true", help="log at INFO (default WARNING)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s {args.name} %(name)s %(levelname)s %(message)s")
    from grpcrpc import tracing

    # Exporter, batch delay and resource attributes all come from the OTEL_* environment.
    provider = tracing.configure(SERVICE_NAMES[args.role], metrics_exporter=False)
    _stop_when_parent_goes()
    try:
        if args.role == "broadcaster":
            from grpcrpc import cli

            return cli.main(["broadcaster", "--name", args.name])
        cfg = Config.load()
        asyncio.run(_serve(args.role, args.name, cfg))
        return 0
    finally:
        provider.shutdown()  # flushes the spans still batched


if __name__ == "__main__":
    sys.exit(main())
