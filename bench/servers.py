"""Server processes for the benchmarks: `python servers.py KIND CORE`.

KIND is `raw` (plain grpc.aio handlers: unary echo of the bytes, a unary echo that decodes and
re-encodes the JSON, a one-way client stream that counts) or
`grpcrpc` (an RPCServer with the equivalent endpoints). Prints "ADDRESS host:port" once serving.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio


class Sink:
    """grpcrpc endpoints mirroring the raw handlers."""

    def __init__(self) -> None:
        self.casts = 0

    async def echo(self, ctxt: Any, x: Any) -> Any:
        return x

    async def consume(self, ctxt: Any, x: Any) -> None:
        self.casts += 1

    async def count(self, ctxt: Any) -> int:
        return self.casts


async def raw_server() -> grpc.aio.Server:
    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def echo_json(request: bytes, context: Any) -> bytes:
        # What a real server does with a structured payload: decode it, answer it encoded.
        return json.dumps(json.loads(request)).encode()

    async def sink(requests: AsyncIterator[bytes], context: Any) -> bytes:
        n = 0
        async for _ in requests:
            n += 1
        return str(n).encode()

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Raw", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "EchoJson": grpc.unary_unary_rpc_method_handler(echo_json),
        "Sink": grpc.stream_unary_rpc_method_handler(sink),
    })])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print("ADDRESS", f"127.0.0.1:{port}", flush=True)
    return server


async def main(kind: str) -> None:
    if kind == "raw":
        server = await raw_server()
        await server.wait_for_termination()
        return
    from grpcrpc import Limits, RPCServer, Target

    rpc = RPCServer(Target(topic="bench", server="b1"), [Sink()],
                    limits=Limits(coroutines=4096, stream_in_flight=4096))
    await rpc.start()
    print("ADDRESS", rpc.address, flush=True)
    await rpc.wait()


if __name__ == "__main__":
    kind, core = sys.argv[1], int(sys.argv[2])
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {core})
    asyncio.run(main(kind))
