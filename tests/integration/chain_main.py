"""One service of a call chain A → B → C, in its own process (tests/integration/test_deadline_chain.py).

Usage: python chain_main.py b|c EVENTS_FILE [C_ADDRESS]   — prints "ADDRESS host:port" once
serving. Every endpoint appends what happened to it to EVENTS_FILE, one JSON object a line
(`time.monotonic()` is system-wide on Linux, so times compare across the processes):
`{"hop": "b", "tag": ..., "event": "started" | "gave_up" | "cancelled" | "deadline_passed", "t": ...}`.

- c: `wait_async` sleeps until it is cancelled; `wait_sync` (thread pool) works in small steps
  until `grpcrpc.remaining_time()` says its caller gave up.
- b: `relay_async` (coroutine) and `relay_sync` (thread pool) call C's `last` method with the
  client's default timeout (60 s) and no deadline of their own: all they have is inherited.
- both: `active()`, how many of their endpoints are still running.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from typing import Any

import grpcrpc
from grpcrpc import AsyncRPCClient, Endpoint, RPCClient, RPCServer, StaticResolver, Target


class Events:
    def __init__(self, path: str, hop: str) -> None:
        self._path = path
        self._hop = hop
        self._lock = threading.Lock()
        self.active = 0

    def record(self, tag: str, event: str, **extra: Any) -> None:
        line = json.dumps({"hop": self._hop, "tag": tag, "event": event, "t": time.monotonic(),
                           "pid": os.getpid(), **extra})
        with self._lock, open(self._path, "a") as f:
            f.write(line + "\n")

    def enter(self, tag: str) -> None:
        with self._lock:
            self.active += 1
        msg = grpcrpc.current_message()
        self.record(tag, "started", remaining=grpcrpc.remaining_time(),
                    msg_id=msg.id if msg else None)

    def leave(self) -> None:
        with self._lock:
            self.active -= 1


class Last:
    """C: work that only stops when cancelled, or when its deadline passes."""

    def __init__(self, events: Events) -> None:
        self.events = events

    async def wait_async(self, ctxt: dict[str, Any], tag: str) -> None:
        self.events.enter(tag)
        try:
            await asyncio.Event().wait()  # until cancelled: nothing sets it
        except asyncio.CancelledError:
            self.events.record(tag, "cancelled")
            raise
        finally:
            self.events.leave()

    def wait_sync(self, ctxt: dict[str, Any], tag: str) -> None:
        self.events.enter(tag)
        try:
            end = time.monotonic() + 600
            while time.monotonic() < end:
                left = grpcrpc.remaining_time()
                if left is not None and left <= 0:
                    self.events.record(tag, "deadline_passed")
                    raise grpcrpc.MessagingTimeout("the caller gave up")
                time.sleep(0.002)  # one small step of work
        finally:
            self.events.leave()

    def active(self, ctxt: dict[str, Any]) -> int:
        return self.events.active


class Middle:
    """B: relays to C with nothing but the deadline it inherits."""

    def __init__(self, events: Events, c_address: str) -> None:
        self.events = events
        self._resolver = StaticResolver([Endpoint(c_address, "chain-c", "c")])
        self._sync = RPCClient(self._resolver, Target(topic="chain-c"))  # timeout: 60 s default
        self._async: AsyncRPCClient | None = None

    async def relay_async(self, ctxt: dict[str, Any], tag: str, last: str) -> Any:
        if self._async is None:
            self._async = AsyncRPCClient(self._resolver, Target(topic="chain-c"))
        self.events.enter(tag)
        try:
            return await self._async.call(ctxt, last, tag=tag)
        except grpcrpc.MessagingTimeout:
            self.events.record(tag, "gave_up", why="timeout")
            raise
        except asyncio.CancelledError:
            self.events.record(tag, "gave_up", why="cancelled")
            raise
        finally:
            self.events.leave()

    def relay_sync(self, ctxt: dict[str, Any], tag: str, last: str) -> Any:
        self.events.enter(tag)
        try:
            return self._sync.call(ctxt, last, tag=tag)
        except grpcrpc.MessagingTimeout:
            self.events.record(tag, "gave_up", why="timeout")
            raise
        finally:
            self.events.leave()

    def active(self, ctxt: dict[str, Any]) -> int:
        return self.events.active


async def main() -> None:
    hop, path = sys.argv[1], sys.argv[2]
    events = Events(path, hop)
    endpoint: Any = Last(events) if hop == "c" else Middle(events, sys.argv[3])
    server = RPCServer(Target(topic=f"chain-{hop}", server=hop), [endpoint])
    await server.start()
    print("ADDRESS", server.address, flush=True)
    await server.wait()


if __name__ == "__main__":
    asyncio.run(main())
