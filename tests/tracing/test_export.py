"""Spans reach a real OTLP/gRPC receiver from `configure()`; with no SDK nothing is made."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent.parent


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request: Any, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def _child(mode: str, **env: str) -> str:
    out = subprocess.run([sys.executable, str(HERE / "child.py"), mode], capture_output=True,
                         text=True, timeout=60, cwd=ROOT, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_configure_exports_spans_over_otlp_grpc() -> None:
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        out = _child("otlp", OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
                     OTEL_EXPORTER_OTLP_INSECURE="true", OTEL_TRACES_SAMPLER="always_on")
        assert "flushed" in out
    finally:
        server.stop(0)
    spans = [(rs, span) for req in collector.requests for rs in req.resource_spans
             for ss in rs.scope_spans for span in ss.spans]
    names = {span.name for _, span in spans}
    assert {"scheduler/select call", "scheduler/select process"} <= names
    services = {a.value.string_value for rs, _ in spans for a in rs.resource.attributes
                if a.key == "service.name"}
    assert services == {"grpcrpc-test"}
    trace_ids = {span.trace_id for _, span in spans}
    assert len(trace_ids) == 1


def test_without_an_sdk_no_spans_but_context_passes_through() -> None:
    seen, fresh, _version = _child("nosdk").split()
    assert int(seen, 16) == 0xABC  # the caller's trace reached the endpoint
    assert int(fresh, 16) == 0  # and nothing invents a trace when there is none
