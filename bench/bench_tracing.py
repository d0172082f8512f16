"""The cost of tracing: calls/s and p50 with no SDK, the SDK sampling 100 %, and 10 %.

OpenTelemetry's provider is per process, so each mode has its own server process (pinned to the
server core) and each measurement its own client process (pinned to the client core); modes
alternate within each repetition. Spans go through the SDK's batch processor to an exporter that
drops them: what is measured is grpcrpc's instrumentation, not a collector's network.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from typing import Any

from bench.common import CLIENT_CORE, SERVER_CORE, Series, call_profile, print_table

MODES = ("off", "sdk100", "sdk10")


def install(mode: str) -> None:
    """Set up the SDK for `mode` in this process (a no-op for "off")."""
    if mode == "off":
        return
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from grpcrpc import tracing

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    ratio = 1.0 if mode == "sdk100" else 0.1
    tracing.configure("bench", exporter=Drop(), sampler=ParentBased(TraceIdRatioBased(ratio)),
                      metrics_exporter=False)


def serve(mode: str) -> None:
    os.sched_setaffinity(0, {SERVER_CORE})
    install(mode)
    from grpcrpc import Limits, RPCServer, Target

    class Echo:
        async def echo(self, ctxt: Any, x: Any) -> Any:
            return x

    async def main() -> None:
        server = RPCServer(Target(topic="bench", server="b"), [Echo()],
                           limits=Limits(coroutines=4096, stream_in_flight=4096))
        await server.start()
        print("ADDRESS", server.address, flush=True)
        await server.wait()

    asyncio.run(main())


def client(mode: str, address: str, n: int) -> None:
    os.sched_setaffinity(0, {CLIENT_CORE})
    install(mode)
    from grpcrpc import AsyncRPCClient, Endpoint, StaticResolver, Target

    async def main() -> dict[str, float]:
        resolver = StaticResolver([Endpoint(address, "bench", "b")])
        async with AsyncRPCClient(resolver, Target(topic="bench"), timeout=10) as c:
            return await call_profile(lambda i: c.call({}, "echo", x=i), n)

    print(json.dumps(asyncio.run(main())), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.reps, args.calls = 1, 50
    me = [sys.executable, "-m", "bench.bench_tracing"]
    servers = {m: subprocess.Popen([*me, "--serve", m], stdout=subprocess.PIPE, text=True)
               for m in MODES}
    results: dict[str, dict[str, Series]] = {m: {} for m in MODES}
    try:
        addresses = {}
        for m, proc in servers.items():
            assert proc.stdout is not None
            addresses[m] = proc.stdout.readline().split()[1]
        for rep in range(args.reps):
            print(f"repetition {rep + 1}/{args.reps} ...", flush=True)
            for m in MODES:
                out = subprocess.run([*me, "--client", m, addresses[m], str(args.calls)],
                                     capture_output=True, text=True, timeout=600, check=True)
                for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items():
                    results[m].setdefault(k, Series()).values.append(v)
    finally:
        for proc in servers.values():
            proc.kill()
            proc.wait()
    off = results["off"]
    rows = []
    labels = {"off": "no SDK (untraced)", "sdk100": "SDK, 100 % sampled", "sdk10": "SDK, 10 % sampled"}
    for key, scenario, unit in (("p50", "call sequential, asyncio: p50", "ms"),
                                ("seq", "call sequential, asyncio: rate", "/s"),
                                ("c64", "call, 64 in flight, asyncio", "/s")):
        for m in MODES:
            rows.append((scenario, labels[m], results[m][key], unit,
                         None if m == "off" else off[key], key == "p50"))
    print_table(rows, section="tracing")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve(sys.argv[2])
    elif len(sys.argv) > 4 and sys.argv[1] == "--client":
        client(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
