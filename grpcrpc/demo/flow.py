"""The steps of `make demo` on a healthy cloud: start it, look at etcd, call, cast, fanout.

The demo process plays nova-conductor. It resolves through both AZs' etcds with one
`EtcdResolver`, calls and casts through one transport (own AZ az1, fallback az2), and checks
each step's outcome. The failure steps are in `faults`.
"""

from __future__ import annotations

import collections
import random
import time
from dataclasses import dataclass, field

from grpcrpc.client import RPCClient
from grpcrpc.demo.cluster import Cluster, Plan, Worker
from grpcrpc.demo.collector import Collector, conductor_span
from grpcrpc.demo.console import Console, StepFailed, wait_until
from grpcrpc.discovery.etcd import EtcdResolver
from grpcrpc.exceptions import DeliveryError, GrpcrpcError, RemoteError
from grpcrpc.fanout import FanoutReport
from grpcrpc.target import Target
from grpcrpc.transport.base import TransportOptions
from grpcrpc.transport.sync import SyncTransport

__all__ = ["Calls", "Demo", "plan_for"]

# The API versions the conductor asks for (the servers implement 4.5 and 6.0: compatible).
_CLIENT_VERSIONS = {"scheduler": "4.0", "compute": "6.0"}


@dataclass
class Calls:
    """What a run of calls got: successes, failures, and who answered."""

    ok: int = 0
    failed: int = 0
    raced: int = 0  # DeliveryErrors on a connection dying under the call (see `Demo.calls`)
    hosts: collections.Counter[str] = field(default_factory=collections.Counter)


class Demo:
    """The conductor's side of the demo; each `step_*` prints one numbered step (or two).

    It holds what the steps share: the resolver over both AZs' etcds, one transport (own AZ
    az1, fallback az2) under every client, and the traces to draw at the end.
    """

    def __init__(self, console: Console, cluster: Cluster, collector: Collector, quick: bool) -> None:
        self.out = console
        self.cluster = cluster
        self.collector = collector
        self.plan = cluster.plan
        self.quick = quick
        self.ctxt = {"request_id": f"req-{random.getrandbits(32):08x}", "user_id": "demo",
                     "project_id": "demo"}
        self.resolver: EtcdResolver | None = None
        self.transport: SyncTransport | None = None
        self.traces: list[tuple[bytes, str, int]] = []  # (trace id, title, spans expected)

    # -- clients ------------------------------------------------------------------------

    def client(self, topic: str) -> RPCClient:
        assert self.transport is not None
        return RPCClient(self.transport, Target(topic=topic, version=_CLIENT_VERSIONS[topic]),
                         timeout=10)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.resolver is not None:
            self.resolver.close()

    def live(self, az: str, role: str) -> list[Worker]:
        return [w for w in self.cluster.workers if w.az == az and w.role == role and w.alive]

    # -- steps --------------------------------------------------------------------------

    def step_start(self) -> None:
        plan = self.plan
        self.out.step(f"starting a cloud in {len(plan.azs)} AZs, each with its own etcd, a "
                      f"scheduler, computes and a broadcaster (lease TTL {plan.ttl} s)")
        for az in plan.azs:
            t0 = time.monotonic()
            etcd = self.cluster.start_etcd(az)
            self.out.line(f"etcd of {az} at {etcd.endpoint} (pid {etcd.pid}), healthy in "
                          f"{time.monotonic() - t0:.1f} s")
        for role in ("scheduler", "compute", "broadcaster"):
            for az, name in plan.names(role):
                self.cluster.spawn(role, name, az)
        total = len(self.cluster.workers)
        self.out.line(f"{total} server processes started; each registers in its AZ's etcd:")
        self.resolver = EtcdResolver({az: self.cluster.etcd_config(az) for az in plan.azs},
                                     start_timeout=10.0, max_backoff=1.0)
        self.resolver.start()
        done = 0

        def progress(w: Worker, address: str, seconds: float) -> None:
            nonlocal done
            done += 1
            self.out.line(f"  [{done}/{total}] {w.role:<11} {w.name:<14} {w.az}  {address}  "
                          f"pid {w.proc.pid:<7} after {seconds:.1f} s")

        missing = self.cluster.wait_registered(self.resolver, 45.0, progress)
        if missing:
            w = missing[0]
            state = "exited" if not w.alive else "never registered"
            raise StepFailed(f"{w.name} {state}; its log ends with:\n{w.log_tail()}")
        self.transport = SyncTransport(self.resolver, TransportOptions(az="az1", fallback_azs=("az2",)))

    def step_endpoints(self, azs: tuple[str, ...] | None = None, title: str = "") -> None:
        self.out.step(title or "what etcd holds: `grpcrpc endpoints --all-azs` against each AZ's etcd")
        for az in azs or self.plan.azs:
            rc, text = self.out.cli(["endpoints", "--all-azs", "--etcd", self.cluster.etcds[az].endpoint])
            expected = [w.name for w in self.cluster.workers if w.az == az and w.alive]
            self.out.check(rc == 0 and all(name in text for name in expected),
                           f"the endpoints of {az} should list {', '.join(expected)}")

    def step_build(self) -> None:
        scheduler, compute = self.client("scheduler"), self.client("compute")
        with conductor_span("conductor build_instances vm-1") as trace_id:
            self.out.step("conductor -> scheduler (az1): call select_destinations")
            t0 = time.perf_counter()
            [dest] = self.select_destinations(scheduler)
            host = dest["host"]
            self.out.line(f"{dest['scheduler']} chose {host} "
                          f"({(time.perf_counter() - t0) * 1000:.1f} ms round trip)")
            self.out.check(dest["az"] == "az1", f"the az1 scheduler should answer, not {dest['az']}")
            self.out.step(f"conductor -> {host}: cast build_and_run_instance, directed with "
                          f"prepare(server={host!r})")
            compute.prepare(server=host).cast(self.ctxt, "build_and_run_instance", instance="vm-1",
                                              flavor="m1.small")
            self.out.line("accepted: a cast returns once the compute has queued it")
        t0 = time.perf_counter()
        built: list[str] = []

        def ran() -> bool:
            built[:] = compute.prepare(server=host).call(self.ctxt, "get_instances")
            return "vm-1" in built

        ok = wait_until(ran, 10.0)
        self.out.line(f"{host}.get_instances() -> {built} "
                      f"({(time.perf_counter() - t0) * 1000:.1f} ms after the cast)")
        self.out.check(ok, f"{host} should have built vm-1")
        self.traces.append((trace_id, "build vm-1 in az1 (steps 3 and 4)", 5))

    def select_destinations(self, scheduler: RPCClient, az: str = "az1"
                            ) -> list[dict[str, str]]:
        """The choice of `az`'s scheduler (`scheduler` sends there). It picks from its own etcd
        watch of the computes, which may not list a compute that registered a moment ago yet (a
        process that is still starting on a busy machine): then say so and ask again, for a few
        seconds."""
        dests: list[dict[str, str]] = []

        def chosen() -> bool:
            try:
                dests[:] = scheduler.call(self.ctxt, "select_destinations",
                                          spec={"flavor": "m1.small", "vcpus": 1})
                return True
            except RemoteError as err:
                if err.exc_type != "NoValidHost" or not self.live(az, "compute"):
                    raise
            self.out.line(f"the scheduler's table had no compute of {az} yet (its etcd watch "
                          f"had not caught up): asking again")
            return False

        if not wait_until(chosen, 5.0, 0.1):
            schedulers = self.live(az, "scheduler")
            tail = schedulers[0].log_tail() if schedulers else "(no scheduler running)"
            raise StepFailed(f"the {az} scheduler still lists no compute 5 s after they "
                             f"registered; its log ends with:\n{tail}")
        return dests

    def fanout(self, title: str) -> tuple[bytes, FanoutReport]:
        """A fanout to every compute of az1, under a conductor span; (trace id, report)."""
        compute = self.client("compute").prepare(fanout=True)
        with conductor_span(f"conductor {title}") as trace_id:
            report = compute.cast(self.ctxt, "update_available_resource")
        assert report is not None
        return trace_id, report

    def step_fanout(self) -> None:
        self.out.step("conductor -> broadcaster (az1) -> every compute of az1: fanout "
                      "update_available_resource")
        n = len(self.live("az1", "compute"))
        trace_id, report = self.fanout("refresh_resources az1")
        # The broadcaster is another process with its own etcd watch: a compute registered a
        # moment ago may not be in its table yet (watch delay: milliseconds, p99 up to ~100 ms).
        # A fanout goes to what the broadcaster knows, so wait for it to catch up and say so.
        deadline = time.monotonic() + 5.0
        while report.targets < n and time.monotonic() < deadline:
            self.out.line(f"the broadcaster knew {report.targets} of {n} computes (its watch "
                          f"had not caught up yet): fanning out again")
            time.sleep(0.05)
            trace_id, report = self.fanout("refresh_resources az1")
        self.out.report(report)
        self.out.check(report.ok and report.targets == n, f"all {n} computes of az1 should accept")
        self.traces.append((trace_id, "fanout through az1's broadcaster (step 5)", 3 + report.delivered))

    def step_cross_az(self) -> None:
        self.out.step("cross-AZ, explicitly: conductor (az1) -> scheduler of az2 with "
                      "prepare(az='az2'), then a cast to the compute it chose")
        scheduler, compute = self.client("scheduler"), self.client("compute")
        with conductor_span("conductor build_instances vm-2 (az2)") as trace_id:
            [dest] = self.select_destinations(scheduler.prepare(az="az2"), "az2")
            compute.prepare(az="az2", server=dest["host"]).cast(
                self.ctxt, "build_and_run_instance", instance="vm-2", flavor="m1.small")
        self.out.line(f"{dest['scheduler']} chose {dest['host']}; build_and_run_instance(vm-2) "
                      f"accepted by it")
        self.out.check(dest["az"] == "az2", f"the az2 scheduler should answer, not {dest['az']}")
        self.traces.append((trace_id, "build vm-2 in az2, explicitly (step 6)", 5))

    def calls(self, n: int, dead: str = "") -> Calls:
        """`n` calls to the compute topic, one after another.

        With `dead` (the address of a server just killed), a `DeliveryError` before this client
        has seen the crash counts as `raced`: the call went out on the connection as it died,
        so nobody can say whether it arrived, and it is rightly never resent. Once the client
        has seen the crash (that error, or the address ejected), nothing may fail.
        """
        compute = self.client("compute")
        assert self.transport is not None
        ejections = self.transport.balancer.ejections
        stats = Calls()
        seen = not dead
        for _ in range(n):
            try:
                stats.hosts[compute.call(self.ctxt, "get_host_uptime")["host"]] += 1
                stats.ok += 1
            except DeliveryError as exc:
                if seen:
                    stats.failed += 1
                else:
                    stats.raced += 1
                self.out.line(f"  call failed: {type(exc).__name__}: {exc}")
                seen = True
            except GrpcrpcError as exc:
                stats.failed += 1
                self.out.line(f"  call failed: {type(exc).__name__}: {exc}")
            seen = seen or ejections.is_ejected(dead)
        return stats

    def flush_traces(self, timeout: float) -> bool:
        """Wait until every span of the traces to show has reached the collector."""
        return self.collector.wait_for({t: n for t, _, n in self.traces}, timeout)

    def step_traces(self) -> None:
        self.out.step("the traces: one tree per conductor operation, spans from every process")
        complete = self.flush_traces(10.0)
        for trace_id, title, _ in self.traces:
            self.out.block(self.collector.tree(trace_id, title))
        self.out.check(complete, "every span of the shown traces should have reached the collector")

    def address(self, worker: Worker) -> str:
        assert self.resolver is not None
        for e in self.resolver.table.endpoints:
            if e.server == worker.name and e.az == worker.az:
                return e.address
        raise StepFailed(f"{worker.name} is not in the routing table")


def plan_for(quick: bool, ttl: int) -> Plan:
    """Two AZs; the quick (CI) plan runs one compute fewer in az2. az1 keeps two computes: one
    is killed, and calls must have somewhere to go."""
    return Plan(computes={"az1": 2, "az2": 1 if quick else 2}, ttl=ttl)
