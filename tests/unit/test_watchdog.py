"""The watchdog that gives blocking grpc reads a deadline (grpcrpc/discovery/_watchdog.py)."""

from __future__ import annotations

import threading

from grpcrpc.discovery._watchdog import Watchdog


class Call:
    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()


def test_a_late_call_is_cancelled_and_reported_late() -> None:
    dog, call = Watchdog(), Call()
    guard = dog.watch(call, 0.05)
    assert call.cancelled.wait(5)
    assert dog.release(guard) is True


def test_a_call_answered_in_time_is_left_alone_and_a_nearer_deadline_wakes_it() -> None:
    dog = Watchdog()
    far, near, answered = Call(), Call(), Call()
    far_guard = dog.watch(far, 60)  # the watchdog now sleeps toward 60 s
    ok = dog.watch(answered, 0.05)
    assert dog.release(ok) is False
    near_guard = dog.watch(near, 0.1)  # nearer: it must wake for this one
    assert near.cancelled.wait(5)
    assert not answered.cancelled.is_set() and not far.cancelled.is_set()
    assert dog.release(near_guard) is True and dog.release(far_guard) is False
