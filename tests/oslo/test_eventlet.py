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

# docs/oslo.md: the longest the hub went without running a 10 ms ticker through 1,000 calls,
# by how many green threads call at once (measured 25-90 ms, up to 0.8 s under load, and
# 0.1-1 s; bounds with room for a loaded test machine).
HUB_GAP = {32: 1.0, 1000: 2.5}


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
    # ... and through 1,000 calls from green threads, 32 and then all 1,000 at once (to
    # another process, and to a server in this one), it kept running the ticker.
    for name in ("remote", "local"):
        for at_once, bound in HUB_GAP.items():
            key = f"concurrent_{name}_{at_once}"
            assert result[f"{key}_ok"], result
            assert result[f"{key}_most_in_flight"] == at_once, result
            assert result[f"{key}_hub_gap"] < bound, {k: v for k, v in result.items()
                                                     if k.startswith(key)}
    assert result["max_hub_gap"] < HUB_GAP[32], result
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
