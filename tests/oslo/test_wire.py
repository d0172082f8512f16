"""What travels and how it is rebuilt, without sockets: failures, values, dispatch, hand-offs."""

from __future__ import annotations

import asyncio
import datetime
import json
import sys
import threading
from typing import Any

import pytest
from oslo_messaging._drivers import common as rpc_common
from oslo_serialization import jsonutils

from grpcrpc import envelope as ev
from grpcrpc.deadline import Incoming
from grpcrpc.oslo._bridge import Bridge, LoopInbox, Mailbox, ThreadWorld
from grpcrpc.oslo._wire import (
    CatchAllDispatcher,
    PrimitiveSerializer,
    failure_data,
    oslo_message,
    remote_exception,
)
from grpcrpc.oslo.listener import GrpcIncomingMessage, Handoff
from tests.oslo.endpoints import MODULE, AppError


def exc_info_of(error: Exception) -> Any:
    try:
        raise error
    except Exception:
        return sys.exc_info()


def over_grpcrpc(info: Any, allowed: list[str]) -> BaseException:
    """Server: oslo serialises, grpcrpc's servicer builds a Failure; client: oslo rebuilds."""
    data = json.loads(rpc_common.serialize_remote_exception(info))
    failure = ev.failure_from_exception(remote_exception(data, info[2]))
    wire = ev.Failure.FromString(failure.SerializeToString())
    result: BaseException = rpc_common.deserialize_remote_exception(
        jsonutils.dumps(failure_data(wire)), allowed)
    return result


def over_rabbit(info: Any, allowed: list[str]) -> BaseException:
    result: BaseException = rpc_common.deserialize_remote_exception(
        rpc_common.serialize_remote_exception(info), allowed)
    return result


@pytest.mark.parametrize("allowed", [[MODULE], []])
def test_failures_rebuild_as_the_rabbit_driver_rebuilds_them(allowed: list[str]) -> None:
    info = exc_info_of(AppError(code=404, instance="i-1"))
    ours, theirs = over_grpcrpc(info, allowed), over_rabbit(info, allowed)
    assert type(ours).__name__ == type(theirs).__name__
    assert type(ours).__mro__[1:] == type(theirs).__mro__[1:]
    if allowed:
        assert isinstance(ours, AppError)
        assert ours.kwargs == theirs.kwargs == {"code": 404, "instance": "i-1"}  # type: ignore[attr-defined]
        assert ours.args == theirs.args
    else:
        assert (ours.exc_type, ours.value) == (theirs.exc_type, theirs.value)  # type: ignore[attr-defined]
    # Both show the remote traceback, with the endpoint's frame in it.
    assert "exc_info_of" in str(ours) and "exc_info_of" in str(theirs)


def test_builtin_exceptions_are_always_rebuilt() -> None:
    error = over_grpcrpc(exc_info_of(KeyError("host1")), [])
    assert isinstance(error, KeyError)
    assert "host1" in str(error)


def test_a_reraised_remote_exception_keeps_its_original_name() -> None:
    # A server that re-raises what it got from another call (nova cells) sends the original.
    remote = over_rabbit(exc_info_of(AppError(code=1)), [MODULE])
    assert type(remote).__name__ == "AppError_Remote"
    again = over_grpcrpc(exc_info_of(remote), [MODULE])  # type: ignore[arg-type]
    assert isinstance(again, AppError) and type(again).__name__ == "AppError_Remote"


def test_values_travel_as_jsonutils_sends_them() -> None:
    s = PrimitiveSerializer()
    when = datetime.datetime(2024, 5, 1, 12, 30)
    value = {"when": when, "ids": {3}, "raw": b"abc"}
    assert s.serialize_entity({}, value) == json.loads(jsonutils.dumps(value))
    assert s.serialize_context({"user": "u", "at": when})["at"] == jsonutils.to_primitive(when)
    with pytest.raises(ValueError):
        s.serialize_entity({}, object())


def test_catch_all_dispatch_passes_namespace_version_and_method() -> None:
    calls: list[tuple[Any, ...]] = []

    class Sink:
        async def deliver(self, namespace: str | None, version: str | None, method: str,
                          ctxt: dict[str, Any], **args: Any) -> None:
            calls.append((namespace, version, method, ctxt, args))

    dispatcher = CatchAllDispatcher(Sink())
    handler = dispatcher.lookup("ns", "1.3", "anything_at_all")
    assert handler.is_async and handler.request_type is None
    asyncio.run(handler.func({"c": 1}, x=2))
    assert calls == [("ns", "1.3", "anything_at_all", {"c": 1}, {"x": 2})]
    assert dispatcher.lookup("", "", "m") is dispatcher.lookup(None, None, "m")
    assert oslo_message("ns", "1.3", "m", {}) == {"method": "m", "args": {}, "namespace": "ns",
                                                  "version": "1.3"}


def test_mailbox_hands_over_in_order_then_closes() -> None:
    box: Mailbox[int] = Mailbox(ThreadWorld())
    assert box.get(timeout=0.01) is None
    got: list[int | None] = []
    reader = threading.Thread(target=lambda: got.append(box.get(timeout=10)))
    reader.start()
    assert box.put(1)
    reader.join(10)
    assert got == [1]
    assert box.put(2) and box.put(3)
    box.stop()
    assert [box.get(), box.get(), box.get()] == [2, 3, None]
    assert not box.put(4)  # closed: the loop refuses the message instead of losing it
    assert box.close() == []


def _incoming(n: int, outcomes: list[tuple[int, str]]) -> GrpcIncomingMessage:
    """A message as the sink makes it; its outcome (reply or requeue) is noted in `outcomes`."""
    return GrpcIncomingMessage({}, oslo_message(None, None, "ping", {"n": n}),
                               Incoming(f"m{n}", "ping", cast=False, deadline=None),
                               lambda outcome: outcomes.append((n, outcome[0])))


def _numbers(batch: list[GrpcIncomingMessage]) -> list[int]:
    return [m.message["args"]["n"] for m in batch]


def test_handoff_gives_early_messages_first_then_each_at_once_and_none_after_stop() -> None:
    outcomes: list[tuple[int, str]] = []
    box = Handoff()
    assert box.put(_incoming(1, outcomes)) and box.put(_incoming(2, outcomes))  # they wait
    got: list[int] = []
    box.start(lambda batch: got.extend(_numbers(batch)))
    assert got == [1, 2]  # oslo started the listener: the early ones first, in order
    assert box.put(_incoming(3, outcomes)) and got == [1, 2, 3]  # straight to the callback
    box.stop()
    assert not box.put(_incoming(4, outcomes))  # refused: its caller sends it elsewhere
    assert got == [1, 2, 3] and box.close() == [] and outcomes == []


def test_handoff_refused_by_the_executor_is_handed_back() -> None:
    def shut_down(batch: list[GrpcIncomingMessage]) -> None:
        raise RuntimeError("Can not schedule new futures after being shutdown")

    outcomes: list[tuple[int, str]] = []
    box = Handoff()
    assert box.put(_incoming(1, outcomes))
    box.start(shut_down)
    assert outcomes == [(1, "requeue")]  # never ran: its caller hears "not accepted"
    assert not box.put(_incoming(2, outcomes))
    closing = Handoff()
    unread = _incoming(3, outcomes)
    assert closing.put(unread)
    assert closing.close() == [unread]  # never started: the listener's cleanup requeues it


def test_loop_inbox_runs_posts_in_order_with_one_wake_up() -> None:
    loop = asyncio.new_event_loop()
    try:
        wakes: list[int] = []
        real = loop.call_soon_threadsafe

        def counting(*args: Any) -> Any:
            wakes.append(1)
            return real(*args)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign,assignment]
        inbox = LoopInbox(loop, threading.Lock())
        seen: list[int] = []

        def post_from_threads() -> None:
            threads = [threading.Thread(target=inbox.post, args=(seen.append, i))
                       for i in range(20)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        post_from_threads()  # the loop is not running: all 20 wait for one wake-up
        loop.run_until_complete(asyncio.sleep(0))
        assert sorted(seen) == list(range(20)) and len(wakes) == 1

        def bad(_: int) -> None:
            raise ValueError("one bad callback")

        inbox.post(bad, 0)
        inbox.post(seen.append, 99)
        loop.run_until_complete(asyncio.sleep(0))
        assert seen[-1] == 99  # the bad one was logged, the next still ran
    finally:
        loop.close()
    with pytest.raises(RuntimeError):
        inbox.post(seen.append, 100)  # a closed loop: the poster hears it


def test_bridge_runs_coroutines_and_blocking_calls() -> None:
    bridge = Bridge(ThreadWorld(), "test")
    try:
        async def ok() -> int:
            await asyncio.sleep(0)
            return 7

        async def fails() -> None:
            raise LookupError("nope")

        async def forever() -> None:
            await asyncio.Event().wait()  # never finishes: the test cancels it

        assert bridge.run(ok()) == 7
        with pytest.raises(LookupError):
            bridge.run(fails())
        with pytest.raises(TimeoutError):
            bridge.run(forever(), timeout=0.05)
        assert bridge.blocking(lambda a, b: a + b, 1, 2) == 3
    finally:
        bridge.close()
