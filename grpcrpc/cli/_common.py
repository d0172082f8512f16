"""What the subcommands share: configuration options, output formats, discovery set-up."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Sequence
from typing import Any

from grpcrpc.cli import CommandError
from grpcrpc.config import Config, ConfigError


def add_config_args(parser: argparse.ArgumentParser, *, output: bool = True) -> None:
    g = parser.add_argument_group("configuration (see docs/configuration.md)")
    g.add_argument("--config", metavar="FILE", help="TOML configuration file")
    g.add_argument("--etcd", metavar="HOST:PORT[,...]", help="etcd endpoints of this AZ")
    g.add_argument("--prefix", metavar="PREFIX", help="etcd key prefix (default /grpcrpc)")
    g.add_argument("--az", help="availability zone")
    if output:
        parser.add_argument("--output", choices=("table", "json"), default="table")


def load_config(args: argparse.Namespace, **more: Any) -> Config:
    overrides = {"etcd_endpoints": args.etcd, "etcd_prefix": getattr(args, "prefix", None),
                 "az": args.az, **more}
    try:
        return Config.load(args.config, overrides=overrides)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None


def resolver(cfg: Config, topics: Sequence[str] | None = None, all_azs: bool = False) -> Any:
    """An etcd resolver for `cfg` (started), or CommandError when etcd cannot be reached."""
    from grpcrpc.discovery.etcd import DiscoveryUnavailable, EtcdResolver

    azs = None if all_azs else [cfg.az, *cfg.fallback_azs]
    try:
        r = EtcdResolver(cfg.etcd_config(), az=azs, topics=topics, start_timeout=5.0)
        r.start()
    except DiscoveryUnavailable as exc:
        raise CommandError(f"cannot reach etcd: {exc}") from None
    return r


def parse_json_args(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"--args is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CommandError("--args must be a JSON object of keyword arguments")
    return value


def emit(args: argparse.Namespace, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """Print rows as an aligned table or as JSON (one document)."""
    if getattr(args, "output", "table") == "json":
        print(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        print("(none)")
        return
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


async def until_signalled() -> None:
    """Wait for SIGINT or SIGTERM, the ways a service is asked to stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
