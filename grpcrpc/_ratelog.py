"""Log lines a peer can cause, at a bounded rate.

A refusal (unauthorised, overloaded) is worth a line for the operator, but a hostile peer can
cause millions of them: one 4 MB batch of unauthenticated envelopes wrote 37 MB of warnings.
`RateLimitedLog` lets `burst` lines of one kind through per `interval` seconds, then counts the
rest and says how many it left out with the next line it lets through.

>>> import logging
>>> rl = RateLimitedLog(logging.getLogger("demo"), interval=60.0, burst=2)
>>> [rl.warning("overloaded", "refused %s", i) for i in range(4)]
[True, True, False, False]
>>> rl.suppressed("overloaded")
2
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

__all__ = ["RateLimitedLog", "SparseFilter"]


class RateLimitedLog:
    """A logger wrapper that lets at most `burst` lines per `kind` through per `interval`."""

    def __init__(self, logger: logging.Logger, *, interval: float = 10.0, burst: int = 5) -> None:
        self.logger = logger
        self.interval = interval
        self.burst = burst
        self._lock = threading.Lock()
        # kind -> [window start, lines let through in the window, lines left out]
        self._kinds: dict[str, list[float]] = {}

    def log(self, level: int, kind: str, msg: str, *args: Any) -> bool:
        """Log `msg % args` unless `kind` is over its rate; True if the line went out."""
        if not self.logger.isEnabledFor(level):
            return False
        now = time.monotonic()
        with self._lock:
            state = self._kinds.get(kind)
            if state is None or now - state[0] >= self.interval:
                left_out = int(state[2]) if state is not None else 0
                state = self._kinds[kind] = [now, 0.0, 0.0]
            else:
                left_out = 0
            if state[1] >= self.burst:
                state[2] += 1
                return False
            state[1] += 1
        if left_out:
            msg = f"{msg} ({left_out} more like it in the last {self.interval:.0f}s not logged)"
        self.logger.log(level, msg, *args)
        return True

    def warning(self, kind: str, msg: str, *args: Any) -> bool:
        return self.log(logging.WARNING, kind, msg, *args)

    def suppressed(self, kind: str) -> int:
        """Lines of `kind` left out in the current window."""
        with self._lock:
            state = self._kinds.get(kind)
            return int(state[2]) if state is not None else 0


class SparseFilter(logging.Filter):
    """For a logger that is not ours: at most one record per `interval` seconds, cut short,
    saying how many were dropped.

    OpenTelemetry's propagators warn about every malformed trace header they parse, quoting it
    (a baggage header may be 8 KiB): without this, a peer could fill a server's log at the rate
    it sends envelopes.
    """

    def __init__(self, interval: float = 60.0, width: int = 300) -> None:
        super().__init__()
        self.interval, self.width = interval, width
        self._next = 0.0
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now < self._next:
            self._dropped += 1
            return False
        self._next = now + self.interval
        text = record.getMessage()
        if len(text) > self.width:
            text = text[:self.width] + "..."
        if self._dropped:
            text += f" ({self._dropped} more like it in the last {self.interval:.0f}s not logged)"
            self._dropped = 0
        record.msg, record.args = text, None
        return True
