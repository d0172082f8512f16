"""Part 6, the same storm against RabbitMQ: oslo.messaging `rabbit://` RPC servers of topic
`compute` (as many as `--rabbit-servers`), a caller sending calls and casts to them by server
name, and the broker stopped and started again under that load: the time until every server's
queue has its consumer back, and calls failed, hung and lost.

The broker is a private node of Debian's `rabbitmq-server` (its own name, ports and temp dir;
a system broker is never touched), installed with apt-get when missing on a full run.
"""

from __future__ import annotations

import os
import subprocess
import time

from bench.scale.procs import Worker, close_all, start_all
from bench.scale.region import Options, wait_until
from bench.scale.report import Part, sec
from grpcrpc.testing.rabbit import RabbitError, RabbitServer, rabbitmq_installed


def install() -> None:
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "rabbitmq-server"], check=True,
                   env=env, stdout=subprocess.DEVNULL)


def run(o: Options) -> Part:
    n = o.rabbit_servers
    part = Part("rabbit", f"6. the same storm against RabbitMQ: {n:,} oslo rabbit:// servers")
    if not rabbitmq_installed():
        if o.smoke:
            part.row("skipped", "rabbitmq-server is not installed", "", "a full run installs it")
            return part
        install()
    broker = RabbitServer(start_timeout=180.0)
    workers: list[Worker] = []
    try:
        t = time.monotonic()
        broker.start()
        part.row("broker cold start", sec(time.monotonic() - t), "", f"private node {broker.node}")
        workers = [Worker("rabbit-servers", url=broker.url, first=first,
                          count=min(o.rabbit_per_process, n - first))
                   for first in range(0, n, o.rabbit_per_process)]
        start_all(workers)
        load = Worker("rabbit-load", url=broker.url, servers=n, threads=8,
                      timeout=o.call_timeout)
        workers.append(load)
        load.wait_ready()

        def consumers_back() -> bool:
            try:
                queues = broker.queues()
            except RabbitError:  # the node is down or still starting
                return False
            return sum(queues.get(f"compute.hv{i:05d}", (0, 0))[1] > 0 for i in range(n)) == n

        part.check(wait_until(consumers_back, 120, 1.0) is not None,
                   "not every rabbit server consumed its queue before the storm")
        load.ask("start", rate=o.load_rate)
        time.sleep(2.0)  # traffic before the fault
        t0 = time.monotonic()
        broker.stop()
        stopped = time.monotonic() - t0
        time.sleep(2 * o.ttl)  # the same outage as etcd's: 2 x TTL
        started = time.monotonic()
        broker.start()
        up = time.monotonic() - started
        back = wait_until(consumers_back, max(300.0, n * 0.5), 1.0)
        recovered = None if back is None else time.monotonic() - started
        time.sleep(2.0)  # traffic after recovery
        stats = load.ask("stop", timeout=o.call_timeout + 120)
        received = {"calls": set(), "casts": set()}  # type: dict[str, set[str]]
        for w in workers[:-1]:
            rec = w.ask("receipts")
            received["calls"] |= set(rec["calls"])
            received["casts"] |= set(rec["casts"])
        lost = sum(k not in received["casts"] for k in stats["ok"]["cast"])
        failed = sum(stats["failed"].values())
        part.row(f"broker stopped {2 * o.ttl} s, restarted: every consumer back", sec(recovered),
                 "", f"broker up again in {up:.1f} s (stopping took {stopped:.1f} s)")
        part.row("calls+casts failed / hung / casts lost",
                 f"{failed} / {stats['hung']} / {lost}", "(incumbent: measured, not a target)",
                 f"{len(stats['ok']['call'])} calls + {len(stats['ok']['cast'])} casts ok, "
                 f"longest {stats['longest']:.1f} s; {stats['failed'] or ''}")
        part.check(recovered is not None, "the rabbit servers' consumers never all came back")
        part.data.update(servers=n, recovered_s=recovered, broker_up_s=up, failed=stats["failed"],
                         hung=stats["hung"], lost=lost)
    finally:
        close_all(workers)
        broker.close()
    return part
