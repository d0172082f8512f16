"""One SDK tracer provider for the process (OpenTelemetry allows setting it once), exporting to
memory; each test sees only its own spans."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_exporter = InMemorySpanExporter()
_installed = False


def _install() -> None:
    global _installed
    if _installed:
        return
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # another test may have installed one already
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(_exporter))
    _installed = True


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    _install()
    _exporter.clear()
    yield _exporter
    _exporter.clear()


def by_name(finished: tuple[ReadableSpan, ...], fragment: str) -> list[ReadableSpan]:
    return [s for s in finished if fragment in s.name]


_reader = None


@pytest.fixture
def metric_reader() -> Any:
    """An in-memory metric reader on the process's meter provider (set once)."""
    global _reader
    if _reader is None:
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        _reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[_reader]))
    return _reader
