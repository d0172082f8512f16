"""Per-connection accounting, the fair thread pool, rate-limited logging and the outbox's
backpressure: pure logic, no sockets."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from grpcrpc._ratelog import RateLimitedLog
from grpcrpc.admission import Admission, FairPool
from grpcrpc.transport.batching import Outbox, count_batch, frame


def test_one_connection_holds_at_most_its_share() -> None:
    adm = Admission(per_connection=100, sync_capacity=10, coroutines=4, share=0.5,
                    connection_unsent=100)
    assert adm.admit("other", is_async=False) == ""
    # While another connection holds slots, one connection gets at most half.
    assert [adm.admit("greedy", is_async=False) for _ in range(6)] == [""] * 5 + [
        "this connection's share of the thread pool"]
    # The last slot (an eighth) is kept for a connection that holds (almost) nothing.
    assert [adm.admit("other", is_async=False) for _ in range(4)] == [""] * 3 + [
        "thread pool (the rest is kept for other connections)"]
    assert adm.admit("third", is_async=False) == ""
    assert adm.admit("fourth", is_async=False) == "thread pool"
    assert adm.admit("greedy", is_async=True) == ""
    assert adm.admit("greedy", is_async=True) == ""
    assert adm.admit("greedy", is_async=True) == ""  # the only one holding coroutines
    assert adm.admit("greedy", is_async=True) == ""
    assert adm.admit("other", is_async=True) == "coroutine"
    adm.release("greedy", is_async=False)
    assert adm.admit("fourth", is_async=False) == ""
    for _ in range(4):
        adm.release("greedy", is_async=False)
    for _ in range(4):
        adm.release("greedy", is_async=True)
    assert adm.held("greedy") == 0 and "greedy" not in adm._peers  # forgotten when idle


def test_a_connection_alone_may_use_all_but_the_reserve() -> None:
    adm = Admission(per_connection=100, sync_capacity=16, coroutines=4, share=0.5,
                    connection_unsent=100)
    assert [adm.admit("solo", is_async=False) for _ in range(15)] == [""] * 14 + [
        "thread pool (the rest is kept for other connections)"]
    assert adm.admit("newcomer", is_async=False) == ""


def test_per_connection_bound_comes_first() -> None:
    adm = Admission(per_connection=2, sync_capacity=10, coroutines=10, share=1.0,
                    connection_unsent=100)
    assert [adm.admit("p", is_async=True) for _ in range(3)] == ["", "", "this connection's share"]


async def test_room_waits_until_the_connection_has_read() -> None:
    adm = Admission(per_connection=2, sync_capacity=1, coroutines=1, share=1.0,
                    connection_unsent=100)
    adm.unsent_changed("p", 150)
    waiter = asyncio.ensure_future(adm.room("p"))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    adm.unsent_changed("p", -60)
    await asyncio.wait_for(waiter, 1)
    adm.unsent_changed("p", -90)
    assert adm.unsent("p") == 0 and "p" not in adm._peers


async def test_fair_pool_takes_queued_work_round_robin_by_connection() -> None:
    pool = FairPool(1, "test")
    gate = threading.Event()
    order: list[str] = []

    def work(name: str) -> str:
        gate.wait(5)
        order.append(name)
        return name

    futures = [pool.submit("greedy", work, f"g{i}") for i in range(4)]
    futures.append(pool.submit("quiet", work, "q0"))
    assert pool.queued == 4
    gate.set()
    results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
    assert results == ["g0", "g1", "g2", "g3", "q0"]
    # g0 was running; then the quiet connection's call goes before the greedy backlog.
    assert order == ["g0", "g1", "q0", "g2", "g3"]
    pool.shutdown()


async def test_fair_pool_skips_cancelled_work_and_reports_errors() -> None:
    pool = FairPool(1, "test")
    gate = threading.Event()
    first = pool.submit("a", gate.wait, 5)
    skipped = pool.submit("a", lambda: pytest.fail("a cancelled job ran"))
    failing = pool.submit("b", lambda: 1 / 0)
    assert skipped.cancel()
    gate.set()
    assert await asyncio.wrap_future(first) is True
    with pytest.raises(ZeroDivisionError):
        await asyncio.wrap_future(failing)
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit("a", print)


def test_rate_limited_log_says_how_many_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    rl = RateLimitedLog(logging.getLogger("grpcrpc.test"), interval=0.2, burst=2)
    with caplog.at_level(logging.WARNING, "grpcrpc.test"):
        sent = [rl.warning("k", "refused %d", i) for i in range(10)]
        assert sent == [True, True] + [False] * 8
        assert rl.warning("other", "another kind") is True
        import time
        time.sleep(0.25)
        assert rl.warning("k", "refused %d", 10) is True
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused 0", "refused 1", "another kind",
                     "refused 10 (8 more like it in the last 0s not logged)"]


def test_count_batch_stops_at_the_limit_and_refuses_bad_framing() -> None:
    assert count_batch(b"", 5) == 0
    assert count_batch(frame([b"x" * 200] * 3), 5) == 3
    assert count_batch(frame([b""] * 1000), 10) == 11
    with pytest.raises(ValueError, match="tag"):
        count_batch(b"\x12\x01a", 5)
    with pytest.raises(ValueError, match="truncated"):
        count_batch(b"\x0a\x05ab", 5)
    with pytest.raises(ValueError, match="truncated"):
        count_batch(b"\x0a\xff", 5)


async def test_outbox_counts_unsent_bytes_and_drains() -> None:
    gate = asyncio.Event()
    written: list[bytes] = []
    deltas: list[int] = []

    async def write(data: bytes) -> None:
        await gate.wait()
        written.append(data)

    box: Outbox[None] = Outbox(write, 1000, lambda e, u: None, batched=False,
                               on_unsent=deltas.append)
    for _ in range(5):
        box.put(b"x" * 100)
    assert box.unsent == 500
    drained = asyncio.ensure_future(box.drained(200))
    await asyncio.sleep(0.01)
    assert not drained.done()
    gate.set()
    await asyncio.wait_for(drained, 1)
    await box.flush()
    assert box.unsent == 0 and sum(deltas) == 0 and len(written) == 5


def test_sparse_filter_passes_one_short_record_per_interval() -> None:
    from grpcrpc._ratelog import SparseFilter

    f = SparseFilter(interval=60.0, width=10)

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("otel", logging.WARNING, __file__, 1, msg, None, None)

    first = record("x" * 50)
    assert f.filter(first) and first.getMessage() == "x" * 10 + "..."
    assert not f.filter(record("again")) and not f.filter(record("again"))
    f._next = 0.0  # the interval has passed
    later = record("later")
    assert f.filter(later) and "2 more like it" in later.getMessage()
