"""At most once, end to end: the two ways a message is sent again are safe ones.

A message is resent only when it provably never ran: the server answered MISROUTED (a stale
routing table sent it to a process that serves something else), or it was still queued on a
stream that broke before it was written. Each test counts the executions on every server.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

import grpcrpc
from grpcrpc import Endpoint, Target, TransportOptions
from grpcrpc.testing import Cluster
from tests.conftest import wait_until
from tests.integration.procs import servers


class Counting:
    def __init__(self, name: str) -> None:
        self.name = name
        self.ran: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    def record(self, ctxt: Any, key: str) -> str:
        with self.lock:
            self.ran[key] += 1
        return self.name


def test_misrouted_message_is_resent_and_runs_once() -> None:
    with Cluster() as cluster:
        real, other = Counting("real"), Counting("other")
        cluster.serve(Target(topic="t", server="real"), [real])
        # The port a stale table lists for topic t now belongs to a server of another topic
        # (the old server stopped, a new process took its port): same method name, so if it
        # ran the message, it would count it.
        squatter = cluster.serve(Target(topic="elsewhere", server="squatter"), [other])
        stale = grpcrpc.StaticResolver([
            Endpoint(squatter.address, "t", "gone"),
            *[e for e in cluster.discovery.table.endpoints if e.topic == "t"],
        ])
        # Taking turns sends every other message to the stale entry first.
        with grpcrpc.RPCClient(stale, Target(topic="t"),
                               options=TransportOptions(balancer="round_robin")) as client:
            answers = [client.call({}, "record", key=f"k{i}") for i in range(20)]
            client.cast({}, "record", key="cast0")
            client.cast({}, "record", key="cast1")
        assert answers == ["real"] * 20
        wait_until(lambda: real.ran["cast0"] and real.ran["cast1"], what="the casts ran")
        assert not other.ran, "the server of another topic ran a misrouted message"
        assert set(real.ran.values()) == {1}
        assert len(real.ran) == 22


def test_messages_queued_on_a_broken_stream_go_elsewhere_and_run_once() -> None:
    """Calls pile up on the stream to a frozen server: the first ones are written (until its
    HTTP/2 window, about 4 MB here, and the socket buffers are full), the rest wait in the
    client's queue. When the frozen server is given up, the written ones fail as possibly
    delivered and the queued ones go to the other server: each runs once, and when the frozen
    server wakes it runs at most the written ones, never a resent one."""
    n = 120
    blob = "x" * 60_000  # under the 64 KiB that goes by stream: 7 MB in all
    with servers(2, topic="q", prefix="s") as s:
        registry = grpcrpc.MemoryDiscovery()
        registry.announce(s.endpoints[0])
        client = grpcrpc.RPCClient(registry, Target(topic="q"), timeout=60)
        assert client.call({}, "record", key="warm") == "s0"  # connected, stream open
        s.freeze(0)
        outcome: dict[str, object] = {}
        lock = threading.Lock()

        def call(key: str) -> None:
            try:
                result: object = client.call({}, "record", key=key, blob=blob)
            except grpcrpc.GrpcrpcError as err:
                result = err
            with lock:
                outcome[key] = result

        callers = [threading.Thread(target=call, args=(f"k{i}",)) for i in range(n)]
        for t in callers:
            t.start()
        # (Private: the only way to know all of them wait on the frozen server's stream.)
        conn = client.transport._conns[s.addresses[0]]
        wait_until(lambda: sum(st.in_flight for st in conn.streams() if st) == n,
                   what="every call waiting on the frozen server")
        registry.announce(s.endpoints[1])
        for t in callers:
            t.join(30)
        assert not any(t.is_alive() for t in callers)
        answered = {k for k, v in outcome.items() if v == "s1"}
        failed = {k: v for k, v in outcome.items() if k not in answered}
        assert all(isinstance(e, grpcrpc.DeliveryError) for e in failed.values()), failed
        # Some were written (in doubt), some were still queued (never sent, so resent).
        assert failed and answered, (len(failed), len(answered))
        assert len(answered) + len(failed) == n
        # Wake the frozen server and let it read what it was sent: a call pinned to it after
        # the old data on the same connection shows it has.
        s.thaw(0)
        assert client.prepare(server="s0").call({}, "record", key="after") == "s0"
        ran = collections.Counter(s.ran(0) + s.ran(1))
        assert max(ran.values()) == 1, "a message ran twice"
        assert answered <= set(s.ran(1))
        assert not answered & set(s.ran(0)), "the frozen server ran a message sent elsewhere"
        assert set(s.ran(0)) - {"warm", "after"} <= set(failed)
        client.close()
