"""`make scale` (`python -m bench.scale`): a simulated region on this machine, measured.

    python -m bench.scale                        # the full region: 10,000 hypervisors
    python -m bench.scale --hypervisors 1000     # a medium one
    python -m bench.scale --smoke                # 100 hypervisors, all parts, a few minutes
    python -m bench.scale --parts registration,faults --no-proxy

The region: a 3-member etcd cluster (Debian's `etcd`, loopback ports, temp dirs) with
`etcd grpc-proxy` in front (`--no-proxy`: clients talk to the members); N hypervisors, each a
compute `RPCServer` plus two agent registrations (3 leases each, through `EtcdRegistry`), many to
an OS process; a conductor and two schedulers; broadcasters; load clients in their own
processes. Parts: registration (measured directly and through the proxy), routing, fanout,
fanin, faults (leader SIGKILL, whole-cluster restart storm, rolling restart of computes) and
the same storm against RabbitMQ. Each part checks its own invariants (nothing failed, hung, lost
or duplicated; every registration back); any broken one makes the exit status 1.

Results: a table per part, `bench/results/scale-<date>.json` and `.png` (not for `--smoke`
unless `--save`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
from collections.abc import Callable

from bench import results
from bench.scale import fanin, fanout, faults, plot, rabbit, registration, routing
from bench.scale.procs import raise_nofile
from bench.scale.region import Options, Region
from bench.scale.report import Part

PARTS = ("registration", "routing", "fanout", "fanin", "faults", "rabbit")
REGION_PARTS: dict[str, Callable[[Region], Part]] = {
    "routing": routing.run, "fanout": fanout.run, "fanin": fanin.run, "faults": faults.run}


def options(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hypervisors", type=int, default=10_000)
    p.add_argument("--per-process", type=int, default=250, help="hypervisors per OS process")
    p.add_argument("--per-connection", type=int, default=25,
                   help="registrations of a process that share one etcd connection and one "
                        "keepalive stream (`EtcdConnection`); 1: each its own, as in production")
    p.add_argument("--ttl", type=int, help="lease TTL (default: 10 s up to 1,000 hypervisors, "
                                           "else 30 s as docs/operations.md recommends)")
    p.add_argument("--proxy", action=argparse.BooleanOptionalAction, default=True,
                   help="measure registration directly and through etcd grpc-proxy, then run "
                        "the other parts through the proxy (--no-proxy: directly only)")
    p.add_argument("--via", choices=["proxy", "direct"],
                   help="how parts 2-5 reach etcd (default: through the proxy when --proxy)")
    p.add_argument("--etcd-dir", help="where etcd's data dirs go, e.g. /dev/shm to keep its WAL "
                                      "fsyncs off a disk the rest of the machine shares")
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--window", type=float, default=20.0, help="seconds per steady measurement")
    p.add_argument("--load-rate", type=float, default=100.0, help="calls+casts/s during faults")
    p.add_argument("--broadcasters", type=int, default=4)
    p.add_argument("--fanouts", type=int, default=5)
    p.add_argument("--restarts", type=int, default=1000, help="computes in the rolling restart")
    p.add_argument("--rabbit-servers", type=int, default=1000)
    p.add_argument("--smoke", action="store_true", help="a small region, seconds per part")
    p.add_argument("--save", action="store_true", help="save JSON and PNG (default unless smoke)")
    a = p.parse_args(argv)
    parts = tuple(x for x in a.parts.split(",") if x)
    unknown = set(parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; choose from {','.join(PARTS)}")
    o = Options(hypervisors=a.hypervisors, per_process=a.per_process,
                per_connection=a.per_connection, proxy=a.proxy,
                window=a.window, load_rate=a.load_rate, broadcasters=a.broadcasters,
                fanouts=a.fanouts, restarts=a.restarts, rabbit_servers=a.rabbit_servers,
                smoke=a.smoke, parts=parts)
    if a.smoke:
        o.hypervisors, o.per_process, o.window, o.fanouts = 100, 50, 3.0, 2
        o.restarts, o.rabbit_servers, o.rabbit_per_process = 10, 10, 10
        o.load_rate, o.fanin_rate, o.broadcasters, o.load_clients = 40.0, 100.0, 2, 1
        o.ttl = 10
    if a.ttl is not None:
        o.ttl = a.ttl
    elif not a.smoke:
        o.ttl = 10 if o.hypervisors <= 1000 else 30
    if a.via == "proxy" and not a.proxy:
        p.error("--via proxy needs --proxy")
    o.etcd_dir = a.etcd_dir
    o.via = a.via or ("proxy" if a.proxy else "direct")
    o.extra["save"] = a.save or not a.smoke
    return o


def run_part(name: str, fn: Callable[[], Part]) -> Part:
    t0 = time.monotonic()
    try:
        part = fn()
    except Exception as exc:
        part = Part(name, f"{name}: crashed")
        part.problems.append(f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
    part.seconds = time.monotonic() - t0
    part.print()
    results.record("scale", name, part.to_json())
    return part


def main(argv: list[str] | None = None) -> int:
    o = options(argv)
    # SIGTERM unwinds like an error, so every etcd member, broker and worker is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # etcd's proxy holds a connection per registration; each member up to all of them (direct).
    nofile = raise_nofile(o.registrations + o.hypervisors + 10_000)
    started = time.monotonic()
    print(f"region: {o.hypervisors:,} hypervisors ({o.registrations:,} leases, TTL {o.ttl} s), "
          f"{o.per_process} per process, {o.per_connection} registrations per etcd connection, "
          f"registration measured "
          f"{'directly and through grpc-proxy' if o.proxy else 'directly'}, parts 2-5 {o.via}, "
          f"RLIMIT_NOFILE {nofile:,}", flush=True)
    results.record("scale", "options", {k: v for k, v in vars(o).items() if k != "extra"})
    done: list[Part] = []
    if any(p in o.parts for p in ("registration", *REGION_PARTS)):
        region = Region(o)
        try:
            region.start()
            first = run_part("registration", lambda: registration.run(region))
            done.append(first)
            if region.hv and not first.problems:
                region.start_control_and_load()
                for name, fn in REGION_PARTS.items():
                    if name in o.parts:
                        done.append(run_part(name, lambda fn=fn: fn(region)))  # type: ignore[misc]
        finally:
            region.close()
    if "rabbit" in o.parts:
        done.append(run_part("rabbit", lambda: rabbit.run(o)))
    problems = [f"{p.name}: {x}" for p in done for x in p.problems]
    total = time.monotonic() - started
    results.record("scale", "summary", {"seconds": total, "problems": problems})
    print(f"scale: {len(done)} parts in {total:.0f} s, {len(problems)} problem(s)")
    if o.extra["save"]:
        path = results.save(prefix="scale-")
        png = plot.plot(path)
        print(f"results: {path}" + (f"\nplot:    {png}" if png else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
