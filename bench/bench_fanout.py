"""Fanout delivery time: the client fanning out itself vs 1 broadcaster vs 3 (split).

Servers (250 per process) run on the server core; broadcasters share the client's core. Each
figure is the time from `cast()` to the delivery report for a warm fanout (connections open),
median and spread of the repetitions, which alternate between the three ways. Broadcaster CPU
and memory are read from /proc: CPU per fanout, and the RSS its connections to the servers added.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench.common import CLIENT_CORE, SERVER_CORE, Series, pin_client, run_async
from bench.results import record
from grpcrpc import AsyncRPCClient, Endpoint, StaticResolver, Target, TransportOptions
from grpcrpc.broadcaster import BROADCASTER_EXCHANGE, BROADCASTER_TOPIC

HERE = pathlib.Path(__file__).resolve().parent
PER_PROCESS = 250
NO_SPLIT = 10**9


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(HERE / "fanout_procs.py"), *args],
                            stdout=subprocess.PIPE, text=True)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@contextmanager
def _broadcasters(names: list[str], split: int, servers: list[Endpoint], tmp: str
                  ) -> Iterator[tuple[list[Endpoint], list[int]]]:
    ports = _free_ports(len(names))
    eps = [Endpoint(f"127.0.0.1:{p}", BROADCASTER_TOPIC, n, exchange=BROADCASTER_EXCHANGE,
                    instance=str(p)) for n, p in zip(names, ports, strict=True)]
    table = pathlib.Path(tmp, f"table-{names[0]}-{len(servers)}.json")
    table.write_text(json.dumps([dataclasses.asdict(e) for e in [*servers, *eps]]))
    procs = [_spawn("broadcaster", str(CLIENT_CORE), n, str(p), str(split), str(table))
             for n, p in zip(names, ports, strict=True)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
            assert line and line[0] == "ADDRESS", line
        yield eps, [p.pid for p in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


async def _one_fanout(client: AsyncRPCClient, n: int, expect: int) -> float:
    start = time.perf_counter()
    report = await client.cast({}, "update", n=n)
    elapsed = time.perf_counter() - start
    assert report is not None and report.delivered == expect, report
    return elapsed


def measure(servers: list[Endpoint], reps: int, tmp: str) -> dict[str, object]:
    size = len(servers)
    with _broadcasters(["solo"], NO_SPLIT, servers, tmp) as (solo, [solo_pid]), \
            _broadcasters(["t0", "t1", "t2"], math.ceil(size / 3), servers, tmp) as (trio, _pids):
        ways = {
            "client": (servers, TransportOptions(use_broadcaster=False)),
            "1 broadcaster": ([*servers, *solo], TransportOptions()),
            # The client knows only the first; it splits the topic with the other two.
            "3 broadcasters": ([*servers, trio[0]], TransportOptions()),
        }

        async def run() -> dict[str, Series]:
            clients = {k: AsyncRPCClient(StaticResolver(eps), Target(topic="compute", fanout=True),
                                         timeout=60, options=o) for k, (eps, o) in ways.items()}
            for client in clients.values():
                await _one_fanout(client, 0, size)  # warm: every connection open
            results = {k: Series() for k in ways}
            for n in range(reps):
                for k, client in clients.items():  # interleaved
                    results[k].values.append(await _one_fanout(client, n, size))
            for client in clients.values():
                await client.close()
            return results

        rss_before = _rss_mib(solo_pid)
        cpu_before = _cpu_seconds(solo_pid)
        series = run_async(run())
        cpu = (_cpu_seconds(solo_pid) - cpu_before) / (reps + 1)
        rss = _rss_mib(solo_pid) - rss_before
    return {"size": size, "series": series, "cpu_per_fanout": cpu, "rss_added": rss}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.smoke:
        sizes, args.reps = [6], 1
    pin_client()
    procs: list[subprocess.Popen[str]] = []
    tmp = tempfile.mkdtemp(prefix="grpcrpc-fanout-")
    try:
        servers: list[Endpoint] = []
        needed = max(sizes)
        for p in range(0, needed, PER_PROCESS):
            procs.append(_spawn("servers", str(SERVER_CORE), str(min(PER_PROCESS, needed - p)),
                                f"p{p}-"))
        for proc in procs:
            assert proc.stdout is not None
            servers += [Endpoint(**e) for e in json.loads(proc.stdout.readline())]
        results = [measure(servers[:size], args.reps, tmp) for size in sizes]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    print(f"{'servers':>7} {'client fanout':>16} {'1 broadcaster':>16} {'3 broadcasters':>16}"
          f" {'1-bcast CPU/fanout':>19} {'1-bcast RSS added':>18}")
    for r in results:
        s = r["series"]
        assert isinstance(s, dict)
        cells = " ".join(f"{s[k].median * 1000:9.1f} ms ±{s[k].spread * 100:3.0f}%"
                         for k in ("client", "1 broadcaster", "3 broadcasters"))
        print(f"{r['size']:7d} {cells} {r['cpu_per_fanout'] * 1000:15.1f} ms "
              f"{r['rss_added']:14.1f} MiB")
    ways = ("client", "1 broadcaster", "3 broadcasters")
    record("fanout", "times", {way: {str(r["size"]): r["series"][way].median for r in results}
                               for way in ways})
    record("fanout", "table", [
        {"servers": r["size"], "cpu_per_fanout": r["cpu_per_fanout"], "rss_added_mib": r["rss_added"],
         **{way: {"median": r["series"][way].median, "spread": r["series"][way].spread,
                  "values": r["series"][way].values} for way in ways}} for r in results])


if __name__ == "__main__":
    main()
