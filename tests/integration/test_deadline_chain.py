"""A chain of three services, each its own process, shares the first caller's deadline.

A (this test) calls B with a 1 s timeout; B's endpoint calls C with nothing but its client's
default 60 s; C works until it is cancelled (a coroutine) or sees its deadline pass (a thread).
Whatever kind of endpoint B is, and whichever client A uses, the whole chain gives up within a
few tens of milliseconds of A's deadline, C stops, and nothing is left running. Before the
deadline was ambient, a thread-pool B (every oslo endpoint) waited its own 60 s while C worked.

Run with `-s` to see the measured timings (seconds past A's deadline).
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import grpcrpc
from grpcrpc import (
    AsyncRPCClient,
    AsyncTransport,
    Endpoint,
    RPCClient,
    StaticResolver,
    SyncTransport,
    Target,
)
from grpcrpc import envelope as ev
from grpcrpc.testing import Cluster
from tests.conftest import wait_until

HERE = pathlib.Path(__file__).parent
TIMEOUT = 1.0  # the first caller's
# How far past A's deadline a hop may give up. Over loopback the chain unwinds in a few ms;
# this leaves room for a loaded 2-core machine while still failing a hop that waits for its own
# timeout (60 s) or for anything but the deadline.
LATE = 0.3


@dataclass
class Chain:
    events: pathlib.Path
    b: str
    c: str

    def read(self, tag: str) -> list[dict[str, Any]]:
        with open(self.events) as f:
            return [e for e in map(json.loads, f) if e["tag"] == tag]

    def event(self, tag: str, hop: str, event: str) -> dict[str, Any] | None:
        return next((e for e in self.read(tag) if e["hop"] == hop and e["event"] == event), None)


def _start(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, str(HERE / "chain_main.py"), *args],
                            stdout=subprocess.PIPE, text=True, cwd=HERE.parent.parent)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ADDRESS "), f"{args[0]} did not start: {line!r}"
    return proc, line.split()[1]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    events = tmp_path_factory.mktemp("chain") / "events.jsonl"
    events.touch()
    procs: list[subprocess.Popen[str]] = []
    try:
        c_proc, c = _start(["c", str(events)])
        procs.append(c_proc)
        b_proc, b = _start(["b", str(events), c])
        procs.append(b_proc)
        yield Chain(events, b, c)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def _client(chain: Chain) -> RPCClient:
    return RPCClient(StaticResolver([Endpoint(chain.b, "chain-b", "b"),
                                     Endpoint(chain.c, "chain-c", "c")]),
                     Target(topic="chain-b"), timeout=TIMEOUT)


def _call_sync(chain: Chain, method: str, last: str, tag: str) -> tuple[float, float]:
    """A's call through the blocking client: (A's deadline, when A's call returned)."""
    with _client(chain) as client:
        client.call({}, "active")  # connect first: the chain's timing, not the handshake's
        start = time.monotonic()
        with pytest.raises(grpcrpc.MessagingTimeout):
            client.call({}, method, tag=tag, last=last)
        return start + TIMEOUT, time.monotonic()


def _call_async(chain: Chain, method: str, last: str, tag: str) -> tuple[float, float]:
    """A's call through the asyncio client."""
    async def main() -> tuple[float, float]:
        resolver = StaticResolver([Endpoint(chain.b, "chain-b", "b")])
        async with AsyncRPCClient(resolver, Target(topic="chain-b"), timeout=TIMEOUT) as client:
            await client.call({}, "active")
            start = time.monotonic()
            with pytest.raises(grpcrpc.MessagingTimeout):
                await client.call({}, method, tag=tag, last=last)
            return start + TIMEOUT, time.monotonic()

    return asyncio.run(main())


def _nothing_left_running(chain: Chain) -> None:
    with _client(chain) as client:
        wait_until(lambda: client.call({}, "active") == 0, 5, "B to finish")
        c = client.prepare(topic="chain-c")
        wait_until(lambda: c.call({}, "active") == 0, 5, "C to finish")


@pytest.mark.parametrize("client_kind", ["sync", "asyncio"])
@pytest.mark.parametrize("middle", ["coroutine", "thread"])
def test_first_callers_timeout_bounds_the_whole_chain(chain: Chain, middle: str,
                                                      client_kind: str) -> None:
    tag = f"{middle}-{client_kind}-{uuid.uuid4().hex[:8]}"
    method = "relay_async" if middle == "coroutine" else "relay_sync"
    call = _call_sync if client_kind == "sync" else _call_async
    deadline, a_raised = call(chain, method, "wait_async", tag)

    wait_until(lambda: chain.event(tag, "c", "cancelled") and chain.event(tag, "b", "gave_up"),
               10, f"B to give up and C to be cancelled ({chain.read(tag)})")
    b_started, c_started = chain.event(tag, "b", "started"), chain.event(tag, "c", "started")
    b_gave_up, c_cancelled = chain.event(tag, "b", "gave_up"), chain.event(tag, "c", "cancelled")
    assert b_started and c_started and b_gave_up and c_cancelled
    # B inherited A's budget (its client's own timeout is 60 s), and passed on what remained.
    assert 0.5 < b_started["remaining"] <= TIMEOUT
    assert 0.5 < c_started["remaining"] <= b_started["remaining"]
    late = {"A raised": a_raised - deadline, "B gave up": b_gave_up["t"] - deadline,
            "C cancelled": c_cancelled["t"] - deadline}
    print(f"\nchain {middle} middle hop, {client_kind} client, A timeout {TIMEOUT}s; seconds past "
          f"A's deadline: " + ", ".join(f"{k} {v:+.4f}" for k, v in late.items())
          + f" (B: {b_gave_up['why']})")
    # Nobody gives up early (a few ms of rounding), nobody late.
    assert all(-0.01 <= v <= LATE for v in late.values()), late
    _nothing_left_running(chain)


def test_a_thread_at_the_end_of_the_chain_sees_its_deadline_pass(chain: Chain) -> None:
    """A thread cannot be cancelled: `remaining_time()` is what tells it to stop."""
    tag = f"thread-thread-{uuid.uuid4().hex[:8]}"
    deadline, a_raised = _call_sync(chain, "relay_sync", "wait_sync", tag)
    # B and C are separate processes: their events land in either order.
    wait_until(lambda: chain.event(tag, "c", "deadline_passed")
               and chain.event(tag, "b", "gave_up"), 10,
               f"C to see its deadline pass and B to give up ({chain.read(tag)})")
    c_saw = chain.event(tag, "c", "deadline_passed")
    b_gave_up = chain.event(tag, "b", "gave_up")
    assert c_saw and b_gave_up
    late = {"A raised": a_raised - deadline, "B gave up": b_gave_up["t"] - deadline,
            "C saw its deadline pass": c_saw["t"] - deadline}
    print(f"\nchain thread middle hop, thread last hop, sync client, A timeout {TIMEOUT}s; "
          "seconds past A's deadline: " + ", ".join(f"{k} {v:+.4f}" for k, v in late.items()))
    assert all(-0.01 <= v <= LATE for v in late.values()), late
    _nothing_left_running(chain)



class Waiting:
    """Waits until cancelled; `cancelled` is set from the server's loop."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()

    async def wait(self, ctxt: Any) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()  # until cancelled: nothing sets it
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


def _no_deadline_envelope(msg_id: str) -> bytes:
    # No deadline on the wire: the server never cancels it by itself, so only the cancel
    # envelope of a caller that gives up can.
    return ev.build_envelope(msg_id, Target(topic="w"), "wait", b"{}", b"{}",
                             timeout_ms=0).SerializeToString()


@pytest.mark.parametrize("client_kind", ["sync", "asyncio"])
def test_a_caller_that_times_out_cancels_its_callee(client_kind: str) -> None:
    waiting = Waiting()
    with Cluster() as cluster:
        cluster.serve(Target(topic="w", server="s"), [waiting])
        if client_kind == "sync":
            transport = SyncTransport(cluster.discovery)
            try:
                with pytest.raises(grpcrpc.MessagingTimeout):
                    transport.request(Target(topic="w"), "m1", _no_deadline_envelope("m1"),
                                      0.3, "w.wait")
                assert waiting.cancelled.wait(5), "the server never heard the caller gave up"
            finally:
                transport.close()
        else:
            async def main() -> None:
                transport = AsyncTransport(cluster.discovery)
                try:
                    with pytest.raises(grpcrpc.MessagingTimeout):
                        await transport.request(Target(topic="w"), "m1",
                                                _no_deadline_envelope("m1"), 0.3, "w.wait")
                    for _ in range(500):  # the loop must run for the cancel to be written
                        if waiting.cancelled.is_set():
                            break
                        await asyncio.sleep(0.01)
                finally:
                    await transport.close()

            asyncio.run(main())
            assert waiting.cancelled.is_set(), "the server never heard the caller gave up"
        assert waiting.started.is_set()


def test_a_server_cancels_a_coroutine_at_its_callers_deadline() -> None:
    """Even when no cancel envelope comes (lost with a broken stream, say), the server stops a
    coroutine endpoint at the deadline the envelope carries, and answers that it expired."""
    waiting = Waiting()
    with Cluster() as cluster:
        cluster.serve(Target(topic="w", server="s"), [waiting])
        transport = SyncTransport(cluster.discovery)
        try:
            data = ev.build_envelope("m1", Target(topic="w"), "wait", b"{}", b"{}",
                                     timeout_ms=300).SerializeToString()
            start = time.monotonic()
            # The transport waits longer than the envelope says: the server answers first.
            reply = transport.request(Target(topic="w"), "m1", data, 10, "w.wait")
            took = time.monotonic() - start
        finally:
            transport.close()
    assert reply.failure.code == ev.ErrorCode.EXPIRED, reply
    assert reply.failure.message == "deadline passed while running"
    assert waiting.cancelled.is_set()
    assert 0.29 <= took <= 0.3 + LATE, took
