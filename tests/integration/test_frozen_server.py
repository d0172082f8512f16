"""A server that freezes under load (SIGSTOP: a gray failure, its connections stay open).

Three servers in their own processes, clients with the defaults a user has. While callers and a
caster keep going, one server is stopped: the call in flight on it fails with `DeliveryError`
within a few seconds (a probe on its connection goes unanswered), a cast sent to it blocks its
caller no longer than `cast_accept_timeout`, and new work goes to the two live servers. The
frozen server is always continued (SIGCONT) and killed at the end, whatever happened.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import threading
import time
from typing import Any

import pytest

import grpcrpc
from grpcrpc import Target, TransportOptions
from tests.integration.procs import servers

DEFAULTS = TransportOptions()
assert DEFAULTS.probe_after is not None and DEFAULTS.cast_accept_timeout is not None
# When the call in flight on the frozen server must have failed: its silence is noticed within
# probe_after (+ the watcher's tick), the probe gives up after probe_timeout; the rest is slack
# for a loaded machine.
DETECT_WITHIN = DEFAULTS.probe_after + DEFAULTS.probe_timeout + 3.0
CAST_BOUND = DEFAULTS.cast_accept_timeout + 1.5  # the bound, with slack for a loaded machine
FREEZE = 8.0  # seconds the server stays stopped under load

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")


class Tally:
    """What the load saw, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok: collections.Counter[str] = collections.Counter()
        self.ok_during_freeze: collections.Counter[str] = collections.Counter()
        self.errors: list[BaseException] = []
        self.cast_blocks: list[float] = []
        self.cast_errors: list[BaseException] = []
        self.frozen_at: float | None = None

    def call_ok(self, server: str) -> None:
        with self.lock:
            self.ok[server] += 1
            # (A reply already on its way when the signal landed may still arrive just after.)
            if self.frozen_at is not None and time.monotonic() > self.frozen_at + 0.5:
                self.ok_during_freeze[server] += 1

    def check(self, threads: int) -> None:
        # Whatever failed, failed named: in flight on the frozen server (DeliveryError), or a
        # cast it did not accept in time (MessagingTimeout). Never anything else.
        assert all(isinstance(e, grpcrpc.DeliveryError) for e in self.errors), self.errors
        assert all(isinstance(e, grpcrpc.DeliveryError | grpcrpc.MessagingTimeout)
                   for e in self.cast_errors), self.cast_errors
        # Failed calls: those in flight on the frozen server when it stopped, and when its
        # ejection lapsed while it was still stopped — a few rounds of one per caller.
        assert len(self.errors) <= 4 * threads, (len(self.errors), self.errors[:3])
        assert self.cast_blocks and max(self.cast_blocks) < CAST_BOUND, max(self.cast_blocks)
        # New work went to the live servers: they kept answering through the freeze.
        assert self.ok_during_freeze["v0"] == 0
        assert self.ok_during_freeze["v1"] > 20 and self.ok_during_freeze["v2"] > 20, \
            self.ok_during_freeze


def test_sync_client_survives_a_frozen_server() -> None:
    threads = 6
    with servers(3) as s:
        client = grpcrpc.RPCClient(grpcrpc.StaticResolver(s.endpoints), Target(topic="frozen"))
        tally = Tally()
        stop = threading.Event()

        def caller() -> None:
            while not stop.is_set():
                try:
                    tally.call_ok(client.call({}, "whoami"))
                except grpcrpc.GrpcrpcError as err:
                    with tally.lock:
                        tally.errors.append(err)

        def caster() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    client.cast({}, "echo", value=1)
                except grpcrpc.GrpcrpcError as err:
                    with tally.lock:
                        tally.cast_errors.append(err)
                with tally.lock:
                    tally.cast_blocks.append(time.monotonic() - started)
                stop.wait(0.01)

        pinned: dict[str, Any] = {}

        def pinned_call() -> None:  # a long call in flight on the server that will freeze
            started = time.monotonic()
            try:
                pinned["result"] = client.prepare(server="v0").call({}, "nap", seconds=60)
            except grpcrpc.GrpcrpcError as err:
                pinned["error"] = err
            pinned["failed_at"] = time.monotonic()
            pinned["took"] = pinned["failed_at"] - started

        napper = threading.Thread(target=pinned_call)
        napper.start()
        s.expect(0, "IN-CALL")
        pool = [threading.Thread(target=caller) for _ in range(threads)]
        pool.append(threading.Thread(target=caster))
        for t in pool:
            t.start()
        try:
            deadline = time.monotonic() + 30
            while min(tally.ok[f"v{i}"] for i in range(3)) < 20 and time.monotonic() < deadline:
                time.sleep(0.01)
            s.freeze(0)
            tally.frozen_at = frozen_at = time.monotonic()
            # A cast to the frozen server itself: bounded, named.
            started = time.monotonic()
            with pytest.raises((grpcrpc.DeliveryError, grpcrpc.MessagingTimeout)):
                client.prepare(server="v0").cast({}, "echo", value=2)
            pinned_cast_block = time.monotonic() - started
            napper.join(DETECT_WITHIN + 10)
            stop.wait(max(0.0, frozen_at + FREEZE - time.monotonic()))
        finally:
            stop.set()
            for t in pool:
                t.join(30)
        assert not any(t.is_alive() for t in pool), "a caller hung"
        assert isinstance(pinned.get("error"), grpcrpc.DeliveryError), pinned
        assert pinned["failed_at"] - frozen_at < DETECT_WITHIN, pinned
        assert pinned_cast_block < CAST_BOUND, pinned_cast_block
        tally.check(threads)
        assert client.transport.balancer.ejections._failures.get(s.addresses[0], 0) >= 1
        client.close()


def test_async_client_survives_a_frozen_server() -> None:
    tasks = 6
    with servers(3) as s:

        async def main() -> dict[str, Any]:
            client = grpcrpc.AsyncRPCClient(grpcrpc.StaticResolver(s.endpoints),
                                            Target(topic="frozen"))
            tally = Tally()
            stop = asyncio.Event()
            out: dict[str, Any] = {"tally": tally}

            async def caller() -> None:
                while not stop.is_set():
                    try:
                        tally.call_ok(await client.call({}, "whoami"))
                    except grpcrpc.GrpcrpcError as err:
                        tally.errors.append(err)

            async def caster() -> None:
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        await client.cast({}, "echo", value=1)
                    except grpcrpc.GrpcrpcError as err:
                        tally.cast_errors.append(err)
                    tally.cast_blocks.append(time.monotonic() - started)
                    await asyncio.sleep(0.01)

            async def pinned_call() -> None:
                try:
                    await client.prepare(server="v0").call({}, "nap", seconds=60)
                except grpcrpc.GrpcrpcError as err:
                    out["error"] = err
                out["failed_at"] = time.monotonic()

            napper = asyncio.create_task(pinned_call())
            await asyncio.to_thread(s.expect, 0, "IN-CALL")
            load = [asyncio.create_task(caller()) for _ in range(tasks)]
            load.append(asyncio.create_task(caster()))
            deadline = time.monotonic() + 30
            while (min(tally.ok[f"v{i}"] for i in range(3)) < 20
                   and time.monotonic() < deadline):
                await asyncio.sleep(0.01)
            s.freeze(0)
            tally.frozen_at = out["frozen_at"] = time.monotonic()
            started = time.monotonic()
            try:
                await client.prepare(server="v0").cast({}, "echo", value=2)
            except (grpcrpc.DeliveryError, grpcrpc.MessagingTimeout) as err:
                out["cast_error"] = err
            out["pinned_cast_block"] = time.monotonic() - started
            async with asyncio.timeout(DETECT_WITHIN + 10):
                await napper
            await asyncio.sleep(max(0.0, out["frozen_at"] + FREEZE - time.monotonic()))
            stop.set()
            async with asyncio.timeout(30):
                await asyncio.gather(*load)
            await client.close()
            return out

        out = asyncio.run(main())
    assert isinstance(out.get("error"), grpcrpc.DeliveryError), out
    assert out["failed_at"] - out["frozen_at"] < DETECT_WITHIN, out
    assert "cast_error" in out and out["pinned_cast_block"] < CAST_BOUND, out
    out["tally"].check(tasks)


def test_cast_accept_timeout_bounds_a_cast_when_probing_is_off() -> None:
    # With probes off, only the acceptance bound stands between a caster and a frozen server.
    with servers(1) as s:
        options = TransportOptions(probe_after=None, cast_accept_timeout=1.0)
        client = grpcrpc.RPCClient(grpcrpc.StaticResolver(s.endpoints), Target(topic="frozen"),
                                   options=options)
        client.cast({}, "echo", value=0)  # connected, stream open
        s.freeze(0)
        started = time.monotonic()
        with pytest.raises(grpcrpc.MessagingTimeout, match="cast_accept_timeout"):
            client.cast({}, "echo", value=1)
        assert 0.9 < time.monotonic() - started < 1.0 + 1.5
        assert client.transport.balancer.ejections.is_ejected(s.addresses[0])
        client.close()
