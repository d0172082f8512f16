"""The driver in eventlet-monkey-patched processes (oslo's eventlet executor, green callers),
talking to and from a plain-threads process. Each eventlet process is a subprocess that
monkey-patches before anything else, as services do."""

from __future__ import annotations

import concurrent.futures
import json
import time
import uuid

import oslo_messaging
import pytest
from oslo_config import cfg

from grpcrpc.testing.etcd import EtcdServer
from tests.oslo.conftest import ServerProcess, grpc_url, start_servers

pytest.importorskip("eventlet")


def test_green_process_calls_and_serves(etcd: EtcdServer, servers: list[ServerProcess]) -> None:
    url = grpc_url(etcd)
    remote_topic, local_topic = f"r-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    start_servers(servers, url, remote_topic, ["plain"])
    green = ServerProcess(url, remote_topic, local_topic, module="tests.oslo.eventlet_main")
    servers.append(green)
    green.start_process()
    result = json.loads(green.wait_line("RESULT", 120).split(" ", 1)[1])

    assert result["slow_call"] == "plain"
    # The hub kept running while a green thread waited a second for its answer...
    assert result["ticks_during_slow_call"] >= 20, result
    # ... and never stalled for long through 1,000 concurrent green calls.
    assert result["max_hub_gap"] < 0.5, result
    assert result["concurrent_remote_ok"] and result["concurrent_local_ok"]
    assert result["local_whoami"] == "green"
    assert result["remote_error"] == ["AppError_Remote", {"code": 5, "server": "plain"}]
    assert result["timeout"] is True
    assert result["remote_recorded"] == ["green-cast"]
    assert result["local_recorded"] == ["green-fanout"]
    assert result["native_log"] == [["from a native thread", True]]

    # A plain-threads client calls the green server.
    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
    try:
        c = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic=local_topic),
                                          timeout=10)
        assert c.call({}, "echo", value={"from": "threads"}) == {"from": "threads"}
    finally:
        transport.cleanup()
    assert green.stop() == 0
    green.wait_line("STOPPED", 5)


def test_green_server_process(etcd: EtcdServer, servers: list[ServerProcess]) -> None:
    """A server run with oslo's eventlet executor, called from this process."""
    url = grpc_url(etcd)
    t = f"e-{uuid.uuid4().hex[:8]}"
    start_servers(servers, url, t, ["e1"], "--eventlet")
    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
    try:
        c = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic=t), timeout=10)
        assert c.call({}, "whoami") == "e1"
        # Slow calls run side by side on the server's green threads.
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: c.call({}, "sleep", seconds=1), range(4)))
        assert results == ["e1"] * 4
        assert time.monotonic() - started < 3
    finally:
        transport.cleanup()
    assert servers[-1].stop() == 0
