"""What each connection may make a server hold, and a thread pool that is fair between them.

A server has a few shared bounds (threads plus their queue, coroutines) and many peers. A bound
alone protects the server but not the other peers: with one FIFO queue, a greedy peer that
fills it makes everyone else wait behind its work. So:

- `Admission` counts, per connection (gRPC's peer string names one TCP connection), what it
  holds: admitted envelopes (`Limits.per_connection`), and its slots in the thread pool and
  among coroutines, each at most `Limits.connection_share` of the whole while other
  connections hold some (alone, a connection may use more). The last eighth of
  each is kept for connections that hold little (under a sixteenth): a peer spreading its
  flood over several connections fills the rest, not the part a quiet peer needs. It also
  counts the reply bytes queued for a connection that it has not read yet (HTTP/2
  backpressure), so a peer that stops reading is stopped being read.
- `FairPool` runs plain functions on a fixed number of threads and, when they are all busy,
  queues work per connection and takes it round-robin: a call from a quiet peer waits for the
  next free thread, not behind everything a greedy peer queued.

Both live on the server's event loop (only `FairPool`'s completion hop comes from a thread).

>>> adm = Admission(per_connection=10, sync_capacity=8, coroutines=8, share=0.5,
...                 connection_unsent=1 << 20)
>>> adm.admit("peer-b", is_async=False)
''
>>> [adm.admit("peer-a", is_async=False) for _ in range(5)]
['', '', '', '', "this connection's share of the thread pool"]
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import math
from collections.abc import Callable
from typing import Any

__all__ = ["Admission", "FairPool"]


class _Holding:
    """What one connection holds now."""

    __slots__ = ("async_", "room", "sync", "total", "unsent")

    def __init__(self) -> None:
        self.total = 0  # admitted envelopes
        self.sync = 0  # thread-pool slots (running or queued)
        self.async_ = 0  # coroutine slots
        self.unsent = 0  # reply bytes queued and not yet taken by the peer
        self.room: asyncio.Event | None = None  # set when `unsent` is back under the bound

    def idle(self) -> bool:
        return not (self.total or self.unsent) and self.room is None


class Admission:
    """Per-connection accounting of a server's bounds (see the module docstring).

    `admit` answers "" when the envelope is admitted, else what is full (for the OVERLOADED
    reply); every admitted envelope must be `release`d exactly once.
    """

    def __init__(self, *, per_connection: int, sync_capacity: int, coroutines: int,
                 share: float, connection_unsent: int) -> None:
        self.per_connection = per_connection
        self.sync_capacity = sync_capacity
        self.coroutines = coroutines
        # A connection may hold at most this many of each kind of slot: the rest is left for
        # the others even when one peer would take everything.
        self.sync_share = max(1, math.ceil(sync_capacity * share))
        self.async_share = max(1, math.ceil(coroutines * share))
        # The last slots are kept for light connections (holding under `*_light`).
        self.sync_reserve, self.sync_light = sync_capacity // 8, max(1, sync_capacity // 16)
        self.async_reserve, self.async_light = coroutines // 8, max(1, coroutines // 16)
        self.connection_unsent = connection_unsent
        self.sync_active = 0
        self.async_active = 0
        self._peers: dict[str, _Holding] = {}

    def _holding(self, peer: str) -> _Holding:
        h = self._peers.get(peer)
        if h is None:
            h = self._peers[peer] = _Holding()
        return h

    def _forget_if_idle(self, peer: str, h: _Holding) -> None:
        if h.idle():
            self._peers.pop(peer, None)

    def held(self, peer: str) -> int:
        h = self._peers.get(peer)
        return h.total if h is not None else 0

    def admit(self, peer: str, *, is_async: bool) -> str:
        h = self._peers.get(peer)
        total = h.total if h is not None else 0
        if total >= self.per_connection:
            return "this connection's share"
        if is_async:
            held = h.async_ if h is not None else 0
            if self.async_active >= self.coroutines:
                return "coroutine"
            if held >= self.async_share and self.async_active > held:
                return "this connection's share of coroutines"
            if (held >= self.async_light
                    and self.async_active >= self.coroutines - self.async_reserve):
                return "coroutine (the rest is kept for other connections)"
        else:
            held = h.sync if h is not None else 0
            if self.sync_active >= self.sync_capacity:
                return "thread pool"
            if held >= self.sync_share and self.sync_active > held:
                return "this connection's share of the thread pool"
            if (held >= self.sync_light
                    and self.sync_active >= self.sync_capacity - self.sync_reserve):
                return "thread pool (the rest is kept for other connections)"
        h = h if h is not None else self._holding(peer)
        h.total += 1
        if is_async:
            h.async_ += 1
            self.async_active += 1
        else:
            h.sync += 1
            self.sync_active += 1
        return ""

    def release(self, peer: str, *, is_async: bool) -> None:
        h = self._peers[peer]
        h.total -= 1
        if is_async:
            h.async_ -= 1
            self.async_active -= 1
        else:
            h.sync -= 1
            self.sync_active -= 1
        self._forget_if_idle(peer, h)

    # -- replies a connection has not taken yet -------------------------------------------

    def unsent_changed(self, peer: str, delta: int) -> None:
        """A stream of `peer` queued (+) or wrote (-) `delta` reply bytes."""
        h = self._holding(peer)
        h.unsent += delta
        if h.room is not None and h.unsent <= self.connection_unsent:
            h.room.set()
            h.room = None
        self._forget_if_idle(peer, h)

    def unsent(self, peer: str) -> int:
        h = self._peers.get(peer)
        return h.unsent if h is not None else 0

    async def room(self, peer: str) -> None:
        """Return once `peer`'s unsent replies are within the bound (at once if they are)."""
        while True:
            h = self._peers.get(peer)
            if h is None or h.unsent <= self.connection_unsent:
                return
            if h.room is None:
                h.room = asyncio.Event()
            await h.room.wait()


class _Job:
    __slots__ = ("args", "func", "future")

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.func = func
        self.args = args
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()


class FairPool:
    """`threads` threads for plain functions; queued work is taken round-robin by connection.

    `submit` (on the event loop) returns a `concurrent.futures.Future`: cancelling it while it
    is queued means it never runs; once a thread took it, it runs to the end (as a
    ThreadPoolExecutor's futures do).
    """

    def __init__(self, threads: int, name: str) -> None:
        self._threads = threads
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix=name)
        self._running = 0
        # peer -> its queued jobs; dict order is the round-robin order.
        self._queues: dict[str, collections.deque[_Job]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def submit(self, peer: str, func: Callable[..., Any], *args: Any
               ) -> concurrent.futures.Future[Any]:
        if self._closed:
            raise RuntimeError("the pool is shut down")
        self._loop = asyncio.get_running_loop()
        job = _Job(func, args)
        if self._running < self._threads and not self._queues:
            self._start(job)
        else:
            self._queues.setdefault(peer, collections.deque()).append(job)
            self._next()
        return job.future

    def _start(self, job: _Job) -> bool:
        if not job.future.set_running_or_notify_cancel():
            return False  # cancelled while it queued
        self._running += 1
        inner = self._executor.submit(job.func, *job.args)
        inner.add_done_callback(lambda f: self._finished(job, f))
        return True

    def _finished(self, job: _Job, inner: concurrent.futures.Future[Any]) -> None:
        # On the worker thread: hand the outcome over, then free the slot on the loop.
        error = inner.exception() if not inner.cancelled() else concurrent.futures.CancelledError()
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(inner.result())
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._done)

    def _done(self) -> None:
        self._running -= 1
        self._next()

    def _next(self) -> None:
        """Start queued jobs, one per connection in turn, while threads are free."""
        while self._running < self._threads and self._queues:
            peer = next(iter(self._queues))
            queue = self._queues.pop(peer)
            job = queue.popleft()
            if queue:
                self._queues[peer] = queue  # to the back of the round
            self._start(job)

    def shutdown(self) -> None:
        """Cancel what is queued; threads finish what they run."""
        self._closed = True
        for queue in self._queues.values():
            for job in queue:
                job.future.cancel()
        self._queues.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
