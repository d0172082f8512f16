"""`grpcrpc doctor`: check discovery and every endpoint, and say what is wrong in words.

Checks: each etcd endpoint answers (and how fast); this host's clock against etcd's (the Date of
its /health answer); every registered key is valid, under a live lease, and matches its value;
every endpoint answers gRPC health as SERVING. Exit status 1 when anything is wrong.
With `--rabbit-url`, also which step of a move off RabbitMQ is complete (`grpcrpc.cli._migration`).
"""

from __future__ import annotations

import argparse
import email.utils
import ssl
import time
import urllib.request
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpcrpc.cli import _migration
from grpcrpc.cli._common import add_config_args, load_config

SKEW_LIMIT = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=3.0, help="per check, in seconds")
    parser.add_argument("--all-azs", action="store_true", help="every AZ, not only --az")
    add_config_args(parser, output=False)
    _migration.add_arguments(parser)


class Report:
    def __init__(self) -> None:
        self.problems = 0

    def ok(self, text: str) -> None:
        print(f"ok       {text}")

    def bad(self, text: str) -> None:
        self.problems += 1
        print(f"PROBLEM  {text}")


def _etcd_checks(cfg: Any, report: Report, timeout: float) -> None:
    etcd = cfg.etcd_config()
    scheme = "https" if etcd.tls else "http"
    ctx = ssl.create_default_context(cafile=etcd.ca_file) if etcd.tls else None
    if ctx is not None and etcd.cert_file:
        ctx.load_cert_chain(etcd.cert_file, etcd.key_file)
    for ep in etcd.endpoints:
        start = time.monotonic()
        try:
            with urllib.request.urlopen(f"{scheme}://{ep}/health", timeout=timeout,
                                        context=ctx) as resp:
                body = resp.read(200).decode(errors="replace")
                date = resp.headers.get("Date")
        except OSError as exc:
            report.bad(f"etcd {ep} does not answer: {getattr(exc, 'reason', exc)}")
            continue
        ms = (time.monotonic() - start) * 1000
        if '"health":"true"' not in body.replace(" ", ""):
            report.bad(f"etcd {ep} answers but says it is not healthy: {body.strip()}")
        else:
            report.ok(f"etcd {ep} is healthy ({ms:.0f} ms)")
        if date:
            theirs = email.utils.parsedate_to_datetime(date).timestamp()
            skew = time.time() - theirs
            if abs(skew) > SKEW_LIMIT:
                report.bad(f"this host's clock is {skew:+.0f}s off etcd {ep}'s: endpoint ages "
                           f"and lease figures will look wrong; fix NTP")
            else:
                report.ok(f"clock within {SKEW_LIMIT:.0f}s of etcd {ep}")


def _health(address: str, timeout: float) -> str:
    with grpc.insecure_channel(address) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def run(args: argparse.Namespace) -> int:
    from grpcrpc.discovery.etcd import DiscoveryUnavailable, list_registrations

    cfg = load_config(args)
    report = Report()
    _etcd_checks(cfg, report, args.timeout)
    try:
        regs = list_registrations(cfg.etcd_config(), az=None if args.all_azs else cfg.az)
    except DiscoveryUnavailable as exc:
        report.bad(f"cannot list the registry: {exc}")
        regs = []
    else:
        report.ok(f"{len(regs)} key(s) registered under {cfg.etcd_config().endpoints_prefix}")
    for r in regs:
        e = r.endpoint
        if e is None:
            report.bad(f"{r.key}: not a valid endpoint ({r.problem}); clients skip it — delete "
                       f"it with `etcdctl del {r.key}`")
            continue
        name = f"{e.topic}/{e.server} at {e.address}"
        if r.problem:
            report.bad(f"{name}: {r.problem}")
        if not r.lease_id:
            report.bad(f"{name}: its key is under no lease, so it will never expire if the "
                       f"server dies (written by hand, or by a broken registry)")
        elif r.ttl_left <= 0:
            report.bad(f"{name}: its lease has expired; the key is about to go")
        if e.tls:
            report.ok(f"{name}: TLS endpoint (health not checked without client TLS)")
            continue
        status = _health(e.address, args.timeout)
        if status == "SERVING":
            report.ok(f"{name}: SERVING, lease {r.ttl_left}s left")
        else:
            report.bad(f"{name}: health is {status}: registered but not serving (stale, "
                       f"stopping, or its registration is lapsing)")
    if getattr(args, "rabbit_url", None):
        _migration.check(args, regs, report)
    print(f"\n{report.problems} problem(s) found" if report.problems else "\nall good")
    return 1 if report.problems else 0
