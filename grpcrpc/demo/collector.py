"""The demo's own OpenTelemetry collector: every process sends its spans here over OTLP/gRPC.

Workers export with the stock OTLP exporter (`OTEL_EXPORTER_OTLP_ENDPOINT` points at this
collector); the conductor — the demo process itself — hands its spans over in memory, encoded
the same way. The collector keeps them all and draws the trees of the traces the demo shows, one
line per span with the service (and instance) that made it.

When the user has set `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`), every batch is
also forwarded there as it arrives, so the same traces show up in their Jaeger or Tempo.

>>> collector = Collector()
>>> collector.tree(b"\\x01" * 16, "nothing yet")
'trace 01010101010101010101010101010101: nothing yet\\n  (no spans)'
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as tspb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tsgrpc
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = ["Collector", "Span", "conductor_span", "configure_conductor", "user_endpoint"]

log = logging.getLogger("grpcrpc.demo")

_KINDS = {trace_pb2.Span.SPAN_KIND_INTERNAL: "internal", trace_pb2.Span.SPAN_KIND_SERVER: "server",
          trace_pb2.Span.SPAN_KIND_CLIENT: "client", trace_pb2.Span.SPAN_KIND_PRODUCER: "producer",
          trace_pb2.Span.SPAN_KIND_CONSUMER: "consumer"}


@dataclass(frozen=True, slots=True)
class Span:
    """One finished span, flattened from OTLP with the resource that made it."""

    trace_id: bytes
    span_id: bytes
    parent_id: bytes
    name: str
    kind: str
    start_ns: int
    end_ns: int
    service: str
    instance: str
    target_server: str
    error: str

    @property
    def where(self) -> str:
        return f"{self.service}@{self.instance}" if self.instance else self.service


def _flatten(request: tspb.ExportTraceServiceRequest) -> list[Span]:
    out = []
    for rs in request.resource_spans:
        res = {a.key: a.value.string_value for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                attrs = {a.key: a.value.string_value for a in s.attributes}
                error = (s.status.message or "error"
                         if s.status.code == trace_pb2.Status.STATUS_CODE_ERROR else "")
                out.append(Span(bytes(s.trace_id), bytes(s.span_id), bytes(s.parent_span_id),
                                s.name, _KINDS.get(s.kind, "?"), s.start_time_unix_nano,
                                s.end_time_unix_nano, res.get("service.name", "?"),
                                res.get("service.instance.id", ""),
                                attrs.get("grpcrpc.target.server", ""), error))
    return out


def user_endpoint(environ: Mapping[str, str] | None = None) -> str | None:
    """The OTLP endpoint the user configured for traces, if any."""
    env = os.environ if environ is None else environ
    return env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")


class _Forwarder:
    """Sends each batch on to the user's OTLP/gRPC collector from one background thread, so
    a slow or absent collector never slows the demo down."""

    def __init__(self, endpoint: str) -> None:
        scheme, sep, rest = endpoint.partition("://")
        address = (rest if sep else endpoint).rstrip("/")
        insecure = scheme == "http" if sep else (
            os.environ.get("OTEL_EXPORTER_OTLP_INSECURE", "").lower() == "true")
        self.endpoint = endpoint
        self._channel = (grpc.insecure_channel(address) if insecure
                         else grpc.secure_channel(address, grpc.ssl_channel_credentials()))
        self._stub = tsgrpc.TraceServiceStub(self._channel)  # type: ignore[no-untyped-call]
        headers = os.environ.get("OTEL_EXPORTER_OTLP_HEADERS", "")
        self._metadata = tuple((k.strip().lower(), v.strip()) for k, _, v in
                               (h.partition("=") for h in headers.split(",") if "=" in h))
        self._queue: queue.SimpleQueue[tspb.ExportTraceServiceRequest | None] = queue.SimpleQueue()
        self.sent = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="demo-otlp-forward", daemon=True)
        self._thread.start()

    def put(self, request: tspb.ExportTraceServiceRequest) -> None:
        self._queue.put(request)

    def _run(self) -> None:
        done = False
        while not done:
            batch = [self._queue.get()]
            while True:  # whatever piled up meanwhile goes as one request
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            done = None in batch
            spans = [rs for r in batch if r is not None for rs in r.resource_spans]
            if not spans:
                continue
            try:
                self._stub.Export(tspb.ExportTraceServiceRequest(resource_spans=spans), timeout=5.0,
                                  metadata=self._metadata or None)
                self.sent += 1
            except grpc.RpcError as exc:
                self.failed += 1
                log.warning("forwarding spans to %s: %s", self.endpoint, exc.code())

    def close(self, timeout: float) -> None:
        """Forward what is queued (for up to `timeout` seconds), then close."""
        self._queue.put(None)
        self._thread.join(timeout)
        self._channel.close()


class Collector(tsgrpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver on a loopback port that keeps every span in memory."""

    def __init__(self, forward_to: str | None = None) -> None:
        self._spans: dict[bytes, list[Span]] = {}
        self._cond = threading.Condition()
        self._server: grpc.Server | None = None
        self.forwarder = _Forwarder(forward_to) if forward_to else None
        self.address = ""

    def start(self) -> str:
        """Listen on a free loopback port; returns `127.0.0.1:<port>`."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp"))
        tsgrpc.add_TraceServiceServicer_to_server(self, server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        self.address = f"127.0.0.1:{port}"
        return self.address

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0.5).wait(2.0)
            self._server = None
        if self.forwarder is not None:
            self.forwarder.close(5.0)

    def Export(self, request: tspb.ExportTraceServiceRequest,
               context: Any) -> tspb.ExportTraceServiceResponse:
        self.add(request)
        return tspb.ExportTraceServiceResponse()

    def add(self, request: tspb.ExportTraceServiceRequest) -> None:
        """Keep the spans of one OTLP request (and forward it, if asked to)."""
        spans = _flatten(request)
        with self._cond:
            for span in spans:
                self._spans.setdefault(span.trace_id, []).append(span)
            self._cond.notify_all()
        if self.forwarder is not None:
            self.forwarder.put(request)

    def spans(self, trace_id: bytes) -> list[Span]:
        with self._cond:
            return list(self._spans.get(trace_id, ()))

    def wait_for(self, expected: Mapping[bytes, int], timeout: float) -> bool:
        """Wait until each trace has at least its expected number of spans (processes export
        in batches, so the last ones arrive a little after the work is done)."""
        def complete() -> bool:
            return all(len(self._spans.get(t, ())) >= n for t, n in expected.items())

        with self._cond:
            return self._cond.wait_for(complete, timeout)

    def tree(self, trace_id: bytes, title: str) -> str:
        """One trace, each span indented under its parent, siblings in start order."""
        spans = sorted(self.spans(trace_id), key=lambda s: s.start_ns)
        ids = {s.span_id for s in spans}
        children: dict[bytes, list[Span]] = {}
        for s in spans:
            children.setdefault(s.parent_id if s.parent_id in ids else b"", []).append(s)
        rows: list[tuple[str, Span]] = []

        def walk(span: Span, depth: int) -> None:
            rows.append((f"{'  ' * depth}{span.name} [{span.kind}]", span))
            for child in children.get(span.span_id, []):
                walk(child, depth + 1)

        for root in children.get(b"", []):
            walk(root, 1)
        lines = [f"trace {trace_id.hex()}: {title}"]
        width = max((len(left) for left, _ in rows), default=0)
        for left, s in rows:
            ms = (s.end_ns - s.start_ns) / 1e6
            to = f" -> {s.target_server}" if s.target_server and s.kind in ("client", "producer") else ""
            lines.append(f"{left.ljust(width)}  {ms:7.2f} ms  {s.where}{to}"
                         + (f"  ERROR {s.error}" if s.error else ""))
        return "\n".join(lines if rows else [*lines, "  (no spans)"])


def configure_conductor(collector: Collector, name: str = "conductor-az1") -> Any:
    """Install tracing in the demo process (nova-conductor): its spans go to `collector` in
    memory, each as it ends. Returns the tracer provider.

    The demo is an application, so it sets OpenTelemetry up itself (`grpcrpc.tracing.configure`
    is the short way for services): it needs its own instance name in the resource, always-on
    sampling whatever `OTEL_TRACES_SAMPLER` says, and no batching delay.
    """
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    class _ToCollector(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            collector.add(encode_spans(spans))
            return SpanExportResult.SUCCESS

    processor = SimpleSpanProcessor(_ToCollector())
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        # The global provider can be set once per process: join the one there is.
        current.add_span_processor(processor)
        return current
    provider = TracerProvider(
        resource=Resource.create({"service.name": "nova-conductor", "service.instance.id": name}),
        sampler=ParentBased(ALWAYS_ON))
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return provider


@contextmanager
def conductor_span(name: str) -> Iterator[bytes]:
    """A root span for one conductor operation; yields its trace id, to draw it later."""
    from opentelemetry import trace

    tracer = trace.get_tracer("grpcrpc.demo")
    with tracer.start_as_current_span(name, kind=trace.SpanKind.INTERNAL) as span:
        yield span.get_span_context().trace_id.to_bytes(16, "big")
