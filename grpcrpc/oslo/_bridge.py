"""How the driver's callers (oslo's threads or green threads) meet its event loop.

grpcrpc's gRPC work — the server, the client's envelope streams, discovery — runs on one
asyncio loop in a native thread per driver. Callers hand it coroutines and wait for the result
*in their own world*: a plain thread waits on a thread event; an eventlet green thread waits on a
green event, so the hub keeps running other green threads meanwhile. Incoming messages go the
other way through a `Mailbox` that oslo's poll thread reads.

What differs between the two worlds is a `World`: `ThreadWorld` here, `GreenWorld` in
`grpcrpc.oslo._eventlet` (chosen by `current_world()` when eventlet has monkey-patched the
process).

>>> import asyncio
>>> bridge = Bridge(ThreadWorld(), "doctest")
>>> async def answer():
...     return 42
>>> bridge.run(answer())
42
>>> bridge.close()
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar

__all__ = [
    "Bridge",
    "LoopInbox",
    "Mailbox",
    "Pending",
    "ThreadWorld",
    "Waiter",
    "World",
    "current_world",
]

T = TypeVar("T")
log = logging.getLogger("grpcrpc.oslo")
_CLOSED_POLL = 0.5  # seconds a poll of a closed mailbox waits before saying "nothing"


class Waiter(Protocol):
    """Set once from any thread; waited for in the world that created it."""

    value: Any

    def set(self, value: Any) -> None: ...

    def wait(self, timeout: float | None) -> bool: ...


class World(Protocol):
    """Threads, events and loops as the process's concurrency model needs them."""

    def start_thread(self, target: Callable[[], None], name: str) -> None:
        """Start a native OS thread (never a green one)."""

    def new_loop(self) -> asyncio.AbstractEventLoop:
        """An event loop to run in a native thread."""

    def waiter(self) -> Waiter:
        """Something the calling thread can block on, set from the loop thread."""

    def mailbox_signal(self) -> tuple[Any, Callable[[], None]]:
        """(event the reader waits on, function the loop thread calls to set it)."""

    def native_lock(self) -> Any:
        """A lock that works across native threads (held only for a few instructions)."""

    def blocks_hub(self) -> bool:
        """Whether a blocking call in the current thread would stall other green threads."""


class _EventWaiter:
    __slots__ = ("_event", "value")

    def __init__(self, event: Any) -> None:
        self._event = event
        self.value: Any = None

    def set(self, value: Any) -> None:
        self.value = value
        self._event.set()

    def wait(self, timeout: float | None) -> bool:
        return bool(self._event.wait(timeout))


class ThreadWorld:
    """Plain threads (oslo's `threading` executor, no eventlet)."""

    def start_thread(self, target: Callable[[], None], name: str) -> None:
        threading.Thread(target=target, name=name, daemon=True).start()

    def new_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.new_event_loop()

    def waiter(self) -> Waiter:
        return _EventWaiter(threading.Event())

    def mailbox_signal(self) -> tuple[Any, Callable[[], None]]:
        event = threading.Event()
        return event, event.set

    def native_lock(self) -> Any:
        return threading.Lock()

    def blocks_hub(self) -> bool:
        return False


def current_world() -> World:
    """`GreenWorld` when eventlet has monkey-patched threads in this process, else threads.

    eventlet is looked for only if something already imported it: the driver never imports it.
    """
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is not None and patcher.is_monkey_patched("thread"):
        from grpcrpc.oslo._eventlet import GreenWorld

        return GreenWorld.get()
    return ThreadWorld()


class Pending(Generic[T]):
    """A coroutine submitted to the loop; `wait()` blocks (green-safely) for its result."""

    __slots__ = ("_bridge", "_task", "_waiter")

    def __init__(self, bridge: Bridge, waiter: Waiter) -> None:
        self._bridge = bridge
        self._waiter = waiter
        self._task: asyncio.Task[T] | None = None

    def wait(self, timeout: float | None = None) -> T:
        """The coroutine's result (or its exception). `TimeoutError` if it is still running
        after `timeout` seconds; it is then cancelled."""
        if not self._waiter.wait(timeout):
            self.cancel()
            raise TimeoutError(f"no result within {timeout}s")
        task: asyncio.Task[T] = self._waiter.value
        return task.result()

    def cancel(self) -> None:
        task = self._task
        if task is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs anyway
                self._bridge.loop.call_soon_threadsafe(task.cancel)


class Mailbox(Generic[T]):
    """Items from the loop thread to one reader (oslo's poll thread), in order.

    `put` says False once the reader is gone, so the loop can refuse the message honestly
    instead of leaving it where nobody will read it. After `stop()`, `get` hands out what is
    left, then closes the box and returns None.
    """

    def __init__(self, world: World) -> None:
        # The lock is native (it is taken by the loop thread too); it is only ever held for a
        # few instructions, so a green thread taking it never blocks the hub noticeably.
        self._lock = world.native_lock()
        self._event, self._wake = world.mailbox_signal()
        self._items: collections.deque[T] = collections.deque()
        self._stopping = False
        self._closed = False

    def put(self, item: T) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._items.append(item)
        self._wake()
        return True

    def get(self, timeout: float | None = None) -> T | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # Clear before looking, so a put after the look still wakes the wait below.
            self._event.clear()
            with self._lock:
                if self._items:
                    return self._items.popleft()
                was_closed, stopping = self._closed, self._stopping
                if stopping:
                    self._closed = True
            remaining = None if deadline is None else deadline - time.monotonic()
            if stopping:
                if was_closed:
                    # Nothing can come any more; a reader that polls on (its owner never
                    # stopped it) is slowed down rather than left spinning.
                    self._event.wait(_CLOSED_POLL if remaining is None
                                     else max(0.0, min(remaining, _CLOSED_POLL)))
                return None
            if remaining is not None and remaining <= 0:
                return None
            self._event.wait(remaining)

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        self._wake()

    def close(self) -> list[T]:
        """Close now; the items nobody read (the caller settles them)."""
        with self._lock:
            self._stopping = self._closed = True
            left = list(self._items)
            self._items.clear()
        self._wake()
        return left


class LoopInbox:
    """Callbacks from other threads (oslo's workers replying) to run on the loop.

    `loop.call_soon_threadsafe` writes to the loop's wake-up pipe once per callback; under load
    (32 callers, a reply every few tens of microseconds) the loop is busy anyway, so the inbox
    writes it once for everything posted until the loop gets to it, and runs them in order.

    >>> import asyncio
    >>> loop = asyncio.new_event_loop()
    >>> inbox, seen = LoopInbox(loop, ThreadWorld().native_lock()), []
    >>> inbox.post(seen.append, 1); inbox.post(seen.append, 2)
    >>> loop.run_until_complete(asyncio.sleep(0)); seen
    [1, 2]
    >>> loop.close()
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, lock: Any) -> None:
        self._loop = loop
        self._lock = lock  # native: taken by the loop thread too, for a few instructions
        self._items: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        self._scheduled = False

    def post(self, fn: Callable[..., object], *args: Any) -> None:
        """Run `fn(*args)` on the loop soon; RuntimeError if the loop is closed."""
        with self._lock:
            self._items.append((fn, args))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._run)
        except RuntimeError:  # the loop is closed: nothing will run them
            with self._lock:
                self._scheduled = False
                self._items.clear()
            raise

    def _run(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._scheduled = False
        for fn, args in items:
            try:
                fn(*args)
            except Exception:  # one bad callback must not drop the others
                log.exception("callback %r on the driver's loop failed", fn)


class Bridge:
    """One event loop in a native thread, and the way callers run coroutines on it."""

    def __init__(self, world: World, name: str) -> None:
        self.world = world
        self.loop = world.new_loop()
        self.inbox = LoopInbox(self.loop, world.native_lock())
        self._closed = False
        world.start_thread(self._run, f"grpcrpc-oslo-{name}")

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Pending[T]:
        """Start `coro` on the loop (in a copy of the caller's contextvars, so a trace
        follows the message); returns at once."""
        pending: Pending[T] = Pending(self, self.world.waiter())
        context = contextvars.copy_context()

        def start() -> None:
            task = self.loop.create_task(coro, context=context)
            pending._task = task
            task.add_done_callback(pending._waiter.set)

        try:
            self.loop.call_soon_threadsafe(start)
        except RuntimeError:  # the loop is closed
            coro.close()
            raise
        return pending

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the loop and wait for its result (see `Pending.wait`)."""
        if self.on_loop():
            coro.close()
            raise RuntimeError("Bridge.run() called from the loop itself would deadlock")
        return self.submit(coro).wait(timeout)

    def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Call a blocking function without blocking the caller's hub (in a native thread when
        the caller is a green thread; directly otherwise)."""
        if not self.world.blocks_hub():
            return fn(*args)
        return self.run(asyncio.to_thread(fn, *args))

    def on_loop(self) -> bool:
        return self.loop.is_running() and _running_loop() is self.loop

    def close(self) -> None:
        """Stop the loop (what runs on it should have been closed first)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.loop.stop)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
