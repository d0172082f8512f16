"""`grpcrpc broadcaster [--name NAME]`: run a fanout broadcaster for this AZ, in etcd."""

from __future__ import annotations

import argparse
import asyncio
import socket

from grpcrpc.cli import CommandError
from grpcrpc.cli._common import add_config_args, load_config, resolver, until_signalled
from grpcrpc.exceptions import GrpcrpcError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default=f"{socket.gethostname()}-bcast")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--parallelism", type=int, default=256)
    parser.add_argument("--split-threshold", type=int, default=500)
    add_config_args(parser, output=False)


async def _run(args: argparse.Namespace) -> None:
    from grpcrpc.broadcaster import Broadcaster, BroadcasterOptions
    from grpcrpc.discovery.etcd import EtcdRegistry

    cfg = load_config(args)
    res = resolver(cfg, topics=None)
    registry = EtcdRegistry(cfg.etcd_config(), ttl=cfg.lease_ttl)
    server_args = cfg.server_args()
    b = Broadcaster(res, registry=registry, name=args.name, az=cfg.az, port=args.port,
                    host=server_args["host"], port_range=server_args["port_range"],
                    advertise_host=server_args["advertise_host"], tls=server_args["tls"],
                    transport_options=cfg.transport_options(),
                    options=BroadcasterOptions(parallelism=args.parallelism,
                                               split_threshold=args.split_threshold))
    await b.start()
    print(f"broadcaster {args.name} for az {cfg.az} at {b.address}", flush=True)
    await until_signalled()
    await b.stop()
    registry.close()
    res.close()


def run(args: argparse.Namespace) -> int:
    if args.parallelism < 1 or args.split_threshold < 1:
        raise CommandError("--parallelism and --split-threshold must be positive")
    try:
        asyncio.run(_run(args))
    except GrpcrpcError as exc:
        raise CommandError(f"{type(exc).__name__}: {exc}") from None
    return 0
