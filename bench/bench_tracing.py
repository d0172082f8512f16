"""The cost of tracing: grpcrpc with no SDK, the SDK sampling 0 %, 10 % and 100 %, side by side
with raw grpc.aio with and without OpenTelemetry's own gRPC instrumentation at 100 %.

OpenTelemetry's provider is per process, so each mode has its own server process (pinned to the
server core) and each measurement its own client process (pinned to the client core); modes
alternate within each repetition. Spans go through the SDK's batch processor to an exporter that
drops them: what is measured is the instrumentation, not a collector's network. Sampling is the
SDK default's shape, `ParentBased(TraceIdRatioBased(r))`, on both sides. The raw peer is
`opentelemetry-instrumentation-grpc` (the `bench` extra) on a grpc.aio unary echo of the same
JSON payload; without it installed that pair is skipped.
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
from bench.results import record

RPC_MODES = ("off", "sdk0", "sdk10", "sdk100")
RAW_MODES = ("raw", "raw_otel100")
RATIO = {"sdk0": 0.0, "sdk10": 0.1, "sdk100": 1.0, "raw_otel100": 1.0}
LABELS = {"off": "grpcrpc, no SDK", "sdk0": "grpcrpc, SDK 0 %", "sdk10": "grpcrpc, SDK 10 %",
          "sdk100": "grpcrpc, SDK 100 %", "raw": "raw grpc.aio",
          "raw_otel100": "raw + otel-grpc 100 %"}
REFERENCE = {"sdk0": "off", "sdk10": "off", "sdk100": "off", "raw_otel100": "raw"}
# Issue 18's targets: cost (1 - rate ratio, or p50 ratio - 1) at most this much.
TARGETS = {"sdk0": 0.05, "sdk10": 0.15}
ECHO = "/bench.Raw/Echo"


def instrumented_grpc_available() -> bool:
    try:
        import opentelemetry.instrumentation.grpc  # noqa: F401
    except ImportError:
        return False
    return True


def install(mode: str) -> None:
    """Set up the SDK for `mode` in this process (a no-op for "off" and "raw")."""
    if mode not in RATIO:
        return
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from grpcrpc import tracing

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracing.configure("bench", exporter=Drop(),
                      sampler=ParentBased(TraceIdRatioBased(RATIO[mode])), metrics_exporter=False)


def serve(mode: str) -> None:
    os.sched_setaffinity(0, {SERVER_CORE})
    install(mode)
    if mode in RAW_MODES:
        serve_raw(mode)
        return
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


def serve_raw(mode: str) -> None:
    import grpc
    import grpc.aio

    if mode == "raw_otel100":
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer

        GrpcAioInstrumentorServer().instrument()  # before the server is made

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "bench.Raw", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print("ADDRESS", f"127.0.0.1:{port}", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


def client_raw(mode: str, address: str, n: int) -> None:
    import grpc.aio

    if mode == "raw_otel100":
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient

        GrpcAioInstrumentorClient().instrument()  # before the channel is made

    async def main() -> dict[str, float]:
        async with grpc.aio.insecure_channel(address) as channel:
            echo = channel.unary_unary(ECHO)

            async def one(i: int) -> object:
                return json.loads(await echo(json.dumps({"x": i}).encode(), timeout=10))

            return await call_profile(one, n)

    print(json.dumps(asyncio.run(main())), flush=True)


def client(mode: str, address: str, n: int) -> None:
    os.sched_setaffinity(0, {CLIENT_CORE})
    install(mode)
    if mode in RAW_MODES:
        client_raw(mode, address, n)
        return
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
    modes = list(RPC_MODES)
    if instrumented_grpc_available():
        modes += RAW_MODES
    else:
        print("opentelemetry-instrumentation-grpc is not installed (the bench extra): "
              "the raw grpc.aio pair is skipped")
    me = [sys.executable, "-m", "bench.bench_tracing"]
    servers = {m: subprocess.Popen([*me, "--serve", m], stdout=subprocess.PIPE, text=True)
               for m in modes}
    results: dict[str, dict[str, Series]] = {m: {} for m in modes}
    try:
        addresses = {}
        for m, proc in servers.items():
            assert proc.stdout is not None
            addresses[m] = proc.stdout.readline().split()[1]
        for rep in range(args.reps):
            print(f"repetition {rep + 1}/{args.reps} ...", flush=True)
            # Each system right after its reference (off, then the SDK modes; raw, then raw+otel).
            for m in modes:
                out = subprocess.run([*me, "--client", m, addresses[m], str(args.calls)],
                                     capture_output=True, text=True, timeout=600, check=True)
                for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items():
                    results[m].setdefault(k, Series()).values.append(v)
    finally:
        for proc in servers.values():
            proc.kill()
            proc.wait()
    rows = []
    metrics = (("p50", "call sequential, asyncio: p50", "ms"),
               ("seq", "call sequential, asyncio: rate", "/s"),
               ("c64", "call, 64 in flight, asyncio", "/s"))
    for key, scenario, unit in metrics:
        for m in modes:
            ref = REFERENCE.get(m)
            rows.append((scenario, LABELS[m], results[m][key], unit,
                         results[ref][key] if ref else None, key == "p50"))
    print_table(rows, section="tracing")
    print()
    print_costs(results, modes)


def cost(results: dict[str, dict[str, Series]], mode: str, key: str) -> float:
    """What tracing costs `mode` against its reference: the fraction of calls/s lost, or the
    fraction the p50 grew."""
    ratio = results[mode][key].median / results[REFERENCE[mode]][key].median
    return ratio - 1 if key == "p50" else 1 - ratio


def print_costs(results: dict[str, dict[str, Series]], modes: list[str]) -> None:
    """Issue 18's targets, side by side with the instrumented raw grpcio peer."""
    peer = "raw_otel100" in modes
    print(f"{'tracing cost (vs same build, no SDK)':40} {'seq p50':>9} {'seq rate':>9} "
          f"{'64 in flight':>13}  target")
    summary: dict[str, Any] = {}
    for m in ("sdk0", "sdk10", "sdk100", "raw_otel100"):
        if m not in modes:
            continue
        costs = {k: cost(results, m, k) for k in ("p50", "seq", "c64")}
        if m in TARGETS:
            bound = TARGETS[m]
            target = f"<= {bound:.0%}: {'holds' if max(costs.values()) <= bound else 'missed'}"
        elif m == "sdk100" and peer:
            worst = {k: cost(results, "raw_otel100", k) for k in costs}
            holds = all(costs[k] <= worst[k] for k in costs)
            target = f"<= raw+otel-grpc's cost: {'holds' if holds else 'missed'}"
        else:
            target = ""
        summary[m] = {**costs, "target": target}
        print(f"{LABELS[m]:40} {costs['p50']:9.1%} {costs['seq']:9.1%} {costs['c64']:13.1%}  "
              f"{target}")
    record("tracing", "costs", summary)

if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve(sys.argv[2])
    elif len(sys.argv) > 4 and sys.argv[1] == "--client":
        client(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
