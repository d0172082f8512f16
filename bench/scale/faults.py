"""Part 5, faults at scale, each under continuous calls and casts from the load clients:
(a) SIGKILL the etcd leader, (b) stop the whole etcd cluster for 2 x TTL and start it again (the
restart storm), (c) a rolling restart of computes. Each reports failed calls, hung calls, lost
casts and duplicates (target 0 of each) and how long until everything is registered again."""

from __future__ import annotations

import time
from typing import Any

from bench.scale.procs import ask_all, cpu_seconds
from bench.scale.region import Region, Sampler, deadline_for, wait_until
from bench.scale.report import Part, ms, sec


def run(region: Region) -> Part:
    o = region.opts
    part = Part("faults", f"5. faults under {o.load_rate:.0f} calls+casts/s ({region.mode}, "
                          f"TTL {o.ttl} s)")
    leader_kill(region, part)
    cluster_restart(region, part)
    rolling_restart(region, part)
    return part


# -- load and its verdict ------------------------------------------------------------------------

def start_load(region: Region) -> None:
    ask_all(region.load, "start", rate=region.opts.load_rate / len(region.load))


def stop_load(region: Region, part: Part, label: str) -> dict[str, Any]:
    """Stop the load; count failed, hung, lost and duplicated messages (computes count what they
    received, by key); a row for the table."""
    stats = ask_all(region.load, "stop", timeout=region.opts.call_timeout + 60)
    calls = [k for s in stats for k in s["ok"]["call"]]
    casts = [k for s in stats for k in s["ok"]["cast"]]
    failed: dict[str, int] = {}
    for s in stats:
        for k, v in s["failed"].items():
            failed[k] = failed.get(k, 0) + v
    hung = sum(s["hung"] for s in stats)
    received: dict[str, dict[str, int]] = {"calls": {}, "casts": {}}

    def all_there() -> bool:
        received["calls"], received["casts"] = {}, {}
        for rec in ask_all(region.hv, "receipts"):
            for kind in ("calls", "casts"):
                for k, v in rec[kind].items():
                    received[kind][k] = received[kind].get(k, 0) + v
        return all(k in received["casts"] for k in casts)

    wait_until(all_there, 15.0, 1.0)  # accepted casts still being dispatched
    lost = sum(k not in received["casts"] for k in casts) + sum(
        k not in received["calls"] for k in calls)
    mine = set(calls) | set(casts)
    dups = sum(1 for kind in received.values() for k, v in kind.items() if v > 1 and k in mine)
    p99 = max((s["p99"] or 0.0) for s in stats)
    verdict = f"{sum(failed.values())} / {hung} / {lost} / {dups}"
    part.row(f"{label}: failed / hung / lost / duplicated", verdict, "0 / 0 / 0 / 0",
             f"{len(calls):,} calls + {len(casts):,} casts ok, p99 {ms(p99)}"
             + (f"; {failed}" if failed else ""))
    part.check(not failed, f"{label}: failed messages {failed}")
    part.check(hung == 0, f"{label}: {hung} hung calls")
    part.check(lost == 0, f"{label}: {lost} accepted messages never received")
    part.check(dups == 0, f"{label}: {dups} messages received twice")
    part.check(len(calls) > 0 and len(casts) > 0, f"{label}: no traffic got through")
    return {"calls": len(calls), "casts": len(casts), "failed": failed, "hung": hung,
            "lost": lost, "duplicated": dups, "p99": p99}


def all_registered(region: Region) -> bool:
    st = region.hv_status()
    return (st["registered"] == st["registries"] == region.opts.registrations
            and region.registered_keys() == region.opts.registrations)


# -- (a) the leader dies ---------------------------------------------------------------------------

def leader_kill(region: Region, part: Part) -> None:
    o = region.opts
    start_load(region)
    time.sleep(2.0)  # traffic before the fault, so the fault lands on a busy region
    before = region.hv_status()
    keys = Sampler(region.registered_keys, 0.25)
    leader = region.cluster.leader()
    t0 = time.monotonic()
    leader.kill()
    region.cluster.leader(timeout=60)  # a new one
    elected = time.monotonic() - t0
    # A whole TTL without the old leader: every lease must be renewed at least once meanwhile.
    time.sleep(max(o.ttl, 5.0))  # the fault's duration
    leader.start()
    curve = keys.stop()
    after = region.hv_status()
    lowest = min((v for _, v in curve if v is not None), default=None)
    lapsed = after.get("down", 0) - before.get("down", 0)
    part.row("(a) SIGKILL the etcd leader: new leader elected", sec(elected), "",
             f"{leader.name} killed, restarted after {max(o.ttl, 5.0):.0f} s")
    part.row("(a) registrations that lapsed", str(lapsed), "0",
             f"fewest keys seen {lowest} of {o.registrations:,}; "
             f"{after.get('failures', 0) - before.get('failures', 0)} registry retries")
    part.check(lapsed == 0, f"(a) {lapsed} registrations lapsed when the leader died")
    part.check(lowest == o.registrations, f"(a) etcd held only {lowest} registrations")
    part.data["leader_kill"] = {"elected_s": elected, "lapsed": lapsed, "fewest_keys": lowest,
                                "load": stop_load(region, part, "(a) leader killed")}


# -- (b) the whole cluster stops: the restart storm ---------------------------------------------------

class PeakCpu:
    """The busiest etcd member's CPU over each `interval` (members' pids change on restart)."""

    def __init__(self, region: Region, interval: float = 0.5) -> None:
        self.region = region
        self.last: dict[int, float] = {}
        self.curve = Sampler(self.read, interval)

    def read(self) -> float:
        busiest = 0.0
        for pid in self.region.member_pids().values():
            try:
                now = cpu_seconds(pid)
            except OSError:
                continue
            if pid in self.last:
                busiest = max(busiest, (now - self.last[pid]) / self.curve.interval)
            self.last[pid] = now
        return busiest


def cluster_restart(region: Region, part: Part) -> None:
    o = region.opts
    start_load(region)
    time.sleep(2.0)  # traffic before the fault
    before = region.hv_status()
    t0 = time.monotonic()

    def read() -> dict[str, Any]:
        st = region.hv_status()
        return {"registered": st["registered"], "keys": region.registered_keys(),
                "failures": st.get("failures", 0) - before.get("failures", 0),
                "grants": st.get("grants", 0) - before.get("grants", 0)}

    curve = Sampler(read, 0.5)
    region.cluster.stop()
    time.sleep(2 * o.ttl)  # the outage: 2 x TTL, so every lease has run out on the clients' side
    started = time.monotonic()
    cpu = PeakCpu(region)
    region.cluster.start()
    back = wait_until(lambda: all_registered(region), deadline_for(o), 0.5)
    recovered = None if back is None else time.monotonic() - started
    time.sleep(2.0)  # traffic after recovery
    points = curve.stop()
    peak = cpu.curve.stop()
    after = region.hv_status()
    lowest = min((p["registered"] for _, p in points), default=None)
    part.row(f"(b) etcd cluster stopped {2 * o.ttl} s, restarted: all "
             f"{o.registrations:,} registered again", sec(recovered), "",
             f"registries that saw their lease lapse: {o.registrations - (lowest or 0):,}")
    part.row("(b) peak etcd CPU during the storm",
             f"{max((v for _, v in peak), default=0.0) * 100:.0f} % of a core", "",
             "busiest member, 0.5 s samples")
    part.row("(b) registry grant / keepalive errors",
             f"{after.get('failures', 0) - before.get('failures', 0):,} failed attempts", "",
             f"{after.get('grants', 0) - before.get('grants', 0):,} new leases granted; "
             "backoff with full jitter, capped at min(5 s, TTL/2)")
    part.check(recovered is not None, "(b) the region never came back fully registered")
    part.data["cluster_restart"] = {
        "stopped_s": 2 * o.ttl, "recovered_s": recovered, "t_start": started - t0,
        "curve": [(t, p) for t, p in points], "peak_cpu": peak,
        "load": stop_load(region, part, "(b) cluster restarted")}


# -- (c) rolling restart of computes ------------------------------------------------------------

def rolling_restart(region: Region, part: Part) -> None:
    o = region.opts
    total = min(o.restarts, o.hypervisors)
    shares = [total // len(region.hv) + (i < total % len(region.hv)) for i in range(len(region.hv))]
    start_load(region)
    time.sleep(2.0)  # traffic before the fault
    t0 = time.monotonic()
    done = _restart_parallel(region, shares)
    took = time.monotonic() - t0
    back = wait_until(lambda: all_registered(region), deadline_for(o), 0.5)
    part.row(f"(c) rolling restart of {total:,} computes", sec(took), "",
             f"{len(region.hv)} processes in parallel, one compute at a time in each: new "
             "instance registered, then the old one drained (grace 5 s)")
    part.row("(c) then all registered again", sec(back), "")
    part.check(back is not None, "(c) not every registration came back after the restarts")
    part.data["rolling_restart"] = {"computes": total, "seconds": took,
                                    "per_process": [d["seconds"] for d in done],
                                    "load": stop_load(region, part, "(c) rolling restart")}


def _restart_parallel(region: Region, shares: list[int]) -> list[dict[str, Any]]:
    import threading

    out: list[dict[str, Any]] = [{"seconds": 0.0}] * len(shares)

    def one(i: int) -> None:
        if shares[i]:
            out[i] = region.hv[i].ask("restart", count=shares[i], timeout=3600)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(shares))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out
