"""Deadlines for blocking grpc reads that take none: one thread per process cancels the calls
still waiting when their time is up.

grpc's blocking stream iterator cannot time out, and a thread that stands reading a stream
wakes ten times a second while it waits (grpc's sync API polls in 0.1 s slices, `grpc._common`).
One such thread per etcd keepalive stream is nothing in a process with one registry, but a
process holding thousands (a simulated region, a host running many agents) spends its cores on
those wake-ups. So a renewal reads its own answer, and this watchdog, asleep until the nearest
deadline, cancels the call if the answer is late.

>>> class Call:
...     def cancel(self): print("cancelled")
>>> dog = Watchdog()
>>> guard = dog.watch(Call(), 5.0)
>>> dog.release(guard)   # answered in time: not cancelled
False
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Protocol


class Cancellable(Protocol):
    def cancel(self) -> object: ...


class Guard:
    __slots__ = ("call", "deadline", "done", "fired")

    def __init__(self, call: Cancellable, deadline: float) -> None:
        self.call, self.deadline = call, deadline
        self.done = self.fired = False


class Watchdog:
    """`watch(call, timeout)` before a blocking read, `release(guard)` after it (True when the
    call was cancelled for being late, even if the answer came in the same instant)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Guard]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, call: Cancellable, timeout: float) -> Guard:
        guard = Guard(call, time.monotonic() + timeout)
        with self._cond:
            heapq.heappush(self._heap, (guard.deadline, next(self._seq), guard))
            if self._thread is None or not self._thread.is_alive():  # first use, or forked
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="grpcrpc-etcd-watchdog")
                self._thread.start()
            elif self._heap[0][2] is guard:
                self._cond.notify()  # a nearer deadline than the one it sleeps toward
        return guard

    def renew_lock(self) -> None:
        """Make the lock again, from `threading` as it is now; only before the first `watch()`.

        For `grpcrpc.oslo._eventlet`: this module is imported (and `WATCHDOG` made) while
        eventlet has `threading` green, and only later pointed back at the native module. A
        green lock shared by native threads stalls them: registries' renewals and closes
        waited up to 20 s on it."""
        with self._cond:  # a first watch() under way finishes with the old one
            if self._thread is None:
                self._cond = threading.Condition()

    def release(self, guard: Guard) -> bool:
        with self._cond:
            guard.done = True
            return guard.fired

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].done or self._heap[0][0] <= now):
                    _, _, guard = heapq.heappop(self._heap)
                    if not guard.done:
                        guard.fired = guard.done = True
                        guard.call.cancel()  # non-blocking: the reader sees CANCELLED
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


WATCHDOG = Watchdog()
