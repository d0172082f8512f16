"""The pure deadline logic: the ambient message, the effective timeout, what goes on the wire."""

import asyncio
import contextvars
import time

import pytest

import grpcrpc
from grpcrpc import RPCClient, StaticResolver, Target
from grpcrpc import envelope as ev
from grpcrpc.deadline import (
    Incoming,
    effective_timeout,
    reset_current_message,
    set_current_message,
)
from grpcrpc.envelope import Envelope


@pytest.mark.parametrize(("own", "remaining", "expected"), [
    (None, None, None),
    (5.0, None, 5.0),
    (None, 3.0, 3.0),
    (5.0, 3.0, 3.0),
    (2.0, 3.0, 2.0),
    (60.0, 0.001, 0.001),
])
def test_effective_timeout_is_the_smaller_bound(own: float | None, remaining: float | None,
                                                expected: float | None) -> None:
    assert effective_timeout(own, remaining) == expected


@pytest.mark.parametrize("remaining", [0.0, -0.001, -30.0])
@pytest.mark.parametrize("own", [None, 5.0])
def test_nothing_remaining_is_a_timeout_before_sending(own: float | None, remaining: float) -> None:
    with pytest.raises(grpcrpc.MessagingTimeout, match=r"sched\.m: the deadline it inherits "
                                                      r"has passed; not sent"):
        effective_timeout(own, remaining, "sched.m")


def test_received_envelope_deadline_counts_from_arrival() -> None:
    call = Incoming.received("i", "m", cast=False, timeout_ms=1500, now=100.0)
    assert call.deadline == 101.5
    assert call.remaining(now=101.0) == pytest.approx(0.5)
    assert call.remaining(now=102.0) == pytest.approx(-0.5)
    # No deadline on the wire, or a cast (its sender only waited for acceptance): none here.
    assert Incoming.received("i", "m", cast=False, timeout_ms=0, now=100.0).deadline is None
    cast = Incoming.received("i", "m", cast=True, timeout_ms=1500, now=100.0)
    assert cast.deadline is None and cast.remaining() is None and cast.cast


def test_timeout_on_the_wire_rounds_down_but_never_to_no_deadline() -> None:
    assert ev.timeout_ms(2.0) == 2000
    assert ev.timeout_ms(0.0019) == 1
    assert ev.timeout_ms(0.0001) == 1  # 0 would mean "no deadline at all"
    assert ev.timeout_ms(0) == 0
    assert ev.timeout_ms(10**9) == 2**32 - 1


def test_remaining_time_and_current_message_follow_the_context() -> None:
    assert grpcrpc.remaining_time() is None and grpcrpc.current_message() is None
    served = Incoming("id-7", "m", cast=False, deadline=time.monotonic() + 2.0)
    token = set_current_message(served)
    try:
        assert grpcrpc.current_message() is served
        left = grpcrpc.remaining_time()
        assert left is not None and 1.5 < left <= 2.0
        # A copy of the context (what the server hands its thread pool) carries it along.
        copied = contextvars.copy_context()
        assert copied.run(grpcrpc.remaining_time) is not None
    finally:
        reset_current_message(token)
    assert grpcrpc.remaining_time() is None


def test_tasks_started_while_serving_inherit_it() -> None:
    async def main() -> float | None:
        token = set_current_message(Incoming("i", "m", False, time.monotonic() + 5))
        try:
            return await asyncio.get_running_loop().create_task(_remaining())
        finally:
            reset_current_message(token)

    async def _remaining() -> float | None:
        return grpcrpc.remaining_time()

    left = asyncio.run(main())
    assert left is not None and 4 < left <= 5


@pytest.fixture
def client() -> RPCClient:
    return RPCClient(StaticResolver([]), Target(topic="sched"), timeout=7)


def _serving(seconds: float | None) -> contextvars.Token[Incoming | None]:
    deadline = None if seconds is None else time.monotonic() + seconds
    return set_current_message(Incoming("outer", "m", cast=False, deadline=deadline))


def _wire_timeout_ms(client: RPCClient) -> int:
    data = client._envelope({}, "m", client._dict_args({}, {}), cast=False, msg_id="i",
                            exchange="nova", headers={}, timeout=client._timeout_now("m"))
    return Envelope.FromString(data).timeout_ms


def test_a_client_inside_an_endpoint_sends_what_remains(client: RPCClient) -> None:
    assert _wire_timeout_ms(client) == 7000
    token = _serving(2.0)
    try:
        assert 1500 < _wire_timeout_ms(client) <= 2000
        assert 1500 < _wire_timeout_ms(client.prepare(timeout=None)) <= 2000
        assert _wire_timeout_ms(client.prepare(timeout=0.5)) == 500  # its own is smaller
    finally:
        reset_current_message(token)
    token = _serving(None)  # a caller without a deadline: the client's own timeout
    try:
        assert _wire_timeout_ms(client) == 7000
    finally:
        reset_current_message(token)


def test_a_client_inside_an_expired_endpoint_fails_before_routing(client: RPCClient) -> None:
    token = _serving(-0.01)
    try:
        # No endpoint is registered: a send would fail with NoEndpoints. It is never tried.
        for send in (client.call, client.cast, client.prepare(fanout=True).cast):
            with pytest.raises(grpcrpc.MessagingTimeout, match="not sent"):
                send({}, "m")
    finally:
        reset_current_message(token)
    with pytest.raises(grpcrpc.NoEndpoints):
        client.call({}, "m")


def test_failure_mapper_sees_only_endpoint_failures(client: RPCClient) -> None:
    seen: list[ev.Failure] = []

    class Mapped(Exception):
        pass

    def mapper(failure: ev.Failure) -> BaseException | None:
        seen.append(failure)
        return Mapped(failure.exc_type) if failure.exc_type == "KeyError" else None

    mapped = RPCClient(StaticResolver([]), Target(topic="sched"), failure_mapper=mapper)
    prepared = mapped.prepare(version="1.1")  # prepare() keeps the mapper
    remote = ev.Reply(id="i", failure=ev.failure_from_exception(KeyError("k")))
    with pytest.raises(Mapped, match="KeyError"):
        prepared._result({}, "m", remote)
    other = ev.Reply(id="i", failure=ev.failure_from_exception(ValueError("v")))
    with pytest.raises(ValueError, match="v"):  # the mapper declined: grpcrpc's own mapping
        prepared._result({}, "m", other)
    overloaded = ev.reply_failure("i", ev.ErrorCode.OVERLOADED, "full")
    with pytest.raises(grpcrpc.Overloaded):  # grpcrpc's own errors never reach the mapper
        prepared._result({}, "m", overloaded)
    assert [f.exc_type for f in seen] == ["KeyError", "ValueError"]
    mapped.close()
