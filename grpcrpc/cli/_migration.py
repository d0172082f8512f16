"""`grpcrpc doctor --rabbit-url URL`: how far a move off RabbitMQ has come (docs/oslo.md).

Reads the endpoints registered in etcd and asks RabbitMQ about the queues oslo's rabbit driver
uses for them (a passive `queue.declare`, which needs no management plugin): the topic queue
(`compute`) and each server's queue (`compute.host1`). What the answers mean:

- a topic queue with more consumers than the topic has bridged servers registered: the rest
  are rabbit-only servers → step 1 (bridge every process) is not complete;
- a bridged registration, or any consumer left on those queues → step 2 (drop
  `rabbit_transport_url`) is not complete;
- messages in a queue nobody consumes are stranded (a PROBLEM at any time).

With `--rabbitmqctl` it also lists every queue of the vhost with `rabbitmqctl list_queues`
(run on a broker node): reply queues still consumed are processes that still *send* over
RabbitMQ — pure senders such as nova-api register nothing in etcd, so only this shows them.
"""

from __future__ import annotations

import argparse
import subprocess
from collections import defaultdict
from typing import Any, Protocol

__all__ = ["Migration", "add_arguments", "check"]


class _Report(Protocol):
    def ok(self, text: str) -> None: ...

    def bad(self, text: str) -> None: ...


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("migration off RabbitMQ (oslo bridge mode)")
    g.add_argument("--rabbit-url", metavar="URL",
                   help="the rabbit:// transport URL of the services being moved: report which "
                        "migration step is complete")
    g.add_argument("--rabbitmqctl", action="store_true",
                   help="also list every queue of the vhost with rabbitmqctl (on a broker node)")


class Migration:
    """What the checks found; `step1_done`, `step2_done`, `vhost_idle` for tools and tests."""

    def __init__(self) -> None:
        self.rabbit_only = 0
        self.bridged = 0
        self.grpc_only = 0
        self.consumed_queues: list[str] = []
        self.stranded: dict[str, int] = {}
        self.unreachable = ""

    @property
    def step1_done(self) -> bool:
        # Nothing registered at all: nothing is bridged yet (the topics are not even known).
        registered = self.bridged + self.grpc_only
        return not self.unreachable and registered > 0 and self.rabbit_only == 0

    @property
    def step2_done(self) -> bool:
        return self.step1_done and self.bridged == 0 and not self.consumed_queues

    @property
    def vhost_idle(self) -> bool:
        return self.step2_done and not self.stranded


def check(args: argparse.Namespace, registrations: list[Any], report: _Report) -> Migration:
    """Print the migration section of `doctor`; what it found."""
    result = Migration()
    try:
        from grpcrpc.oslo._rabbit import QueueProbe
    except ImportError as exc:
        report.bad(f"--rabbit-url needs the oslo extra (pip install 'grpcrpc[oslo]'): {exc}")
        result.unreachable = str(exc)
        return result
    bridged: dict[str, set[str]] = defaultdict(set)
    servers: dict[str, set[str]] = defaultdict(set)
    for r in registrations:
        e = r.endpoint
        if e is None or e.topic == "grpcrpc.broadcaster":
            continue
        servers[e.topic].add(e.server)
        if e.rabbit:
            bridged[e.topic].add(e.server)
    result.bridged = sum(len(s) for s in bridged.values())
    result.grpc_only = sum(len(s - bridged[t]) for t, s in servers.items())
    probe = QueueProbe(args.rabbit_url)
    try:
        for topic in sorted(servers):
            _topic_checks(probe, topic, servers[topic], bridged[topic], result, report)
    except Exception as exc:  # kombu/amqp connection errors: the broker is not reachable
        report.bad(f"RabbitMQ at --rabbit-url does not answer: {type(exc).__name__}: {exc}")
        result.unreachable = str(exc)
        return result
    finally:
        probe.close()
    if args.rabbitmqctl:
        _rabbitmqctl_checks(args.rabbit_url, result, report)
    _verdict(result, report)
    return result


def _topic_checks(probe: Any, topic: str, servers: set[str], bridged: set[str],
                  result: Migration, report: _Report) -> None:
    stats = probe.stats(topic)
    consumers = stats[1] if stats else 0
    rabbit_only = max(0, consumers - len(bridged))
    result.rabbit_only += rabbit_only
    if consumers:
        result.consumed_queues.append(topic)
    if rabbit_only:
        report.ok(f"migration: topic {topic}: {rabbit_only} rabbit-only server(s) consume queue "
                  f"'{topic}' ({len(bridged)} bridged, {len(servers) - len(bridged)} gRPC-only "
                  f"registered)")
    else:
        report.ok(f"migration: topic {topic}: {len(bridged)} bridged, "
                  f"{len(servers) - len(bridged)} gRPC-only server(s); no rabbit-only one")
    queues = [topic, *(f"{topic}.{server}" for server in sorted(servers))]
    for name in queues:
        qstats = stats if name == topic else probe.stats(name)
        if qstats is None:
            continue
        messages, queue_consumers = qstats
        if queue_consumers and name != topic:
            result.consumed_queues.append(name)
        if messages and not queue_consumers:
            result.stranded[name] = messages
            report.bad(f"migration: queue '{name}' holds {messages} message(s) and nobody "
                       f"consumes it: they were sent over RabbitMQ and will never be read "
                       f"unless a bridged (or rabbit-only) {topic} server starts")


def _rabbitmqctl_checks(url: str, result: Migration, report: _Report) -> None:
    from oslo_config import cfg
    from oslo_messaging import TransportURL

    vhost = TransportURL.parse(cfg.ConfigOpts(), url).virtual_host or "/"
    try:
        done = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost,
                               "--no-table-headers", "name", "messages", "consumers"],
                              capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        report.bad(f"rabbitmqctl list_queues failed: {exc}")
        return
    if done.returncode != 0:
        report.bad(f"rabbitmqctl list_queues failed: {done.stderr.strip()[:300]}")
        return
    senders = 0
    for line in done.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            continue
        name, messages, consumers = parts[0], int(parts[1]), int(parts[2])
        if name.startswith("reply_") and consumers:
            senders += 1
        if consumers and name not in result.consumed_queues:
            result.consumed_queues.append(name)
        if messages and not consumers and "_fanout_" not in name and name not in result.stranded:
            result.stranded[name] = messages
            report.bad(f"migration: queue '{name}' holds {messages} message(s) nobody consumes")
    report.ok(f"migration: {senders} process(es) still wait for replies over RabbitMQ "
              f"(consumed reply queues)")


def _verdict(result: Migration, report: _Report) -> None:
    if not result.bridged + result.grpc_only:
        report.ok("migration: step 1 (every process bridged) NOT complete: no server is "
                  "registered in etcd yet")
    else:
        report.ok(f"migration: step 1 (every process bridged) "
                  f"{'complete' if result.step1_done else 'NOT complete'}: "
                  f"{result.rabbit_only} rabbit-only server(s) left")
    report.ok(f"migration: step 2 (rabbit_transport_url removed everywhere) "
              f"{'complete' if result.step2_done else 'NOT complete'}: "
              f"{result.bridged} bridged server(s), "
              f"{len(result.consumed_queues)} RabbitMQ queue(s) still consumed")
    report.ok(f"migration: step 3 (retire the vhost) "
              f"{'safe' if result.vhost_idle else 'not yet'}: "
              f"{sum(result.stranded.values())} message(s) left in unconsumed queues")
