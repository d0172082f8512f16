"""What the demo prints, and how it judges itself: numbered steps, indented details, checks.

Every line goes to stdout as it happens (flushed), so a person sees progress and a test reads
the same lines. A failed check prints `FAILED: ...` under its step and makes the demo exit 1; a
`StepFailed` ends the demo at once (nothing after it could make sense).

>>> console = Console()
>>> console.step("hello")
<BLANKLINE>
1. hello
>>> console.check(1 + 1 == 3, "arithmetic")
   FAILED: arithmetic
False
>>> console.failures
['step 1: arithmetic']
"""

from __future__ import annotations

import contextlib
import io
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TextIO

from grpcrpc import cli
from grpcrpc.fanout import FanoutReport

__all__ = ["Console", "StepFailed", "interrupts_as_keyboard_interrupt", "no_interrupts", "wait_until"]

INDENT = "   "


class StepFailed(Exception):
    """A step could not go on (a process did not start, a call failed that must not)."""


class Console:
    """Numbered steps and their details, on stdout."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out
        self.step_no = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()

    def _print(self, text: str) -> None:
        with self._lock:
            print(text, file=self._out or sys.stdout, flush=True)

    def say(self, text: str) -> None:
        """A line of its own, outside any step."""
        self._print(text)

    def step(self, title: str) -> None:
        self.step_no += 1
        self._print(f"\n{self.step_no}. {title}")

    def line(self, text: str) -> None:
        self._print(f"{INDENT}{text}")

    def block(self, text: str, indent: str = INDENT) -> None:
        for row in text.rstrip("\n").splitlines():
            self._print(f"{indent}{row}".rstrip())

    def check(self, ok: bool, what: str) -> bool:
        """Record an expectation; a failed one is printed and makes the demo fail."""
        if not ok:
            self.failures.append(f"step {self.step_no}: {what}")
            self.line(f"FAILED: {what}")
        return ok

    def report(self, report: FanoutReport, what: str = "compute(s)") -> None:
        """A fanout's delivery report, one line per failure."""
        self.line(f"delivery report: {report.delivered} of {report.targets} {what} accepted, "
                  f"{len(report.failures)} failed")
        for f in report.failures:
            # gRPC's reasons run long ("...; last error: ..."): the first clause says it.
            self.line(f"  failed: {f.server} ({f.address}): {f.reason.split(';')[0][:80]}")

    def cli(self, argv: list[str]) -> tuple[int, str]:
        """Run `grpcrpc ARGV...` in this process and print the command and its output."""
        self.line("$ grpcrpc " + " ".join(argv))
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            rc = cli.main(argv)
        self.block(buf.getvalue(), INDENT + "  ")
        return rc, buf.getvalue()


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `condition` until it holds or `timeout` passes; returns whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(interval, left))  # polling a condition with a deadline


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def interrupts_as_keyboard_interrupt() -> Iterator[None]:
    """SIGTERM ends the demo the way Ctrl-C does: through its clean-up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def no_interrupts() -> Iterator[None]:
    """Around the clean-up: a second Ctrl-C must not leave processes behind (it is bounded by
    deadlines, so the wait is short)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
