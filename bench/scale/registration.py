"""Part 1, registration: a cold start of every hypervisor until all 3 x N leases hold their keys,
then the steady keepalive load, what each etcd member (and the proxy) spends on it, and the
cluster's keepalive capacity measured on top of that load (headroom = capacity / load).

Measured directly against the members and, with `--proxy`, again through `etcd grpc-proxy`; the
hypervisors of the last mode stay up for the other parts.
"""

from __future__ import annotations

import time

from bench.scale.procs import CpuWatch, Worker, ask_all, close_all, start_all, status
from bench.scale.region import Region, Sampler, deadline_for, wait_until
from bench.scale.report import Part, mib, sec


def run(region: Region) -> Part:
    o = region.opts
    part = Part("registration", f"1. registration: {o.hypervisors:,} hypervisors x 3 = "
                                f"{o.registrations:,} leases, TTL {o.ttl} s")
    modes = ["direct", "proxy"] if o.proxy else ["direct"]
    modes.sort(key=lambda m: m == region.mode)  # the region's own mode last: its processes stay
    for mode in modes:
        workers = cold_start(region, part, mode)
        if mode == modes[-1]:
            region.adopt(workers)
        else:
            close_all(workers)
            gone = wait_until(lambda: region.registered_keys() == 0, deadline_for(o))
            part.check(gone is not None, f"{mode}: leases not revoked when the hypervisors left")
    return part


def cold_start(region: Region, part: Part, mode: str) -> list[Worker]:
    o = region.opts
    expected = o.registrations
    sampler = Sampler(region.registered_keys, 0.5)
    cpu = CpuWatch(region.member_pids())
    t0 = time.monotonic()
    workers = region.spawn_hypervisors(mode)
    start_all(workers)
    took = wait_until(lambda: region.registered_keys() == expected, deadline_for(o))
    cold = None if took is None else time.monotonic() - t0
    curve = sampler.stop()
    cold_cpu = cpu.rates()
    part.data.setdefault("cold_start_curve", {})[mode] = curve
    part.row(f"[{mode}] cold start → all {expected:,} registered", sec(cold), "",
             f"{len(workers)} processes; busiest etcd member averaged "
             f"{max(cold_cpu.values()) * 100:.0f} % of a core over the cold start")
    seen = [v for _, v in curve if v is not None]
    if not part.check(cold is not None, f"{mode}: {seen[-1] if seen else 'no count'} of "
                                        f"{expected} registrations in etcd at the deadline "
                                        f"(most seen {max(seen, default=0)})"):
        return workers
    st = region.hv_status(workers)
    part.check(st["registered"] == st["registries"] == expected,
               f"{mode}: registries say {st['registered']}/{st['registries']} registered")
    # Steady state: every registry has renewed at least once since its grant.
    time.sleep(o.ttl / 3 + 1)  # a measurement window, not a wait for a condition
    retries0 = region.hv_status(workers).get("failures", 0)
    before = region.etcd_metric("etcd_debugging_lease_renewed_total")
    msgs0 = region.etcd_metric("grpc_server_msg_received_total", grpc_method="LeaseKeepAlive")
    cpu = CpuWatch(region.member_pids())
    t1 = time.monotonic()
    time.sleep(o.window)  # the measurement window
    span = time.monotonic() - t1
    after = region.etcd_metric("etcd_debugging_lease_renewed_total")
    msgs1 = region.etcd_metric("grpc_server_msg_received_total", grpc_method="LeaseKeepAlive")
    rates = cpu.rates()
    retries = region.hv_status(workers).get("failures", 0) - retries0
    renewals = sum(after.values()) - sum(before.values())
    load = renewals / span
    computed = expected / (o.ttl / 3)
    part.row(f"[{mode}] keepalives/s (etcd lease renewals)", f"{load:,.0f} /s", "",
             f"computed {computed:,.0f} /s = leases / (TTL/3); {span:.0f} s window; "
             f"{retries} registry retries in it")
    received = {k: (msgs1[k] - msgs0.get(k, 0)) / span for k in msgs1}
    for name, pid in region.member_pids().items():
        st_ = status(pid)
        part.row(f"[{mode}] {name}: CPU, RSS, fds", f"{rates[name] * 100:.0f} % of a core",
                 "", f"RSS {mib(st_['rss_mib'])}, {int(st_['fds'])} fds"
                     + (f", {received[name]:,.0f} keepalive msgs/s received"
                        if name in received else ""))
    part.data.setdefault("steady", {})[mode] = {
        "keepalives_per_s": load, "registry_retries": retries, "computed": computed, "cpu": rates,
        "keepalive_msgs_per_member": received,
        "members": {n: status(p) for n, p in region.member_pids().items()}}
    if mode == "direct":
        capacity(region, part, load)
    else:
        # grpc-proxy renews each lease itself (clientv3's KeepAlive, every TTL/3) and answers
        # clients from those renewals: etcd sees the same rate, so the capacity is the cluster's.
        part.row("[proxy] keepalive capacity", "as direct", "",
                 "the proxy renews each lease once per TTL/3 whatever clients send, so probing "
                 "through it measures its cadence, not the cluster")
    return workers


def capacity(region: Region, part: Part, load: float) -> None:
    """Renewals as fast as the cluster answers, from two processes beside the region's load."""
    o, mode = region.opts, "direct"
    probes = [Worker("kacap", **region.etcd(mode), streams=8, leases=50, window=32)
              for _ in range(2)]
    try:
        start_all(probes)
        before = region.etcd_metric("etcd_debugging_lease_renewed_total")
        t = time.monotonic()
        runs = ask_all(probes, "run", seconds=min(o.window, 10.0))
        client = sum(r["rate"] for r in runs)
        broken = [f for r in runs for f in r["failed_streams"]]
        span = time.monotonic() - t
        after = region.etcd_metric("etcd_debugging_lease_renewed_total")
    finally:
        close_all(probes)
    total = (sum(after.values()) - sum(before.values())) / span
    headroom = total / load if load else float("inf")
    part.row(f"[{mode}] keepalive capacity (renewals/s answered)", f"{total:,.0f} /s", "",
             f"probes alone {client:,.0f} /s on top of the region's load; probe processes "
             "share the 2 cores, so this is a lower bound"
             + (f"; {len(broken)} of 16 probe streams failed to start" if broken else ""))
    part.row(f"[{mode}] headroom = capacity / load", f"{headroom:.1f}x", "≥ 3x")
    part.data.setdefault("capacity", {})[mode] = {"renewals_per_s": total, "probes": client,
                                                 "headroom": headroom}
    part.check(headroom >= 1.0, f"{mode}: the cluster answered fewer renewals than the load")
