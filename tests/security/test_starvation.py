"""One peer must not starve the others (issue 15, defects 3-7).

Each test attacks a real server process the way an attacker on the network would — raw grpcio
generic calls with hand-built protobuf bytes, raw TCP sockets, a hand-written HTTP/2 client
that never opens its window — while a legitimate grpcrpc `RPCClient` keeps calling the same
server. It must never fail and its p99 must stay under 2 s; the server's RSS may grow by less
than 100 MB and its log by less than 10 MB; every refusal is a named error. The attack tools
are `bench/attack_starvation.py`'s (which measures the same attacks, larger).
"""

from __future__ import annotations

import collections
import pathlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from bench.attack_starvation import (
    BATCHES,
    GREEDY_TOKEN,
    Legit,
    NonReadingPeer,
    Victim,
    attack_batch,
    attack_greedy,
    attack_unary_flood,
    batch_bytes,
    batch_reply_codes,
    closed_by_server,
    envelope_bytes,
    start_victim,
)
from tests.conftest import wait_until

P99_LIMIT = 2.0
RSS_LIMIT_MB = 100
LOG_LIMIT = 10_000_000


class Watch:
    """The victim's peak RSS and log growth while an attack runs."""

    def __init__(self, victim: Victim) -> None:
        self.victim = victim
        self.base_rss = victim.rss_mb()
        self.base_log = victim.log_bytes()
        self.peak = self.base_rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.victim.rss_mb())
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> None:
        self.stop()
        assert self.peak - self.base_rss < RSS_LIMIT_MB, f"RSS grew {self.peak - self.base_rss} MB"
        grown = self.victim.log_bytes() - self.base_log
        assert grown < LOG_LIMIT, f"the server log grew {grown} bytes"


@pytest.fixture
def victim(tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> Iterator[Victim]:
    args = getattr(request, "param", {})
    with start_victim(tmp_path, **args) as v:
        yield v


BASELINE_CALLS = 50


def start_legit(victim: Victim, **kwargs: Any) -> tuple[Legit, float]:
    """The legitimate client, calling; and its p99 over its first calls before any attack
    (how loaded this shared machine is right now)."""
    legit = Legit(victim.address, **kwargs).start()
    wait_until(lambda: len(legit.latencies) >= BASELINE_CALLS, timeout=30,
               what=f"{BASELINE_CALLS} legitimate calls before the attack")
    baseline = legit.p99()
    legit.latencies.clear()
    return legit, baseline


def legit_ok(legit: Legit, baseline: float) -> None:
    legit.stop()
    assert not legit.failures, legit.failures[:3]
    assert legit.latencies, "the legitimate client made no call"
    # Under 2 s; on a machine so loaded that calls are slow with no attack at all, that much
    # more (on a quiet machine the baseline is a few ms: the limit is the 2 s).
    limit = P99_LIMIT + 2 * baseline
    assert legit.p99() < limit, f"legitimate p99 {legit.p99():.2f} s (baseline {baseline:.2f} s)"


# -- 3: one large batch ---------------------------------------------------------------------


def test_an_unauthenticated_4mb_batch_is_refused_before_it_is_parsed(victim: Victim) -> None:
    legit, baseline = start_legit(victim)
    watch = Watch(victim)
    got = attack_batch(victim, 10)
    watch.check()
    legit_ok(legit, baseline)
    codes = [k for k, v in got.items() if v]
    assert codes == ["UNAUTHENTICATED: not authorized"], got
    # One refusal, one (rate-limited) line: not one per envelope.
    assert victim.log.read_text().count("unauthenticated caller refused") <= 5


def test_an_authorised_batch_over_the_envelope_bound_is_refused_whole(victim: Victim) -> None:
    legit, baseline = start_legit(victim)
    channel = grpc.insecure_channel(victim.address)
    md = (("authorization", f"Bearer {GREEDY_TOKEN}"),)
    too_many = batch_bytes([envelope_bytes(f"{i:x}", "echo") for i in range(5000)])
    fine = batch_bytes([envelope_bytes(f"ok{i:x}", "echo", args=b'{"x":1}') for i in range(100)])
    try:
        codes: collections.Counter[str] = collections.Counter()
        replies = channel.stream_stream(BATCHES)(iter([too_many, fine]), metadata=md, timeout=20)
        for raw in replies:
            codes.update(batch_reply_codes(raw))
    finally:
        channel.close()
    legit_ok(legit, baseline)
    # The oversized batch: one INVALID_ENVELOPE, nothing run; the next batch is served.
    assert codes == {"INVALID_ENVELOPE": 1, "result": 100}, codes


# -- 4: a peer that never reads -------------------------------------------------------------


def test_a_peer_that_never_reads_stops_being_read(victim: Victim) -> None:
    legit, baseline = start_legit(victim)
    watch = Watch(victim)
    peer = NonReadingPeer(victim.address, BATCHES, GREEDY_TOKEN)
    sent, n, stalled = 0, 0, False
    try:
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline and sent < 40_000_000:
            envs = [envelope_bytes(f"{n + i:x}", "blob", args=b'{"n":20000}')
                    for i in range(1000)]
            n += 1000
            if not peer.send_message(batch_bytes(envs), timeout=3.0):
                stalled = True
                break
            sent += sum(len(e) for e in envs)
        assert stalled, f"the server kept reading: {sent} bytes of calls"
        assert not peer.closed, peer.closed  # stopped being read, not dropped
    finally:
        peer.close()
    watch.check()
    legit_ok(legit, baseline)


# -- 5: idle sockets ------------------------------------------------------------------------


def _nofile_soft(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files line")


def _closed_by_server(socks: list[socket.socket]) -> int:
    return sum(closed_by_server(s) for s in socks)


@pytest.mark.parametrize("victim", [{"nofile": 1024, "limits": {"handshake_timeout": 3.0}}],
                         indirect=True)
def test_idle_sockets_do_not_exhaust_file_descriptors(victim: Victim) -> None:
    # The server raised its soft limit (1,024 here) to the hard limit at start.
    assert _nofile_soft(victim.pid) > 1024
    legit, baseline = start_legit(victim, fresh=True, timeout=5.0)
    host, port = victim.address.rsplit(":", 1)
    socks = [socket.create_connection((host, int(port)), timeout=5) for _ in range(1124)]
    try:
        # New clients keep connecting while 1,124 sockets sit there saying nothing (the
        # server closes them at its 3 s handshake timeout: the calls must come before)...
        wait_until(lambda: len(legit.latencies) > 3, timeout=2.5,
                   what="new clients answered while the idle sockets are open")
        assert _closed_by_server(socks) < len(socks)
        # ...and the sockets that never spoke HTTP/2 are closed at the handshake timeout.
        wait_until(lambda: _closed_by_server(socks) == len(socks), timeout=15,
                   what="the server closes every idle socket")
    finally:
        for s in socks:
            s.close()
    legit_ok(legit, baseline)


@pytest.mark.parametrize("victim", [{"limits": {"max_connections": 50,
                                                "handshake_timeout": 60.0}}], indirect=True)
def test_connections_over_the_cap_are_closed_at_once(victim: Victim) -> None:
    host, port = victim.address.rsplit(":", 1)
    socks = [socket.create_connection((host, int(port)), timeout=5) for _ in range(120)]
    try:
        # The handshake timeout is a minute: what closes now is the connection cap.
        wait_until(lambda: _closed_by_server(socks) >= 120 - 50, timeout=10,
                   what="connections over the cap closed")
        assert victim.open_fds() < 120
    finally:
        for s in socks:
            s.close()


# -- 6: a unary flood -----------------------------------------------------------------------


def test_a_unary_flood_never_fails_other_clients_new_calls(victim: Victim) -> None:
    legit, baseline = start_legit(victim, fresh=True)
    watch = Watch(victim)
    got = attack_unary_flood(victim, 8, in_flight=2000, connections=4)
    watch.check()
    legit_ok(legit, baseline)
    # What the flood got: answers, or refusals that say nothing ran (OVERLOADED, or the
    # HTTP/2 stream refused); never a bare CANCELLED that leaves delivery in doubt.
    named = ("result", "OVERLOADED", "Received RST_STREAM with error code 7")
    unnamed = {k: v for k, v in got.items() if not any(n in k for n in named)}
    assert not unnamed, got
    assert got["result"] > 0


# -- 7: a greedy authorised peer ------------------------------------------------------------


def test_a_greedy_connection_gets_its_share_and_others_go_on(victim: Victim) -> None:
    legit, baseline = start_legit(victim)
    watch = Watch(victim)
    got = attack_greedy(victim, 8, in_flight=256)
    watch.check()
    legit_ok(legit, baseline)
    assert got["accepted"] > 0 and got["OVERLOADED"] > 0, got
    # Refusals are named: OVERLOADED, or HTTP/2 REFUSED_STREAM (error 7) over the stream
    # limit, which grpcrpc's clients report as Overloaded.
    assert all(k in ("accepted", "OVERLOADED") or "error code 7" in k for k in got), got
    # The refusals were logged at a bounded rate: a few lines, not one per refusal.
    assert victim.log.read_text().count("overloaded:") < 50
