"""One process of a Nova-shaped fleet, on any oslo.messaging transport URL (rabbit://, grpc://
with or without `rabbit_transport_url`), serving its role and sending what that role sends.

Usage: python -m tests.oslo.fleet_main URL ROLE NAME LOGDIR

Prints "LOADED" once imported, then waits for a "GO" line on stdin before it connects (so a
restart costs the fleet no import time: the successor loads while its predecessor still runs).

| role | serves topic | sends, continuously |
|---|---|---|
| conductor | conductor | select_destinations calls, build_and_run_instance casts, refresh fanouts |
| scheduler | scheduler | nothing |
| compute | compute | calls conductor.object_action, fanouts scheduler.update_instance_info |

Each process writes what it received (`recv-NAME-PID.log`: "method id") and sent
(`send-NAME-PID.log`: JSON lines) in LOGDIR, and its life (`life-NAME-PID.log`: "READY t",
"STOPPING t"). Prints "READY" once serving and sending; stops gracefully when stdin closes:
the senders finish what they started, then oslo's server stops and waits, then the transport
is cleaned up; prints "STOPPED".
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
import threading
import time
from typing import Any

import oslo_messaging
from oslo_config import cfg

COMPUTES = [f"compute-{i}" for i in range(4)]
CALL_TIMEOUT = 30.0
TOPICS = {"conductor": "conductor", "scheduler": "scheduler", "compute": "compute"}


class Log:
    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 - closed at exit
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            self._file.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()


class FleetEndpoint:
    def __init__(self, name: str, received: Log) -> None:
        self.name = name
        self.received = received

    def _got(self, method: str, msg_id: str) -> None:
        self.received.write(f"{method} {msg_id}")

    def select_destinations(self, ctxt: dict[str, Any], msg_id: str) -> dict[str, str]:
        self._got("select_destinations", msg_id)
        return {"host": self.name, "id": msg_id}

    def object_action(self, ctxt: dict[str, Any], msg_id: str) -> dict[str, str]:
        self._got("object_action", msg_id)
        return {"by": self.name, "id": msg_id}

    def build_and_run_instance(self, ctxt: dict[str, Any], msg_id: str) -> None:
        self._got("build_and_run_instance", msg_id)

    def update_instance_info(self, ctxt: dict[str, Any], msg_id: str) -> None:
        self._got("update_instance_info", msg_id)

    def refresh(self, ctxt: dict[str, Any], msg_id: str) -> None:
        self._got("refresh", msg_id)


def path_of(url: str) -> str:
    """Which path the last send of this thread took."""
    if url.startswith("rabbit"):
        return "rabbit"
    if "rabbit_transport_url" not in url:
        return "grpc"
    from grpcrpc.oslo._routing import last_path

    return last_path() or "?"


class Sender:
    """Sends one kind of message every `interval` seconds until stopped, logging each."""

    def __init__(self, url: str, name: str, log: Log, kind: str, client: Any, method: str,
                 interval: float, target: Any = None) -> None:
        self.url, self.name, self.log, self.kind = url, name, log, kind
        self.client, self.method, self.interval = client, method, interval
        self.target = target  # a callable giving prepare() kwargs per message
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self._ids = itertools.count()

    def run(self) -> None:
        while not self.stopping.is_set():
            msg_id = f"{self.name}-{os.getpid()}-{self.method}-{next(self._ids)}"
            kwargs = self.target(msg_id) if self.target else {}
            client = self.client.prepare(**kwargs) if kwargs else self.client
            record: dict[str, Any] = {"kind": self.kind, "method": self.method, "id": msg_id,
                                      "to": kwargs.get("server"), "t0": time.time()}
            start = time.monotonic()
            try:
                if self.kind == "call":
                    result = client.call({}, self.method, msg_id=msg_id)
                    record["ok"] = isinstance(result, dict | str)
                else:
                    client.cast({}, self.method, msg_id=msg_id)
                    record["ok"] = True
            except Exception as err:  # every failure is recorded and counted by the test
                record["ok"] = False
                record["error"] = f"{type(err).__name__}: {err}"[:300]
            record["latency"] = time.monotonic() - start
            record["t1"] = time.time()
            record["path"] = path_of(self.url)
            self.log.write(json.dumps(record))
            self.stopping.wait(self.interval)


def main() -> None:
    url, role, name, logdir = sys.argv[1:5]
    pid = os.getpid()
    print("LOADED", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return
    logging.basicConfig(level=logging.WARNING, filename=os.path.join(logdir, f"err-{name}-{pid}.log"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
    received = Log(os.path.join(logdir, f"recv-{name}-{pid}.log"))
    sent = Log(os.path.join(logdir, f"send-{name}-{pid}.log"))
    life = Log(os.path.join(logdir, f"life-{name}-{pid}.log"))
    server = None
    if role in TOPICS:
        server = oslo_messaging.get_rpc_server(
            transport, oslo_messaging.Target(topic=TOPICS[role], server=name),
            [FleetEndpoint(name, received)], executor="threading")
        server.start()

    def client(topic: str, **kw: Any) -> Any:
        return oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic=topic, **kw),
                                             timeout=CALL_TIMEOUT)

    senders: list[Sender] = []
    if role == "conductor":
        rotate = itertools.cycle(COMPUTES)
        senders += [
            Sender(url, name, sent, "call", client("scheduler"), "select_destinations", 0.25),
            Sender(url, name, sent, "cast", client("compute"), "build_and_run_instance", 0.25,
                   target=lambda _id: {"server": next(rotate)}),
            Sender(url, name, sent, "fanout", client("compute", fanout=True), "refresh", 1.0),
        ]
    elif role == "compute":
        senders += [
            Sender(url, name, sent, "call", client("conductor"), "object_action", 1.0),
            Sender(url, name, sent, "fanout", client("scheduler", fanout=True),
                   "update_instance_info", 2.0),
        ]
    kind = "rabbit" if url.startswith("rabbit") else (
        "bridge" if "rabbit_transport_url" in url else "grpc")
    life.write(f"READY {time.time()} {kind}")
    for sender in senders:
        sender.thread.start()
    print("READY", flush=True)
    sys.stdin.read()  # until the test closes it
    for sender in senders:
        sender.stopping.set()
    for sender in senders:
        sender.thread.join()
    life.write(f"STOPPING {time.time()}")
    if server is not None:
        server.stop()
        life.write(f"STOPPED {time.time()}")
        server.wait()
        life.write(f"WAITED {time.time()}")
    transport.cleanup()
    life.write(f"CLEANED {time.time()}")
    for log in (received, sent, life):
        log.close()
    print("STOPPED", flush=True)


if __name__ == "__main__":
    main()
