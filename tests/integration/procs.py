"""Server processes (server_main.py) that tests stop, continue and kill, and their output."""

from __future__ import annotations

import contextlib
import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

from grpcrpc import Endpoint

HERE = pathlib.Path(__file__).parent


class Servers:
    """Server processes (tests/integration/server_main.py) and their output lines."""

    def __init__(self, n: int, topic: str = "frozen", prefix: str = "v") -> None:
        self.procs = [subprocess.Popen([sys.executable, str(HERE / "server_main.py"), topic,
                                        f"{prefix}{i}"], stdout=subprocess.PIPE, text=True,
                                       cwd=HERE.parent.parent) for i in range(n)]
        self.lines: list[queue.Queue[str]] = []  # what `expect` reads (and consumes)
        self.seen: list[list[str]] = []  # every line of each process, kept
        self.addresses: list[str] = []
        for p in self.procs:
            lines: queue.Queue[str] = queue.Queue()
            seen: list[str] = []
            threading.Thread(target=self._pump, args=(p, lines, seen), daemon=True).start()
            self.lines.append(lines)
            self.seen.append(seen)
        for i in range(n):
            self.addresses.append(self.expect(i, "ADDRESS").split()[1])
        self.endpoints = [Endpoint(a, topic, f"{prefix}{i}")
                          for i, a in enumerate(self.addresses)]
        self.stopped: set[int] = set()

    @staticmethod
    def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str], seen: list[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line.strip())
            lines.put(line.strip())

    def ran(self, i: int) -> list[str]:
        """The keys server `i` has run `record` for so far."""
        return [line.split()[1] for line in list(self.seen[i]) if line.startswith("EXEC ")]

    def expect(self, i: int, prefix: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines[i].get(timeout=max(0.01, deadline - time.monotonic()))
            if line.startswith(prefix):
                return line

    def freeze(self, i: int) -> None:
        self.stopped.add(i)
        os.kill(self.procs[i].pid, signal.SIGSTOP)

    def thaw(self, i: int) -> None:
        os.kill(self.procs[i].pid, signal.SIGCONT)
        self.stopped.discard(i)

    def close(self) -> None:
        for i in self.stopped:  # a stopped process must run again to die cleanly
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.procs[i].pid, signal.SIGCONT)
        for p in self.procs:
            p.kill()
            p.wait(10)


@contextlib.contextmanager
def servers(n: int, topic: str = "frozen", prefix: str = "v") -> Iterator[Servers]:
    """`n` servers of `topic` named prefix0, prefix1, ...; continued and killed on exit."""
    s = Servers(n, topic, prefix)
    try:
        yield s
    finally:
        s.close()
