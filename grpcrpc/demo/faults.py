"""The failure steps of the demo: a compute crashes, then az1's etcd goes away and comes back.

What an operator should see in each: no call started after a crash fails (a refused connection
is resent elsewhere, the dead address is ejected); a fanout lists the dead server as failed
until its lease expires; with etcd down, calls and fanouts go on from the tables cached in
memory, servers' registrations lapse (health "" turns NOT_SERVING while the service name stays
SERVING), and everything registers again once etcd is back.
"""

from __future__ import annotations

import collections
import time

from grpcrpc.demo.cluster import health
from grpcrpc.demo.console import wait_until
from grpcrpc.demo.flow import Demo
from grpcrpc.discovery.base import RoutingTable
from grpcrpc.exceptions import GrpcrpcError
from grpcrpc.fanout import FanoutReport
from grpcrpc.server import SERVICE_NAME

__all__ = ["crash_a_compute", "etcd_outage"]


def _servers(table: RoutingTable, az: str, topic: str) -> set[str]:
    return {e.server for e in table.endpoints if e.az == az and e.topic == topic}


def _counts(hosts: collections.Counter[str]) -> str:
    return ", ".join(f"{h} x{n}" for h, n in sorted(hosts.items())) or "nobody"


def crash_a_compute(demo: Demo) -> None:
    """SIGKILL a compute of az1: calls route around it at once, fanouts report it failed
    until its lease expires, then it is gone."""
    victim = demo.cluster.worker("compute-az1-1")
    address = demo.address(victim)
    n = 10 if demo.quick else 20
    demo.out.step(f"SIGKILL {victim.name} (pid {victim.proc.pid}): calls to the compute topic "
                  f"route around it")
    before = demo.calls(n // 2)
    demo.out.line(f"before: {n // 2} calls answered by " + _counts(before.hosts))
    # Its spans of the steps before are batched for 100 ms: let them reach the collector
    # before the crash, which would lose them (as it would in production).
    demo.flush_traces(5.0)
    demo.cluster.kill(victim)
    killed_at = time.monotonic()
    trace_id, report = demo.fanout("refresh_resources az1 after the crash")
    demo.out.line("killed. A fanout at once: its key is still in etcd, so it is a target, and fails:")
    demo.out.report(report)
    demo.out.check(any(f.server == victim.name for f in report.failures),
                   f"the fanout report should list {victim.name} as failed")
    demo.traces.append((trace_id, f"fanout with {victim.name} dead (step 7)", 3 + report.delivered))
    after = demo.calls(n, dead=address)
    demo.out.line(f"{n} calls to the compute topic: {after.ok} ok, {after.failed + after.raced} "
                  f"failed; answered by " + _counts(after.hosts))
    if after.raced:
        demo.out.line("  (the first call went out on the connection as it died: DeliveryError, "
                      "never resent, as it may have arrived)")
    demo.out.line(f"{after.failed} failed once the client had seen the crash: a call that picks "
                  f"{address} is")
    demo.out.line("  refused before anything is sent, so it goes to another compute at once, and "
                  "the address is ejected")
    demo.out.check(after.failed == 0 and after.raced <= 1 and victim.name not in after.hosts,
                   "no call may fail or reach the dead compute once the client has seen the crash")
    demo.out.line(f"waiting for its lease to expire (TTL {demo.plan.ttl} s) ...")
    assert demo.resolver is not None
    gone = demo.resolver.wait_for(lambda t: victim.name not in _servers(t, "az1", "compute"),
                                  demo.plan.ttl + 10.0)
    demo.out.line(f"gone from etcd {time.monotonic() - killed_at:.1f} s after the kill")
    demo.out.check(gone, f"{victim.name}'s lease should expire")
    reports: list[FanoutReport] = []

    def expired_everywhere() -> bool:
        # The broadcaster learns of the expiry from its own watch, a moment after us.
        reports.append(demo.fanout("refresh_resources az1 after the expiry")[1])
        return reports[-1].targets == 1

    wait_until(expired_everywhere, 5.0, 0.1)
    demo.out.line("a fanout now:")
    demo.out.report(reports[-1])
    demo.out.check(reports[-1].ok and reports[-1].targets == 1,
                   "the fanout should reach the one live compute of az1, with no failures")


def etcd_outage(demo: Demo) -> None:
    """Stop az1's etcd: calls and fanouts go on from cached tables, registrations lapse (health
    "" turns NOT_SERVING) and come back when etcd does."""
    etcd = demo.cluster.etcds["az1"]
    demo.out.step("stop az1's etcd: calls go on from the routing tables cached in memory")
    etcd.stop()
    stopped = time.monotonic()
    demo.out.line("etcd of az1 stopped; calling az1's scheduler and computes until their "
                  "leases can no longer be renewed ...")
    scheduler = demo.client("scheduler")
    probe = demo.live("az1", "compute")[0]
    probe_address = demo.address(probe)
    ok = failed = 0
    minimum = 50 if demo.quick else 200

    def lapsed() -> bool:
        nonlocal ok, failed
        for _ in range(25):
            try:
                scheduler.call(demo.ctxt, "select_destinations", spec={"vcpus": 1})
                ok += 1
            except GrpcrpcError as exc:
                failed += 1
                demo.out.line(f"  call failed: {type(exc).__name__}: {exc}")
        computes = demo.calls(25)
        ok, failed = ok + computes.ok, failed + computes.failed
        return ok + failed >= minimum and health(probe_address) == "NOT_SERVING"

    lapsed_ok = wait_until(lapsed, demo.plan.ttl + 10.0, 0.0)
    took = time.monotonic() - stopped
    demo.out.line(f"{ok + failed} calls in {took:.1f} s with etcd of az1 down: {ok} ok, {failed} failed")
    demo.out.check(failed == 0, "no call should fail while etcd is down")
    _, report = demo.fanout("refresh during the outage")
    demo.out.line("a fanout through az1's broadcaster (its table is cached too):")
    demo.out.report(report)
    demo.out.check(report.ok, "the fanout should reach every live compute")
    demo.out.line(f"gRPC health of {probe.name}:")
    whole, service = '"" (the whole server)', f'"{SERVICE_NAME}"'
    width = max(len(whole), len(service))
    demo.out.line(f"  {whole:<{width}}  {health(probe_address):<11}  its registration has lapsed")
    demo.out.line(f"  {service:<{width}}  {health(probe_address, SERVICE_NAME):<11}  it still takes "
                  f"work: probe this for liveness")
    demo.out.check(lapsed_ok, "the registration should lapse while etcd is down")

    demo.out.step("start az1's etcd again: every az1 server renews its registration")
    t0 = time.monotonic()
    etcd.start()
    demo.out.line(f"etcd of az1 back at {etcd.endpoint} in {time.monotonic() - t0:.1f} s; "
                  f"waiting for the servers ...")
    servers = [w for w in demo.cluster.workers if w.az == "az1" and w.alive]
    back = wait_until(lambda: all(health(demo.address(w)) == "SERVING" for w in servers),
                      demo.plan.ttl + 15.0, 0.1)
    demo.out.line(f"all {len(servers)} of az1's servers registered and SERVING again "
                  f"{time.monotonic() - t0:.1f} s after etcd came back")
    demo.out.check(back, "every az1 server should register again")
    demo.step_endpoints(("az1",), "what az1's etcd holds now")
