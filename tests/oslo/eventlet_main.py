"""The driver inside an eventlet-monkey-patched process (as nova runs), checked from inside.

Usage: python -m tests.oslo.eventlet_main URL REMOTE_TOPIC LOCAL_TOPIC

Monkey-patches first, as services and oslo's own functional tests do, then:
- serves LOCAL_TOPIC (server "green") with oslo's eventlet executor;
- calls REMOTE_TOPIC (a plain-threads server process) and LOCAL_TOPIC from green threads,
  while a green ticker measures how long the hub ever went without running it;
- prints "RESULT <json>", then serves until stdin is closed (the test calls it meanwhile),
  and prints "STOPPED".
"""

from __future__ import annotations

import eventlet

eventlet.monkey_patch()

import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import oslo_messaging  # noqa: E402
from eventlet import patcher, tpool  # noqa: E402
from oslo_config import cfg  # noqa: E402

from tests.oslo.endpoints import MODULE, AppError, Endpoint  # noqa: E402

CALLS = 1000
CONCURRENT = (32, 1000)  # green threads calling at once


def threading_is_hub() -> bool:
    """Whether the caller runs in the hub's (main) native thread."""
    native = patcher.original("threading")
    return bool(native.get_ident() == native.main_thread().ident)


class Ticker:
    """A green thread that should run every 10 ms; the longest gap says whether the hub was
    ever blocked."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self.ticks = 0
        self._last = time.monotonic()
        eventlet.spawn_n(self._run)

    def reset(self) -> None:
        self.max_gap, self.ticks = 0.0, 0
        self._last = time.monotonic()

    def _run(self) -> None:
        while True:
            eventlet.sleep(0.01)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - self._last)
            self.ticks += 1
            self._last = now


class InFlight:
    """Green calls through one client, counting how many were in flight at once."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.now = self.most = 0

    def echo(self, i: int) -> Any:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            return self.client.call({}, "echo", value=i)
        finally:
            self.now -= 1


def recorded(client: Any, value: str, timeout: float = 10.0) -> list[Any]:
    """What the server recorded, once `value` is among it (or at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        seen: list[Any] = client.call({}, "get_recorded")
        if value in seen or time.monotonic() > deadline:
            return seen
        eventlet.sleep(0.01)


def main() -> None:
    url, remote_topic, local_topic = sys.argv[1:4]
    result: dict[str, Any] = {}
    server_transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
    server = oslo_messaging.get_rpc_server(
        server_transport, oslo_messaging.Target(topic=local_topic, server="green"),
        [Endpoint("green")], executor="eventlet")
    server.start()
    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url, allowed_remote_exmods=[MODULE])
    remote = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic=remote_topic),
                                           timeout=30)
    local = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic=local_topic),
                                          timeout=30)
    ticker = Ticker()

    # One slow remote call: a blocked hub would stop the ticker for its whole second.
    ticker.reset()
    started = time.monotonic()
    result["slow_call"] = remote.call({}, "sleep", seconds=1.0)
    result["slow_call_seconds"] = time.monotonic() - started
    result["ticks_during_slow_call"] = ticker.ticks

    # 1,000 calls from green threads, 32 and then 1,000 at once (docs/oslo.md gives the hub's
    # longest stall for each): the ticker says how long the hub went without running it.
    for name, client in (("remote", remote), ("local", local)):
        for at_once in CONCURRENT:
            pool = eventlet.GreenPool(at_once)
            calls = InFlight(client)
            ticker.reset()
            started = time.monotonic()
            values = list(pool.imap(calls.echo, range(CALLS)))
            key = f"concurrent_{name}_{at_once}"
            result[f"{key}_ok"] = values == list(range(CALLS))
            result[f"{key}_seconds"] = time.monotonic() - started
            result[f"{key}_hub_gap"] = ticker.max_gap
            result[f"{key}_most_in_flight"] = calls.most
    ticker.reset()
    result["local_whoami"] = local.call({}, "whoami")
    try:
        remote.call({}, "fail", code=5)
    except AppError as err:
        result["remote_error"] = [type(err).__name__, err.kwargs]
    try:
        remote.prepare(timeout=1).call({}, "sleep", seconds=3)
    except oslo_messaging.MessagingTimeout:
        result["timeout"] = True
    remote.cast({}, "record", value="green-cast")
    local.prepare(fanout=True).cast({}, "record", value="green-fanout")
    # A cast returns once accepted, before it runs: wait for the record to appear.
    result["remote_recorded"] = recorded(remote, "green-cast")
    result["local_recorded"] = recorded(local, "green-fanout")
    # A record logged by a native thread reaches the application's handlers, in the hub.
    seen: list[tuple[str, bool]] = []

    class Remember(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), threading_is_hub()))

    logging.getLogger().addHandler(Remember(logging.WARNING))
    tpool.execute(logging.getLogger("grpcrpc.test").warning, "from a native thread")
    for _ in range(100):
        if seen:
            break
        eventlet.sleep(0.01)
    result["native_log"] = seen
    result["max_hub_gap"] = ticker.max_gap
    result["ticks"] = ticker.ticks
    print("RESULT", json.dumps(result), flush=True)

    tpool.execute(sys.stdin.read)  # serve the test's calls until it closes stdin
    server.stop()
    server.wait()
    transport.cleanup()
    server_transport.cleanup()
    print("STOPPED", flush=True)


if __name__ == "__main__":
    main()
