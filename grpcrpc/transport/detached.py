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
>>> fan = Fanout(2, reports.append, on_settled=lambda address: None)
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
from collections.abc import Callable

from grpcrpc import fanout
from grpcrpc.fanout import Failed, FanoutReport

__all__ = ["WINDOW", "Fanout", "Live"]

log = logging.getLogger("grpcrpc.transport")

# Detached fanout envelopes one connection may hold unanswered. A server admits 256 envelopes
# per connection by default (`Limits.per_connection`): a window well inside that is never
# refused for being too many, and deep enough that the servers see batches.
WINDOW = 64


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

    def wait_settled(self, timeout: float | None) -> bool:
        """True once every report was made (False if `timeout` passed first)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._n, timeout)


class Fanout:
    """One detached fanout to `targets` servers: the sender counts what it sent, each server's
    answer arrives (from reader threads, in any order) and the last one makes the report."""

    def __init__(self, targets: int, on_report: Callable[[FanoutReport], object], *,
                 on_settled: Callable[[str], None], live: Live | None = None) -> None:
        self._targets = targets
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

    def failed_now(self, failed: Failed) -> None:
        """A server that could not be sent to at all."""
        with self._lock:
            self._failures.append(failed)

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
