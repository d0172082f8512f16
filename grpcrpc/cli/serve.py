"""`grpcrpc serve TOPIC [--server NAME]`: a small echo server, registered in etcd.

Its endpoints: `echo(value)` returns the value, `ping()` returns "pong" and the server's name,
`sleep(seconds)` waits, `fail(message)` raises. Ctrl-C stops it cleanly (withdrawn first).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any

from grpcrpc.cli import CommandError
from grpcrpc.cli._common import add_config_args, load_config, until_signalled
from grpcrpc.exceptions import GrpcrpcError


class EchoEndpoint:
    def __init__(self, name: str) -> None:
        self.name = name

    async def echo(self, ctxt: Any, value: Any = None) -> Any:
        return value

    async def ping(self, ctxt: Any) -> dict[str, str]:
        return {"pong": self.name}

    async def sleep(self, ctxt: Any, seconds: float) -> float:
        await asyncio.sleep(min(float(seconds), 3600))
        return seconds

    def fail(self, ctxt: Any, message: str = "failed on purpose") -> None:
        raise RuntimeError(message)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic")
    parser.add_argument("--server", default=socket.gethostname())
    parser.add_argument("--exchange")
    parser.add_argument("--port", type=int, default=0)
    add_config_args(parser, output=False)


async def _serve(args: argparse.Namespace) -> None:
    from grpcrpc.discovery.etcd import EtcdRegistry
    from grpcrpc.server import RPCServer
    from grpcrpc.target import Target

    cfg = load_config(args)
    registry = EtcdRegistry(cfg.etcd_config(), ttl=cfg.lease_ttl)
    server = RPCServer(Target(topic=args.topic, server=args.server, exchange=args.exchange),
                       [EchoEndpoint(args.server)], registry=registry, port=args.port,
                       **cfg.server_args())
    await server.start()
    print(f"serving {args.topic} as {args.server} at {server.address}", flush=True)
    await until_signalled()
    await server.stop()
    registry.close()


def run(args: argparse.Namespace) -> int:
    try:
        asyncio.run(_serve(args))
    except GrpcrpcError as exc:
        raise CommandError(f"{type(exc).__name__}: {exc}") from None
    return 0
