"""Load balancing and failure handling in the client, with real servers."""

from __future__ import annotations

import collections
import itertools
import pathlib
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import grpcrpc
from grpcrpc import Endpoint, Target, TransportOptions
from grpcrpc.testing import Cluster
from tests.conftest import wait_until

HERE = pathlib.Path(__file__).parent


class Worker:
    def __init__(self, name: str, delay: float) -> None:
        self.name = name
        self.delay = delay

    def work(self, ctxt: Any) -> str:
        time.sleep(self.delay)
        return self.name


def _hammer(client: grpcrpc.RPCClient, threads: int, calls: int) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def run() -> None:
        for _ in range(calls):
            r = client.call({}, "work")
            with lock:
                counts[r] += 1

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(120)
    return counts


def test_p2c_sends_more_to_the_faster_server() -> None:
    with Cluster() as cluster:
        cluster.serve(Target(topic="w", server="fast"), [Worker("fast", 0.001)])
        cluster.serve(Target(topic="w", server="slow"), [Worker("slow", 0.03)])
        p2c = _hammer(cluster.client(Target(topic="w")), threads=8, calls=25)
        rr = _hammer(cluster.client(Target(topic="w"), TransportOptions(balancer="round_robin")),
                     threads=8, calls=25)
    assert sum(p2c.values()) == sum(rr.values()) == 200
    # Round robin splits evenly whatever the speed; p2c routes around the slow server.
    assert abs(rr["fast"] - rr["slow"]) <= 16
    assert p2c["fast"] > 0.75 * 200, p2c


def test_server_killed_under_load_fails_only_in_flight_calls() -> None:
    """At most once, counted: every call carries a key and each server says on stdout which keys
    it ran, so a client that resent a call that was in flight on the killed server (run there,
    answered nowhere) would show that key on both servers."""
    procs = [subprocess.Popen([sys.executable, str(HERE / "server_main.py"), "victim", f"v{i}"],
                              stdout=subprocess.PIPE, text=True, cwd=HERE.parent.parent)
             for i in range(2)]
    ran: list[list[str]] = [[], []]  # keys each server ran, in order

    def pump(i: int) -> None:
        stdout = procs[i].stdout
        assert stdout is not None
        for line in stdout:
            if line.startswith("EXEC "):
                ran[i].append(line.split()[1])

    try:
        addresses = []
        for p in procs:
            assert p.stdout is not None
            addresses.append(p.stdout.readline().split()[1])
        for i in range(2):
            threading.Thread(target=pump, args=(i,), daemon=True).start()
        resolver = grpcrpc.StaticResolver(
            [Endpoint(a, "victim", f"v{i}") for i, a in enumerate(addresses)])
        client = grpcrpc.RPCClient(resolver, Target(topic="victim"), timeout=10)
        outcome: dict[str, object] = {}  # key -> the server that answered, or the error
        ok = collections.Counter[str]()
        stop = threading.Event()
        lock = threading.Lock()

        def run(n: int) -> None:
            for i in itertools.count():
                if stop.is_set():
                    return
                key = f"{n}.{i}"
                try:
                    # 20 ms of work: a few calls are always running on each server.
                    result: object = client.call({}, "record", key=key, seconds=0.02)
                except grpcrpc.GrpcrpcError as err:
                    result = err
                with lock:
                    outcome[key] = result
                    ok["calls"] += isinstance(result, str)

        pool = [threading.Thread(target=run, args=(n,)) for n in range(6)]
        for t in pool:
            t.start()
        deadline = time.monotonic() + 30
        while ok["calls"] < 300 and time.monotonic() < deadline:
            time.sleep(0.01)

        def victim_busy() -> bool:
            # Kill while the victim is running calls nobody has heard back from: on a loaded
            # machine p2c may have moved most work to the other server by now.
            with lock:
                return len(set(ran[0]) - set(outcome)) >= 2

        wait_until(victim_busy, 20, "calls in flight on the victim")
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        killed_at = ok["calls"]
        deadline = time.monotonic() + 30
        while ok["calls"] < killed_at + 500 and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        for t in pool:
            t.join(20)
        assert not any(t.is_alive() for t in pool), "a caller hung"
        answered = {k: v for k, v in outcome.items() if isinstance(v, str)}
        errors = {k: v for k, v in outcome.items() if not isinstance(v, str)}
        survivor_ran = {k for k, v in answered.items() if v == "v1"}
        wait_until(lambda: survivor_ran <= set(ran[1]), what="the survivor's output")
        runs = collections.Counter(ran[0] + ran[1])
        assert not [k for k, n in runs.items() if n > 1], "a call ran twice"
        for key, server in answered.items():  # each answered call ran once, where it answered
            assert key in ran[int(str(server)[1])], (key, server)
        # The calls running on the victim when it died: failed, named, and never sent again.
        in_flight = set(ran[0]) - set(answered)
        assert in_flight, "no call was running on the victim when it was killed"
        assert set(errors) >= in_flight
        assert not in_flight & set(ran[1]), "a call in flight on the victim was resent"
        # At most the calls in flight on the dead server fail (one per thread), and only with
        # DeliveryError; everything after goes to the survivor.
        assert len(errors) <= 6, errors
        assert all(isinstance(e, grpcrpc.DeliveryError) for e in errors.values()), errors
        assert ok["calls"] >= killed_at + 500
        client.close()
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
