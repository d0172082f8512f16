"""One SDK tracer provider for the process (OpenTelemetry allows setting it once), exporting to
memory; each test sees only its own spans."""

from __future__ import annotations

from collections.abc import Iterator

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
