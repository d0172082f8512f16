"""The one module that knows OpenTelemetry.

grpcrpc makes its own spans, one per envelope (the stock gRPC instrumentation sees one span per
stream): a client span for each call, cast and fanout, a broadcaster span per fanout, and a
server span per dispatched envelope. The context travels in the envelope's headers as W3C
`traceparent`/`tracestate`/`baggage`, so one trace spans client → broadcaster → every server,
and a server's own outgoing calls become children.

The call path depends on `opentelemetry-api` only. Until an SDK tracer provider is installed
(by `configure()`, or by the application's own OpenTelemetry set-up) grpcrpc makes no spans at
all — it only passes an incoming trace context on to outgoing calls — so tracing costs almost
nothing when off.

>>> configure  # doctest: +ELLIPSIS
<function configure at ...>
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.environment_variables import (
    OTEL_PYTHON_METER_PROVIDER,
    OTEL_PYTHON_TRACER_PROVIDER,
)
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.metrics import _internal as _metrics_api
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, SpanKind, Status, StatusCode

from grpcrpc import _unsampled
from grpcrpc._ratelog import SparseFilter

__all__ = [
    "SpanCapture",
    "broadcaster_span",
    "client_span",
    "configure",
    "enabled",
    "inject",
    "mark_failed",
    "metrics_enabled",
    "metrics_instruments",
    "record_cast",
    "record_fanout",
    "server_span",
    "track_resolver",
    "track_server",
]

_meter = metrics.get_meter("grpcrpc")


for _name in ("opentelemetry.baggage.propagation", "opentelemetry.trace.span",
              "opentelemetry.trace.propagation.tracecontext"):
    logging.getLogger(_name).addFilter(SparseFilter())

SYSTEM = "grpcrpc"


class _Instruments:
    """OpenTelemetry metrics (no-ops until a meter provider is configured)."""

    def __init__(self) -> None:
        m = _meter
        self.call_duration = m.create_histogram(
            "rpc.client.duration", unit="s", description="Duration of grpcrpc calls and casts")
        self.server_duration = m.create_histogram(
            "rpc.server.duration", unit="s", description="Duration of dispatched envelopes")
        self.in_flight = m.create_up_down_counter(
            "grpcrpc.server.in_flight", description="Envelopes being dispatched")
        self.casts = m.create_counter(
            "grpcrpc.server.casts", description="Casts accepted or rejected by servers")
        self.fanout_deliveries = m.create_counter(
            "grpcrpc.fanout.deliveries", description="Fanout deliveries, by outcome")
        # Read when the SDK collects, from the resolvers and servers alive in this process.
        self.endpoints = m.create_observable_gauge(
            "grpcrpc.endpoints", callbacks=[_observe_endpoints],
            description="Endpoints known to this process's resolvers, by AZ and topic")
        self.registered = m.create_observable_gauge(
            "grpcrpc.registered", callbacks=[_observe_registration],
            description="1 while a server is registered and accepting, else 0")


_resolvers: weakref.WeakSet[Any] = weakref.WeakSet()
_servers: weakref.WeakSet[Any] = weakref.WeakSet()


def track_resolver(resolver: Any) -> None:
    """Count this resolver's table in the `grpcrpc.endpoints` gauge while it lives."""
    _resolvers.add(resolver)


def track_server(host: Any, attributes: dict[str, str]) -> None:
    """Report this server in the `grpcrpc.registered` gauge while it lives (`host.serving()`)."""
    host.metric_attributes = attributes
    _servers.add(host)


def _observe_endpoints(options: CallbackOptions) -> Iterator[Observation]:
    counts: dict[tuple[str, str], int] = {}
    for resolver in list(_resolvers):
        for ep in resolver.table.endpoints:
            counts[(ep.az, ep.topic)] = counts.get((ep.az, ep.topic), 0) + 1
    for (az, topic), n in counts.items():
        yield Observation(n, {"grpcrpc.az": az, "rpc.service": topic})


def _observe_registration(options: CallbackOptions) -> Iterator[Observation]:
    for host in list(_servers):
        yield Observation(1 if host.serving() else 0, getattr(host, "metric_attributes", {}))


def record_cast(topic: str, accepted: bool) -> None:
    if metrics_enabled():
        metrics_instruments.casts.add(
            1, {"rpc.service": topic, "outcome": "accepted" if accepted else "rejected"})


# Until a provider is set, OpenTelemetry's getters look for one named in os.environ on every call
# (a KeyError raised and caught, twice per envelope on each side). Both API modules keep the
# provider in a module global, None until set: grpcrpc reads that first, and asks the public
# getter only when it is set (or when a provider is named in the environment).
_PROVIDERS_FROM_ENV = any(v in os.environ for v in (OTEL_PYTHON_TRACER_PROVIDER,
                                                    OTEL_PYTHON_METER_PROVIDER))


def _unset(module: Any, name: str) -> bool:
    return not _PROVIDERS_FROM_ENV and getattr(module, name, False) is None


def metrics_enabled() -> bool:
    """Whether a real (SDK) meter provider is installed."""
    global _metrics_on
    if not _metrics_on:
        if _unset(_metrics_api, "_METER_PROVIDER"):
            return False
        # OpenTelemetry's global providers are set once per process: a yes is final.
        _metrics_on = type(metrics.get_meter_provider()).__name__ not in (
            "_ProxyMeterProvider", "NoOpMeterProvider")
    return _metrics_on


_metrics_on = False
_sdk_tracer: trace.Tracer | None = None
metrics_instruments = _Instruments()


def _tracer() -> trace.Tracer | None:
    """The SDK's tracer once a real provider is installed, else None."""
    global _sdk_tracer
    if _sdk_tracer is None:
        if _unset(trace, "_TRACER_PROVIDER"):
            return None
        provider = trace.get_tracer_provider()
        if not isinstance(provider, (ProxyTracerProvider, NoOpTracerProvider)):
            _sdk_tracer = provider.get_tracer("grpcrpc")
    return _sdk_tracer


def enabled() -> bool:
    """Whether a real (SDK) tracer provider is installed."""
    return _tracer() is not None


def inject(headers: MutableMapping[str, str]) -> None:
    """Put the current trace context (and baggage) into outgoing envelope headers."""
    if otel_context.get_current():  # an empty context has nothing to propagate
        propagate.inject(headers)


def _attributes(topic: str, method: str, msg_id: str, *, operation: str, server: str = "",
                az: str = "", version: str = "") -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "rpc.system": SYSTEM,
        "rpc.service": topic,
        "rpc.method": method,
        "messaging.system": SYSTEM,
        "messaging.operation.type": operation,
        "messaging.destination.name": topic,
    }
    if msg_id:
        attrs["messaging.message.id"] = msg_id
    if server:
        attrs["grpcrpc.target.server"] = server
    if az:
        attrs["grpcrpc.az"] = az
    if version:
        attrs["grpcrpc.version"] = version
    return attrs


def _fail(span: trace.Span, error: BaseException) -> None:
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:200]))
    span.set_attribute("error.type", type(error).__name__)
    span.record_exception(error)


class _Untraced:
    """The context manager of an envelope with nothing to record (no SDK, no meter provider):
    it only passes on a trace context the caller runs in. A class, not a generator: this is
    every call's path when tracing is off."""

    __slots__ = ()

    def __enter__(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        inject(headers)
        return headers

    def __exit__(self, *exc_info: object) -> None:
        return None


class _NoServerSpan:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


class _Passed:
    """An envelope whose trace is not sampled, with no metrics to record: its headers only."""

    __slots__ = ("headers",)

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers

    def __enter__(self) -> dict[str, str]:
        return self.headers

    def __exit__(self, *exc_info: object) -> None:
        return None


class _Attached:
    """A dispatch whose trace is not sampled: the caller's context is current (the endpoint's
    own calls carry it on, sampled=0), no span."""

    __slots__ = ("context", "token")

    def __init__(self, context: otel_context.Context) -> None:
        self.context = context

    def __enter__(self) -> None:
        self.token = otel_context.attach(self.context)

    def __exit__(self, *exc_info: object) -> None:
        otel_context.detach(self.token)


_UNTRACED = _Untraced()
_NO_SERVER_SPAN = _NoServerSpan()


def client_span(kind: str, topic: str, method: str, msg_id: str = "", *, server: str = "",
                az: str = "", version: str = ""
                ) -> AbstractContextManager[dict[str, str]]:
    """Around one call, cast or fanout; yields the headers to put in its envelope.

    `kind` is "call", "cast" or "fanout". A failure marks the span with an error status and
    the exception type.
    """
    tracer, metrics_on = _tracer(), metrics_enabled()
    if tracer is None and not metrics_on:
        return _UNTRACED
    unsampled, decider = None, None
    if tracer is not None:
        # A trace that will not be sampled gets no SDK span, only its context passed on.
        decider = _unsampled.decider(tracer)
        unsampled = decider.client_headers() if decider is not None else None
        if unsampled is not None:
            if not metrics_on:
                return _Passed(unsampled)
            tracer = None
    return _client_span(tracer, metrics_on, kind, topic, method, msg_id, server, az, version,
                        unsampled, decider)


def _recording(span: trace.Span, attrs: Callable[[], dict[str, Any]]) -> None:
    # Attributes are built only for spans the sampler keeps: an unsampled envelope costs no
    # more than its context. (grpcrpc's samplers of choice, ratio and parent-based, decide on
    # the trace id alone; a sampler that reads attributes sees none at start.)
    if span.is_recording():
        span.set_attributes(attrs())


@contextmanager
def _client_span(tracer: trace.Tracer | None, metrics_on: bool, kind: str, topic: str,
                 method: str, msg_id: str, server: str, az: str, version: str,
                 unsampled: dict[str, str] | None, decider: _unsampled.Decider | None
                 ) -> Iterator[dict[str, str]]:
    headers: dict[str, str] = {} if unsampled is None else unsampled
    start = time.perf_counter()
    try:
        if tracer is None:
            if unsampled is None:
                inject(headers)
            yield headers
            return
        span_kind = SpanKind.CLIENT if kind == "call" else SpanKind.PRODUCER
        # Not made current: nothing runs inside a send that could be its child, and attaching
        # and detaching a context costs as much as the span. Its context goes out in headers.
        span = tracer.start_span(f"{topic}/{method} {kind}", kind=span_kind,
                                 record_exception=False, set_status_on_exception=False)
        try:
            _recording(span, lambda: {
                **_attributes(topic, method, msg_id, operation="call" if kind == "call" else "send",
                              server=server, az=az, version=version),
                "grpcrpc.kind": kind})
            if decider is not None:
                decider.inject(headers, span)
            else:
                propagate.inject(headers, context=trace.set_span_in_context(span))
            yield headers
        except BaseException as error:
            _fail(span, error)
            raise
        finally:
            span.end()
    finally:
        if metrics_on:
            metrics_instruments.call_duration.record(
                time.perf_counter() - start, {"rpc.service": topic, "grpcrpc.kind": kind})


def server_span(headers: Mapping[str, str], topic: str, method: str, msg_id: str, *,
                cast: bool, fanout: bool = False, server: str = "", az: str = ""
                ) -> AbstractContextManager[trace.Span | None]:
    """Around the dispatch of one envelope, as a child of the caller's span.

    Even with tracing off, the caller's context is made current, so the endpoint's own
    outgoing calls carry it on.
    """
    tracer, metrics_on = _tracer(), metrics_enabled()
    if not headers and tracer is None and not metrics_on:
        return _NO_SERVER_SPAN
    parent = None
    if tracer is not None:
        # A trace that will not be sampled gets no SDK span: its context is made current.
        decider = _unsampled.decider(tracer)
        unsampled = decider.server_context(headers) if decider is not None else None
        if unsampled is not None:
            if not metrics_on:
                return _Attached(unsampled)
            return _server_span(None, metrics_on, unsampled, topic, method, msg_id, cast,
                                fanout, server, az)
        if decider is not None and headers:
            parent = decider.parent_context(headers)
    if parent is None and headers:
        parent = propagate.extract(headers)
    return _server_span(tracer, metrics_on, parent, topic, method, msg_id, cast, fanout,
                        server, az)


@contextmanager
def _server_span(tracer: trace.Tracer | None, metrics_on: bool,
                 parent: otel_context.Context | None, topic: str, method: str, msg_id: str,
                 cast: bool, fanout: bool, server: str, az: str) -> Iterator[trace.Span | None]:
    span = None
    if tracer is not None:
        # What start_as_current_span did after an attach of the parent, with one attach (parent
        # and span together) instead of two and without its two generator layers.
        span = tracer.start_span(f"{topic}/{method} process", context=parent,
                                 kind=SpanKind.CONSUMER if cast else SpanKind.SERVER,
                                 record_exception=False, set_status_on_exception=False)
        parent = trace.set_span_in_context(span, parent)
    token = otel_context.attach(parent) if parent is not None else None
    start = time.perf_counter()
    if metrics_on:
        metrics_instruments.in_flight.add(1, {"rpc.service": topic})
    try:
        if span is None:
            yield None
            return
        _recording(span, lambda: {
            **_attributes(topic, method, msg_id, operation="process", server=server, az=az),
            "grpcrpc.kind": "fanout" if fanout else ("cast" if cast else "call")})
        try:
            yield span
        except BaseException as error:
            _fail(span, error)
            raise
    finally:
        if metrics_on:
            metrics_instruments.in_flight.add(-1, {"rpc.service": topic})
            metrics_instruments.server_duration.record(time.perf_counter() - start,
                                                       {"rpc.service": topic})
        if token is not None:
            otel_context.detach(token)
        if span is not None:
            span.end()


def mark_failed(span: trace.Span | None, error_type: str, message: str) -> None:
    """Mark a server span failed when the failure is returned, not raised."""
    if span is not None:
        span.set_status(Status(StatusCode.ERROR, message[:200]))
        span.set_attribute("error.type", error_type)


@contextmanager
def broadcaster_span(headers: MutableMapping[str, str], topic: str, method: str, msg_id: str,
                     az: str) -> Iterator[trace.Span | None]:
    """Around one fanout in a broadcaster; rewrites `headers` so that the deliveries it makes
    are children of this span."""
    tracer = _tracer()
    if tracer is not None and "traceparent" in headers:
        # A trace that will not be sampled: the deliveries carry the caller's context as it is.
        decider = _unsampled.decider(tracer)
        unsampled = decider.server_context(headers) if decider is not None else None
        if unsampled is not None:
            with _Attached(unsampled):
                yield None
            return
    parent = propagate.extract(headers) if headers else None
    token = otel_context.attach(parent) if parent is not None else None
    try:
        if tracer is None:
            yield None
            return
        with tracer.start_as_current_span(f"{topic}/{method} broadcast",
                                          kind=SpanKind.SERVER) as span:
            _recording(span, lambda: {**_attributes(topic, method, msg_id, operation="send", az=az),
                                      "grpcrpc.kind": "fanout"})
            for key in ("traceparent", "tracestate"):
                headers.pop(key, None)
            propagate.inject(headers)
            yield span
    finally:
        if token is not None:
            otel_context.detach(token)


def record_fanout(span: trace.Span | None, targets: int, failed: int, topic: str) -> None:
    if span is not None:
        span.set_attribute("grpcrpc.fanout.targets", targets)
        span.set_attribute("grpcrpc.fanout.failed", failed)
        if failed:
            span.set_status(Status(StatusCode.ERROR, f"{failed} of {targets} deliveries failed"))
    if metrics_enabled():
        metrics_instruments.fanout_deliveries.add(targets - failed,
                                                  {"rpc.service": topic, "outcome": "delivered"})
        if failed:
            metrics_instruments.fanout_deliveries.add(failed,
                                                      {"rpc.service": topic, "outcome": "failed"})


def configure(service_name: str, *, exporter: Any = None, sampler: Any = None,
              metrics_exporter: Any = None) -> Any:
    """Install the OpenTelemetry SDK with an OTLP exporter, configured from `OTEL_*` variables.

    The standard variables apply: `OTEL_EXPORTER_OTLP_ENDPOINT` (and `..._PROTOCOL`), and
    `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` (e.g. `parentbased_traceidratio`, `0.1`).
    `exporter` replaces the OTLP span exporter (tests, the demo's in-memory tree). Returns the
    tracer provider. Needs the `otel` extra (opentelemetry-sdk and the OTLP exporter).

    ```python
    from grpcrpc import tracing
    tracing.configure(service_name="nova-conductor")
    ```
    """
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": service_name})
    provider = TracerProvider(resource=resource, sampler=sampler)
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    if metrics_exporter is not False:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        if metrics_exporter is None:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            metrics_exporter = OTLPMetricExporter()
        reader = PeriodicExportingMetricReader(metrics_exporter)
        metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    return provider


class SpanCapture:
    """Spans kept in memory (and exported over OTLP too when `OTEL_EXPORTER_OTLP_ENDPOINT` is
    set), drawn as a tree: how `make demo` shows a request's path.

    ```python
    capture = tracing.SpanCapture.install("nova-demo")
    ...  # calls, casts, fanouts
    print(capture.tree())
    ```
    """

    def __init__(self, exporter: Any) -> None:
        self._exporter = exporter

    @classmethod
    def install(cls, service_name: str) -> SpanCapture:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        exporter = InMemorySpanExporter()
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            # OpenTelemetry's global provider is set once per process: join the one there is.
            current.add_span_processor(SimpleSpanProcessor(exporter))
            return cls(exporter)
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        return cls(exporter)

    def clear(self) -> None:
        self._exporter.clear()

    def tree(self) -> str:
        """Every finished span, indented under its parent, grouped by trace, oldest first."""
        spans = sorted(self._exporter.get_finished_spans(), key=lambda s: s.start_time or 0)
        ids = {s.context.span_id for s in spans}
        children: dict[int | None, list[Any]] = {}
        for s in spans:
            parent = s.parent.span_id if s.parent is not None and s.parent.span_id in ids else None
            children.setdefault(parent, []).append(s)
        lines: list[str] = []

        def walk(span: Any, depth: int) -> None:
            ms = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
            status = "" if span.status.status_code != StatusCode.ERROR else "  ERROR"
            where = span.attributes.get("grpcrpc.target.server", "")
            lines.append(f"{'  ' * depth}{span.name} [{span.kind.name.lower()}] {ms:.2f} ms"
                         f"{' -> ' + where if where else ''}{status}")
            for child in children.get(span.context.span_id, []):
                walk(child, depth + 1)

        for root in children.get(None, []):
            lines.append(f"trace {root.context.trace_id:032x}")
            walk(root, 1)
        return "\n".join(lines)
