"""A call never outlives its own timeout, whatever discovery is doing: with etcd unreachable
when a client process starts, oslo's call with `timeout=3` raises `MessagingTimeout` at 3 s,
not after the resolver's start timeout (10 s by default); once etcd answers, sends work."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import oslo_messaging
import pytest
from oslo_config import cfg

from grpcrpc.exceptions import MessagingTimeout
from grpcrpc.oslo._client import Sender
from grpcrpc.oslo.options import Settings, register
from grpcrpc.testing.etcd import EtcdServer
from tests.oslo.conftest import ServerProcess, grpc_url, start_servers

# The time a loaded 2-core machine may add to a deadline.
SLACK = 1.5


def test_call_times_out_at_its_deadline_while_etcd_is_unreachable(
        servers: list[ServerProcess]) -> None:
    with contextlib.closing(EtcdServer()) as etcd:  # ports chosen, etcd not started
        url = f"grpc://{etcd.endpoint}/?bind_host=127.0.0.1"
        topic = f"t-{uuid.uuid4().hex[:8]}"
        transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
        try:
            client = oslo_messaging.get_rpc_client(
                transport, oslo_messaging.Target(topic=topic), timeout=3)
            for _ in range(2):  # the first send starts discovery; the second finds it starting
                began = time.monotonic()
                with pytest.raises(oslo_messaging.MessagingTimeout, match="discovery"):
                    client.call({}, "whoami")
                assert 3.0 <= time.monotonic() - began < 3.0 + SLACK
            etcd.start()
            start_servers(servers, grpc_url(etcd), topic, ["s1"])
            # Discovery kept trying meanwhile (backing off up to 5 s): a call with the time
            # for it waits for the first listing, then goes through.
            assert client.prepare(timeout=30).call({}, "whoami") == "s1"
        finally:
            transport.cleanup()


def test_the_asyncio_sender_too() -> None:
    # Under eventlet, sends run on the driver's loop through `Sender`.
    with contextlib.closing(EtcdServer()) as down:
        conf = cfg.ConfigOpts()
        url = oslo_messaging.TransportURL.parse(conf, f"grpc://{down.endpoint}/")
        settings = Settings.from_conf(register(conf, url), url)

        async def main() -> float:
            sender = Sender(settings)
            began = asyncio.get_running_loop().time()
            try:
                with pytest.raises(MessagingTimeout, match="discovery"):
                    await sender.send(fields(), {}, "whoami", {}, call=True, timeout=1.5,
                                      retry=None, at_least_once=False)
                return asyncio.get_running_loop().time() - began
            finally:
                await sender.close()

        assert 1.5 <= asyncio.run(main()) < 1.5 + SLACK


def fields() -> dict[str, Any]:
    return {"topic": "nobody", "exchange": "openstack", "server": None, "fanout": False,
            "namespace": None, "version": None}
