"""oslo's `timeout` is the deadline, and nested calls from inside an oslo endpoint inherit it.

A chain through oslo.messaging's own API (servers with the threading executor, as nova runs
them; every oslo endpoint is a plain function): A calls B with a 1 s timeout, B's endpoint calls
C with oslo's default 60 s, C works in small steps until `grpcrpc.remaining_time()` says its
caller gave up. Before the deadline was ambient, B waited its own 60 s and C worked on.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import oslo_messaging
import pytest
from oslo_config import cfg

import grpcrpc
from grpcrpc.testing.etcd import EtcdServer
from tests.conftest import wait_until
from tests.oslo.conftest import grpc_url

TIMEOUT = 1.0
LATE = 0.3  # seconds past A's deadline a hop may give up on this loaded machine


class Last:
    def __init__(self) -> None:
        self.events: dict[str, tuple[str, float]] = {}
        self.msg_ids: list[str] = []

    def work(self, ctxt: dict[str, Any], tag: str) -> None:
        served = grpcrpc.current_message()
        assert served is not None
        self.msg_ids.append(served.id)
        while True:
            left = grpcrpc.remaining_time()
            if left is not None and left <= 0:
                self.events[tag] = ("deadline_passed", time.monotonic())
                raise oslo_messaging.MessagingTimeout("my caller gave up")
            if time.monotonic() - (served.deadline or 0) > 60:
                self.events[tag] = ("worked on", time.monotonic())
                return
            time.sleep(0.002)

    def remaining(self, ctxt: dict[str, Any]) -> float | None:
        served = grpcrpc.current_message()
        assert served is not None
        self.msg_ids.append(served.id)
        return grpcrpc.remaining_time()


class Middle:
    def __init__(self, transport: Any, topic: str) -> None:
        self.c = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic=topic))
        self.events: dict[str, tuple[str, float, float | None]] = {}

    def relay(self, ctxt: dict[str, Any], tag: str) -> None:
        inherited = grpcrpc.remaining_time()
        try:
            self.c.call(ctxt, "work", tag=tag)  # oslo's default timeout: 60 s
        except oslo_messaging.MessagingTimeout:
            self.events[tag] = ("gave_up", time.monotonic(), inherited)
            raise

    def ping(self, ctxt: dict[str, Any]) -> None:
        self.c.call(ctxt, "remaining")  # B's client connects to C

    def late(self, ctxt: dict[str, Any]) -> str:
        """Waits out its caller's deadline, then calls: that call is never sent."""
        while (grpcrpc.remaining_time() or 0) > 0:
            time.sleep(0.002)
        try:
            self.c.call(ctxt, "remaining")
        except oslo_messaging.MessagingTimeout as err:
            return f"refused: {err}"
        return "sent"


@pytest.fixture
def chain(etcd: EtcdServer) -> Iterator[tuple[Any, Middle, Last, str]]:
    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=grpc_url(etcd))
    b_topic, c_topic = f"b-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    middle, last = Middle(transport, c_topic), Last()
    servers = [
        # oslo picks the threading executor in a process without eventlet.
        oslo_messaging.get_rpc_server(transport, oslo_messaging.Target(topic=t, server="s"), [e])
        for t, e in ((b_topic, middle), (c_topic, last))
    ]
    for server in servers:
        server.start()
    try:
        yield transport, middle, last, b_topic
    finally:
        for server in servers:
            server.stop()
        for server in servers:
            server.wait()
        transport.cleanup()


def test_nested_oslo_calls_share_the_first_callers_deadline(
        chain: tuple[Any, Middle, Last, str]) -> None:
    transport, middle, last, b_topic = chain
    a = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic=b_topic),
                                      timeout=TIMEOUT)
    a.call({}, "ping")  # connect every hop first: the chain's timing, not the handshakes'
    tag = uuid.uuid4().hex[:8]
    start = time.monotonic()
    with pytest.raises(oslo_messaging.MessagingTimeout):
        a.call({}, "relay", tag=tag)
    deadline, a_raised = start + TIMEOUT, time.monotonic()
    wait_until(lambda: tag in middle.events and tag in last.events, 10,
               "B to give up and C to see its deadline pass")
    b_event, b_at, inherited = middle.events[tag]
    c_event, c_at = last.events[tag]
    assert (b_event, c_event) == ("gave_up", "deadline_passed")
    assert inherited is not None and 0.5 < inherited <= TIMEOUT
    late = {"A raised": a_raised - deadline, "B gave up": b_at - deadline,
            "C saw its deadline pass": c_at - deadline}
    print(f"\noslo chain (threading executor), A timeout {TIMEOUT}s; seconds past A's "
          "deadline: " + ", ".join(f"{k} {v:+.4f}" for k, v in late.items()))
    assert all(-0.01 <= v <= LATE for v in late.values()), late


def test_a_call_from_an_endpoint_whose_caller_gave_up_is_not_sent(
        chain: tuple[Any, Middle, Last, str]) -> None:
    transport, middle, last, b_topic = chain
    a = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic=b_topic),
                                      timeout=0.5)
    result: list[str] = []
    calls_before = len(last.msg_ids)

    # B's endpoint outlives A's call; what it then tries is what we look at.
    original = middle.late

    def late(ctxt: dict[str, Any]) -> str:
        outcome = original(ctxt)
        result.append(outcome)
        return outcome

    middle.late = late  # type: ignore[method-assign]
    with pytest.raises(oslo_messaging.MessagingTimeout):
        a.call({}, "late")
    wait_until(lambda: result, 10, "B's endpoint to finish")
    assert re.match(r"refused: .*deadline it inherits has passed; not sent", result[0]), result
    assert len(last.msg_ids) == calls_before  # C never saw it


def test_oslo_msg_id_is_the_envelope_id(chain: tuple[Any, Middle, Last, str],
                                        caplog: pytest.LogCaptureFixture) -> None:
    transport, middle, last, _ = chain
    c_topic = middle.c.target.topic
    c = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic=c_topic), timeout=5)
    with caplog.at_level(logging.DEBUG, logger="oslo_messaging.rpc.server"):
        left = c.call({}, "remaining")
        wait_until(lambda: "Receive incoming message" in caplog.text, 5, "oslo's log line")
    # The endpoint sees its caller's deadline (oslo's timeout, 5 s) ...
    assert left is not None and 4 < left <= 5
    # ... and oslo logs, as the message id, the envelope id (which traces show) that grpcrpc's
    # server made ambient for the endpoint.
    logged = re.findall(r"Receive incoming message with id (\S+) and method: remaining", caplog.text)
    assert logged == last.msg_ids[-1:], (logged, last.msg_ids)
