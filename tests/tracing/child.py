"""Run in a fresh process by test_export.py: `child.py otlp` or `child.py nosdk`."""

from __future__ import annotations

import sys
from typing import Any

from opentelemetry import trace

import grpcrpc
from grpcrpc import Target, tracing
from grpcrpc.testing import ClientFor


class Scheduler:
    def select(self, ctxt: Any) -> str:
        return f"{trace.get_current_span().get_span_context().trace_id:032x}"


if sys.argv[1] == "otlp":
    provider = tracing.configure("grpcrpc-test", metrics_exporter=False)
    with ClientFor(Target(topic="scheduler"), [Scheduler()]) as client:
        client.call({}, "select")
    provider.force_flush()
    provider.shutdown()
    print("flushed")
else:
    assert not tracing.enabled()
    # No SDK: no spans, but an incoming trace context is passed on to the endpoint.
    ctx = trace.SpanContext(trace_id=0xABC, span_id=0x1, is_remote=True,
                            trace_flags=trace.TraceFlags(1))
    with ClientFor(Target(topic="scheduler"), [Scheduler()]) as client:
        with trace.use_span(trace.NonRecordingSpan(ctx)):
            seen = client.call({}, "select")
        print(seen, client.call({}, "select"), grpcrpc.__version__)
