"""Part 3, fanout to every compute through broadcasters that split the work: the time from
`cast()` to the complete delivery report, that every compute got each fanout exactly once, and
CPU and RSS per broadcaster."""

from __future__ import annotations

import math
import time

from bench.scale.procs import CpuWatch, Worker, WorkerError, ask_all, close_all, start_all, status
from bench.scale.region import Region, wait_until
from bench.scale.report import Part, mib, ms


def run(region: Region) -> Part:
    o = region.opts
    n = o.hypervisors
    split = math.ceil(n / o.broadcasters)
    part = Part("fanout", f"3. fanout to all {n:,} computes through {o.broadcasters} "
                          f"broadcasters (split at {split:,})")
    brokers = [Worker("broadcaster", **region.etcd(), index=i, name=f"bcast-{i}",
                      ttl=o.ttl, split=split, peers=o.broadcasters) for i in range(o.broadcasters)]
    client = Worker("fanout", **region.etcd())
    try:
        start_all([*brokers, client])
        # The client must see every broadcaster and every compute before the first fanout;
        # a warm-up fanout may time out while the broadcasters dial thousands of computes.
        warm = iter(range(-1, -1000, -1))  # each warm-up fanout is a new one to the computes
        warmups: list[str] = []

        def warmed() -> bool:
            try:
                return bool(client.ask("fanout", n=next(warm))["delivered"] == n)
            except WorkerError as exc:
                warmups.append(str(exc))
                return False

        part.check(wait_until(warmed, 120, 1.0) is not None,
                   f"the fanout client never reached every compute ({warmups[-3:]})")
        first = 1_000_000
        pids = {f"bcast-{i}": b.pid for i, b in enumerate(brokers)}
        cpu = CpuWatch(pids)
        reports = [client.ask("fanout", n=first + k) for k in range(o.fanouts)]
        span = time.monotonic() - cpu.t0
        per_fanout = {k: v * span / o.fanouts for k, v in cpu.rates().items()}
        stats = {k: status(p) for k, p in pids.items()}
    finally:
        close_all([client, *brokers])
    times = sorted(r["seconds"] for r in reports)
    part.row("cast → complete delivery report", f"median {ms(times[len(times) // 2])}", "< 5 s",
             f"max {ms(times[-1])}, {len(reports)} fanouts, warm connections")
    for r in reports:
        part.check(r["delivered"] == n and r["failed"] == 0 and r["targets"] == n,
                   f"report: {r['delivered']}/{r['targets']} delivered, {r['failed']} failed "
                   f"(expected {n})")
    got: dict[int, int] = {}
    for rec in ask_all(region.hv, "receipts"):
        for k, v in rec["fanouts"].items():
            got[int(k)] = got.get(int(k), 0) + v
        part.check(rec["fanout_dups"] == 0, f"{rec['fanout_dups']} computes got a fanout twice")
    missed = sum(n - got.get(first + k, 0) for k in range(o.fanouts))
    part.row("computes missed", str(missed), "0", "counted by the computes themselves")
    part.check(missed == 0, f"{missed} deliveries missing at the computes")
    for name in pids:
        part.row(f"{name}: CPU per fanout, RSS", f"{per_fanout[name] * 1000:.0f} ms CPU",
                 "", f"RSS {mib(stats[name]['rss_mib'])}, {int(stats[name]['fds'])} fds")
    part.data.update(reports=reports, broadcasters=stats, split=split)
    return part
