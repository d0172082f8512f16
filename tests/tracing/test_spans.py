"""Spans per envelope, linked across hops through the envelope's traceparent."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import grpcrpc
from grpcrpc import AsyncRPCClient, MemoryDiscovery, RPCServer, Target
from grpcrpc.broadcaster import Broadcaster
from grpcrpc.testing import Cluster
from tests.conftest import wait_until
from tests.tracing.conftest import by_name


class AppError(Exception):
    pass


class Compute:
    def __init__(self) -> None:
        self.trace_ids: list[int] = []

    def build(self, ctxt: Any) -> None:
        self.trace_ids.append(trace.get_current_span().get_span_context().trace_id)

    async def refresh(self, ctxt: Any) -> None:
        self.trace_ids.append(trace.get_current_span().get_span_context().trace_id)

    def fail(self, ctxt: Any) -> None:
        raise AppError("no")


class Conductor:
    """Calls the scheduler from inside its own endpoint (a nested call)."""

    def __init__(self, discovery: MemoryDiscovery) -> None:
        self.scheduler = grpcrpc.RPCClient(discovery, Target(topic="scheduler"), timeout=10)

    def build_instance(self, ctxt: Any) -> str:
        return str(self.scheduler.call(ctxt, "select"))


class Scheduler:
    def select(self, ctxt: Any) -> str:
        return "host1"


def _wait_spans(spans: InMemorySpanExporter, n: int) -> tuple[ReadableSpan, ...]:
    wait_until(lambda: len(spans.get_finished_spans()) >= n, what=f"{n} spans")
    return spans.get_finished_spans()


def _parent_of(child: ReadableSpan, parent: ReadableSpan) -> bool:
    return (child.parent is not None and child.parent.span_id == parent.context.span_id
            and child.context.trace_id == parent.context.trace_id)


def test_call_makes_client_and_server_spans(spans: InMemorySpanExporter) -> None:
    with Cluster() as cluster:
        cluster.serve(Target(topic="scheduler", server="s1"), [Scheduler()])
        assert cluster.client(Target(topic="scheduler")).call({}, "select") == "host1"
        finished = _wait_spans(spans, 2)
    [client] = by_name(finished, "select call")
    [server] = by_name(finished, "select process")
    assert client.kind == SpanKind.CLIENT and server.kind == SpanKind.SERVER
    assert _parent_of(server, client)
    attrs = client.attributes or {}
    assert attrs["rpc.system"] == "grpcrpc" and attrs["rpc.service"] == "scheduler"
    assert attrs["rpc.method"] == "select" and attrs["messaging.destination.name"] == "scheduler"
    assert (server.attributes or {})["messaging.message.id"] == attrs["messaging.message.id"]


def test_cast_and_directed_cast(spans: InMemorySpanExporter) -> None:
    compute = Compute()
    with Cluster() as cluster:
        cluster.serve(Target(topic="compute", server="h1"), [compute])
        client = cluster.client(Target(topic="compute"))
        client.prepare(server="h1").cast({}, "build")
        finished = _wait_spans(spans, 2)
    [producer] = by_name(finished, "build cast")
    [consumer] = by_name(finished, "build process")
    assert producer.kind == SpanKind.PRODUCER and consumer.kind == SpanKind.CONSUMER
    assert _parent_of(consumer, producer)
    assert (producer.attributes or {})["grpcrpc.target.server"] == "h1"
    assert compute.trace_ids == [producer.context.trace_id]


def test_nested_call_from_a_sync_endpoint_is_a_child(spans: InMemorySpanExporter) -> None:
    with Cluster() as cluster:
        cluster.serve(Target(topic="scheduler", server="s"), [Scheduler()])
        cluster.serve(Target(topic="conductor", server="c"), [Conductor(cluster.discovery)])
        assert cluster.client(Target(topic="conductor")).call({}, "build_instance") == "host1"
        finished = _wait_spans(spans, 4)
    [outer_client] = by_name(finished, "build_instance call")
    [outer_server] = by_name(finished, "build_instance process")
    [inner_client] = by_name(finished, "select call")
    [inner_server] = by_name(finished, "select process")
    assert _parent_of(outer_server, outer_client)
    assert _parent_of(inner_client, outer_server)  # context followed into the thread pool
    assert _parent_of(inner_server, inner_client)


def test_errors_mark_spans(spans: InMemorySpanExporter) -> None:
    with Cluster() as cluster:
        cluster.serve(Target(topic="compute", server="h1"), [Compute()])
        with pytest.raises(grpcrpc.RemoteError):
            cluster.client(Target(topic="compute")).call({}, "fail")
        finished = _wait_spans(spans, 2)
    [client] = by_name(finished, "fail call")
    [server] = by_name(finished, "fail process")
    assert client.status.status_code == StatusCode.ERROR
    assert (client.attributes or {})["error.type"] == "RemoteError"
    assert server.status.status_code == StatusCode.ERROR
    assert (server.attributes or {})["error.type"] == "AppError"


def test_no_endpoints_marks_the_client_span(spans: InMemorySpanExporter) -> None:
    with Cluster() as cluster, pytest.raises(grpcrpc.NoEndpoints):
        cluster.client(Target(topic="nobody")).call({}, "x")
    [client] = _wait_spans(spans, 1)
    assert (client.attributes or {})["error.type"] == "NoEndpoints"


async def test_fanout_through_a_broadcaster_is_one_trace(spans: InMemorySpanExporter) -> None:
    d = MemoryDiscovery()
    computes = [Compute() for _ in range(3)]
    servers = [RPCServer(Target(topic="compute", server=f"h{i}"), [c], registry=d)
               for i, c in enumerate(computes)]
    b = Broadcaster(d, registry=d, name="b1")
    for s in servers:
        await s.start()
    await b.start()
    try:
        async with AsyncRPCClient(d, Target(topic="compute", fanout=True)) as client:
            report = await client.cast({}, "refresh")
        assert report is not None and report.delivered == 3
        deadline = time.monotonic() + 10
        while len(spans.get_finished_spans()) < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        await b.stop()
        for s in servers:
            await s.stop()
    finished = spans.get_finished_spans()
    [client_span] = by_name(finished, "refresh fanout")
    [bspan] = by_name(finished, "refresh broadcast")
    deliveries = by_name(finished, "refresh process")
    assert len(deliveries) == 3
    assert _parent_of(bspan, client_span)
    assert all(_parent_of(d, bspan) for d in deliveries)
    assert (bspan.attributes or {})["grpcrpc.fanout.targets"] == 3
    assert (bspan.attributes or {})["grpcrpc.fanout.failed"] == 0
    assert {c.trace_ids[0] for c in computes} == {client_span.context.trace_id}


async def test_async_client_context(spans: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("test")
    async with grpcrpc.testing.AsyncClientFor(Target(topic="scheduler"), [Scheduler()]) as c:
        with tracer.start_as_current_span("request") as root:
            await c.call({}, "select")
    finished = spans.get_finished_spans()
    [client] = by_name(finished, "select call")
    assert client.parent is not None and client.parent.span_id == root.get_span_context().span_id
    [server] = by_name(finished, "select process")
    assert _parent_of(server, client)


def test_unsampled_parent_is_respected_across_hops(spans: InMemorySpanExporter) -> None:
    compute = Compute()
    ctx = trace.SpanContext(trace_id=0x1234, span_id=0x99, is_remote=True,
                            trace_flags=trace.TraceFlags(0))  # not sampled
    with Cluster() as cluster:
        cluster.serve(Target(topic="compute", server="h1"), [compute])
        with trace.use_span(trace.NonRecordingSpan(ctx)):
            cluster.client(Target(topic="compute")).call({}, "build")
    assert compute.trace_ids == [0x1234]  # the trace id still travelled
    assert spans.get_finished_spans() == ()  # and nothing was recorded on either side
