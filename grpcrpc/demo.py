"""`make demo`: a Nova-shaped flow over grpcrpc, end to end, on this machine.

A conductor *calls* the scheduler's `select_destinations`, *casts* `build_and_run_instance` to the
compute it chose, and *fanout-casts* `update_available_resource` to every compute through a
broadcaster — the three oslo.messaging patterns, with no broker: each server listens on its own
loopback port and the conductor routes from a static endpoint table. The trace of the whole flow
is printed at the end (and exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from grpcrpc import (
    RPCClient,
    RPCServer,
    ServerThread,
    StaticResolver,
    Target,
    tracing,
)
from grpcrpc.broadcaster import Broadcaster

log = logging.getLogger("grpcrpc.demo")


class SchedulerManager:
    """nova-scheduler's RPC API (the part the conductor calls)."""

    target = Target(version="4.5")

    def __init__(self, hosts: Sequence[str]) -> None:
        self.hosts = list(hosts)

    def select_destinations(self, ctxt: dict[str, Any], spec: dict[str, Any]) -> list[str]:
        # Least-loaded by a fake free-RAM figure: what matters here is the round trip.
        return [random.choice(self.hosts)]


class ComputeManager:
    """nova-compute's RPC API: a cast to build, a fanout to refresh resources."""

    target = Target(version="6.0")

    def __init__(self, host: str, out: _Printer) -> None:
        self.host = host
        self.out = out
        self.built: list[str] = []
        self.updates = 0
        self.done = threading.Event()

    def build_and_run_instance(self, ctxt: dict[str, Any], instance: str, flavor: str) -> None:
        self.built.append(instance)
        self.out(f"  [{self.host}] build_and_run_instance({instance}, {flavor}) "
                 f"for request {ctxt.get('request_id')}")
        self.done.set()

    async def update_available_resource(self, ctxt: dict[str, Any]) -> None:
        self.updates += 1
        self.out(f"  [{self.host}] update_available_resource")


class _Printer:
    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock:
            print(line, flush=True)


class _BroadcasterThread:
    """A broadcaster on its own loop in a thread (the demo's stand-in for its own process)."""

    def __init__(self, broadcaster: Broadcaster) -> None:
        self.broadcaster = broadcaster
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.broadcaster.start(), self._loop).result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.broadcaster.stop(1.0), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def run(computes: int = 3, trace_tree: bool = True) -> int:
    out = _Printer()
    capture = tracing.SpanCapture.install("grpcrpc-demo") if trace_tree else None
    hosts = [f"compute{i}" for i in range(1, computes + 1)]
    threads: list[ServerThread] = []
    broadcaster: _BroadcasterThread | None = None
    compute_managers = {h: ComputeManager(h, out) for h in hosts}
    try:
        out(f"1. starting nova-scheduler and {computes} nova-compute servers on loopback ports")
        scheduler = ServerThread(RPCServer(Target(topic="scheduler", server="scheduler1"),
                                           [SchedulerManager(hosts)]))
        scheduler.start()
        threads.append(scheduler)
        for host, manager in compute_managers.items():
            t = ServerThread(RPCServer(Target(topic="compute", server=host), [manager]))
            t.start()
            threads.append(t)
        endpoints = [t.server.endpoint for t in threads if t.server.endpoint is not None]
        broadcaster = _BroadcasterThread(Broadcaster(StaticResolver(endpoints), name="bcast1"))
        broadcaster.start()
        assert broadcaster.broadcaster.endpoint is not None
        endpoints.append(broadcaster.broadcaster.endpoint)
        for ep in endpoints:
            out(f"   {ep.topic:20} {ep.server:11} {ep.address}")
        resolver = StaticResolver(endpoints)
        ctxt = {"request_id": f"req-{random.getrandbits(32):08x}", "user": "demo",
                "project_id": "demo", "roles": ["member"]}

        scheduler_api = RPCClient(resolver, Target(topic="scheduler", version="4.0"), timeout=10)
        compute_api = RPCClient(resolver, Target(topic="compute", version="6.0"), timeout=10)

        out("2. conductor -> scheduler: call select_destinations")
        t0 = time.perf_counter()
        [host] = scheduler_api.call(ctxt, "select_destinations",
                                    spec={"flavor": "m1.small", "num_instances": 1})
        out(f"   scheduler chose {host} ({(time.perf_counter() - t0) * 1000:.1f} ms round trip)")

        out(f"3. conductor -> {host}: cast build_and_run_instance (returns once accepted)")
        compute_api.prepare(server=host).cast(ctxt, "build_and_run_instance",
                                              instance="vm-1", flavor="m1.small")
        if not compute_managers[host].done.wait(10):
            out("   the build never ran")
            return 1

        out("4. conductor -> broadcaster -> every compute: fanout cast update_available_resource")
        report = compute_api.prepare(fanout=True).cast(ctxt, "update_available_resource")
        assert report is not None
        deadline = time.monotonic() + 10
        while (sum(m.updates for m in compute_managers.values()) < report.delivered
               and time.monotonic() < deadline):
            time.sleep(0.01)
        out(f"   delivery report: {report.delivered}/{report.targets} computes accepted"
            + "".join(f"; {f.server} failed: {f.reason}" for f in report.failures))

        out("5. a call to a method nobody has gets a named error, not a hang:")
        try:
            scheduler_api.call(ctxt, "no_such_method")
        except Exception as exc:
            out(f"   {type(exc).__name__}: {exc}")
        scheduler_api.close()
        compute_api.close()
        ok = compute_managers[host].built == ["vm-1"] and report.ok
        if capture is not None:
            out("6. the trace of this flow (one tree per request; every hop is a span):")
            out(capture.tree())
        out("done: call, cast and fanout all went straight from client to server, no broker."
            if ok else "FAILED")
        return 0 if ok else 1
    finally:
        if broadcaster is not None:
            broadcaster.stop()
        for t in threads:
            t.stop(grace=1.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--computes", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    return run(args.computes)


if __name__ == "__main__":
    sys.exit(main())
