"""`grpcrpc endpoints [--az A] [--topic T] [--watch]`: what is registered, from etcd.

Columns: AZ, topic, server, address, API version, whether the server also consumes RabbitMQ
(the oslo driver's bridge mode), lease TTL left, age. `--watch` then prints each
change (+ added, - removed) as the resolver sees it, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import queue
import time
from typing import Any

from grpcrpc.cli import CommandError
from grpcrpc.cli._common import add_config_args, emit, load_config, resolver
from grpcrpc.discovery.base import RoutingTable

COLUMNS = ["az", "exchange", "topic", "server", "address", "version", "rabbit", "ttl", "age", "problem"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topic", help="only this topic")
    parser.add_argument("--all-azs", action="store_true", help="every AZ, not only --az")
    parser.add_argument("--watch", action="store_true", help="then print changes until Ctrl-C")
    add_config_args(parser)


def _age(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def rows(args: argparse.Namespace, cfg: Any) -> list[dict[str, Any]]:
    from grpcrpc.discovery.etcd import DiscoveryUnavailable, list_registrations

    try:
        regs = list_registrations(cfg.etcd_config(), az=None if args.all_azs else cfg.az,
                                  topic=args.topic)
    except DiscoveryUnavailable as exc:
        raise CommandError(f"cannot read etcd: {exc}") from None
    now = time.time()
    out = []
    for r in regs:
        e = r.endpoint
        row: dict[str, Any] = {"key": r.key, "ttl": f"{r.ttl_left}s" if r.lease_id else "none",
                               "lease": f"{r.lease_id:x}", "problem": r.problem}
        if e is None:
            row.update(server="(invalid)", address=r.key)
        else:
            row.update(az=e.az, exchange=e.exchange, topic=e.topic, server=e.server,
                       address=e.address, version=e.version or "-",
                       rabbit="yes" if e.rabbit else "no",
                       age=_age(now - e.started_at), pid=e.pid, hostname=e.hostname, tls=e.tls)
        out.append(row)
    return out


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    table = rows(args, cfg)
    shown = COLUMNS if any(r["problem"] for r in table) else COLUMNS[:-1]
    emit(args, table, shown)
    if not args.watch:
        return 0
    res = resolver(cfg, topics=[args.topic] if args.topic else None, all_azs=args.all_azs)
    changes: queue.Queue[RoutingTable] = queue.Queue()
    res.subscribe(changes.put)
    known = set(res.table.endpoints)
    print("-- watching for changes (Ctrl-C to stop)", flush=True)
    try:
        while True:
            current = set(changes.get().endpoints)
            for sign, eps in (("+", current - known), ("-", known - current)):
                for e in sorted(eps, key=lambda x: x.key_path):
                    print(f"{time.strftime('%H:%M:%S')} {sign} {e.az}/{e.exchange}/{e.topic}/"
                          f"{e.server} {e.address}", flush=True)
            known = current
    except KeyboardInterrupt:
        return 0
    finally:
        res.close()
