"""oslo.messaging `rabbit://` processes for the RabbitMQ storm: servers and a caller."""

from __future__ import annotations

import asyncio
import collections
import os
import random
import threading
import time
from typing import Any

from bench.scale.servers import Receipts

# -- RabbitMQ -----------------------------------------------------------------------------------------

class RabbitServers:
    """`count` oslo.messaging RPC servers of topic `compute` on one rabbit:// transport."""

    def __init__(self, a: dict[str, Any]) -> None:
        import warnings

        import oslo_messaging
        from oslo_config import cfg

        warnings.simplefilter("ignore")
        self.transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=a["url"])
        self.receipts = Receipts()
        self.servers = [oslo_messaging.get_rpc_server(
            self.transport, oslo_messaging.Target(topic="compute", server=f"hv{i:05d}"),
            [SyncCompute(self.receipts)], executor="threading")
            for i in range(a["first"], a["first"] + a["count"])]

    async def start(self) -> dict[str, Any]:
        for s in self.servers:
            await asyncio.to_thread(s.start)
        return {"pid": os.getpid()}

    async def op_receipts(self, c: dict[str, Any]) -> dict[str, Any]:
        return {"calls": dict(self.receipts.calls), "casts": dict(self.receipts.casts)}

    async def close(self) -> None:
        for s in self.servers:
            s.stop()
        for s in self.servers:
            s.wait()
        self.transport.cleanup()


class SyncCompute:
    def __init__(self, receipts: Receipts) -> None:
        self._r = receipts
        self._lock = threading.Lock()

    def ping(self, ctxt: Any, key: str) -> str:
        with self._lock:
            self._r.calls[key] += 1
        return key

    def build(self, ctxt: Any, key: str) -> None:
        with self._lock:
            self._r.casts[key] += 1


class RabbitLoad:
    """Calls and casts through oslo.messaging's rabbit driver from `threads` threads."""

    def __init__(self, a: dict[str, Any]) -> None:
        import warnings

        import oslo_messaging
        from oslo_config import cfg

        warnings.simplefilter("ignore")
        self.a = a
        self.transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=a["url"])
        self.client = oslo_messaging.get_rpc_client(
            self.transport, oslo_messaging.Target(topic="compute"), timeout=a["timeout"])
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.ok: dict[str, list[str]] = {"call": [], "cast": []}
        self.failed: collections.Counter[str] = collections.Counter()
        self.hung = 0
        self.longest = 0.0

    async def start(self) -> dict[str, Any]:
        return {}

    def _loop(self, t: int, rate: float) -> None:
        seq = 0
        start = time.monotonic()
        while not self.stop.is_set():
            kind = "call" if seq % 2 else "cast"
            key = f"r{t}:{seq}"
            server = f"hv{random.randrange(self.a['servers']):05d}"
            began = time.monotonic()
            outcome = "ok"
            try:
                target = self.client.prepare(server=server)
                if kind == "call":
                    target.call({}, "ping", key=key)
                else:
                    target.cast({}, "build", key=key)
            except Exception as exc:
                outcome = f"{kind} {type(exc).__name__}"
            took = time.monotonic() - began
            with self.lock:
                self.longest = max(self.longest, took)
                # oslo's timeout is the deadline: a message that took 5 s longer hung, whether
                # it ended well or not (a cast blocks while the driver reconnects).
                if took > self.a["timeout"] + 5:
                    self.hung += 1
                elif outcome == "ok":
                    self.ok[kind].append(key)
                else:
                    self.failed[outcome] += 1
            seq += 1
            time.sleep(max(0.0, start + seq / rate - time.monotonic()))

    async def op_start(self, c: dict[str, Any]) -> dict[str, Any]:
        self._reset()
        self.stop.clear()
        per = c["rate"] / self.a["threads"]
        self.threads = [threading.Thread(target=self._loop, args=(t, per), daemon=True)
                        for t in range(self.a["threads"])]
        for th in self.threads:
            th.start()
        return {}

    async def op_stop(self, c: dict[str, Any]) -> dict[str, Any]:
        self.stop.set()
        deadline = time.monotonic() + self.a["timeout"] + 10
        for th in self.threads:
            await asyncio.to_thread(th.join, max(0.1, deadline - time.monotonic()))
        with self.lock:
            hung = self.hung + sum(th.is_alive() for th in self.threads)
            return {"ok": self.ok, "failed": dict(self.failed), "hung": hung,
                    "longest": self.longest}

    async def close(self) -> None:
        self.transport.cleanup()

