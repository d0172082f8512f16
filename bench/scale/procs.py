"""The harness's side of the worker processes, and what /proc says about any process."""

from __future__ import annotations

import json
import os
import pathlib
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLK = os.sysconf("SC_CLK_TCK")


def raise_nofile(want: int = 0) -> int:
    """Every connection is a file descriptor: raise the soft limit to the hard one, and the hard
    one to `want` when this process may (root, or CAP_SYS_RESOURCE; up to fs.nr_open). Children
    (etcd members, the proxy, workers) inherit it. Otherwise the hard limit moves with
    `ulimit -Hn`, /etc/security/limits.conf or systemd's LimitNOFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if want > hard:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                want = min(want, int(f.read()))
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (OSError, ValueError):
            pass  # not allowed: the soft limit still goes up to the hard one
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class WorkerError(RuntimeError):
    pass


class Worker:
    """One `python -m bench.scale.worker KIND` process: `ask(op, ...)` sends a command and
    returns its JSON answer."""

    def __init__(self, kind: str, start_timeout: float = 600.0, **args: Any) -> None:
        self.kind = kind
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.scale.worker", kind, json.dumps(args)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.start_timeout = start_timeout
        self.ready: dict[str, Any] | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self) -> dict[str, Any]:
        if self.ready is None:
            self.ready = self._read(self.start_timeout)
        return self.ready

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()),  # type: ignore[union-attr]
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        if not box or not box[0]:
            raise WorkerError(f"{self.kind} worker {self.pid}: no answer within {timeout:.0f}s "
                              f"(exit code {self.proc.poll()})")
        reply: dict[str, Any] = json.loads(box[0])
        if "error" in reply:
            raise WorkerError(f"{self.kind} worker {self.pid}: {reply['error']}")
        return reply

    def ask(self, op: str, timeout: float = 600.0, **args: Any) -> dict[str, Any]:
        with self._lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
            self.proc.stdin.flush()
            return self._read(timeout)

    def close(self, timeout: float = 60.0) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def start_all(workers: Sequence[Worker]) -> list[dict[str, Any]]:
    return [w.wait_ready() for w in workers]


def ask_all(workers: Iterable[Worker], op: str, timeout: float = 600.0,
            **args: Any) -> list[dict[str, Any]]:
    """The same command to every worker at once (each answers in its own time)."""
    workers = list(workers)
    out: list[dict[str, Any] | BaseException] = [WorkerError("no answer")] * len(workers)

    def one(i: int) -> None:
        try:
            out[i] = workers[i].ask(op, timeout, **args)
        except BaseException as exc:
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for item in out:
        if isinstance(item, BaseException):
            raise item
    return out  # type: ignore[return-value]


def close_all(workers: Iterable[Worker]) -> None:
    workers = list(workers)
    threads = [threading.Thread(target=w.close, daemon=True) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# -- /proc -------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def status(pid: int) -> dict[str, float]:
    """RSS (MiB), threads and open fds of `pid`."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss_mib"] = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


class CpuWatch:
    """CPU of some processes over a window: `rates()` gives each one's share of a core."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.t0 = time.monotonic()
        self.c0 = {k: cpu_seconds(p) for k, p in pids.items()}

    def rates(self) -> dict[str, float]:
        span = time.monotonic() - self.t0
        return {k: (cpu_seconds(p) - self.c0[k]) / span for k, p in self.pids.items()}


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name):len(name) + 1] not in ("{", " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def pct(values: Sequence[float], q: float) -> float | None:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else None
