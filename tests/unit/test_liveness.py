"""When a silent connection is probed and what an unanswered probe fails (no sockets)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import pytest

from grpcrpc.transport.base import Liveness, TransportOptions, cast_wait, probe_answered


@dataclass
class Stream:
    in_flight: int
    heard: float


def test_a_stream_with_nothing_in_flight_is_never_probed() -> None:
    assert not Liveness().due([Stream(0, 0.0)], now=100.0, after=1.0)


def test_silence_counts_from_the_last_word_or_the_last_answered_probe() -> None:
    live = Liveness()
    assert not live.due([Stream(3, 10.0)], now=10.9, after=1.0)
    assert live.due([None, Stream(3, 10.0)], now=11.1, after=1.0)
    live.answered = 11.1  # the server answered: it is alive, its calls are just long
    assert not live.due([Stream(3, 10.0)], now=12.0, after=1.0)
    assert live.due([Stream(3, 10.0)], now=12.2, after=1.0)
    live.probing = True  # one probe at a time
    assert not live.due([Stream(3, 10.0)], now=20.0, after=1.0)


def test_an_unanswered_probe_fails_the_streams_with_messages_unless_one_heard_since() -> None:
    live = Liveness()
    busy, idle = Stream(2, 5.0), Stream(0, 5.0)
    assert live.unanswered([busy, idle, None], started=6.0) == [busy]
    # Another stream of the same connection got a reply after the probe left: the process
    # runs, nothing fails.
    assert live.unanswered([busy, Stream(1, 6.5)], started=6.0) == []


@pytest.mark.parametrize(("code", "answered"), [
    (None, True), (grpc.StatusCode.UNIMPLEMENTED, True), (grpc.StatusCode.UNAVAILABLE, True),
    (grpc.StatusCode.DEADLINE_EXCEEDED, False),
])
def test_any_answer_shows_the_process_runs(code: grpc.StatusCode | None, answered: bool) -> None:
    assert probe_answered(code) is answered


def test_cast_wait_is_the_smaller_of_timeout_and_bound() -> None:
    assert cast_wait(60.0, TransportOptions()) == 5.0  # the default bound
    assert cast_wait(None, TransportOptions()) == 5.0
    assert cast_wait(1.0, TransportOptions()) == 1.0
    assert cast_wait(60.0, TransportOptions(cast_accept_timeout=None)) == 60.0


@pytest.mark.parametrize("field", ["probe_after", "probe_timeout", "cast_accept_timeout"])
def test_options_refuse_non_positive_values(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TransportOptions(**{field: 0})
