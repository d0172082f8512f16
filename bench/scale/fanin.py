"""Part 4, fan-in: one conductor server called over one client connection per compute (each
compute's process opens its own channel): the conductor's RSS, file descriptors, threads and idle
CPU with every connection open, and call latency under load."""

from __future__ import annotations

import time

from bench.scale.procs import CpuWatch, ask_all, cpu_seconds, pct, status
from bench.scale.region import Region
from bench.scale.report import Part, mib, ms


def run(region: Region) -> Part:
    o = region.opts
    n = o.hypervisors
    assert region.control is not None and region.control.ready is not None
    pid, address = region.control.pid, region.control.ready["address"]
    part = Part("fanin", f"4. fan-in: one conductor, {n:,} client connections")
    base = status(pid)
    connected = sum(r["connected"] for r in ask_all(region.hv, "fanin_connect", address=address))
    part.check(connected == n, f"only {connected} of {n} clients reached the conductor")
    held = status(pid)
    part.row("connections opened", f"{connected:,}", f"{n:,}")
    part.row("conductor RSS", mib(held["rss_mib"]), "",
             f"{mib(held['rss_mib'] - base['rss_mib'])} more than before the clients, "
             f"{(held['rss_mib'] - base['rss_mib']) * 1024 / max(1, connected):.0f} KiB each")
    part.row("conductor file descriptors", f"{int(held['fds']):,}", "",
             "one socket per connection: RLIMIT_NOFILE (hard limit here "
             f"{region.control.ready['nofile']:,}) must exceed it")
    part.row("conductor threads", f"{int(held['threads'])}", "",
             "grpc.aio: connections do not cost threads")
    idle = CpuWatch({"conductor": pid})
    time.sleep(min(o.window, 10.0))  # the idle measurement window
    part.row("conductor idle CPU, all connections open", f"{idle.rates()['conductor'] * 100:.1f} %",
             "", "HTTP/2 keepalive pings of idle connections")
    c0, t0 = cpu_seconds(pid), time.monotonic()
    per = o.fanin_rate / len(region.hv)
    loads = ask_all(region.hv, "fanin_load", seconds=max(2.0, o.window / 2), rate=per)
    busy = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
    lat = [x for r in loads for x in r["latencies"]]
    failed: dict[str, int] = {}
    for r in loads:
        for k, v in r["failed"].items():
            failed[k] = failed.get(k, 0) + v
    part.row(f"calls at {o.fanin_rate:.0f}/s from all connections", f"p99 {ms(pct(lat, 0.99))}",
             "", f"p50 {ms(pct(lat, 0.5))}, {len(lat)} calls, conductor CPU {busy * 100:.0f} %")
    part.row("failed calls", str(sum(failed.values())), "0", str(failed) if failed else "")
    part.check(not failed, f"fan-in calls failed: {failed}")
    part.check(len(lat) > 0, "no fan-in call completed")
    ask_all(region.hv, "fanin_close")
    part.data.update(before=base, held=held, failed=failed, p99=pct(lat, 0.99),
                     p50=pct(lat, 0.5), calls=len(lat))
    return part
