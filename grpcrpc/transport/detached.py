"""A fanout that does not wait: its delivery report comes later, to a callback.

A fanout cast that waits for every server's acceptance before it returns makes a caller that
fans out again and again send one envelope at a time to each server: every server then reads,
accepts and dispatches each one alone, and a server's cost per message is mostly that (oslo's
fanout to five servers ran at 0.84 to 1.07 times RabbitMQ's rate, issue 18). A *detached* fanout
returns once its envelope is on its way to every server, so the next one follows at once and
the servers get them in batches; each server's answer settles its part, and when the last one
has answered (or failed) the `FanoutReport` goes to the caller's callback.

This is the semantics of a fanout through a broker (RabbitMQ's fanout exchange takes the message
and answers nothing about the queues behind it), with more said: who did not get it is still
reported, only later. Nothing is sent twice and nothing is held back silently:

- a connection holds at most `WINDOW` detached envelopes unanswered; the next one waits for
  room (within the cast's acceptance wait, else that server's part fails as timed out), so a
  fast sender is paced by its slowest server instead of being refused by its admission limits;
- a frozen or unreachable server fails its part as a waiting fanout's would (the liveness probe,
  a broken stream, the unary RPC's deadline);
- closing the transport first waits (at most the acceptance wait) for the reports due.

>>> reports = []
>>> fan = Fanout(2, reports.append, on_settled=lambda address: None, timeout=5.0)
>>> fan.sending(); fan.sending()
>>> fan.arrived("a:1", None)
>>> fan.sent_all()
>>> reports
[]
>>> fan.arrived("b:1", None)
>>> reports[0].ok, reports[0].targets
(True, 2)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from grpcrpc import envelope as ev
from grpcrpc import fanout
from grpcrpc.exceptions import MessagingTimeout
from grpcrpc.fanout import Failed, FanoutReport
from grpcrpc.transport.base import NotSent

if TYPE_CHECKING:
    from grpcrpc.discovery.base import Endpoint

__all__ = ["WINDOW", "Fanout", "Live", "Part", "part_failure"]

log = logging.getLogger("grpcrpc.transport")

# Detached fanout envelopes one connection may hold unanswered. A server admits 256 envelopes
# per connection by default (`Limits.per_connection`): a window well inside that is never
# refused for being too many, and deep enough that the servers see batches.
WINDOW = 64
# An envelope a full server refused goes again after this long, doubling up to the second.
RESEND_FIRST, RESEND_MAX = 0.005, 0.5


class Live:
    """How many detached fanouts of a transport still owe their report (for `close`)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._n = 0

    def add(self) -> None:
        with self._cond:
            self._n += 1

    def done(self) -> None:
        with self._cond:
            self._n -= 1
            if not self._n:
                self._cond.notify_all()

    @property
    def due(self) -> int:
        return self._n

    def wait_settled(self, timeout: float | None) -> bool:
        """True once every report was made (False if `timeout` passed first)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._n, timeout)


class Fanout:
    """One detached fanout to `targets` servers: the sender counts what it sent, each server's
    answer arrives (from reader threads, in any order) and the last one makes the report."""

    def __init__(self, targets: int, on_report: Callable[[FanoutReport], object], *,
                 on_settled: Callable[[str], None], live: Live | None = None,
                 timeout: float | None = None,
                 eject: Callable[[str], object] = lambda address: None) -> None:
        self._targets = targets
        self.timeout = timeout  # each server's acceptance wait
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.eject = eject
        self._on_report = on_report
        self._on_settled = on_settled
        self._live = live
        self._lock = threading.Lock()
        self._failures: list[Failed] = []
        self._left = 1  # the sender's own hold, until it has sent to every server
        if live is not None:
            live.add()

    def sending(self) -> None:
        """One more server's answer to wait for (before its envelope goes)."""
        with self._lock:
            self._left += 1

    def left(self) -> float | None:
        """Seconds left of the acceptance wait (None: unbounded)."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def no_room(self, endpoint: Endpoint) -> MessagingTimeout:
        return MessagingTimeout(f"{endpoint.address}: no room for the fanout within "
                                f"{self.timeout:g}s")

    def not_sent(self, endpoint: Endpoint, error: BaseException) -> None:
        """A server that could not be sent to at all (its request is over)."""
        failed = part_failure(endpoint, error, self.eject)
        with self._lock:
            self._failures.append(failed)
        self._on_settled(endpoint.address)

    def arrived(self, address: str, failed: Failed | None) -> None:
        """One server's part is settled: `failed` says how, if it did not accept."""
        self._on_settled(address)
        if failed is not None:
            with self._lock:
                self._failures.append(failed)
        self._release()

    def sent_all(self) -> None:
        """The sender is done sending; the report follows the last answer."""
        self._release()

    def _release(self) -> None:
        with self._lock:
            self._left -= 1
            if self._left:
                return
            report = fanout.report(self._targets, self._failures)
        try:
            self._on_report(report)
        except Exception:
            log.exception("a fanout report callback failed")
        finally:
            if self._live is not None:
                self._live.done()


def part_failure(endpoint: Endpoint, error: BaseException,
                 eject: Callable[[str], object]) -> Failed:
    """Why one server did not get a fanout, from the error its envelope met. One that could not
    be reached (`NotSent`) is also ejected: skipped in picks for a while."""
    if isinstance(error, NotSent):
        eject(endpoint.address)
        return Failed(endpoint.address, endpoint.server, f"unreachable, not sent: {error}")
    if isinstance(error, MessagingTimeout | TimeoutError):
        return Failed(endpoint.address, endpoint.server, "timed out")
    return Failed(endpoint.address, endpoint.server, f"{type(error).__name__}: {error}")


class Part:
    """A detached fanout's envelope to one server; each transport says how it is sent
    (`send`), how a resend is scheduled (`_later`) and how its room in the window is freed
    (`_release`).

    Settled once with the server's reply or the error it met. A server that refused it unrun
    because it is full (OVERLOADED) gets it again after a backoff, while the cast's acceptance
    wait lasts: the window bounds what waits for an answer, not what a server holds (it holds a
    cast until its endpoint has run it), so a sender faster than a slow server's endpoints meets
    its admission limit; the refusal says the envelope never ran, so sending it again cannot
    deliver it twice.
    """

    __slots__ = ("backoff", "data", "endpoint", "fan", "msg_id")

    def __init__(self, endpoint: Endpoint, fan: Fanout, msg_id: str, data: bytes) -> None:
        self.endpoint, self.fan, self.msg_id, self.data = endpoint, fan, msg_id, data
        self.backoff = RESEND_FIRST

    def settle(self, reply: ev.Reply | None, error: BaseException | None = None) -> None:
        if (reply is not None and reply.WhichOneof("outcome") == "failure"
                and reply.failure.code == ev.ErrorCode.OVERLOADED and self._again()):
            return
        self._release()
        endpoint = self.endpoint
        failed = (part_failure(endpoint, error, self.fan.eject) if error is not None
                  else fanout.failed_for(endpoint.address, endpoint.server, reply))
        self.fan.arrived(endpoint.address, failed)

    def _again(self) -> bool:
        delay = self.backoff
        deadline = self.fan.deadline
        if deadline is not None and time.monotonic() + delay >= deadline:
            return False  # no time left: it is reported as refused
        self.backoff = min(2 * delay, RESEND_MAX)
        self._later(delay)
        return True

    def _release(self) -> None:
        raise NotImplementedError

    def _later(self, delay: float) -> None:
        raise NotImplementedError
