"""Unsampled traces make no SDK spans, yet pass their context on (issue 18, part 1)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import Tracer
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)

import grpcrpc
from grpcrpc import MemoryDiscovery, Target, tracing
from grpcrpc.testing import Cluster
from tests.conftest import wait_until

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


@pytest.fixture
def tracer(spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tracer]:
    """grpcrpc's SDK tracer, its SDK span-making counted in `tracer.started`."""
    t = tracing._tracer()
    assert isinstance(t, Tracer)
    started: list[str] = []
    real = t.start_span

    def counting(name: str, *args: Any, **kwargs: Any) -> Any:
        started.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(t, "start_span", counting)
    t.started = started  # type: ignore[attr-defined]
    yield t


def _sampler(tracer: Tracer, monkeypatch: pytest.MonkeyPatch, sampler: Sampler) -> None:
    monkeypatch.setattr(tracer, "sampler", sampler)


def _flags(traceparent: str) -> int:
    return int(traceparent.split("-")[3], 16)


def test_unsampled_root_makes_no_span_and_sends_sampled_0(
        tracer: Tracer, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    _sampler(tracer, monkeypatch, ParentBased(ALWAYS_OFF))
    with tracing.client_span("call", "t", "m", "1") as headers:
        pass
    assert _flags(headers["traceparent"]) & 1 == 0
    assert int(headers["traceparent"].split("-")[1], 16) != 0
    assert tracer.started == [] and spans.get_finished_spans() == ()  # type: ignore[attr-defined]


def test_ratio_root_decision_is_the_sdks_on_the_same_trace_id(
        tracer: Tracer, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every root decided here agrees with the ratio rule on the trace id that travels; the
    sampled ones are SDK spans carrying that very id (so the ratio is not applied twice)."""
    ratio = TraceIdRatioBased(0.5)
    _sampler(tracer, monkeypatch, ParentBased(ratio))
    sent = []
    for i in range(200):
        with tracing.client_span("call", "t", "m", str(i)) as headers:
            sent.append(headers["traceparent"])
    sampled = [tp for tp in sent if _flags(tp) & 1]
    dropped = [tp for tp in sent if not _flags(tp) & 1]
    assert 40 < len(sampled) < 160  # 0.5 of 200, far from either end
    for tp in sent:
        trace_id = int(tp.split("-")[1], 16)
        assert (trace_id & ratio.TRACE_ID_LIMIT < ratio.bound) == bool(_flags(tp) & 1)
    exported = {f"{s.context.trace_id:032x}" for s in spans.get_finished_spans()}
    assert exported == {tp.split("-")[1] for tp in sampled}
    assert len(tracer.started) == len(sampled)  # type: ignore[attr-defined]
    assert dropped


def test_unsampled_parent_passes_its_context_on(
        tracer: Tracer, monkeypatch: pytest.MonkeyPatch) -> None:
    _sampler(tracer, monkeypatch, ParentBased(ALWAYS_ON))
    incoming = {"traceparent": f"00-{TRACE}-{PARENT}-00"}
    with tracing.server_span(incoming, "t", "m", "1", cast=False) as span:
        assert span is None
        current = trace.get_current_span().get_span_context()
        assert f"{current.trace_id:032x}" == TRACE and not current.trace_flags.sampled
        with tracing.client_span("call", "u", "n", "2") as headers:
            pass
    assert headers["traceparent"] == incoming["traceparent"]
    assert not trace.get_current_span().get_span_context().is_valid  # detached again
    assert tracer.started == []  # type: ignore[attr-defined]


def test_sampled_parent_still_gets_a_server_span(
        tracer: Tracer, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    _sampler(tracer, monkeypatch, ParentBased(ALWAYS_OFF))
    with tracing.server_span({"traceparent": f"00-{TRACE}-{PARENT}-01"}, "t", "m", "1",
                             cast=False) as span:
        assert span is not None and span.is_recording()
    [finished] = spans.get_finished_spans()
    assert f"{finished.context.trace_id:032x}" == TRACE
    assert finished.parent is not None and f"{finished.parent.span_id:016x}" == PARENT


def test_unsampled_parent_with_baggage_and_tracestate(
        tracer: Tracer, monkeypatch: pytest.MonkeyPatch) -> None:
    _sampler(tracer, monkeypatch, ParentBased(ALWAYS_ON))
    incoming = {"traceparent": f"00-{TRACE}-{PARENT}-00", "tracestate": "v=1",
                "baggage": "tenant=acme"}
    with tracing.server_span(incoming, "t", "m", "1", cast=True):
        assert baggage.get_baggage("tenant") == "acme"
        with tracing.client_span("cast", "u", "n", "2") as headers:
            pass
    assert headers["traceparent"] == incoming["traceparent"]
    assert headers["tracestate"] == "v=1" and "tenant=acme" in headers["baggage"]
    assert tracer.started == []  # type: ignore[attr-defined]


def test_malformed_traceparent_goes_to_the_sdk(
        tracer: Tracer, monkeypatch: pytest.MonkeyPatch) -> None:
    _sampler(tracer, monkeypatch, ParentBased(ALWAYS_ON))
    with tracing.server_span({"traceparent": f"00-{'0' * 32}-{PARENT}-00"}, "t", "m", "1",
                             cast=False) as span:
        assert span is not None  # invalid parent: the SDK makes a root, sampled by ALWAYS_ON
    assert tracer.started == ["t/m process"]  # type: ignore[attr-defined]


class _Coin(Sampler):
    """A sampler the fast path cannot know (its decision is not a function of the trace id)."""

    def __init__(self) -> None:
        self.asked = 0

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        self.asked += 1
        return SamplingResult(Decision.DROP)

    def get_description(self) -> str:
        return "coin"


def test_unknown_sampler_is_left_to_the_sdk(
        tracer: Tracer, monkeypatch: pytest.MonkeyPatch) -> None:
    coin = _Coin()
    _sampler(tracer, monkeypatch, ParentBased(coin))
    with tracing.client_span("call", "t", "m", "1") as headers:
        pass
    assert coin.asked == 1 and tracer.started == ["t/m call"]  # type: ignore[attr-defined]
    assert _flags(headers["traceparent"]) & 1 == 0


class Inner:
    def __init__(self) -> None:
        self.seen: list[trace.SpanContext] = []

    def leaf(self, ctxt: Any) -> str:
        self.seen.append(trace.get_current_span().get_span_context())
        return "ok"


class Outer:
    def __init__(self, discovery: MemoryDiscovery, inner: Inner) -> None:
        self.inner = inner
        self.client = grpcrpc.RPCClient(discovery, Target(topic="inner"), timeout=10)

    def hop(self, ctxt: Any) -> str:
        self.inner.seen.append(trace.get_current_span().get_span_context())
        return str(self.client.call(ctxt, "leaf"))


def test_unsampled_trace_across_real_servers(
        tracer: Tracer, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    """client → outer server → nested call → inner server, root sampler says no: the same
    trace id with sampled=0 at every hop, and not one SDK span anywhere."""
    _sampler(tracer, monkeypatch, ParentBased(ALWAYS_OFF))
    inner = Inner()
    with Cluster() as cluster:
        cluster.serve(Target(topic="inner", server="i1"), [inner])
        outer = Outer(cluster.discovery, inner)
        cluster.serve(Target(topic="outer", server="o1"), [outer])
        try:
            assert cluster.client(Target(topic="outer")).call({}, "hop") == "ok"
        finally:
            outer.client.close()
        wait_until(lambda: len(inner.seen) == 2, what="both hops")
    first, second = inner.seen
    assert first.is_valid and first.trace_id == second.trace_id
    assert not first.trace_flags.sampled and not second.trace_flags.sampled
    assert tracer.started == [] and spans.get_finished_spans() == ()  # type: ignore[attr-defined]
    assert otel_context.get_current() == otel_context.Context()


def test_sampled_headers_and_parents_match_opentelemetrys_own(
        tracer: Tracer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sampled path writes and reads `traceparent` itself: the same as propagate's."""
    from opentelemetry import propagate

    from grpcrpc import _unsampled

    _sampler(tracer, monkeypatch, ParentBased(ALWAYS_ON))
    decider = _unsampled.decider(tracer)
    assert decider is not None
    span = tracer.start_span("x")
    ours: dict[str, str] = {}
    decider.inject(ours, span)
    theirs: dict[str, str] = {}
    propagate.inject(theirs, context=trace.set_span_in_context(span))
    span.end()
    assert ours == theirs and _flags(ours["traceparent"]) & 1
    for headers in (ours, {"traceparent": f"00-{TRACE}-{PARENT}-01"}):
        mine = decider.parent_context(headers)
        assert mine is not None
        assert (trace.get_current_span(mine).get_span_context()
                == trace.get_current_span(propagate.extract(headers)).get_span_context())
    assert decider.parent_context({"traceparent": f"00-{TRACE}-{PARENT}-01",
                                   "baggage": "a=b"}) is None  # left to propagate.extract
