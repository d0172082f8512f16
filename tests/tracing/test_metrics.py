"""OpenTelemetry metrics: durations, in-flight, casts, fanout deliveries, endpoints, registration."""

from __future__ import annotations

import asyncio
from typing import Any

from grpcrpc import AsyncRPCClient, MemoryDiscovery, RPCServer, Target
from grpcrpc.broadcaster import Broadcaster


class Api:
    async def ping(self, ctxt: Any) -> str:
        return "pong"

    async def note(self, ctxt: Any) -> None:
        pass


def _points(reader: Any) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


async def test_metrics_are_recorded(metric_reader: Any) -> None:
    d = MemoryDiscovery()
    servers = [RPCServer(Target(topic="svc", server=f"s{i}"), [Api()], registry=d) for i in range(2)]
    b = Broadcaster(d, registry=d, name="b")
    for s in servers:
        await s.start()
    await b.start()
    try:
        async with AsyncRPCClient(d, Target(topic="svc")) as c:
            assert await c.call({}, "ping") == "pong"
            await c.cast({}, "note")
            report = await c.prepare(fanout=True).cast({}, "note")
            assert report is not None and report.delivered == 2
            for _ in range(100):  # the casts run after they are accepted
                await asyncio.sleep(0.01)
                if "grpcrpc.server.casts" in _points(metric_reader):
                    break
        points = _points(metric_reader)
    finally:
        await b.stop()
        for s in servers:
            await s.stop()
    for name in ("rpc.client.duration", "rpc.server.duration", "grpcrpc.server.in_flight",
                 "grpcrpc.server.casts", "grpcrpc.fanout.deliveries", "grpcrpc.endpoints",
                 "grpcrpc.registered"):
        assert name in points, name
    casts = {p.attributes["outcome"]: p.value for p in points["grpcrpc.server.casts"]}
    assert casts["accepted"] >= 3  # one cast and two fanout deliveries
    delivered = [p.value for p in points["grpcrpc.fanout.deliveries"]
                 if p.attributes["outcome"] == "delivered"]
    assert sum(delivered) >= 2
    endpoints = {p.attributes["rpc.service"]: p.value for p in points["grpcrpc.endpoints"]
                 if p.attributes.get("grpcrpc.az") == "default"}
    assert endpoints.get("svc", 0) >= 2
    assert any(p.value == 1 for p in points["grpcrpc.registered"])
