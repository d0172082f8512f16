"""Unsampled envelopes without SDK spans: the sampling decision made the cheap way.

OpenTelemetry's SDK makes ids, asks the sampler and builds a non-recording span for every
envelope it then drops; with 10 % sampling that is most of the tracing cost (issue 18). When the
tracer's sampler is one whose decision is known from the trace id and the parent's flags alone
(`ParentBased` over `TraceIdRatioBased`/`ALWAYS_ON`/`ALWAYS_OFF`, the SDK's default and every
`OTEL_TRACES_SAMPLER` choice), grpcrpc decides here and, for a trace that will not be sampled,
only passes a trace context on:

- a parent that is not sampled, under a `ParentBased` sampler that drops such children (its
  default): the parent's context goes on as it is;
- no parent (a root): the trace id is drawn here and given to the root sampler; a drop becomes a
  `traceparent` with the sampled flag clear (so every later hop skips too), a keep is handed to
  the SDK with that same trace id, so its span is exactly the one it would have made.

Any other sampler, propagator or parent leaves everything to the SDK.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["Decider", "decider"]

# traceparent version 00 exactly as this module writes it and W3C defines it (lower-case hex);
# anything else (other versions, upper case, extra fields) goes to OpenTelemetry's parser.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_RANDOM = int(getattr(TraceFlags, "RANDOM_TRACE_ID", 0))


class _PresetIds:
    """The tracer's id generator, which hands out a trace id drawn beforehand (once, in the
    thread that drew it) so a root span the SDK makes carries the id the sampler was asked
    about."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.preset = threading.local()
        probe = getattr(inner, "is_trace_id_random", None)
        self.random = bool(probe()) if probe is not None else False

    def generate_trace_id(self) -> int:
        trace_id: int | None = getattr(self.preset, "trace_id", None)
        if trace_id is None:
            return int(self.inner.generate_trace_id())
        self.preset.trace_id = None
        return trace_id

    def generate_span_id(self) -> int:
        return int(self.inner.generate_span_id())

    def is_trace_id_random(self) -> bool:
        return self.random


def _root_rule(sampler: Any) -> Any:
    """The root decision as `trace_id -> sampled?`, or None when it is not one of the known,
    deterministic samplers (then the SDK decides)."""
    from opentelemetry.sdk.trace.sampling import (
        Decision,
        StaticSampler,
        TraceIdRatioBased,
    )

    if type(sampler) is TraceIdRatioBased or isinstance(sampler, TraceIdRatioBased):
        bound, limit = sampler.bound, sampler.TRACE_ID_LIMIT
        return lambda trace_id: trace_id & limit < bound
    if isinstance(sampler, StaticSampler):
        decision = getattr(sampler, "_decision", None)
        if decision is Decision.RECORD_AND_SAMPLE:
            return lambda trace_id: True
        if decision is Decision.DROP:
            return lambda trace_id: False
    return None


def _drops(sampler: Any) -> bool:
    from opentelemetry.sdk.trace.sampling import Decision, StaticSampler

    return isinstance(sampler, StaticSampler) and getattr(sampler, "_decision", None) is Decision.DROP


def _default_propagator() -> bool:
    """Whether the global propagator is OpenTelemetry's default (W3C trace context + baggage),
    the one whose headers this module writes and reads itself."""
    prop = propagate.get_global_textmap()
    inner = getattr(prop, "_propagators", None)
    return (isinstance(prop, CompositePropagator) and inner is not None
            and [type(p) for p in inner] == [TraceContextTextMapPropagator, W3CBaggagePropagator])


class Decider:
    """The cheap decisions for one SDK tracer and its sampler (see the module's docstring)."""

    def __init__(self, tracer: Any) -> None:
        from opentelemetry.sdk.trace.sampling import ParentBased

        self.tracer = tracer
        self.sampler = sampler = tracer.sampler
        root, self.drop_local, self.drop_remote = sampler, False, False
        if isinstance(sampler, ParentBased):
            root = getattr(sampler, "_root", None)
            self.drop_local = _drops(getattr(sampler, "_local_parent_not_sampled", None))
            self.drop_remote = _drops(getattr(sampler, "_remote_parent_not_sampled", None))
        self.root = _root_rule(root)
        self.propagator = propagate.get_global_textmap()
        self.plain_headers = _default_propagator()
        ids = tracer.id_generator
        if self.root is not None and not isinstance(ids, _PresetIds):
            ids = tracer.id_generator = _PresetIds(ids)
        self.ids: _PresetIds = ids

    def client_headers(self) -> dict[str, str] | None:
        """The headers of an outgoing envelope whose trace is not sampled, or None when the SDK
        must make a span (a sampled trace, or a decision only the SDK can make)."""
        current = otel_context.get_current()
        ctx = trace.get_current_span(current).get_span_context() if current else None
        if ctx is not None and ctx.is_valid:
            if ctx.trace_flags & 1 or not (self.drop_remote if ctx.is_remote else self.drop_local):
                return None
            headers: dict[str, str] = {}
            propagate.inject(headers)  # the parent's context, as it is
            return headers
        root = self.root
        if root is None:
            return None
        ids = self.ids
        trace_id = ids.generate_trace_id()
        if root(trace_id):
            ids.preset.trace_id = trace_id  # the SDK's root span gets the id just sampled
            return None
        flags = _RANDOM if ids.random else 0
        span_id = ids.generate_span_id()
        if self.plain_headers and not (current and baggage.get_all(current)):
            return {"traceparent": f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"}
        headers = {}
        propagate.inject(headers, context=trace.set_span_in_context(NonRecordingSpan(
            SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(flags)))))
        return headers

    def server_context(self, headers: Mapping[str, str]) -> Context | None:
        """The context to make current for an incoming envelope whose trace is not sampled,
        without an SDK span; None when the SDK must decide."""
        if not self.plain_headers:
            return None
        parent = headers.get("traceparent")
        if parent is None:  # a root here: same rule as a client's root
            root = self.root
            if root is None or "baggage" in headers or "tracestate" in headers:
                return None
            ids = self.ids
            trace_id = ids.generate_trace_id()
            if root(trace_id):
                ids.preset.trace_id = trace_id
                return None
            flags = _RANDOM if ids.random else 0
            return trace.set_span_in_context(NonRecordingSpan(SpanContext(
                trace_id, ids.generate_span_id(), is_remote=False,
                trace_flags=TraceFlags(flags))), Context())
        if not self.drop_remote or len(parent) != 55 or parent[54] not in "02468ace":
            return None  # sampled, or not the plain format: the SDK decides
        if "baggage" in headers or "tracestate" in headers:
            context = propagate.extract(headers)
            ctx = trace.get_current_span(context).get_span_context()
            return context if ctx.is_valid and not ctx.trace_flags & 1 else None
        return _parent(parent)

    def parent_context(self, headers: Mapping[str, str]) -> Context | None:
        """The caller's context for the SDK's span (what `propagate.extract` returns), parsed
        here when it is a plain `traceparent` alone."""
        parent = headers.get("traceparent")
        if (parent is None or not self.plain_headers or "baggage" in headers
                or "tracestate" in headers):
            return None
        return _parent(parent)

    def inject(self, headers: dict[str, str], span: trace.Span) -> None:
        """`propagate.inject` of `span`'s context (with the current baggage), the plain
        `traceparent` written here when that is all there is."""
        ctx = span.get_span_context()
        if not ctx.is_valid:  # nothing to propagate (OpenTelemetry's inject skips it too)
            return
        if self.plain_headers and not ctx.trace_state and not (
                otel_context.get_current() and baggage.get_all()):
            headers["traceparent"] = (f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-"
                                      f"{ctx.trace_flags:02x}")
            return
        propagate.inject(headers, context=trace.set_span_in_context(span))


def _parent(traceparent: str) -> Context | None:
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None:
        return None
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return None
    return trace.set_span_in_context(NonRecordingSpan(SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(match[3], 16)))),
        Context())


_decider: Decider | None = None


def decider(tracer: Any) -> Decider | None:
    """The decider for this SDK tracer (rebuilt when its sampler is replaced), or None when the
    tracer is not the SDK's."""
    global _decider
    d = _decider
    if (d is not None and d.tracer is tracer and d.sampler is tracer.sampler
            and d.propagator is propagate.get_global_textmap()):
        return d
    if not hasattr(tracer, "sampler") or not hasattr(tracer, "id_generator"):
        return None
    d = _decider = Decider(tracer)
    return d
